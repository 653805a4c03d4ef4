/*
 * Packed code stores: bitpress_store_knn(store, query, k) scans bitpress.code_segments (many
 * codes per row, uncompressed) with one core call per segment and a bounded heap, after taking
 * the rows changed since the segments were written from bitpress.code_delta (they override
 * the segments). Everything is read through SPI in the query's snapshot, so a store and its
 * delta are always seen together: no row is missed or counted twice.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/tuplestore.h"
#include "utils/varbit.h"

#include "bitpress.h"

#define SEGMENT_BATCH 16

/*
 * Width of a segment's ids: 4 bytes each (int4send) or 8 (int8send), told apart by length;
 * 0 when the ids or codes do not fit n codes of nbytes (a corrupt segment).
 */
static int
segment_id_width(int32 n, const bytea *ids, const bytea *codes, size_t nbytes)
{
	size_t		idlen = VARSIZE_ANY_EXHDR(ids);
	int			width = n > 0 && idlen == (size_t) n * 4 ? 4 : 8;

	if (n < 0 || idlen != (size_t) n * width || VARSIZE_ANY_EXHDR(codes) != (size_t) n * nbytes)
		return 0;
	return width;
}

static void
check_k(int32 k)
{
	if (k < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("k must be at least 1, got %d", k)));
}

/* The heap, sorted ascending by (distance, id), as the rows (id, distance) of an SRF result. */
static void
emit_heap(ReturnSetInfo *rsinfo, bp_topk_entry *heap, size_t size)
{
	bp_topk_finish(heap, size);
	for (size_t i = 0; i < size; i++)
	{
		Datum		values[2];
		bool		nulls[2] = {false, false};

		values[0] = Int64GetDatum(bp_key_id(heap[i].index));
		values[1] = Int32GetDatum((int32) heap[i].key);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
}

PG_FUNCTION_INFO_V1(store_knn);
Datum
store_knn(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *store = text_to_cstring(PG_GETARG_TEXT_PP(0));
	VarBit	   *query = PG_GETARG_VARBIT_P(1);
	int32		k = PG_GETARG_INT32(2);
	size_t		nbytes = VARBITBYTES(query);
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	bool		isnull;
	int			bits;
	int64	   *skip = NULL;
	size_t		nskip = 0;
	bp_topk_entry *heap;
	size_t		size = 0;
	Portal		portal;
	MemoryContext callcxt = CurrentMemoryContext;
	MemoryContext segcxt;

	check_k(k);
	InitMaterializedSRF(fcinfo, 0);
	heap = palloc(sizeof(bp_topk_entry) * ((size_t) k + 1));
	args[0] = CStringGetTextDatum(store);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT bits FROM bitpress.code_stores WHERE name = $1",
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading bitpress.code_stores failed");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("code store \"%s\" does not exist", store),
				 errhint("Create one with bitpress_store_create().")));
	bits = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (bits != VARBITLEN(query))
		report(BP_ERR_BIT_LENGTH_MISMATCH, VARBITLEN(query), bits);

	/* rows changed since the segments were written: the latest entry per id wins */
	if (SPI_execute_with_args("SELECT DISTINCT ON (id) id, code FROM bitpress.code_delta "
							  "WHERE store = $1 ORDER BY id, seq DESC",
							  1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading bitpress.code_delta failed");
	if (SPI_processed > 0)
	{
		skip = MemoryContextAlloc(callcxt, sizeof(int64) * SPI_processed);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			int64		id = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));
			Datum		code = SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull);

			skip[nskip++] = id;
			if (!isnull)
			{
				bytea	   *b = DatumGetByteaPP(code);

				if (VARSIZE_ANY_EXHDR(b) != nbytes)
					ereport(ERROR,
							(errcode(ERRCODE_DATA_CORRUPTED),
							 errmsg("code store \"%s\": changed row %lld has a code of %zu bytes, expected %zu",
									store, (long long) id, (size_t) VARSIZE_ANY_EXHDR(b), nbytes)));
				bp_topk_push(heap, &size, (size_t) k,
							 (double) bp_hamming(VARBITS(query), (const uint8_t *) VARDATA_ANY(b), nbytes),
							 bp_id_key(id));
			}
		}
		/* skip is ascending: the query orders by id */
	}
	SPI_freetuptable(SPI_tuptable);

	/* the segments, a few at a time, one core call each */
	segcxt = AllocSetContextCreate(callcxt, "bitpress segment", ALLOCSET_DEFAULT_SIZES);
	portal = SPI_cursor_open_with_args(NULL, "SELECT n, ids, codes FROM bitpress.code_segments "
									   "WHERE store = $1", 1, argtypes, args, NULL, true,
									   CURSOR_OPT_NO_SCROLL);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, SEGMENT_BATCH);
		if (SPI_processed == 0)
			break;
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			MemoryContext old = MemoryContextSwitchTo(segcxt);
			int32		n = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
			bytea	   *ids = DatumGetByteaPP(SPI_getbinval(tup, desc, 2, &isnull));
			bytea	   *codes = DatumGetByteaPP(SPI_getbinval(tup, desc, 3, &isnull));
			int			id_width = segment_id_width(n, ids, codes, nbytes);

			CHECK_FOR_INTERRUPTS();
			if (id_width == 0)
				ereport(ERROR,
						(errcode(ERRCODE_DATA_CORRUPTED),
						 errmsg("code store \"%s\": a segment's sizes do not match its %d codes of %d bits",
								store, n, bits),
						 errhint("Rebuild it with bitpress_store_rebuild('%s').", store)));
			bp_hamming_topk_segment(VARBITS(query), (const uint8_t *) VARDATA_ANY(codes),
									(const uint8_t *) VARDATA_ANY(ids), id_width, (size_t) n, nbytes,
									skip, nskip, heap, &size, (size_t) k);
			MemoryContextSwitchTo(old);
			MemoryContextReset(segcxt);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	SPI_finish();

	emit_heap(rsinfo, heap, size);
	return (Datum) 0;
}

