/*
 * PostgreSQL entry points of bitpress. Argument unpacking, checks and error reports live
 * here; the computation is the shared C core in ../pyext (bp_core.h), the same code the
 * CPython module runs, so both engines produce the same bytes.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/guc.h"
#include "utils/varbit.h"

#include "bp_core.h"
#include "bitpress.h"
#include "ivf.h"

PG_MODULE_MAGIC;

static char *simd_setting = NULL;

void		_PG_init(void);

/* ---- errors: messages and SQLSTATEs come from the core (bp_error.c) ---- */

void
report_in(const char *prefix, bp_status st, long long a, long long b)
{
	char		msg[256];
	const char *s = bp_error_sqlstate(st);

	bp_error_message(msg, sizeof(msg), st, a, b);
	ereport(ERROR,
			(errcode(MAKE_SQLSTATE(s[0], s[1], s[2], s[3], s[4])),
			 prefix ? errmsg("%s: %s", prefix, msg) : errmsg("%s", msg)));
	pg_unreachable();
}

void
report(bp_status st, long long a, long long b)
{
	report_in(NULL, st, a, b);
}

Datum
stored_value(HeapTuple tup, TupleDesc desc, int col, const char *table, const char *key)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("%s (%s): column \"%s\" is NULL", table, key, SPI_fname(desc, col)),
				 errhint("The column is declared NOT NULL by bitpress's migrations; rewrite the row "
						 "with bitpress, not by hand.")));
	return d;
}

bool
bitpress_has_column(const char *table, const char *column)
{
	Oid			nsp = get_namespace_oid("bitpress", true);
	Oid			rel = OidIsValid(nsp) ? get_relname_relid(table, nsp) : InvalidOid;

	return OidIsValid(rel) && get_attnum(rel, column) != InvalidAttrNumber;
}

void
check_params_sum(HeapTuple tup, TupleDesc desc, int col, const char *table, const char *key)
{
	bool		isnull;

	(void) stored_value(tup, desc, col, table, key);
	if (!DatumGetBool(SPI_getbinval(tup, desc, col + 1, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("%s: its parameters do not match their stored checksum", key),
				 errhint("Store it again with bitpress (the checksum is the SHA-256 of params).")));
}

void
check_dim(int dim)
{
	if (dim < 1)
		report(BP_ERR_EMPTY, 0, 0);
	if (dim > BP_MAX_DIM)
		report(BP_ERR_TOO_LARGE, dim, 0);
}

/* The floats of a one-dimensional real[] without NULLs. */
float4 *
float4_array(ArrayType *a, int *dim, const char *what)
{
	if (ARR_ELEMTYPE(a) != FLOAT4OID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("%s must be an array of real", what)));
	if (ARR_NDIM(a) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s must be a one-dimensional array, not %d-dimensional", what, ARR_NDIM(a))));
	if (array_contains_nulls(a))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not contain nulls", what)));
	*dim = ARR_NDIM(a) == 0 ? 0 : ARR_DIMS(a)[0];
	return (float4 *) ARR_DATA_PTR(a);
}

static void
malformed_datum(const char *type)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
			 errmsg("malformed %s value: its size does not match its header", type)));
}

float4 *
halfvec_floats(Datum d, int *dim)
{
	struct varlena *v = PG_DETOAST_DATUM(d);
	const char *p = VARDATA_ANY(v);
	size_t		len = VARSIZE_ANY_EXHDR(v);
	int16		n;
	float4	   *x;

	if (len < 4)
		malformed_datum("halfvec");
	memcpy(&n, p, sizeof(n));
	if (n < 0 || len != 4 + 2 * (size_t) n)
		malformed_datum("halfvec");
	check_dim(n);
	x = palloc(sizeof(float4) * n);
	if (((uintptr_t) (p + 4) & 1) == 0)
		bp_half_to_float((const uint16_t *) (p + 4), (size_t) n, x);
	else
	{
		uint16	   *h = palloc(2 * (size_t) n);

		memcpy(h, p + 4, 2 * (size_t) n);
		bp_half_to_float(h, (size_t) n, x);
		pfree(h);
	}
	*dim = n;
	return x;
}

