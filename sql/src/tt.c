/*
 * Tensor-Train weights stored in bitpress.tt_tensors / bitpress.tt_cores: rebuild a tensor, a
 * row or an element, and apply a stored matrix to vectors (tt_matvec), all in the C core.
 *
 * Each backend keeps the cores of the tensors it has used, checked against the tables once per
 * statement (one query of the xmin of the tensor row and of its core rows), like codebooks.c.
 * Cores are verified when loaded: numbered 0..d-1, SHA-256 equal to the stored checksum, ranks
 * chained, element counts right, finite values, and a shape equal to the tensor's.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "bitpress.h"

#define TENSOR_TABLE "bitpress.tt_tensors"
#define CORE_TABLE "bitpress.tt_cores"

typedef struct CachedTensor
{
	struct CachedTensor *next;
	char	   *model;
	char	   *tensor;
	char	   *stamp;			/* xmins of the tensor row and its cores: changes on rewrite */
	TimestampTz checked_at;		/* statement start when last checked against the tables */
	int			ndim;			/* original shape */
	int			shape[MAXDIM];
	void	   *data;			/* all cores, each at a 16-byte boundary */
	bp_tt		tt;				/* points into data */
	float	   *dense;			/* the rebuilt tensor, kept when matvec prefers it, or NULL */
} CachedTensor;

static CachedTensor *cache = NULL;

static void
unknown_tensor(const char *model, const char *tensor)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("tensor \"%s\" of model \"%s\" does not exist", tensor, model),
			 errhint("SELECT model, tensor FROM " TENSOR_TABLE " lists the stored tensors; "
					 "\"bitpress tt compress\" stores a model.")));
}

static void
malformed_core(const char *model, const char *tensor, int problem, int core)
{
	char		msg[256];

	bp_error_message(msg, sizeof(msg), BP_ERR_MALFORMED_TT, problem, core);
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
			 errmsg("tensor \"%s\" of model \"%s\": %s", tensor, model, msg)));
}

static void
check_table(void)
{
	bool		isnull;

	if (SPI_execute("SELECT to_regclass('" CORE_TABLE "') IS NOT NULL", true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1 ||
		!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table " CORE_TABLE " does not exist"),
				 errhint("Create it with \"bitpress migrate\" (Alembic), then store a model.")));
}

/* "xmin;idx:xmin,idx:xmin,..." of the tensor row and its cores, or NULL if no such tensor */
static char *
read_stamp(const char *model, const char *tensor, MemoryContext cxt)
{
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		values[2] = {CStringGetTextDatum(model), CStringGetTextDatum(tensor)};
	char	   *stamp = NULL;

	check_table();
	if (SPI_execute_with_args(
							  "SELECT t.xmin::text || ';' || coalesce((SELECT string_agg(c.idx || ':' || "
							  "c.xmin::text, ',' ORDER BY c.idx) FROM " CORE_TABLE " c "
							  "WHERE c.model = t.model AND c.tensor = t.tensor), '') FROM "
							  TENSOR_TABLE " t WHERE t.model = $1 AND t.tensor = $2",
							  2, argtypes, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "looking up tensor \"%s\" failed", tensor);
	if (SPI_processed == 1)
	{
		char	   *s = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		stamp = MemoryContextStrdup(cxt, s);
	}
	return stamp;
}

static int
int4_array(Datum d, int *out, int max, const char *model, const char *tensor, const char *what)
{
	ArrayType  *a = DatumGetArrayTypeP(d);
	Datum	   *elems;
	bool	   *nulls;
	int			n,
				i;

	deconstruct_array(a, INT4OID, 4, true, TYPALIGN_INT, &elems, &nulls, &n);
	if (n > max)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("tensor \"%s\" of model \"%s\": %s has %d entries, at most %d allowed",
						tensor, model, what, n, max)));
	for (i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					 errmsg("tensor \"%s\" of model \"%s\": NULL in %s", tensor, model, what)));
		out[i] = DatumGetInt32(elems[i]);
	}
	return n;
}

