/*
 * Feed-forward layers stored in bitpress.ffn_layers: ffn(x, 'layer') computes every neuron,
 * sparse_ffn(x, 'layer', k) only the k the layer's predictor ranks highest, and
 * sparse_ffn(x, 'layer') those above the layer's fitted thresholds. The computation is the C
 * core's (pyext/bp_ffn.c), the same as DuckDB's and Python's.
 *
 * Each backend keeps the parsed layers it has used, checked against the table once per
 * statement (the xmin of the row), as codebooks.c does for codebooks.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "bitpress.h"

#define LAYER_TABLE "bitpress.ffn_layers"

typedef struct CachedLayer
{
	struct CachedLayer *next;
	char	   *name;
	TransactionId xmin;			/* of its row: changes when the row is rewritten */
	TimestampTz checked_at;		/* statement start when last checked against the table */
	void	   *blob;			/* aligned copy of params */
	bp_ffn		f;				/* points into blob */
	float	   *scratch;
} CachedLayer;

static CachedLayer *cache = NULL;

/* xmin of the layer's row, and its params when asked; false if there is no such layer */
static bool
lookup_layer(const char *name, TransactionId *xmin, bytea **params)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};
	bool		isnull;
	bool		found = false;
	bool		summed;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT to_regclass('" LAYER_TABLE "') IS NOT NULL", true, 1) != SPI_OK_SELECT ||
		!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table " LAYER_TABLE " does not exist"),
				 errhint("Create it with \"bitpress migrate\" (Alembic), then store a layer.")));
	summed = params && bitpress_has_column("ffn_layers", "checksum");	/* revision 0009 */
	if (SPI_execute_with_args(summed ? "SELECT xmin::text::bigint, params, checksum, "
							  "encode(sha256(params), 'hex') = checksum FROM " LAYER_TABLE
							  " WHERE name = $1" :
							  params ? "SELECT xmin::text::bigint, params FROM " LAYER_TABLE
							  " WHERE name = $1" :
							  "SELECT xmin::text::bigint FROM " LAYER_TABLE " WHERE name = $1",
							  1, argtypes, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "looking up layer \"%s\" failed", name);
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];

		found = true;
		*xmin = (TransactionId) DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));
		if (params)
		{
			char	   *key = psprintf("layer \"%s\"", name);
			Datum		d = stored_value(tup, SPI_tuptable->tupdesc, 2, LAYER_TABLE, key);
			MemoryContext old;

			if (summed)
				check_params_sum(tup, SPI_tuptable->tupdesc, 3, LAYER_TABLE, key);
			old = MemoryContextSwitchTo(TopMemoryContext);
			*params = DatumGetByteaPCopy(d);
			MemoryContextSwitchTo(old);
		}
	}
	SPI_finish();
	return found;
}

static void
unknown_layer(const char *name)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("layer \"%s\" does not exist", name),
			 errhint("SELECT name FROM " LAYER_TABLE " lists the stored layers; "
					 "\"bitpress sparse fit\" stores a model's layers.")));
}

static CachedLayer *
get_layer(const char *name)
{
	TimestampTz now = GetCurrentStatementStartTimestamp();
	CachedLayer *e;
	TransactionId xmin = InvalidTransactionId;
	bytea	   *params = NULL;
	int			problem = 0;
	bp_status	st;
	Size		len;

	for (e = cache; e != NULL; e = e->next)
		if (strcmp(e->name, name) == 0)
			break;
	if (e != NULL && e->blob != NULL && e->checked_at == now)
		return e;
	if (!lookup_layer(name, &xmin, NULL))
		unknown_layer(name);
	if (e != NULL && e->blob != NULL && e->xmin == xmin)
	{
		e->checked_at = now;
		return e;
	}
	if (!lookup_layer(name, &xmin, &params))
		unknown_layer(name);
	if (e == NULL)
	{
		e = MemoryContextAllocZero(TopMemoryContext, sizeof(CachedLayer));
		e->name = MemoryContextStrdup(TopMemoryContext, name);
		e->next = cache;
		cache = e;
	}
	if (e->blob)
		pfree(e->blob);
	if (e->scratch)
		pfree(e->scratch);
	e->blob = NULL;
	e->scratch = NULL;
	len = VARSIZE_ANY_EXHDR(params);
	e->blob = MemoryContextAllocHuge(TopMemoryContext, len > 0 ? len : 1);	/* MAXALIGNed */
	memcpy(e->blob, VARDATA_ANY(params), len);
	pfree(params);
	st = bp_ffn_parse(e->blob, len, &e->f, &problem);
	if (st != BP_OK)
	{
		char		msg[256];

		pfree(e->blob);
		e->blob = NULL;
		bp_error_message(msg, sizeof(msg), st, problem, 0);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("layer \"%s\": %s", name, msg)));
	}
	e->scratch = MemoryContextAlloc(TopMemoryContext, bp_ffn_scratch_floats(&e->f) * sizeof(float));
	e->xmin = xmin;
	e->checked_at = now;
	return e;
}

