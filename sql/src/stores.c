/*
 * Packed code stores: bitpress_store_knn(store, query, k) scans bitpress.code_segments (many
 * codes per row, uncompressed) with one core call per segment and a bounded heap, after taking
 * the rows changed since the segments were written from bitpress.code_delta (they override
 * the segments). Everything is read through SPI in the query's snapshot, so a store and its
 * delta are always seen together: no row is missed or counted twice.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "catalog/pg_am_d.h"
#include "catalog/pg_type.h"
#include "executor/tuptable.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "parser/parse_relation.h"
#include "storage/bufmgr.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/memutils.h"
#include "utils/tuplestore.h"
#include "utils/varbit.h"

#include "bitpress.h"

/*
 * Width of a segment's ids: 4 bytes each (int4send) or 8 (int8send), told apart by length.
 * Raises XX001 when the ids or codes do not fit n codes of bits each (a corrupt segment);
 * store, when known, names it in the error.
 */
static int
segment_id_width(int32 n, const bytea *ids, const bytea *codes, int bits, const char *store)
{
	size_t		nbytes = ((size_t) bits + 7) / 8;
	size_t		idlen = VARSIZE_ANY_EXHDR(ids);
	int			width = n > 0 && idlen == (size_t) n * 4 ? 4 : 8;

	if (n >= 0 && idlen == (size_t) n * width && VARSIZE_ANY_EXHDR(codes) == (size_t) n * nbytes)
		return width;
	if (store != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("code store \"%s\": a segment's sizes do not match its %d codes of %d bits",
						store, n, bits),
				 errhint("Rebuild it with bitpress_store_rebuild('%s').", store)));
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("a code segment's sizes do not match its %d codes of %d bits", n, bits)));
	return 0;					/* not reached */
}

/* A NULL where bitpress's own table must hold a value: corrupt data, named precisely. */
static void
null_in_table(const char *table, const char *store, const char *key, const char *column)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("code store \"%s\": bitpress.%s has a NULL %s%s%s",
					store, table, column, key ? " in row " : "", key ? key : ""),
			 errhint("Rebuild it with bitpress_store_rebuild('%s').", store)));
}

/* bitpress_segment_checksum(ids, codes): what a rebuild stores beside a segment */
PG_FUNCTION_INFO_V1(segment_checksum);
Datum
segment_checksum(PG_FUNCTION_ARGS)
{
	bytea	   *ids = PG_GETARG_BYTEA_PP(0);
	bytea	   *codes = PG_GETARG_BYTEA_PP(1);

	PG_RETURN_INT64((int64) bp_segment_checksum((const uint8_t *) VARDATA_ANY(ids), VARSIZE_ANY_EXHDR(ids),
												(const uint8_t *) VARDATA_ANY(codes),
												VARSIZE_ANY_EXHDR(codes)));
}

/*
 * A segment whose bytes are not the ones its rebuild wrote: XX001 rather than wrong distances.
 * has_sum false: a segment written before checksums (schema revision 0007).
 */
static void
check_segment_sum(const bytea *ids, const bytea *codes, bool has_sum, int64 sum, const char *store)
{
	bool		old = !has_sum;

	if (!old && (int64) bp_segment_checksum((const uint8_t *) VARDATA_ANY(ids), VARSIZE_ANY_EXHDR(ids),
											(const uint8_t *) VARDATA_ANY(codes),
											VARSIZE_ANY_EXHDR(codes)) == sum)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("%s%s", store ? psprintf("code store \"%s\": ", store) : "",
					old ? "a segment has no checksum (written before schema revision 0007)"
					: "a segment's checksum does not match its bytes"),
			 store ? errhint("Rebuild it with bitpress_store_rebuild('%s').", store)
			 : errhint("Rebuild the store with bitpress_store_rebuild().")));
}

static void
check_k(int32 k)
{
	if (k < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("k must be at least 1, got %d", k)));
}