/* Fetches and checks the cores of a tensor into e (fields set only when all is well). */
static void
load_tensor(CachedTensor *e, const char *model, const char *tensor)
{
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		values[2] = {CStringGetTextDatum(model), CStringGetTextDatum(tensor)};
	int64		shapes[4 * BP_TT_MAX_CORES];
	const float *ptrs[BP_TT_MAX_CORES];
	size_t		lens[BP_TT_MAX_CORES];
	size_t		offsets[BP_TT_MAX_CORES];
	size_t		total = 0;
	int			shape[MAXDIM];
	int			ndim,
				d,
				k,
				problem = 0,
				bad_core = 0;
	bool		isnull;
	char	   *key;
	char	   *data;
	uint64		rows,
				cols;
	bp_status	st;
	bp_tt		tt;

	if (SPI_execute_with_args("SELECT shape FROM " TENSOR_TABLE " WHERE model = $1 AND tensor = $2",
							  2, argtypes, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading tensor \"%s\" failed", tensor);
	if (SPI_processed != 1)
		unknown_tensor(model, tensor);
	key = psprintf("tensor \"%s\" of model \"%s\"", tensor, model);
	ndim = int4_array(stored_value(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, TENSOR_TABLE, key),
					  shape, MAXDIM, model, tensor, "its shape");
	for (k = 0; k < ndim; k++)
		if (shape[k] < 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					 errmsg("tensor \"%s\" of model \"%s\": its shape has %d in dimension %d, "
							"every dimension must be at least 1", tensor, model, shape[k], k + 1)));

	if (SPI_execute_with_args(
							  "SELECT idx, shape, data, encode(sha256(data), 'hex') = checksum, checksum FROM "
							  CORE_TABLE " WHERE model = $1 AND tensor = $2 ORDER BY idx",
							  2, argtypes, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading the cores of tensor \"%s\" failed", tensor);
	d = (int) SPI_processed;
	if (d == 0)
		malformed_core(model, tensor, BP_TT_NO_CORES, 0);
	if (d > BP_TT_MAX_CORES)
		malformed_core(model, tensor, BP_TT_TOO_MANY_CORES, BP_TT_MAX_CORES);
	for (k = 0; k < d; k++)
	{
		HeapTuple	tup = SPI_tuptable->vals[k];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *ckey = psprintf("%s, core %d", key, k);
		int			s[4];
		bytea	   *b;

		if (DatumGetInt32(stored_value(tup, desc, 1, CORE_TABLE, ckey)) != k)
			malformed_core(model, tensor, BP_TT_MISSING, k);
		if (int4_array(stored_value(tup, desc, 2, CORE_TABLE, ckey), s, 4, model, tensor,
					   "a core's shape") != 4)
			malformed_core(model, tensor, BP_TT_SHAPE, k);
		b = DatumGetByteaPP(stored_value(tup, desc, 3, CORE_TABLE, ckey));
		/* NULL when the checksum column is: the data cannot be verified */
		(void) SPI_getbinval(tup, desc, 4, &isnull);
		if (isnull)
			stored_value(tup, desc, 5, CORE_TABLE, ckey);
		if (!DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull)))
			malformed_core(model, tensor, BP_TT_CHECKSUM, k);
		shapes[4 * k] = s[0];
		shapes[4 * k + 1] = s[1];
		shapes[4 * k + 2] = s[2];
		shapes[4 * k + 3] = s[3];
		lens[k] = VARSIZE_ANY_EXHDR(b) % sizeof(float) ? (size_t) -1 :
			VARSIZE_ANY_EXHDR(b) / sizeof(float);
		offsets[k] = total;
		total += TYPEALIGN(16, VARSIZE_ANY_EXHDR(b));
	}

	data = MemoryContextAllocHuge(TopMemoryContext, total > 0 ? total : 1);
	PG_TRY();
	{
		for (k = 0; k < d; k++)
		{
			bytea	   *b = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[k],
														  SPI_tuptable->tupdesc, 3, &isnull));

			memcpy(data + offsets[k], VARDATA_ANY(b), VARSIZE_ANY_EXHDR(b));
			ptrs[k] = (const float *) (data + offsets[k]);
		}
		st = bp_tt_init(&tt, d, shapes, ptrs, lens, 1, &problem, &bad_core);
		if (st != BP_OK)
			malformed_core(model, tensor, problem, bad_core);
		/* the tensor's 2-D view: (shape[0], rest), a 1-D tensor as (1, n) */
		rows = ndim >= 2 ? (uint64) shape[0] : 1;
		cols = 1;
		for (k = ndim >= 2 ? 1 : 0; k < ndim && cols <= tt.cols; k++)
			cols *= (uint64) shape[k];	/* stops once past tt.cols: no wrap-around */
		if (tt.rows != rows || tt.cols != cols)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
					 errmsg("tensor \"%s\" of model \"%s\": its cores make a %llu x %llu matrix "
							"but its shape needs %llu x %llu", tensor, model,
							(unsigned long long) tt.rows, (unsigned long long) tt.cols,
							(unsigned long long) rows, (unsigned long long) cols)));
	}
	PG_CATCH();
	{
		pfree(data);
		PG_RE_THROW();
	}
	PG_END_TRY();

	if (e->data)
		pfree(e->data);
	if (e->dense)
		pfree(e->dense);
	e->dense = NULL;
	e->data = data;
	e->tt = tt;
	e->ndim = ndim;
	memcpy(e->shape, shape, sizeof(int) * ndim);
}