float4 *
sparsevec_floats(Datum d, int *dim)
{
	struct varlena *v = PG_DETOAST_DATUM(d);
	const char *p = VARDATA_ANY(v);
	size_t		len = VARSIZE_ANY_EXHDR(v);
	int32		hdr[3];
	float4	   *x;
	int32		prev = -1;

	if (len < sizeof(hdr))
		malformed_datum("sparsevec");
	memcpy(hdr, p, sizeof(hdr));
	if (hdr[0] < 0 || hdr[1] < 0 || hdr[1] > hdr[0] || len != sizeof(hdr) + 8 * (size_t) hdr[1])
		malformed_datum("sparsevec");
	check_dim(hdr[0]);
	x = palloc0(sizeof(float4) * hdr[0]);
	for (int32 i = 0; i < hdr[1]; i++)
	{
		int32		idx;
		float4		val;

		memcpy(&idx, p + sizeof(hdr) + 4 * (size_t) i, sizeof(idx));
		memcpy(&val, p + sizeof(hdr) + 4 * (size_t) hdr[1] + 4 * (size_t) i, sizeof(val));
		if (idx <= prev || idx >= hdr[0])
			malformed_datum("sparsevec");
		x[idx] = val;
		prev = idx;
	}
	*dim = hdr[0];
	return x;
}

static VarBit *
binarize_common(const float4 *x, int dim, const float4 *t, int tdim)
{
	VarBit	   *result;
	int			len;
	size_t		bad = 0;
	bp_status	st;

	check_dim(dim);
	if (t != NULL && tdim != dim)
		report(BP_ERR_DIM_MISMATCH, dim, tdim);

	len = VARBITTOTALLEN(dim);
	result = (VarBit *) palloc0(len);
	SET_VARSIZE(result, len);
	VARBITLEN(result) = dim;

	st = bp_binarize(x, t, (size_t) dim, VARBITS(result), &bad);
	if (st != BP_OK)
		report(st, (long long) bad, 0);
	return result;
}

PG_FUNCTION_INFO_V1(binarize_vector);
Datum
binarize_vector(PG_FUNCTION_ARGS)
{
	PgVector   *v = DatumGetPgVector(PG_GETARG_DATUM(0));

	PG_RETURN_VARBIT_P(binarize_common(v->x, v->dim, NULL, 0));
}

PG_FUNCTION_INFO_V1(binarize_vector_thresholds);
Datum
binarize_vector_thresholds(PG_FUNCTION_ARGS)
{
	PgVector   *v = DatumGetPgVector(PG_GETARG_DATUM(0));
	int			tdim;
	float4	   *t = float4_array(PG_GETARG_ARRAYTYPE_P(1), &tdim, "thresholds");

	PG_RETURN_VARBIT_P(binarize_common(v->x, v->dim, t, tdim));
}

/* binarize(halfvec | sparsevec [, thresholds]): one entry point per type, thresholds if given */
static VarBit *
binarize_dense(FunctionCallInfo fcinfo, const float4 *x, int dim)
{
	int			tdim = 0;
	float4	   *t = PG_NARGS() > 1 ? float4_array(PG_GETARG_ARRAYTYPE_P(1), &tdim, "thresholds") : NULL;

	return binarize_common(x, dim, t, tdim);
}

PG_FUNCTION_INFO_V1(binarize_halfvec);
Datum
binarize_halfvec(PG_FUNCTION_ARGS)
{
	int			dim;
	float4	   *x = halfvec_floats(PG_GETARG_DATUM(0), &dim);

	PG_RETURN_VARBIT_P(binarize_dense(fcinfo, x, dim));
}

PG_FUNCTION_INFO_V1(binarize_sparsevec);
Datum
binarize_sparsevec(PG_FUNCTION_ARGS)
{
	int			dim;
	float4	   *x = sparsevec_floats(PG_GETARG_DATUM(0), &dim);

	PG_RETURN_VARBIT_P(binarize_dense(fcinfo, x, dim));
}

PG_FUNCTION_INFO_V1(binarize_float4);
Datum
binarize_float4(PG_FUNCTION_ARGS)
{
	int			dim;
	float4	   *x = float4_array(PG_GETARG_ARRAYTYPE_P(0), &dim, "vector");

	PG_RETURN_VARBIT_P(binarize_common(x, dim, NULL, 0));
}