/* parse and check a skip array (one-dimensional bigint[], no NULLs, ascending) */
static int64 *
skip_ids(ArrayType *arr, int *nskip)
{
	int64	   *skip = NULL;

	*nskip = 0;
	if (ARR_ELEMTYPE(arr) != INT8OID || ARR_NDIM(arr) > 1 || array_contains_nulls(arr))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("skip must be a one-dimensional bigint[] without NULLs, sorted ascending")));
	if (ARR_NDIM(arr) == 1)
	{
		*nskip = ARR_DIMS(arr)[0];
		skip = (int64 *) ARR_DATA_PTR(arr);
		for (int i = 1; i < *nskip; i++)
			if (skip[i - 1] > skip[i])
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("skip must be sorted ascending")));
	}
	return skip;
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

/* One row of bitpress.code_segments, as the scans below read it. */
typedef struct SegmentAtts
{
	AttrNumber	store;
	AttrNumber	n;
	AttrNumber	ids;
	AttrNumber	codes;
	AttrNumber	checksum;		/* InvalidAttrNumber before schema revision 0007 */
} SegmentAtts;

static AttrNumber
segment_attnum(Relation rel, const char *name)
{
	AttrNumber	att = attnameAttNum(rel, name, false);

	if (att == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("bitpress.code_segments has no column \"%s\"", name),
				 errhint("Run `bitpress migrate` to bring bitpress's tables up to date.")));
	return att;
}

/*
 * Scan the segments of one store in place, one core call per segment, and return how many
 * segments were seen. The rows are read straight from the heap pages in the query's snapshot
 * (no executor, no copy): a segment written inline (STORAGE PLAIN, page-sized segments) is
 * scored where it lies in shared buffers; an older out-of-line one is detoasted first.
 * first/nblocks restrict the scan to the blocks the last rebuild wrote (nblocks 0: all).
 */
