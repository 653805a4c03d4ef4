/*
 * bitpress core: the one C implementation shared by the PostgreSQL extension (sql/) and the
 * CPython module (bitpress._core). Plain C99: no postgres.h, no Python.h, no allocation.
 * Callers own every buffer; functions report problems through bp_status, never by aborting.
 */
#ifndef BP_CORE_H
#define BP_CORE_H

#include <stddef.h>
#include <stdint.h>

#define BP_VERSION "0.1.0"

/* Largest vector binarize() accepts. pgvector's vector stops at 16000 dimensions. */
#define BP_MAX_DIM 65536

typedef enum bp_status
{
	BP_OK = 0,
	BP_ERR_EMPTY,				/* a vector with no elements */
	BP_ERR_TOO_LARGE,			/* more than BP_MAX_DIM elements */
	BP_ERR_NONFINITE_VALUE,		/* NaN or +-Inf in a vector: a = element index */
	BP_ERR_NONFINITE_THRESHOLD, /* NaN or +-Inf in thresholds: a = element index */
	BP_ERR_DIM_MISMATCH,		/* a = vector dims, b = threshold dims */
	BP_ERR_BIT_LENGTH_MISMATCH, /* a, b = the two bit lengths */
	BP_ERR_UNKNOWN_IMPL			/* no such (or no supported) kernel path */
} bp_status;

/* "lowercase, no period" message for a status, with its numbers filled in; returns buf. */
const char *bp_error_message(char *buf, size_t bufsize, bp_status status, long long a, long long b);

/* SQLSTATE for a status ("22000", "54000", ...): the same in PostgreSQL and in Python. */
const char *bp_error_sqlstate(bp_status status);

/* ---- binarize: bit i = 1 when x[i] > t[i] (t = NULL means 0), packed MSB-first ---- */

static inline size_t
bp_code_bytes(size_t bits)
{
	return (bits + 7) / 8;
}

/* One vector. out must hold bp_code_bytes(dim) bytes; padding bits are written as 0.
 * thresholds may be NULL. On error, *bad_index (if not NULL) names the element. */
bp_status	bp_binarize(const float *x, const float *thresholds, size_t dim, uint8_t *out,
						size_t *bad_index);

/* n vectors of dim floats, rows row_stride floats apart; codes written out_stride bytes apart.
 * thresholds: NULL (all 0), one row shared by all vectors (thr_stride 0), or one row per
 * vector thr_stride floats apart. On error, *bad_row / *bad_index name the element. */
bp_status	bp_binarize_batch(const float *x, size_t n, size_t dim, size_t row_stride,
							  const float *thresholds, size_t thr_stride,
							  uint8_t *out, size_t out_stride,
							  size_t *bad_row, size_t *bad_index);

/* Checks a threshold vector once (finite values only). */
bp_status	bp_check_thresholds(const float *thresholds, size_t dim, size_t *bad_index);

/* ---- hamming: number of differing bits over nbytes bytes (padding bits must be 0) ---- */

typedef enum bp_impl
{
	BP_IMPL_AUTO = -1,
	BP_IMPL_SCALAR = 0,			/* portable C99, SWAR popcount */
	BP_IMPL_POPCNT = 1,			/* x86-64 POPCNT instruction, 64-bit words */
	BP_IMPL_AVX2 = 2,			/* AVX2 nibble-table popcount (Mula et al.) */
	BP_IMPL_AVX512 = 3,			/* AVX-512 VPOPCNTDQ */
	BP_IMPL_COUNT = 4
} bp_impl;

/* Detects the CPU and picks the fastest supported path. Idempotent; call at load time. */
void		bp_init(void);

/* Name of a path ("scalar", "popcnt", "avx2", "avx512"), or NULL. */
const char *bp_impl_name(bp_impl impl);

/* BP_IMPL_* for a name ("auto" gives BP_IMPL_AUTO); -2 for an unknown name. */
int			bp_impl_from_name(const char *name);

/* Whether the path was compiled in and this CPU can run it. */
int			bp_impl_supported(bp_impl impl);

/* Forces a path (BP_IMPL_AUTO = best supported). BP_ERR_UNKNOWN_IMPL if not supported. */
bp_status	bp_set_impl(bp_impl impl);

/* The path in use now. */
bp_impl		bp_get_impl(void);

/* Distance between two codes of nbytes bytes. */
uint64_t	bp_hamming(const uint8_t *a, const uint8_t *b, size_t nbytes);

/* Distance from q to each of n codes stored stride bytes apart: out[i] = hamming(q, codes[i]). */
void		bp_hamming_one_to_many(const uint8_t *q, const uint8_t *codes, size_t n, size_t nbytes,
								   size_t stride, uint64_t *out);

/* Row-wise distances of two arrays of n codes each: out[i] = hamming(a[i], b[i]). */
void		bp_hamming_pairs(const uint8_t *a, const uint8_t *b, size_t n, size_t nbytes,
							 size_t stride_a, size_t stride_b, uint64_t *out);

/* One path directly, whatever is selected (for tests and benchmarks). */
uint64_t	bp_hamming_with(bp_impl impl, const uint8_t *a, const uint8_t *b, size_t nbytes);

#endif							/* BP_CORE_H */