PG_FUNCTION_INFO_V1(binarize_float4_thresholds);
Datum
binarize_float4_thresholds(PG_FUNCTION_ARGS)
{
	int			dim,
				tdim;
	float4	   *x = float4_array(PG_GETARG_ARRAYTYPE_P(0), &dim, "vector");
	float4	   *t = float4_array(PG_GETARG_ARRAYTYPE_P(1), &tdim, "thresholds");

	PG_RETURN_VARBIT_P(binarize_common(x, dim, t, tdim));
}

PG_FUNCTION_INFO_V1(hamming_varbit);
Datum
hamming_varbit(PG_FUNCTION_ARGS)
{
	VarBit	   *a = PG_GETARG_VARBIT_P(0);
	VarBit	   *b = PG_GETARG_VARBIT_P(1);

	if (VARBITLEN(a) != VARBITLEN(b))
		report(BP_ERR_BIT_LENGTH_MISMATCH, VARBITLEN(a), VARBITLEN(b));

	/* PostgreSQL keeps the padding bits of the last byte zero, so whole bytes can be counted */
	PG_RETURN_INT32((int32) bp_hamming(VARBITS(a), VARBITS(b), VARBITBYTES(a)));
}

PG_FUNCTION_INFO_V1(code_bytes);
Datum
code_bytes(PG_FUNCTION_ARGS)
{
	VarBit	   *a = PG_GETARG_VARBIT_P(0);
	int			n = VARBITBYTES(a);
	bytea	   *result = (bytea *) palloc(VARHDRSZ + n);

	SET_VARSIZE(result, VARHDRSZ + n);
	memcpy(VARDATA(result), VARBITS(a), n);
	PG_RETURN_BYTEA_P(result);
}

PG_FUNCTION_INFO_V1(code_from_bytes);
Datum
code_from_bytes(PG_FUNCTION_ARGS)
{
	bytea	   *data = PG_GETARG_BYTEA_PP(0);
	int32		nbits = PG_GETARG_INT32(1);
	int			n = VARSIZE_ANY_EXHDR(data);
	const uint8 *src = (const uint8 *) VARDATA_ANY(data);
	VarBit	   *result;
	int			len;
	bp_status	st;

	st = bp_check_code_bytes(src, (size_t) n, nbits);
	if (st != BP_OK)
		report(st, st == BP_ERR_CODE_BYTES ? n : nbits, nbits);

	len = VARBITTOTALLEN(nbits);
	result = (VarBit *) palloc0(len);
	SET_VARSIZE(result, len);
	VARBITLEN(result) = nbits;
	memcpy(VARBITS(result), src, n);
	PG_RETURN_VARBIT_P(result);
}

PG_FUNCTION_INFO_V1(bitpress_simd);
Datum
bitpress_simd(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(bp_impl_name(bp_get_impl())));
}

PG_FUNCTION_INFO_V1(bitpress_simd_supported);
Datum
bitpress_simd_supported(PG_FUNCTION_ARGS)
{
	Datum		names[BP_IMPL_COUNT];
	int			n = 0;

	for (int i = 0; i < BP_IMPL_COUNT; i++)
		if (bp_impl_supported((bp_impl) i))
			names[n++] = CStringGetTextDatum(bp_impl_name((bp_impl) i));
	PG_RETURN_ARRAYTYPE_P(construct_array(names, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/* ---- bitpress.simd: which kernel path this backend uses ---- */

static bool
simd_check(char **newval, void **extra, GucSource source)
{
	int			impl = bp_impl_from_name(*newval);

	if (impl == -2)
	{
		GUC_check_errdetail("Valid values are auto, scalar, popcnt, avx2 and avx512.");
		return false;
	}
	if (impl != BP_IMPL_AUTO && !bp_impl_supported((bp_impl) impl))
	{
		GUC_check_errdetail("This CPU or build does not support the %s path.", *newval);
		return false;
	}
	return true;
}

static void
simd_assign(const char *newval, void *extra)
{
	(void) bp_set_impl((bp_impl) bp_impl_from_name(newval));
}

void
_PG_init(void)
{
	bp_init();
	DefineCustomStringVariable("bitpress.simd",
							   "Kernel path for Hamming distances: auto, scalar, popcnt, avx2 or avx512.",
							   "auto picks the fastest path this CPU supports, once, at load time.",
							   &simd_setting,
							   "auto",
							   PGC_USERSET,
							   0,
							   simd_check,
							   simd_assign,
							   NULL);
	ivf_init();
	MarkGUCPrefixReserved("bitpress");
}
