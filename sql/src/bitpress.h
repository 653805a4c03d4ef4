/* Shared between the PostgreSQL entry points of bitpress (bitpress.c, codebooks.c). */
#ifndef BITPRESS_H
#define BITPRESS_H

#include "postgres.h"
#include "fmgr.h"
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

/* ereport(ERROR) with the core's message and SQLSTATE for a status */
extern void report(bp_status st, long long a, long long b) pg_attribute_noreturn();

/* errors unless 1 <= dim <= BP_MAX_DIM */
extern void check_dim(int dim);

/* the floats of a one-dimensional real[] without NULLs */
extern float4 *float4_array(ArrayType *a, int *dim, const char *what);

#endif
