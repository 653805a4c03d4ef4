/*
 * bitpress_ivf scan: ORDER BY vector <op> query, rows in exact-distance order.
 *
 * The query is rotated once; the bitpress.probes lists whose centroids are nearest are read,
 * each code giving an estimated distance and a lower bound (estimate - bitpress.epsilon error
 * bounds). Candidates are taken by lower bound and reranked with the exact distance from the
 * heap row (under the scan's snapshot); a row is returned once no candidate's lower bound can
 * still beat it. When the candidates run out (a large LIMIT, a WHERE that rejects rows), the
 * next nearest list is read, and so on through every list: a scan has no row cap.
 *
 * The rows returned are in exact-distance order. A row found nearer than one already returned
 * (its estimate erred by more than epsilon bounds, or it sits in a list read later) is not
 * returned out of order: it is held back and comes after every ordered row, so it is missed by
 * a LIMIT (as an approximate index misses rows) but never lost. Rows without a direction (NULL;
 * zero vectors for cosine) come last of all, as a sequential scan orders them.
 */
#include "postgres.h"

#include <float.h>
#include <math.h>

#include "access/relscan.h"
#include "access/tableam.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/bufmgr.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "bitpress.h"
#include "ivf.h"

typedef struct IvfEntry
{
	ItemPointerData tid;
	double		key;
} IvfEntry;

typedef struct IvfHeap
{
	IvfEntry   *e;
	size_t		n;
	size_t		cap;
} IvfHeap;

typedef struct IvfScanState
{
	MemoryContext ctx;			/* everything of one rescan */
	MemoryContext rowctx;		/* one heap fetch */
	bool		started;
	bool		ranked;			/* false: a NULL (or zero, for cosine) query: every row, in any order */
	IvfCache   *cache;
	int			metric;
	bool		half;			/* a halfvec column */
	int			dim;
	double		epsilon;
	float	   *q;				/* the query (cosine: normalized) */
	float	   *qr;				/* rotated */
	uint32	   *order;			/* lists, nearest centroid first */
	uint32		next;			/* the next list of order to read */
	BlockNumber *heads;
	BlockNumber unranked;
	int16_t    *lut;
	bp_ivf_query query;			/* quantized once; set per list */
	double	   *qc;				/* <qr, centroid> of each list */
	IvfHeap		pool;			/* candidates not yet in a batch (any order) */
	IvfHeap		cand;			/* min-heap on the lower bound: the smallest of the pool */
	IvfHeap		ready;			/* min-heap on the exact distance */
	IvfHeap		late;			/* rows nearer than one already returned (min-heap) */
	double		last;			/* the exact distance last returned */
	ItemPointerData *tail;		/* rows returned without distance (unranked, or all of them) */
	size_t		ntail;
	size_t		tailcap;
	size_t		tailpos;
	bool		tail_loaded;
	IndexFetchTableData *fetch;
	TupleTableSlot *slot;
	AttrNumber	attnum;
} IvfScanState;

/* ---- heaps ---- */

static void
heap_sift_down(IvfHeap *h, size_t i)
{
	for (;;)
	{
		size_t		l = 2 * i + 1,
					m = i;

		if (l < h->n && h->e[l].key < h->e[m].key)
			m = l;
		if (l + 1 < h->n && h->e[l + 1].key < h->e[m].key)
			m = l + 1;
		if (m == i)
			return;
		{
			IvfEntry	t = h->e[i];

			h->e[i] = h->e[m];
			h->e[m] = t;
		}
		i = m;
	}
}

static void
heap_append(IvfHeap *h, ItemPointer tid, double key)
{
	if (h->n == h->cap)
	{
		h->cap = h->cap ? h->cap * 2 : 1024;
		h->e = h->e ? repalloc_huge(h->e, h->cap * sizeof(IvfEntry))
			: MemoryContextAllocHuge(CurrentMemoryContext, h->cap * sizeof(IvfEntry));
	}
	h->e[h->n].tid = *tid;
	h->e[h->n].key = key;
	h->n++;
}