/* y = the layer on x; k < 0: dense, k = 0: thresholds, k > 0: top-k by selector */
static void
run_layer(CachedLayer *e, const float *x, int dim, int64 k, int selector, float *y)
{
	size_t		bad = 0;
	bp_status	st;

	check_dim(dim);
	if (k < 0)
		st = bp_ffn_dense(&e->f, x, (size_t) dim, y, e->scratch, &bad);
	else
		st = bp_ffn_sparse(&e->f, x, (size_t) dim, k, selector, y, e->scratch, NULL, &bad);
	if (st == BP_ERR_FFN_INPUT_DIM)
		report(st, dim, e->f.d);
	if (st == BP_ERR_FFN_K)
		report(st, k, e->f.h);
	if (st != BP_OK)
		report(st, (long long) bad, 0);
}

static int64
k_arg(FunctionCallInfo fcinfo, CachedLayer *e)
{
	int64		k = PG_GETARG_INT32(2);

	if (k < 1 || k > (int64) e->f.h)
		report(BP_ERR_FFN_K, k, e->f.h);
	return k;
}

/* the fourth argument: 'predictor' (default) or 'exact' */
static int
selector_arg(FunctionCallInfo fcinfo)
{
	char	   *s;

	if (PG_NARGS() < 4)
		return BP_FFN_SELECT_PREDICTOR;
	s = text_to_cstring(PG_GETARG_TEXT_PP(3));
	if (strcmp(s, "predictor") == 0)
		return BP_FFN_SELECT_PREDICTOR;
	if (strcmp(s, "exact") == 0)
		return BP_FFN_SELECT_EXACT;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("selector must be predictor or exact, got \"%s\"", s)));
	pg_unreachable();
}

/* k: -1 dense, 0 thresholds, 1 top-k with k read from the third argument */
static Datum
vector_result(FunctionCallInfo fcinfo, int64 k)
{
	PgVector   *x = DatumGetPgVector(PG_GETARG_DATUM(0));
	CachedLayer *e = get_layer(text_to_cstring(PG_GETARG_TEXT_PP(1)));
	int			size;
	PgVector   *y;

	if (k > 0)
		k = k_arg(fcinfo, e);
	size = offsetof(PgVector, x) + sizeof(float4) * e->f.d;
	y = (PgVector *) palloc0(size);
	SET_VARSIZE(y, size);
	y->dim = (int16) e->f.d;
	run_layer(e, x->x, x->dim, k, selector_arg(fcinfo), y->x);
	PG_RETURN_POINTER(y);
}

static Datum
float4_result(FunctionCallInfo fcinfo, int64 k)
{
	int			dim;
	float4	   *x = float4_array(PG_GETARG_ARRAYTYPE_P(0), &dim, "vector");
	CachedLayer *e = get_layer(text_to_cstring(PG_GETARG_TEXT_PP(1)));
	float	   *y = palloc(sizeof(float) * e->f.d);

	if (k > 0)
		k = k_arg(fcinfo, e);
	run_layer(e, x, dim, k, selector_arg(fcinfo), y);
	{
		Datum	   *d = palloc(sizeof(Datum) * e->f.d);
		uint32		t;

		for (t = 0; t < e->f.d; t++)
			d[t] = Float4GetDatum(y[t]);
		PG_RETURN_ARRAYTYPE_P(construct_array(d, (int) e->f.d, FLOAT4OID, 4, true, TYPALIGN_INT));
	}
}

PG_FUNCTION_INFO_V1(ffn_vector);
Datum
ffn_vector(PG_FUNCTION_ARGS)
{
	return vector_result(fcinfo, -1);
}

PG_FUNCTION_INFO_V1(ffn_float4);
Datum
ffn_float4(PG_FUNCTION_ARGS)
{
	return float4_result(fcinfo, -1);
}

PG_FUNCTION_INFO_V1(sparse_ffn_vector);
Datum
sparse_ffn_vector(PG_FUNCTION_ARGS)
{
	return vector_result(fcinfo, PG_NARGS() > 2 ? 1 : 0);
}

PG_FUNCTION_INFO_V1(sparse_ffn_float4);
Datum
sparse_ffn_float4(PG_FUNCTION_ARGS)
{
	return float4_result(fcinfo, PG_NARGS() > 2 ? 1 : 0);
}