static int64
scan_segments(Relation rel, const SegmentAtts *att, const char *store, const uint8_t *query,
			  int bits, size_t nbytes, const int64 *skip, size_t nskip,
			  BlockNumber first, BlockNumber nblocks,
			  bp_topk_entry *heap, size_t *size, size_t k, MemoryContext segcxt)
{
	size_t		namelen = strlen(store);
	TableScanDesc scan;
	TupleTableSlot *slot;
	int64		seen = 0;

	/* no buffer ring and no synchronized start: a store is hot data, and the range is exact */
	scan = table_beginscan_strat(rel, GetActiveSnapshot(), 0, NULL, false, false);
	if (nblocks > 0)
		heap_setscanlimits(scan, first, nblocks);
	slot = table_slot_create(rel, NULL);
	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;
		Datum		name = slot_getattr(slot, att->store, &isnull);
		MemoryContext old;
		int32		n;
		bytea	   *ids,
				   *codes;
		int			id_width;

		CHECK_FOR_INTERRUPTS();
		if (isnull || VARATT_IS_EXTERNAL(DatumGetPointer(name)) || VARATT_IS_COMPRESSED(DatumGetPointer(name)))
		{
			/* a name stored compressed or out of line: compare it the slow way */
			if (isnull || strcmp(TextDatumGetCString(name), store) != 0)
				continue;
		}
		else if (VARSIZE_ANY_EXHDR(DatumGetPointer(name)) != namelen ||
				 memcmp(VARDATA_ANY(DatumGetPointer(name)), store, namelen) != 0)
			continue;

		old = MemoryContextSwitchTo(segcxt);
		{
			bool		nn,
						ni,
						nc;
			Datum		dn = slot_getattr(slot, att->n, &nn);
			Datum		di = slot_getattr(slot, att->ids, &ni);
			Datum		dc = slot_getattr(slot, att->codes, &nc);

			if (nn || ni || nc)
				null_in_table("code_segments", store, NULL, nn ? "n" : ni ? "ids" : "codes");
			n = DatumGetInt32(dn);
			ids = DatumGetByteaPP(di);
			codes = DatumGetByteaPP(dc);
			if (att->checksum != InvalidAttrNumber)
			{
				Datum		ds = slot_getattr(slot, att->checksum, &nn);

				check_segment_sum(ids, codes, !nn, nn ? 0 : DatumGetInt64(ds), store);
			}
		}
		id_width = segment_id_width(n, ids, codes, bits, store);
		bp_hamming_topk_segment(query, (const uint8_t *) VARDATA_ANY(codes),
								(const uint8_t *) VARDATA_ANY(ids), id_width, (size_t) n, nbytes,
								skip, nskip, heap, size, k);
		MemoryContextSwitchTo(old);
		MemoryContextReset(segcxt);
		seen++;
	}
	ExecDropSingleTupleTableSlot(slot);
	table_endscan(scan);
	return seen;
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
	int64		segments = -1;
	BlockNumber first = 0,
				nblocks = 0;
	int64	   *skip = NULL;
	bytea	  **changed = NULL;
	size_t		nskip = 0;
	bp_topk_entry *heap;
	size_t		size = 0;
	int64		seen;
	Oid			relid;
	AclResult	acl;
	Relation	rel;
	SegmentAtts att;
	MemoryContext callcxt = CurrentMemoryContext;
	MemoryContext segcxt;
	char	   *nsp;
	bool		catalog;

	check_k(k);
	InitMaterializedSRF(fcinfo, 0);
	args[0] = CStringGetTextDatum(store);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/*
	 * The store's table and columns, code length, and the segment count and blocks its last
	 * rebuild recorded, from bitpress_store_catalog() (beside this function: any role may ask
	 * it); then whether the store may serve this role, which raises the reason if not.
	 */
	nsp = get_namespace_name(get_func_namespace(fcinfo->flinfo->fn_oid));
	catalog = OidIsValid(LookupFuncName(list_make2(makeString(nsp), makeString("bitpress_store_catalog")),
										0, NULL, true));
	/* (an extension script older than 0.5.0 has no catalog: bitpress's table as then) */
	if (SPI_execute_with_args(catalog ?
							  psprintf("SELECT bits, segments, first_block, last_block, source, "
									   "id_column, code_column FROM %s.bitpress_store_catalog() "
									   "WHERE name = $1", quote_identifier(nsp)) :
							  "SELECT (j->>'bits')::integer, (j->>'segments')::bigint, "
							  "(j->>'first_block')::bigint, (j->>'last_block')::bigint "
							  "FROM (SELECT to_jsonb(c) AS j FROM bitpress.code_stores c "
							  "WHERE c.name = $1) x",
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading bitpress.code_stores failed");
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("code store \"%s\" does not exist", store),
				 errhint("Create one with bitpress_store_create().")));
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *key = psprintf("code store \"%s\"", store);
		Datum		source = catalog ? SPI_getbinval(tup, desc, 5, &isnull) : (Datum) 0;

		if (catalog && isnull)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("code store \"%s\" follows a table that does not exist", store),
					 errhint("Drop the store with bitpress_store_drop('%s').", store)));
		if (catalog)
			store_readable(store, DatumGetObjectId(source),
						   TextDatumGetCString(stored_value(tup, desc, 6, "bitpress.code_stores", key)),
						   TextDatumGetCString(stored_value(tup, desc, 7, "bitpress.code_stores", key)),
						   true);
	}
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		ns,
					nf,
					nl;
		Datum		s = SPI_getbinval(tup, desc, 2, &ns);
		Datum		f = SPI_getbinval(tup, desc, 3, &nf);
		Datum		l = SPI_getbinval(tup, desc, 4, &nl);

		bits = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		if (isnull)
			null_in_table("code_stores", store, NULL, "bits");
		if (!ns)
			segments = DatumGetInt64(s);
		/* the recorded range, checked in 64 bits before any cast: a range that is negative,
		 * reversed or past what a relation can hold means "scan it all", never extend it */
		if (!nf && !nl && DatumGetInt64(f) >= 0 && DatumGetInt64(l) >= DatumGetInt64(f) &&
			DatumGetInt64(l) < (int64) MaxBlockNumber)
		{
			first = (BlockNumber) DatumGetInt64(f);
			nblocks = (BlockNumber) (DatumGetInt64(l) - DatumGetInt64(f) + 1);
		}
	}
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
		changed = MemoryContextAlloc(callcxt, sizeof(bytea *) * SPI_processed);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			int64		id = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));
			Datum		code;

			if (isnull)
				null_in_table("code_delta", store, NULL, "id");
			code = SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull);

			skip[nskip] = id;
			changed[nskip] = NULL;
			if (!isnull)
			{
				bytea	   *b = DatumGetByteaPP(code);

				if (VARSIZE_ANY_EXHDR(b) != nbytes)
					ereport(ERROR,
							(errcode(ERRCODE_DATA_CORRUPTED),
							 errmsg("code store \"%s\": changed row %lld has a code of %zu bytes, expected %zu",
									store, (long long) id, (size_t) VARSIZE_ANY_EXHDR(b), nbytes)));
				if (bits % 8 != 0 &&
					(((const uint8 *) VARDATA_ANY(b))[nbytes - 1] & (0xFF >> (bits % 8))) != 0)
					ereport(ERROR,
							(errcode(ERRCODE_DATA_CORRUPTED),
							 errmsg("code store \"%s\": changed row %lld has a code whose padding bits after bit %d are not zero",
									store, (long long) id, bits)));
				changed[nskip] = (bytea *) MemoryContextAlloc(callcxt, VARSIZE_ANY(b));
				memcpy(changed[nskip], b, VARSIZE_ANY(b));
			}
			nskip++;
		}
		/* skip is ascending: the query orders by id */
	}
	SPI_freetuptable(SPI_tuptable);
	SPI_finish();

	/* the segments, read in place; checked against the count the last rebuild recorded */
	relid = get_relname_relid("code_segments", get_namespace_oid("bitpress", false));
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"bitpress.code_segments\" does not exist"),
				 errhint("Run `bitpress migrate` to create bitpress's tables.")));
	acl = pg_class_aclcheck(relid, GetUserId(), ACL_SELECT);
	if (acl != ACLCHECK_OK)
		aclcheck_error(acl, OBJECT_TABLE, "code_segments");
	rel = table_open(relid, AccessShareLock);
	att.store = segment_attnum(rel, "store");
	att.n = segment_attnum(rel, "n");
	att.ids = segment_attnum(rel, "ids");
	att.codes = segment_attnum(rel, "codes");
	att.checksum = attnameAttNum(rel, "checksum", false);
	segcxt = AllocSetContextCreate(callcxt, "bitpress segment", ALLOCSET_DEFAULT_SIZES);
	{
		/*
		 * The heap holds at most as many entries as the store can return: no more codes than
		 * the segments' relation (and its TOAST table) has bytes for, plus the changed rows. A
		 * huge k then returns every row instead of failing to allocate.
		 */
		int64		blocks = RelationGetNumberOfBlocks(rel);
		int64		cap;

		if (OidIsValid(rel->rd_rel->reltoastrelid))
		{
			Relation	toast = table_open(rel->rd_rel->reltoastrelid, AccessShareLock);

			blocks += RelationGetNumberOfBlocks(toast);
			table_close(toast, AccessShareLock);
		}
		cap = blocks * BLCKSZ / (int64) (nbytes > 0 ? nbytes : 1) + (int64) nskip + 1;
		if ((int64) k < cap)
			cap = k;
		heap = MemoryContextAlloc(callcxt, sizeof(bp_topk_entry) * ((size_t) cap + 1));
		k = (int32) cap;
	}
	if (nblocks > 0 && (rel->rd_rel->relam != HEAP_TABLE_AM_OID ||
						(int64) first + (int64) nblocks > (int64) RelationGetNumberOfBlocks(rel)))
		nblocks = 0;			/* truncated or rewritten since (or not heap): scan it all */
	seen = scan_segments(rel, &att, store, VARBITS(query), bits, nbytes, skip, nskip,
						 first, nblocks, heap, &size, (size_t) k, segcxt);
	if (nblocks > 0 && seen != segments)
	{
		/* rows moved (VACUUM FULL, CLUSTER): the recorded blocks no longer hold them all */
		size = 0;
		seen = scan_segments(rel, &att, store, VARBITS(query), bits, nbytes, skip, nskip,
							 0, 0, heap, &size, (size_t) k, segcxt);
	}
	table_close(rel, AccessShareLock);
	if (segments >= 0 && seen != segments)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("code store \"%s\": found %lld segments, its last rebuild wrote %lld",
						store, (long long) seen, (long long) segments),
				 errhint("Rebuild it with bitpress_store_rebuild('%s').", store)));

	for (size_t i = 0; i < nskip; i++)
		if (changed[i] != NULL)
			bp_topk_push(heap, &size, (size_t) k,
						 (double) bp_hamming(VARBITS(query), (const uint8_t *) VARDATA_ANY(changed[i]), nbytes),
						 bp_id_key(skip[i]));

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
	size_t		codelen = VARSIZE_ANY_EXHDR(codes);
	int			id_width;
	int64	   *skip = NULL;
	int			nskip = 0;
	bp_topk_entry *heap;
	size_t		size = 0;

	check_k(k);
	/* codes of another whole length: the query's length is what is wrong */
	if (n > 0 && codelen != (size_t) n * nbytes && codelen % (size_t) n == 0)
		report(BP_ERR_BIT_LENGTH_MISMATCH, VARBITLEN(query), (long long) (codelen / (size_t) n) * 8);
	id_width = segment_id_width(n, ids, codes, VARBITLEN(query), NULL);
	skip = skip_ids(skip_arr, &nskip);
	InitMaterializedSRF(fcinfo, 0);
	if (k > n)
		k = n > 0 ? n : 1;		/* no more entries than the segment has codes */
	heap = palloc(sizeof(bp_topk_entry) * ((size_t) k + 1));
	bp_hamming_topk_segment(VARBITS(query), (const uint8_t *) VARDATA_ANY(codes),
							(const uint8_t *) VARDATA_ANY(ids), id_width, (size_t) n, nbytes,
							skip, (size_t) nskip, heap, &size, (size_t) k);
	emit_heap(rsinfo, heap, size);
	return (Datum) 0;
}