static void
heap_push(IvfHeap *h, ItemPointer tid, double key)
{
	size_t		i;

	heap_append(h, tid, key);
	for (i = h->n - 1; i > 0 && h->e[(i - 1) / 2].key > h->e[i].key; i = (i - 1) / 2)
	{
		IvfEntry	t = h->e[i];

		h->e[i] = h->e[(i - 1) / 2];
		h->e[(i - 1) / 2] = t;
	}
}

static void
heap_build(IvfHeap *h)
{
	for (size_t i = h->n / 2; i-- > 0;)
		heap_sift_down(h, i);
}

/*
 * Moves the (up to) IVF_BATCH candidates of the pool with the smallest lower bounds into the
 * (empty) candidate heap: every one left in the pool has a bound at least as large, so the
 * heap's top is the pool's minimum. A quickselect, so a scan never heapifies all it read.
 */
#define IVF_BATCH 128

static void
refill(IvfHeap *pool, IvfHeap *cand)
{
	IvfEntry   *e = pool->e;
	ptrdiff_t	n = (ptrdiff_t) pool->n,
				b = n < IVF_BATCH ? n : IVF_BATCH,
				k = n - b,
				lo = 0,
				hi = n - 1;

	/* descending order around position k: e[k..n) become the b smallest */
	while (lo < hi && k > 0)
	{
		double		pivot = e[lo + (hi - lo) / 2].key;
		ptrdiff_t	i = lo,
					j = hi;

		while (i <= j)
		{
			while (e[i].key > pivot)
				i++;
			while (e[j].key < pivot)
				j--;
			if (i <= j)
			{
				IvfEntry	t = e[i];

				e[i++] = e[j];
				e[j--] = t;
			}
		}
		if (k <= j)
			hi = j;
		else if (k >= i)
			lo = i;
		else
			break;
	}
	for (ptrdiff_t t = k; t < n; t++)
		heap_append(cand, &e[t].tid, e[t].key);
	pool->n = (size_t) k;
	heap_build(cand);
}

static IvfEntry
heap_pop(IvfHeap *h)
{
	IvfEntry	top = h->e[0];

	h->e[0] = h->e[--h->n];
	heap_sift_down(h, 0);
	return top;
}

/* ---- reading chains ---- */

static void
tail_add(IvfScanState *so, ItemPointer tid)
{
	if (so->ntail == so->tailcap)
	{
		so->tailcap = so->tailcap ? so->tailcap * 2 : 1024;
		so->tail = so->tail ? repalloc_huge(so->tail, so->tailcap * sizeof(ItemPointerData))
			: MemoryContextAllocHuge(so->ctx, so->tailcap * sizeof(ItemPointerData));
	}
	so->tail[so->ntail++] = *tid;
}

/*
 * Every item of the chain from head: with q, its lower bound into the candidates; without,
 * its TID onto the tail. Sizes and the chain's length are checked (a cycle is corruption).
 */