/* The cache entry of a tensor, checked once per statement. */
static CachedTensor *
get_tensor(const char *model, const char *tensor)
{
	TimestampTz now = GetCurrentStatementStartTimestamp();
	CachedTensor *e;
	char	   *stamp;

	for (e = cache; e != NULL; e = e->next)
		if (strcmp(e->tensor, tensor) == 0 && strcmp(e->model, model) == 0)
			break;
	if (e != NULL && e->checked_at == now && e->data != NULL)
		return e;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	stamp = read_stamp(model, tensor, CurrentMemoryContext);
	if (stamp == NULL)
		unknown_tensor(model, tensor);
	if (e == NULL)
	{
		e = MemoryContextAllocZero(TopMemoryContext, sizeof(CachedTensor));
		e->model = MemoryContextStrdup(TopMemoryContext, model);
		e->tensor = MemoryContextStrdup(TopMemoryContext, tensor);
		e->next = cache;
		cache = e;
	}
	if (e->data == NULL || e->stamp == NULL || strcmp(e->stamp, stamp) != 0)
	{
		if (e->stamp)
			pfree(e->stamp);
		e->stamp = NULL;
		e->checked_at = 0;
		load_tensor(e, model, tensor);
		e->stamp = MemoryContextStrdup(TopMemoryContext, stamp);
	}
	SPI_finish();
	e->checked_at = now;
	return e;
}

static CachedTensor *
tensor_args(FunctionCallInfo fcinfo)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *tensor = text_to_cstring(PG_GETARG_TEXT_PP(1));

	return get_tensor(model, tensor);
}

static ArrayType *
float4_result(const float *x, int ndim, const int *dims)
{
	int			lbs[MAXDIM];
	size_t		n = 1;
	int			k;
	ArrayType  *a;
	Size		bytes;

	for (k = 0; k < ndim; k++)
	{
		lbs[k] = 1;
		n *= (size_t) dims[k];
	}
	bytes = ARR_OVERHEAD_NONULLS(ndim) + n * sizeof(float4);
	if (!AllocSizeIsValid(bytes))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("tensor of %zu elements is too large for one array value", n)));
	a = (ArrayType *) palloc0(bytes);
	SET_VARSIZE(a, bytes);
	a->ndim = ndim;
	a->dataoffset = 0;
	a->elemtype = FLOAT4OID;
	memcpy(ARR_DIMS(a), dims, ndim * sizeof(int));
	memcpy(ARR_LBOUND(a), lbs, ndim * sizeof(int));
	if (x)
		memcpy(ARR_DATA_PTR(a), x, n * sizeof(float4));
	return a;
}

/* 1-based SQL index into a dimension of n, checked; returns it 0-based */
static uint64
index_arg(FunctionCallInfo fcinfo, int argno, uint64 n)
{
	int64		i = PG_GETARG_INT32(argno);

	if (i < 1 || (uint64) i > n)
		report(BP_ERR_TT_INDEX, i, (long long) n);
	return (uint64) (i - 1);
}

PG_FUNCTION_INFO_V1(tt_reconstruct);
Datum
tt_reconstruct(PG_FUNCTION_ARGS)
{
	CachedTensor *e = tensor_args(fcinfo);
	ArrayType  *a;
	float	   *work;
	int			dims[MAXDIM];
	int			ndim = e->ndim;
	size_t		bad = 0;
	bp_status	st;

	if (ndim == 0)
	{
		ndim = 1;
		dims[0] = 1;
	}
	else
		memcpy(dims, e->shape, sizeof(int) * ndim);
	a = float4_result(NULL, ndim, dims);
	work = palloc(bp_tt_row_work(&e->tt) * sizeof(float));
	st = bp_tt_reconstruct(&e->tt, (float *) ARR_DATA_PTR(a), work, &bad);
	if (st != BP_OK)
		report(st, (long long) bad, 0);
	pfree(work);
	PG_RETURN_ARRAYTYPE_P(a);
}