/*
 * bitpress_segments_knn(n, ids, codes, query, k, skip): an aggregate over segment rows whose
 * value is the k best (id, distance) pairs, as a bigint[k][2] ascending by (distance, id). Its
 * partial states combine, so PostgreSQL can run it under a Gather: each worker scores the
 * segments of its share of a parallel sequential scan, the leader merges k entries per worker
 * (bitpress_store_knn_parallel). query and k must be the same on every row; skip (sorted
 * bigint[], rows changed since the segments were written) is parsed again only when it changes.
 */
typedef struct KnnAggState
{
	int32		k;
	int32		bits;
	size_t		size;			/* entries in heap */
	uint8_t    *query;			/* the query code, (bits + 7) / 8 bytes */
	int64	   *skip;
	size_t		nskip;
	ArrayType  *skip_raw;		/* the skip array it was parsed from, to tell a change */
	size_t		cap;			/* entries heap has room for (grows up to k, as codes come) */
	bp_topk_entry *heap;
} KnnAggState;

/*
 * Room in the heap for min(k, want) entries. It grows with the codes actually seen, so a huge
 * k costs memory for the rows there are, not for k.
 */
static size_t
knn_state_reserve(KnnAggState *st, size_t want)
{
	if (want > (size_t) st->k)
		want = (size_t) st->k;
	if (want > st->cap)
	{
		size_t		cap = st->cap * 2 > want ? st->cap * 2 : want;

		if (cap > (size_t) st->k)
			cap = (size_t) st->k;
		st->heap = repalloc_huge(st->heap, sizeof(bp_topk_entry) * (cap + 1));
		st->cap = cap;
	}
	return want;
}

