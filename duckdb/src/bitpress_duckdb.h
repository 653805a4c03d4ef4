/*
 * bitpress in DuckDB: the thin adapter between DuckDB's C extension API (stable C_STRUCT ABI,
 * API v1.2.0) and the one C core in pyext/. One file per concept, as sql/src/ for PostgreSQL:
 * hamming.c, binarize.c, codes.c, simd.c; bitpress_duckdb.c is the entry point.
 *
 * Every function checks its inputs' validity masks itself (the C API hands NULL rows to the
 * function) and reports a bad input with duckdb_scalar_function_set_error and the core's own
 * message (bp_error.c), never by aborting: an extension runs inside the user's process.
 */
#ifndef BITPRESS_DUCKDB_H
#define BITPRESS_DUCKDB_H

#include <stdbool.h>
#include <stdint.h>

#include "duckdb_extension.h"
#include "bp_core.h"

DUCKDB_EXTENSION_EXTERN

/* Registration, one per concept (false when DuckDB refused a function it must have). */
bool		bpd_register_hamming(duckdb_connection con);
bool		bpd_register_binarize(duckdb_connection con);
bool		bpd_register_codes(duckdb_connection con);
bool		bpd_register_simd(duckdb_connection con);

/* The two layouts of a code (codes.c). A DuckDB BIT value of len >= 1 bytes: a first byte
 * counting padding bits, which come first in the next byte (set to 1), then the bits. A code
 * in PostgreSQL's layout (bitpress's BLOBs): MSB first, zero padding at the end. */
long long	bpd_bit_length(const uint8_t *bit, uint32_t len);
void		bpd_bit_to_code(const uint8_t *bit, uint32_t len, uint8_t *code);	/* len - 1 bytes */
uint32_t	bpd_code_to_bit(const uint8_t *code, size_t bits, uint8_t *bit);	/* returns its length */

/* The core's message for a status as the DuckDB error of the running function. */
void		bpd_error(duckdb_function_info info, bp_status status, long long a, long long b);

/* The bytes and length of a VARCHAR / BLOB / BIT value (DuckDB's string_t, 12 bytes inlined). */
static inline const uint8_t *
bpd_bytes(const duckdb_string_t *s, uint32_t *len)
{
	*len = s->value.inlined.length;
	if (*len <= 12)
		return (const uint8_t *) s->value.inlined.inlined;
	return (const uint8_t *) s->value.pointer.ptr;
}

/* Whether row of a vector is valid (validity NULL: every row is). */
static inline bool
bpd_valid(const uint64_t *validity, idx_t row)
{
	return validity == NULL || (validity[row / 64] >> (row % 64)) & 1;
}

/* Marks row NULL in a result vector. */
void		bpd_set_null(duckdb_vector out, idx_t row);

/* Adds name(args...) -> ret, computed by fn, to set; takes (and destroys) the logical types. */
bool		bpd_add_overload(duckdb_scalar_function_set set, const char *name, duckdb_scalar_function_t fn,
							 duckdb_logical_type *args, idx_t nargs, duckdb_logical_type ret);

#endif