static void
read_chain(IndexScanDesc scan, BlockNumber head, const bp_ivf_query *q)
{
	IvfScanState *so = scan->opaque;
	Relation	index = scan->indexRelation;
	BlockNumber nblocks = RelationGetNumberOfBlocks(index);
	Size		cb = so->dim > 0 ? bp_ivf_code_bytes(so->dim, so->cache->meta.bits) : 0;
	BlockNumber pages = 0;
	const uint8_t *items[MaxOffsetNumber];
	double		lb[MaxOffsetNumber];
	int			nitems;

	for (BlockNumber blk = head; blk != InvalidBlockNumber;)
	{
		Buffer		buf;
		Page		page;
		OffsetNumber max;

		if (blk >= nblocks || ++pages > nblocks)
			ereport(ERROR,
					(errcode(ERRCODE_INDEX_CORRUPTED),
					 errmsg("index \"%s\" has a broken list chain at block %u",
							RelationGetRelationName(index), blk),
					 errhint("REINDEX the index.")));
		buf = ReadBuffer(index, blk);
		LockBuffer(buf, BUFFER_LOCK_SHARE);
		page = BufferGetPage(buf);
		ivf_check_page(index, buf, page, IVF_PAGE_CODES);
		max = PageGetMaxOffsetNumber(page);
		nitems = 0;
		for (OffsetNumber off = FirstOffsetNumber; off <= max; off++)
		{
			ItemId		iid = PageGetItemId(page, off);
			IvfItem    *item;

			if (!ItemIdIsNormal(iid))
				continue;
			item = (IvfItem *) PageGetItem(page, iid);
			if (q == NULL)
			{
				if (ItemIdGetLength(iid) < offsetof(IvfItem, code))
					goto corrupt;
				tail_add(so, &item->tid);
			}
			else
			{
				if (ItemIdGetLength(iid) != IVF_ITEM_SIZE(cb))
					goto corrupt;
				items[nitems++] = (const uint8_t *) item;
			}
		}
		if (nitems > 0)
		{
			bp_ivf_lower_bounds(q, items, nitems, offsetof(IvfItem, f), offsetof(IvfItem, code),
								so->metric, so->epsilon, lb);
			for (int i = 0; i < nitems; i++)
				heap_append(&so->pool, &((const IvfItem *) items[i])->tid, lb[i]);
		}
		blk = IvfOpaque(page)->next;
		UnlockReleaseBuffer(buf);
		continue;
corrupt:
		ereport(ERROR,
				(errcode(ERRCODE_INDEX_CORRUPTED),
				 errmsg("index \"%s\" has an item of the wrong size at block %u",
						RelationGetRelationName(index), blk),
				 errhint("REINDEX the index.")));
	}
}

static void
read_list(IndexScanDesc scan, uint32 list)
{
	IvfScanState *so = scan->opaque;

	bp_ivf_query_list(&so->query, so->qc[list], so->cache->cc[list]);
	read_chain(scan, so->heads[list], &so->query);
}

/* ---- start ---- */

static int
cmp_list_key(const void *a, const void *b, void *arg)
{
	const float *key = arg;
	float		x = key[*(const uint32 *) a],
				y = key[*(const uint32 *) b];

	if (x < y)
		return -1;
	if (x > y)
		return 1;
	return (*(const uint32 *) a > *(const uint32 *) b) - (*(const uint32 *) a < *(const uint32 *) b);
}

static void
start_scan(IndexScanDesc scan)
{
	IvfScanState *so = scan->opaque;
	Relation	index = scan->indexRelation;
	IvfMeta    *meta;
	Buffer		buf;
	uint32		lists;
	float	   *key;

	so->cache = ivf_cache(index);
	meta = &so->cache->meta;
	so->metric = meta->metric;
	so->half = ivf_half(index);
	so->dim = meta->dim;
	so->epsilon = ivf_epsilon;
	lists = meta->lists;

	/* the unranked chain's head, now */
	buf = ReadBuffer(index, IVF_META_BLKNO);
	LockBuffer(buf, BUFFER_LOCK_SHARE);
	{
		IvfMeta		now;

		ivf_get_meta(index, buf, &now);
		so->unranked = now.unranked;
	}
	UnlockReleaseBuffer(buf);

	so->ranked = false;
	so->last = -INFINITY;
	if (scan->numberOfOrderBys > 0 && !(scan->orderByData[0].sk_flags & SK_ISNULL))
	{
		int			dim;

		so->q = ivf_vector(index, scan->orderByData[0].sk_argument, so->half, so->metric, so->dim,
						   &dim);
		so->ranked = so->q != NULL;
		if (so->dim == 0)
			so->dim = dim;
	}
	if (lists == 0)
		return;

	so->heads = palloc(lists * sizeof(BlockNumber));
	ivf_read_stream(index, meta->heads, so->heads, lists * sizeof(BlockNumber), IVF_PAGE_HEADS);
	if (!so->ranked)
	{
		for (uint32 l = 0; l < lists; l++)
			read_chain(scan, so->heads[l], NULL);
		return;
	}

	so->qr = palloc(so->dim * sizeof(float));
	bp_ivf_rotate(so->q, so->dim, meta->seed, so->qr);
	so->lut = MemoryContextAllocHuge(so->ctx, bp_ivf_query_entries(so->dim) * sizeof(int16_t));
	bp_ivf_query_prep(so->qr, so->dim, meta->bits, &so->query, so->lut);
	key = palloc(lists * sizeof(float));
	so->qc = palloc(lists * sizeof(double));
	so->order = palloc(lists * sizeof(uint32));
	for (uint32 l = 0; l < lists; l++)
	{
		so->qc[l] = bp_dot(so->qr, so->cache->centroids + (Size) l * so->dim, so->dim);
		/* L2: |qr - c|^2 less |qr|^2; otherwise minus the inner product */
		key[l] = so->metric == BP_METRIC_L2 ? so->cache->cc[l] - 2 * so->qc[l] : -so->qc[l];
		so->order[l] = l;
	}
	qsort_arg(so->order, lists, sizeof(uint32), cmp_list_key, key);
	pfree(key);
	for (so->next = 0; so->next < lists && so->next < (uint32) ivf_probes; so->next++)
	{
		CHECK_FOR_INTERRUPTS();
		read_list(scan, so->order[so->next]);
	}
}