PG_FUNCTION_INFO_V1(tt_reconstruct_row);
Datum
tt_reconstruct_row(PG_FUNCTION_ARGS)
{
	CachedTensor *e = tensor_args(fcinfo);
	uint64		i = index_arg(fcinfo, 2, e->tt.rows);
	int			dims[MAXDIM];
	int			ndim;
	ArrayType  *a;
	float	   *work;

	/* a row keeps the shape of the rest: shape[1..], or the whole 1-D tensor */
	if (e->ndim >= 2)
	{
		ndim = e->ndim - 1;
		memcpy(dims, e->shape + 1, sizeof(int) * ndim);
	}
	else
	{
		ndim = 1;
		dims[0] = (int) e->tt.cols;
	}
	a = float4_result(NULL, ndim, dims);
	work = palloc(bp_tt_row_work(&e->tt) * sizeof(float));
	if (bp_tt_row(&e->tt, i, (float *) ARR_DATA_PTR(a), work) != BP_OK)
		report(BP_ERR_OVERFLOW, -1, 0);
	pfree(work);
	PG_RETURN_ARRAYTYPE_P(a);
}

PG_FUNCTION_INFO_V1(tt_element);
Datum
tt_element(PG_FUNCTION_ARGS)
{
	CachedTensor *e = tensor_args(fcinfo);
	uint64		i = index_arg(fcinfo, 2, e->tt.rows);
	uint64		j = index_arg(fcinfo, 3, e->tt.cols);
	float	   *work = palloc(bp_tt_element_work(&e->tt) * sizeof(float));
	float		value;

	if (bp_tt_element(&e->tt, i, j, &value, work) != BP_OK)
		report(BP_ERR_OVERFLOW, 0, 0);
	pfree(work);
	PG_RETURN_FLOAT4(value);
}

/* y = x @ W into y (cols floats), through the cores or the rebuilt tensor (bp_tt_prefers_dense) */
static void
matvec(CachedTensor *e, const float *x, int dim, float *y)
{
	size_t		bad_row = 0,
				bad_index = 0;
	bp_status	st;

	check_dim(dim);
	if ((uint64) dim != e->tt.rows)
		report(BP_ERR_TT_INPUT_DIM, dim, (long long) e->tt.rows);
	if (bp_tt_prefers_dense(&e->tt))
	{
		if (e->dense == NULL)
		{
			float	   *work = palloc(bp_tt_row_work(&e->tt) * sizeof(float));
			float	   *dense = MemoryContextAllocHuge(TopMemoryContext,
													   e->tt.rows * e->tt.cols * sizeof(float));

			size_t		bad = 0;

			if (bp_tt_reconstruct(&e->tt, dense, work, &bad) != BP_OK)
			{
				pfree(dense);
				report(BP_ERR_OVERFLOW, (long long) bad, 0);
			}
			pfree(work);
			e->dense = dense;
		}
		st = bp_dense_matvec(e->dense, e->tt.rows, e->tt.cols, x, 1, dim, y, e->tt.cols,
							 &bad_row, &bad_index);
	}
	else
	{
		float	   *work = palloc(bp_tt_matvec_work(&e->tt) * sizeof(float));

		st = bp_tt_matvec(&e->tt, x, 1, dim, y, e->tt.cols, work, &bad_row, &bad_index);
		pfree(work);
	}
	if (st != BP_OK)
		report(st, (long long) bad_index, 0);
}

PG_FUNCTION_INFO_V1(tt_matvec_vector);
Datum
tt_matvec_vector(PG_FUNCTION_ARGS)
{
	CachedTensor *e = tensor_args(fcinfo);
	PgVector   *x = DatumGetPgVector(PG_GETARG_DATUM(2));
	PgVector   *y;
	int			size;

	if (e->tt.cols > 16000)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("tensor \"%s\" has %llu columns, more than a vector holds (16000); "
						"use tt_matvec with real[]", e->tensor, (unsigned long long) e->tt.cols)));
	size = offsetof(PgVector, x) + sizeof(float4) * (int) e->tt.cols;
	y = (PgVector *) palloc0(size);
	SET_VARSIZE(y, size);
	y->dim = (int16) e->tt.cols;
	matvec(e, x->x, x->dim, y->x);
	PG_RETURN_POINTER(y);
}

PG_FUNCTION_INFO_V1(tt_matvec_float4);
Datum
tt_matvec_float4(PG_FUNCTION_ARGS)
{
	CachedTensor *e = tensor_args(fcinfo);
	int			dim;
	float4	   *x = float4_array(PG_GETARG_ARRAYTYPE_P(2), &dim, "vector");
	int			cols = (int) e->tt.cols;
	ArrayType  *a = float4_result(NULL, 1, &cols);

	matvec(e, x, dim, (float *) ARR_DATA_PTR(a));
	PG_RETURN_ARRAYTYPE_P(a);
}
