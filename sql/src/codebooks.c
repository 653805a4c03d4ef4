/*
 * Codebooks stored in bitpress.codebooks: binarize(v, 'name'[, version]) and the asymmetric
 * score bitpress_score(code, query, 'name'[, version]).
 *
 * Each backend keeps the parsed codebooks it has used. An entry is checked against the table
 * once per statement (one indexed lookup of version and xmin), so a refit or an edit is seen
 * by the next statement and never half-way through one.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/varbit.h"

#include "bitpress.h"

#define CODEBOOK_TABLE "bitpress.codebooks"

typedef struct CachedCodebook
{
	struct CachedCodebook *next;
	char	   *name;
	int32		asked_version;	/* 0 = latest */
	int32		version;		/* the version this entry holds */
	TransactionId xmin;			/* of its row: changes when the row is rewritten */
	TimestampTz checked_at;		/* statement start when last checked against the table */
	uint64		generation;		/* changes each time the entry is (re)parsed */
	void	   *blob;			/* aligned copy of params */
	bp_codebook cb;				/* points into blob */
} CachedCodebook;

static CachedCodebook *cache = NULL;
static uint64 generations = 0;

static void
unknown_codebook(const char *name, int32 version)
{
	if (version > 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("codebook \"%s\" version %d does not exist", name, version),
				 errhint("SELECT name, version FROM " CODEBOOK_TABLE " lists the stored codebooks.")));
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("codebook \"%s\" does not exist", name),
			 errhint("Fit one with \"bitpress fit\" or bitpress.codebooks.fit_table() in Python.")));
}

/* (version, xmin) of the codebook row, fetching params into *params when asked */
static bool
lookup_row(const char *name, int32 version, int32 *found_version, TransactionId *xmin,
		   bytea **params, MemoryContext params_cxt)
{
	Oid			argtypes[2] = {TEXTOID, INT4OID};
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	bool		isnull;
	bool		found = false;
	bool		summed;
	int			ret;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	ret = SPI_execute_with_args("SELECT to_regclass('" CODEBOOK_TABLE "') IS NOT NULL", 0, NULL,
								NULL, NULL, true, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1 ||
		!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table " CODEBOOK_TABLE " does not exist"),
				 errhint("Create it with \"bitpress migrate\" (Alembic), then fit a codebook.")));

	values[0] = CStringGetTextDatum(name);
	values[1] = Int32GetDatum(version);
	summed = params && bitpress_has_column("codebooks", "checksum");	/* revision 0009 */
	if (params)
		ret = SPI_execute_with_args(summed ?
			"SELECT version, xmin::text::bigint, params, checksum, "
			"encode(sha256(params), 'hex') = checksum FROM " CODEBOOK_TABLE
			" WHERE name = $1 AND version = $2" :
			"SELECT version, xmin::text::bigint, params FROM " CODEBOOK_TABLE
			" WHERE name = $1 AND version = $2",
			2, argtypes, values, nulls, true, 1);
	else if (version > 0)
		ret = SPI_execute_with_args(
			"SELECT version, xmin::text::bigint FROM " CODEBOOK_TABLE
			" WHERE name = $1 AND version = $2",
			2, argtypes, values, nulls, true, 1);
	else
		ret = SPI_execute_with_args(
			"SELECT version, xmin::text::bigint FROM " CODEBOOK_TABLE
			" WHERE name = $1 ORDER BY version DESC LIMIT 1",
			1, argtypes, values, nulls, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "looking up codebook \"%s\" failed", name);
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *key = psprintf("codebook \"%s\"", name);

		found = true;
		*found_version = DatumGetInt32(stored_value(tup, desc, 1, CODEBOOK_TABLE, key));
		*xmin = (TransactionId) DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
		if (params)
		{
			char	   *vkey = psprintf("codebook \"%s\" version %d", name, *found_version);
			Datum		d = stored_value(tup, desc, 3, CODEBOOK_TABLE, vkey);
			MemoryContext old;

			if (summed)
				check_params_sum(tup, desc, 4, CODEBOOK_TABLE, vkey);
			old = MemoryContextSwitchTo(params_cxt);

			*params = DatumGetByteaPCopy(d);
			MemoryContextSwitchTo(old);
		}
	}
	SPI_finish();
	return found;
}