/* the exact distance of the heap row tid under the scan's snapshot; false if not visible */
static bool
exact_distance(IndexScanDesc scan, ItemPointer tid, double *d)
{
	IvfScanState *so = scan->opaque;
	ItemPointerData t = *tid;
	bool		call_again = false,
				all_dead = false,
				found,
				isnull;
	Datum		value;
	MemoryContext old;

	if (so->fetch == NULL)
	{
		if (scan->heapRelation == NULL)
			elog(ERROR, "bitpress_ivf: a scan without its table");
		old = MemoryContextSwitchTo(so->ctx);
		so->fetch = table_index_fetch_begin(scan->heapRelation);
		so->slot = table_slot_create(scan->heapRelation, NULL);
		MemoryContextSwitchTo(old);
	}
	found = table_index_fetch_tuple(so->fetch, &t, scan->xs_snapshot, so->slot, &call_again,
									&all_dead);
	if (!found)
		return false;
	value = slot_getattr(so->slot, so->attnum, &isnull);
	if (isnull)
		found = false;
	else
	{
		float	   *v;
		int			dim;

		old = MemoryContextSwitchTo(so->rowctx);
		v = ivf_floats(value, so->half, &dim);
		if (dim != so->dim)
			found = false;		/* not the row the index entry was made for */
		else
			*d = bp_ivf_distance(so->metric, v, so->q, so->dim);
		MemoryContextSwitchTo(old);
		MemoryContextReset(so->rowctx);
	}
	ExecClearTuple(so->slot);
	return found && !isnan(*d);
}

/* the distance as the operator returns it (the index keeps L2 squared) */
static double
operator_value(int metric, double d)
{
	return metric == BP_METRIC_L2 ? sqrt(d) : d;
}

static bool
return_tid(IndexScanDesc scan, ItemPointer tid, double d, bool isnull)
{
	IvfScanState *so = scan->opaque;

	scan->xs_heaptid = *tid;
	scan->xs_recheck = false;
	scan->xs_recheckorderby = false;
	if (scan->numberOfOrderBys > 0)
	{
		scan->xs_orderbyvals[0] = Float8GetDatum(isnull ? 0.0 : operator_value(so->metric, d));
		scan->xs_orderbynulls[0] = isnull;
	}
	return true;
}