static KnnAggState *
knn_state_new(MemoryContext cxt, int32 k, int32 bits, const uint8_t *query)
{
	size_t		nbytes = ((size_t) bits + 7) / 8;
	KnnAggState *st;

	check_k(k);
	st = MemoryContextAllocZero(cxt, sizeof(KnnAggState));
	st->cap = k < 64 ? (size_t) k : 64;
	st->heap = MemoryContextAlloc(cxt, sizeof(bp_topk_entry) * (st->cap + 1));
	st->k = k;
	st->bits = bits;
	st->query = MemoryContextAlloc(cxt, nbytes > 0 ? nbytes : 1);
	memcpy(st->query, query, nbytes);
	return st;
}

static void
knn_state_check(const KnnAggState *st, int32 k, int32 bits, const uint8_t *query)
{
	if (k != st->k || bits != st->bits || memcmp(query, st->query, ((size_t) bits + 7) / 8) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("bitpress_segments_knn needs the same query and k on every row")));
}

PG_FUNCTION_INFO_V1(segments_knn_step);
Datum
segments_knn_step(PG_FUNCTION_ARGS)
{
	MemoryContext aggcxt;
	KnnAggState *st = PG_ARGISNULL(0) ? NULL : (KnnAggState *) PG_GETARG_POINTER(0);
	int32		n;
	bytea	   *ids,
			   *codes;
	VarBit	   *query;
	int32		k;
	size_t		nbytes;
	int			id_width;

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		elog(ERROR, "bitpress_segments_knn called in a non-aggregate context");
	/* a segment row with a NULL is corrupt, not a row to leave out of the answer */
	for (int i = 1; i <= 3; i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("a code segment has a NULL %s", i == 1 ? "n" : i == 2 ? "ids" : "codes"),
					 errhint("Rebuild the store with bitpress_store_rebuild().")));
	for (int i = 4; i <= 5; i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not be NULL", i == 4 ? "query" : "k")));
	n = PG_GETARG_INT32(1);
	ids = PG_GETARG_BYTEA_PP(2);
	codes = PG_GETARG_BYTEA_PP(3);
	query = PG_GETARG_VARBIT_P(4);
	k = PG_GETARG_INT32(5);
	nbytes = VARBITBYTES(query);

	if (st == NULL)
		st = knn_state_new(aggcxt, k, VARBITLEN(query), VARBITS(query));
	else
		knn_state_check(st, k, VARBITLEN(query), VARBITS(query));

	if (PG_ARGISNULL(6))
	{
		st->skip_raw = NULL;
		st->nskip = 0;
	}
	else
	{
		ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(6);

		if (st->skip_raw == NULL || VARSIZE(st->skip_raw) != VARSIZE(arr) ||
			memcmp(st->skip_raw, arr, VARSIZE(arr)) != 0)
		{
			int			nskip;

			st->skip_raw = MemoryContextAlloc(aggcxt, VARSIZE(arr));
			memcpy(st->skip_raw, arr, VARSIZE(arr));
			st->skip = skip_ids(st->skip_raw, &nskip);
			st->nskip = (size_t) nskip;
		}
	}

	id_width = segment_id_width(n, ids, codes, VARBITLEN(query), NULL);
	if (PG_NARGS() > 7)			/* the form with the segment's checksum (0.5.0) */
		check_segment_sum(ids, codes, !PG_ARGISNULL(7), PG_ARGISNULL(7) ? 0 : PG_GETARG_INT64(7), NULL);
	bp_hamming_topk_segment(VARBITS(query), (const uint8_t *) VARDATA_ANY(codes),
							(const uint8_t *) VARDATA_ANY(ids), id_width, (size_t) n, nbytes,
							st->skip, st->nskip, st->heap, &st->size,
							knn_state_reserve(st, st->size + (size_t) n));
	PG_RETURN_POINTER(st);
}