/* The cache entry of codebook `name` (version 0 = latest), checked once per statement. */
static const CachedCodebook *
get_codebook(const char *name, int32 version)
{
	TimestampTz now = GetCurrentStatementStartTimestamp();
	CachedCodebook *e;
	int32		found_version = 0;
	TransactionId xmin = InvalidTransactionId;
	bytea	   *params = NULL;
	int			problem = 0;
	bp_status	st;
	Size		len;

	if (version < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("codebook version must be positive, got %d", version)));
	for (e = cache; e != NULL; e = e->next)
		if (e->asked_version == version && strcmp(e->name, name) == 0)
			break;
	if (e != NULL && e->checked_at == now)
		return e;

	if (!lookup_row(name, version, &found_version, &xmin, NULL, NULL))
		unknown_codebook(name, version);
	if (e != NULL && e->version == found_version && e->xmin == xmin)
	{
		e->checked_at = now;
		return e;
	}

	/* new or changed: fetch and parse the parameters */
	if (!lookup_row(name, found_version, &found_version, &xmin, &params, CurrentMemoryContext)
		|| params == NULL)
		unknown_codebook(name, version);
	len = VARSIZE_ANY_EXHDR(params);
	if (e == NULL)
	{
		e = MemoryContextAllocZero(TopMemoryContext, sizeof(CachedCodebook));
		e->name = MemoryContextStrdup(TopMemoryContext, name);
		e->asked_version = version;
		e->next = cache;
		cache = e;
	}
	else if (e->blob)
	{
		pfree(e->blob);
		e->blob = NULL;
	}
	e->checked_at = 0;
	e->version = -1;
	e->generation = ++generations;
	e->blob = MemoryContextAlloc(TopMemoryContext, len > 0 ? len : 1);	/* MAXALIGNed */
	memcpy(e->blob, VARDATA_ANY(params), len);
	pfree(params);
	st = bp_codebook_parse(e->blob, len, &e->cb, &problem);
	if (st != BP_OK)
	{
		char		msg[256];

		bp_error_message(msg, sizeof(msg), st, problem, 0);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("codebook \"%s\" version %d: %s", name, found_version, msg)));
	}
	e->version = found_version;
	e->xmin = xmin;
	e->checked_at = now;
	return e;
}

static VarBit *
encode_one(const bp_codebook *cb, const float4 *x, int dim)
{
	VarBit	   *result;
	int			len;
	size_t		bad_row = 0,
				bad_index = 0;
	float	   *scratch;
	bp_status	st;

	check_dim(dim);
	if ((uint32) dim != cb->dims)
		report(BP_ERR_CODEBOOK_DIM_MISMATCH, dim, cb->dims);
	len = VARBITTOTALLEN(cb->bits);
	result = (VarBit *) palloc0(len);
	SET_VARSIZE(result, len);
	VARBITLEN(result) = cb->bits;
	scratch = palloc(bp_codebook_scratch_floats(cb) * sizeof(float));
	st = bp_codebook_encode_batch(cb, x, 1, (size_t) dim, (size_t) dim, VARBITS(result),
								  VARBITBYTES(result), scratch, &bad_row, &bad_index);
	if (st != BP_OK)
		report(st, (long long) bad_index, 0);
	pfree(scratch);
	return result;
}

static int32
version_arg(FunctionCallInfo fcinfo, int argno)
{
	return PG_NARGS() > argno ? PG_GETARG_INT32(argno) : 0;
}

/*
 * Per call site: the last input and its code. `ORDER BY hamming(code, binarize(:q, 'docs'))`
 * calls a STABLE function once per row with the same query; this makes those calls a compare.
 */
typedef struct EncodeMemo
{
	uint64		generation;
	int			dim;
	float4	   *input;
	VarBit	   *code;
} EncodeMemo;

static Datum
binarize_codebook_common(FunctionCallInfo fcinfo, const float4 *x, int dim)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(1));
	const CachedCodebook *e = get_codebook(name, version_arg(fcinfo, 2));
	const bp_codebook *cb = &e->cb;
	EncodeMemo *m = (EncodeMemo *) fcinfo->flinfo->fn_extra;
	VarBit	   *code;

	if (m != NULL && m->generation == e->generation && m->dim == dim &&
		memcmp(m->input, x, sizeof(float4) * dim) == 0)
		PG_RETURN_VARBIT_P((VarBit *) pg_detoast_datum_copy((struct varlena *) m->code));

	code = encode_one(cb, x, dim);
	if (m == NULL)
	{
		m = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(EncodeMemo));
		fcinfo->flinfo->fn_extra = m;
	}
	else
	{
		pfree(m->input);
		pfree(m->code);
	}
	m->generation = 0;
	m->input = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(float4) * dim);
	memcpy(m->input, x, sizeof(float4) * dim);
	m->code = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, VARSIZE(code));
	memcpy(m->code, code, VARSIZE(code));
	m->dim = dim;
	m->generation = e->generation;
	PG_RETURN_VARBIT_P(code);
}

