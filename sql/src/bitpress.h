/* Shared between the PostgreSQL entry points of bitpress (bitpress.c, codebooks.c). */
#ifndef BITPRESS_H
#define BITPRESS_H

#include "postgres.h"
#include "fmgr.h"
#include "access/htup.h"
#include "access/tupdesc.h"
#include "utils/array.h"

#include "bp_core.h"

/* pgvector's on-disk layout of `vector` (pgvector/src/vector.h), stable since 0.1 */
typedef struct PgVector
{
	int32		vl_len_;
	int16		dim;
	int16		unused;
	float4		x[FLEXIBLE_ARRAY_MEMBER];
} PgVector;

#define DatumGetPgVector(d) ((PgVector *) PG_DETOAST_DATUM(d))

/*
 * The floats of pgvector's halfvec (0.7+: int16 dim, int16 unused, binary16 x[dim]) and
 * sparsevec (int32 dim, int32 nnz, int32 unused, int32 indices[nnz], float4 values[nnz]), as a
 * palloc'd dense array of *dim floats; the layout is checked against the datum's size.
 */
extern float4 *halfvec_floats(Datum d, int *dim);
extern float4 *sparsevec_floats(Datum d, int *dim);

/* ereport(ERROR) with the core's message and SQLSTATE for a status */
extern void report(bp_status st, long long a, long long b) pg_attribute_noreturn();

/* the same, the message after "prefix: " (the layer or tensor it concerns) */
extern void report_in(const char *prefix, bp_status st, long long a, long long b) pg_attribute_noreturn();

/*
 * Column col of row tup of an SPI result read from bitpress's own table: a NULL there is
 * corrupt data (XX001) naming the table, the row (key, e.g. 'layer "x"') and the column.
 */
extern Datum stored_value(HeapTuple tup, TupleDesc desc, int col, const char *table,
						  const char *key);

/*
 * Whether code store `store` (following table relid's id_column and code_column) may serve the
 * current role; with raise, the reason as an error instead of false (store_access.c).
 */
extern bool store_readable(const char *store, Oid relid, const char *id_column,
						   const char *code_column, bool raise);

/* whether bitpress.<table> has column (added by a later schema revision) */
extern bool bitpress_has_column(const char *table, const char *column);

/*
 * Columns col (the stored checksum) and col + 1 (whether SHA-256 of params equals it) of an SPI
 * row of bitpress.<table>: XX001 when the checksum is NULL, 22P03 naming key when it differs.
 */
extern void check_params_sum(HeapTuple tup, TupleDesc desc, int col, const char *table,
							 const char *key);

/* errors unless 1 <= dim <= BP_MAX_DIM */
extern void check_dim(int dim);

/* the floats of a one-dimensional real[] without NULLs */
extern float4 *float4_array(ArrayType *a, int *dim, const char *what);

#endif