PG_FUNCTION_INFO_V1(segments_knn_combine);
Datum
segments_knn_combine(PG_FUNCTION_ARGS)
{
	MemoryContext aggcxt;
	KnnAggState *a = PG_ARGISNULL(0) ? NULL : (KnnAggState *) PG_GETARG_POINTER(0);
	KnnAggState *b = PG_ARGISNULL(1) ? NULL : (KnnAggState *) PG_GETARG_POINTER(1);

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		elog(ERROR, "bitpress_segments_knn called in a non-aggregate context");
	if (b == NULL)
	{
		if (a == NULL)
			PG_RETURN_NULL();
		PG_RETURN_POINTER(a);
	}
	if (a == NULL)
		a = knn_state_new(aggcxt, b->k, b->bits, b->query);
	else
		knn_state_check(a, b->k, b->bits, b->query);
	{
		size_t		k = knn_state_reserve(a, a->size + b->size);

		for (size_t i = 0; i < b->size; i++)
			bp_topk_push(a->heap, &a->size, k, b->heap[i].key, b->heap[i].index);
	}
	PG_RETURN_POINTER(a);
}

/* serialized: int32 k, int32 bits, int32 size, the query bytes, then size (key, index) pairs */
PG_FUNCTION_INFO_V1(segments_knn_serial);
Datum
segments_knn_serial(PG_FUNCTION_ARGS)
{
	KnnAggState *st = (KnnAggState *) PG_GETARG_POINTER(0);
	size_t		nbytes = ((size_t) st->bits + 7) / 8;
	size_t		len = 3 * sizeof(int32) + nbytes + st->size * sizeof(bp_topk_entry);
	bytea	   *out = palloc(VARHDRSZ + len);
	char	   *p = VARDATA(out);
	int32		head[3] = {st->k, st->bits, (int32) st->size};

	SET_VARSIZE(out, VARHDRSZ + len);
	memcpy(p, head, sizeof(head));
	memcpy(p + sizeof(head), st->query, nbytes);
	memcpy(p + sizeof(head) + nbytes, st->heap, st->size * sizeof(bp_topk_entry));
	PG_RETURN_BYTEA_P(out);
}