PG_FUNCTION_INFO_V1(binarize_vector_codebook);
Datum
binarize_vector_codebook(PG_FUNCTION_ARGS)
{
	PgVector   *v = DatumGetPgVector(PG_GETARG_DATUM(0));

	return binarize_codebook_common(fcinfo, v->x, v->dim);
}

PG_FUNCTION_INFO_V1(binarize_halfvec_codebook);
Datum
binarize_halfvec_codebook(PG_FUNCTION_ARGS)
{
	int			dim;
	float4	   *x = halfvec_floats(PG_GETARG_DATUM(0), &dim);

	return binarize_codebook_common(fcinfo, x, dim);
}

PG_FUNCTION_INFO_V1(binarize_sparsevec_codebook);
Datum
binarize_sparsevec_codebook(PG_FUNCTION_ARGS)
{
	int			dim;
	float4	   *x = sparsevec_floats(PG_GETARG_DATUM(0), &dim);

	return binarize_codebook_common(fcinfo, x, dim);
}

PG_FUNCTION_INFO_V1(binarize_float4_codebook);
Datum
binarize_float4_codebook(PG_FUNCTION_ARGS)
{
	int			dim;
	float4	   *x = float4_array(PG_GETARG_ARRAYTYPE_P(0), &dim, "vector");

	return binarize_codebook_common(fcinfo, x, dim);
}

/* Per call site: the prepared query of the last query seen, reused while the query repeats. */
typedef struct ScoreState
{
	uint64		generation;		/* of the codebook entry the table was built from */
	int			dim;
	float4	   *query;			/* copy of the query vector */
	void	   *work;			/* what sq points into */
	bp_score_query sq;
} ScoreState;

PG_FUNCTION_INFO_V1(score_vector_codebook);
Datum
score_vector_codebook(PG_FUNCTION_ARGS)
{
	VarBit	   *code = PG_GETARG_VARBIT_P(0);
	PgVector   *q = DatumGetPgVector(PG_GETARG_DATUM(1));
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(2));
	const CachedCodebook *e = get_codebook(name, version_arg(fcinfo, 3));
	const bp_codebook *cb = &e->cb;
	ScoreState *s = (ScoreState *) fcinfo->flinfo->fn_extra;
	double		out;
	size_t		bad = 0;
	bp_status	st;

	check_dim(q->dim);
	if ((uint32) q->dim != cb->dims)
		report(BP_ERR_CODEBOOK_DIM_MISMATCH, q->dim, cb->dims);
	if ((uint32) VARBITLEN(code) != cb->bits)
		report(BP_ERR_BIT_LENGTH_MISMATCH, VARBITLEN(code), cb->bits);

	if (s == NULL || s->generation != e->generation || s->dim != q->dim ||
		memcmp(s->query, q->x, sizeof(float4) * q->dim) != 0)
	{
		MemoryContext cxt = fcinfo->flinfo->fn_mcxt;

		if (s == NULL)
			s = MemoryContextAllocZero(cxt, sizeof(ScoreState));
		else
		{
			pfree(s->query);
			pfree(s->work);
		}
		s->generation = 0;
		s->work = MemoryContextAlloc(cxt, bp_codebook_score_bytes(cb));
		s->query = MemoryContextAlloc(cxt, sizeof(float4) * q->dim);
		memcpy(s->query, q->x, sizeof(float4) * q->dim);
		s->dim = q->dim;
		fcinfo->flinfo->fn_extra = s;
		st = bp_codebook_score_prep(cb, q->x, q->dim, s->work, &s->sq, &bad);
		if (st != BP_OK)
			report(st, (long long) bad, 0);
		s->generation = e->generation;
	}
	st = bp_codebook_score_scan(&s->sq, VARBITS(code), 1, s->sq.nbytes, &out, &bad);
	if (st != BP_OK)
		report(st, -1, 0);
	PG_RETURN_FLOAT8(out);
}