/*
 * bitpress_segment_knn(n, ids, codes, query, k, skip bigint[]): the k best of one segment, for
 * plans that hand segments to parallel workers (bitpress_store_knn_parallel).
 */
PG_FUNCTION_INFO_V1(segment_knn);
Datum
segment_knn(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int32		n = PG_GETARG_INT32(0);
	bytea	   *ids = PG_GETARG_BYTEA_PP(1);
	bytea	   *codes = PG_GETARG_BYTEA_PP(2);
	VarBit	   *query = PG_GETARG_VARBIT_P(3);
	int32		k = PG_GETARG_INT32(4);
	ArrayType  *skip_arr = PG_GETARG_ARRAYTYPE_P(5);
	size_t		nbytes = VARBITBYTES(query);
	int			id_width = segment_id_width(n, ids, codes, nbytes);
	int64	   *skip = NULL;
	int			nskip = 0;
	bp_topk_entry *heap;
	size_t		size = 0;

	check_k(k);
	if (id_width == 0)
	{
		if (n > 0 && VARSIZE_ANY_EXHDR(codes) % (size_t) n == 0)
			report(BP_ERR_BIT_LENGTH_MISMATCH, VARBITLEN(query),
				   (long long) (VARSIZE_ANY_EXHDR(codes) / (size_t) n) * 8);
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("a code segment's sizes do not match its %d codes", n)));
	}
	if (ARR_ELEMTYPE(skip_arr) != INT8OID || ARR_NDIM(skip_arr) > 1 || array_contains_nulls(skip_arr))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("skip must be a one-dimensional bigint[] without NULLs, sorted ascending")));
	if (ARR_NDIM(skip_arr) == 1)
	{
		nskip = ARR_DIMS(skip_arr)[0];
		skip = (int64 *) ARR_DATA_PTR(skip_arr);
		for (int i = 1; i < nskip; i++)
			if (skip[i - 1] > skip[i])
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("skip must be sorted ascending")));
	}
	InitMaterializedSRF(fcinfo, 0);
	heap = palloc(sizeof(bp_topk_entry) * ((size_t) k + 1));
	bp_hamming_topk_segment(VARBITS(query), (const uint8_t *) VARDATA_ANY(codes),
							(const uint8_t *) VARDATA_ANY(ids), id_width, (size_t) n, nbytes,
							skip, (size_t) nskip, heap, &size, (size_t) k);
	emit_heap(rsinfo, heap, size);
	return (Datum) 0;
}