PG_FUNCTION_INFO_V1(segments_knn_deserial);
Datum
segments_knn_deserial(PG_FUNCTION_ARGS)
{
	MemoryContext aggcxt;
	bytea	   *in = PG_GETARG_BYTEA_PP(0);
	const char *p = VARDATA_ANY(in);
	size_t		len = VARSIZE_ANY_EXHDR(in);
	int32		head[3];
	size_t		nbytes;
	KnnAggState *st;

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		elog(ERROR, "bitpress_segments_knn called in a non-aggregate context");
	if (len < sizeof(head))
		elog(ERROR, "bitpress_segments_knn: malformed partial state");
	memcpy(head, p, sizeof(head));
	nbytes = head[1] >= 0 ? ((size_t) head[1] + 7) / 8 : 0;
	if (head[0] < 1 || head[1] < 0 || head[2] < 0 || head[2] > head[0] ||
		len != sizeof(head) + nbytes + (size_t) head[2] * sizeof(bp_topk_entry))
		elog(ERROR, "bitpress_segments_knn: malformed partial state");
	st = knn_state_new(aggcxt, head[0], head[1], (const uint8_t *) p + sizeof(head));
	knn_state_reserve(st, (size_t) head[2]);
	st->size = (size_t) head[2];
	memcpy(st->heap, p + sizeof(head) + nbytes, st->size * sizeof(bp_topk_entry));
	PG_RETURN_POINTER(st);
}

PG_FUNCTION_INFO_V1(segments_knn_final);
Datum
segments_knn_final(PG_FUNCTION_ARGS)
{
	KnnAggState *st = PG_ARGISNULL(0) ? NULL : (KnnAggState *) PG_GETARG_POINTER(0);
	Datum	   *elems;
	int			dims[2],
				lbs[2] = {1, 1};

	if (st == NULL || st->size == 0)
		PG_RETURN_NULL();
	bp_topk_finish(st->heap, st->size);		/* FINALFUNC_MODIFY = READ_WRITE */
	elems = palloc(sizeof(Datum) * 2 * st->size);
	for (size_t i = 0; i < st->size; i++)
	{
		elems[2 * i] = Int64GetDatum(bp_key_id(st->heap[i].index));
		elems[2 * i + 1] = Int64GetDatum((int64) st->heap[i].key);
	}
	dims[0] = (int) st->size;
	dims[1] = 2;
	PG_RETURN_ARRAYTYPE_P(construct_md_array(elems, NULL, 2, dims, lbs, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}