bool
ivfgettuple(IndexScanDesc scan, ScanDirection dir)
{
	IvfScanState *so = scan->opaque;
	MemoryContext old = MemoryContextSwitchTo(so->ctx);
	bool		result = false;

	if (!ScanDirectionIsForward(dir))
		elog(ERROR, "bitpress_ivf scans forward only");
	if (!so->started)
	{
		start_scan(scan);
		so->started = true;
	}
	while (so->ranked)
	{
		double		bound;
		IvfEntry	c;
		double		d;

		if (so->cand.n == 0 && so->pool.n > 0)
			refill(&so->pool, &so->cand);
		bound = so->cand.n ? so->cand.e[0].key : INFINITY;

		if (so->ready.n && so->ready.e[0].key <= bound)
		{
			c = heap_pop(&so->ready);
			so->last = c.key;
			result = return_tid(scan, &c.tid, c.key, false);
			goto done;
		}
		if (so->cand.n == 0)
		{
			/* the pool is empty too (refill above) */
			if (so->next < so->cache->meta.lists)
			{
				CHECK_FOR_INTERRUPTS();
				read_list(scan, so->order[so->next++]);
				continue;
			}
			if (so->ready.n == 0)
				break;
			continue;			/* bound is infinite: the ready rows go out */
		}
		c = heap_pop(&so->cand);
		if (exact_distance(scan, &c.tid, &d))
			heap_push(d < so->last ? &so->late : &so->ready, &c.tid, d);
	}
	if (so->late.n)
	{
		IvfEntry	c = heap_pop(&so->late);

		result = return_tid(scan, &c.tid, c.key, false);
		goto done;
	}
	if (!so->tail_loaded)
	{
		read_chain(scan, so->unranked, NULL);
		so->tail_loaded = true;
	}
	if (so->tailpos < so->ntail)
		result = return_tid(scan, &so->tail[so->tailpos++], 0, true);
done:
	MemoryContextSwitchTo(old);
	return result;
}

IndexScanDesc
ivfbeginscan(Relation index, int nkeys, int norderbys)
{
	IndexScanDesc scan = RelationGetIndexScan(index, nkeys, norderbys);
	IvfScanState *so = palloc0(sizeof(IvfScanState));

	so->ctx = AllocSetContextCreate(CurrentMemoryContext, "bitpress_ivf scan",
									ALLOCSET_DEFAULT_SIZES);
	so->rowctx = AllocSetContextCreate(so->ctx, "bitpress_ivf row", ALLOCSET_SMALL_SIZES);
	so->attnum = index->rd_index->indkey.values[0];
	if (norderbys > 0)
	{
		scan->xs_orderbyvals = palloc0(norderbys * sizeof(Datum));
		scan->xs_orderbynulls = palloc(norderbys * sizeof(bool));
		memset(scan->xs_orderbynulls, true, norderbys * sizeof(bool));
	}
	scan->opaque = so;
	return scan;
}

static void
end_fetch(IvfScanState *so)
{
	if (so->slot)
		ExecDropSingleTupleTableSlot(so->slot);
	if (so->fetch)
		table_index_fetch_end(so->fetch);
	so->slot = NULL;
	so->fetch = NULL;
}

void
ivfrescan(IndexScanDesc scan, ScanKey keys, int nkeys, ScanKey orderbys, int norderbys)
{
	IvfScanState *so = scan->opaque;
	MemoryContext ctx = so->ctx;
	AttrNumber	attnum = so->attnum;

	end_fetch(so);
	MemoryContextReset(ctx);
	memset(so, 0, sizeof(*so));
	so->ctx = ctx;
	so->rowctx = AllocSetContextCreate(ctx, "bitpress_ivf row", ALLOCSET_SMALL_SIZES);
	so->attnum = attnum;
	if (keys && scan->numberOfKeys > 0)
		memmove(scan->keyData, keys, scan->numberOfKeys * sizeof(ScanKeyData));
	if (orderbys && scan->numberOfOrderBys > 0)
		memmove(scan->orderByData, orderbys, scan->numberOfOrderBys * sizeof(ScanKeyData));
}

void
ivfendscan(IndexScanDesc scan)
{
	IvfScanState *so = scan->opaque;

	end_fetch(so);
	MemoryContextDelete(so->ctx);
	pfree(so);
	scan->opaque = NULL;
}
