/*
 * bitpress_ivf build: two passes over the table. The first draws a seeded reservoir sample
 * (within maintenance_work_mem) for k-means; the second codes every row into its list, one page
 * buffer per list, each full page appended to the index and chained to the list's previous one.
 * NULL rows (and, for cosine, zero vectors, which have no direction) go to an extra chain the
 * scans return last, as a sequential scan orders them, so the index holds every row.
 */
#include "postgres.h"

#include "access/generic_xlog.h"
#include "access/tableam.h"
#include "access/xloginsert.h"
#include "catalog/index.h"
#include "commands/progress.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/bufmgr.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "bitpress.h"
#include "ivf.h"

typedef struct IvfBuild
{
	Relation	index;
	int			metric;
	bool		half;			/* a halfvec column */
	int			dim;			/* 0 until a vector says */
	int			bits;
	int			lists;			/* asked */
	MemoryContext tmpctx;

	/* pass 1: reservoir sample */
	float	   *sample;
	int64		cap;
	int64		nsample;
	int64		seen;			/* vectors that have a direction */
	int64		rows;
	uint64_t	rng;

	/* pass 2 */
	uint32		nlists;			/* lists made: min(asked, sample) */
	float	   *centroids;
	Page	   *pages;			/* nlists + 1 page buffers (the last: the unranked chain) */
	BlockNumber *heads;
	float	   *xr;
	float	   *scratch;
	IvfItem    *item;
	Size		cb;
	double		indtuples;
} IvfBuild;

static int
dims_of_column(Relation index)
{
	int32		typmod = TupleDescAttr(RelationGetDescr(index), 0)->atttypmod;

	return typmod > 0 ? typmod : 0;
}

static BlockNumber
append_page(Relation index, Page src)
{
	Buffer		buf = ReadBufferExtended(index, MAIN_FORKNUM, P_NEW, RBM_NORMAL, NULL);
	BlockNumber blk;

	LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
	memcpy(BufferGetPage(buf), src, BLCKSZ);
	MarkBufferDirty(buf);
	blk = BufferGetBlockNumber(buf);
	UnlockReleaseBuffer(buf);
	return blk;
}

static void
overwrite_page(Relation index, BlockNumber blk, Page src)
{
	Buffer		buf = ReadBuffer(index, blk);

	LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
	memcpy(BufferGetPage(buf), src, BLCKSZ);
	MarkBufferDirty(buf);
	UnlockReleaseBuffer(buf);
}

/* pages of a stream of bytes (first block returned); with data NULL, zeroed placeholders */
static BlockNumber
write_stream(Relation index, const void *data, Size bytes, uint16 kind, BlockNumber at)
{
	PGAlignedBlock page;
	BlockNumber first = InvalidBlockNumber;
	const char *p = data;

	do
	{
		Size		n = Min(bytes, (Size) IVF_STREAM_BYTES);
		BlockNumber b;

		ivf_init_page(page.data, kind);
		if (p)
			memcpy(PageGetContents(page.data), p, n);
		((PageHeader) page.data)->pd_lower = (char *) PageGetContents(page.data) + n - page.data;
		if (at != InvalidBlockNumber)
			overwrite_page(index, b = at++, page.data);
		else
			b = append_page(index, page.data);
		if (first == InvalidBlockNumber)
			first = b;
		if (p)
			p += n;
		bytes -= n;
	} while (bytes > 0);
	return first;
}

static int
kmeans_progress(void *arg, int done, int total)
{
	CHECK_FOR_INTERRUPTS();
	return 0;
}

static void
sample_callback(Relation heap, ItemPointer tid, Datum *values, bool *isnull, bool tupleIsAlive,
				void *state)
{
	IvfBuild   *b = state;
	MemoryContext old;
	float	   *x;
	int			dim;
	int64		slot;

	b->rows++;
	if (isnull[0])
		return;
	old = MemoryContextSwitchTo(b->tmpctx);
	x = ivf_vector(b->index, values[0], b->half, b->metric, b->dim, &dim);
	MemoryContextSwitchTo(old);
	if (x != NULL)
	{
		if (b->dim == 0)
			b->dim = dim;
		if (b->sample == NULL)
		{
			/* lists x IVF_SAMPLE_PER_LIST rows, as maintenance_work_mem allows */
			Size		budget = (Size) maintenance_work_mem * 1024 / 2;
			Size		row = (Size) b->dim * sizeof(float);

			b->cap = Min((int64) b->lists * IVF_SAMPLE_PER_LIST, (int64) (budget / row));
			if (b->cap < b->lists)
				ereport(ERROR,
						(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						 errmsg("maintenance_work_mem is too small for %d lists of %d dimensions",
								b->lists, b->dim),
						 errhint("Set maintenance_work_mem to at least %zu kB, or use fewer lists.",
								 (Size) b->lists * row * 2 / 1024 + 1)));
			b->sample = MemoryContextAllocHuge(CurrentMemoryContext, b->cap * row);
		}
		if (b->nsample < b->cap)
			slot = b->nsample++;
		else
		{
			slot = (int64) (bp_ivf_random(&b->rng) % (uint64_t) (b->seen + 1));
			if (slot >= b->cap)
				slot = -1;
		}
		if (slot >= 0)
			memcpy(b->sample + slot * b->dim, x, b->dim * sizeof(float));
		b->seen++;
	}
	MemoryContextReset(b->tmpctx);
}

static void
flush_list(IvfBuild *b, uint32 list)
{
	Page		page = b->pages[list];

	if (PageGetMaxOffsetNumber(page) == 0)
		return;
	IvfOpaque(page)->next = b->heads[list];
	b->heads[list] = append_page(b->index, page);
	ivf_init_page(page, IVF_PAGE_CODES);
}

static void
add_item(IvfBuild *b, uint32 list, Size size)
{
	if (PageGetFreeSpace(b->pages[list]) < MAXALIGN(size))
		flush_list(b, list);
	if (PageAddItem(b->pages[list], (Item) b->item, size, InvalidOffsetNumber, false, false) ==
		InvalidOffsetNumber)
		elog(ERROR, "bitpress_ivf: failed to add an item to a fresh page");
	b->indtuples++;
}

static void
code_callback(Relation heap, ItemPointer tid, Datum *values, bool *isnull, bool tupleIsAlive,
			  void *state)
{
	IvfBuild   *b = state;
	MemoryContext old = MemoryContextSwitchTo(b->tmpctx);
	float	   *x = NULL;
	int			dim;

	if (!isnull[0])
		x = ivf_vector(b->index, values[0], b->half, b->metric, b->dim, &dim);
	memset(b->item, 0, IVF_ITEM_SIZE(b->cb));
	b->item->tid = *tid;
	if (x == NULL)
		add_item(b, b->nlists, offsetof(IvfItem, code));
	else
	{
		uint32		list;
		bp_status	st;

		bp_ivf_rotate(x, b->dim, IVF_SEED, b->xr);
		list = (uint32) bp_ivf_nearest(b->xr, b->centroids, b->nlists, b->dim,
									   IVF_SPHERICAL(b->metric), NULL);
		st = bp_ivf_encode(b->xr, b->centroids + (Size) list * b->dim, b->dim, b->bits, b->scratch,
						   b->item->code, &b->item->f);
		if (st != BP_OK)
			report(st, 0, 0);
		add_item(b, list, IVF_ITEM_SIZE(b->cb));
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(b->tmpctx);
	if ((int64) b->indtuples % 1024 == 0)
		pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_DONE, (int64) b->indtuples);
}

IndexBuildResult *
ivfbuild(Relation heap, Relation index, IndexInfo *indexInfo)
{
	IndexBuildResult *result = palloc0(sizeof(IndexBuildResult));
	IvfOptions *opts = (IvfOptions *) index->rd_options;
	IvfBuild	b = {0};
	IvfMeta		meta = {0};
	PGAlignedBlock metapage;
	double		reltuples;
	Size		row;

	if (RelationGetNumberOfBlocks(index) != 0)
		elog(ERROR, "index \"%s\" already contains data", RelationGetRelationName(index));
	if (indexInfo->ii_IndexAttrNumbers[0] == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("bitpress_ivf indexes a column, not an expression"),
				 errhint("Index the column itself; a generated column can hold the expression.")));
	b.index = index;
	b.metric = ivf_metric(index);
	b.half = ivf_half(index);
	b.dim = dims_of_column(index);
	b.bits = opts ? opts->bits : IVF_DEFAULT_BITS;
	b.lists = opts ? opts->lists : IVF_DEFAULT_LISTS;
	b.rng = IVF_SEED;
	b.tmpctx = AllocSetContextCreate(CurrentMemoryContext, "bitpress_ivf build row",
									 ALLOCSET_DEFAULT_SIZES);

	/* pass 1: sample */
	pgstat_progress_update_param(PROGRESS_CREATEIDX_SUBPHASE, IVF_PHASE_SAMPLE);
	reltuples = table_index_build_scan(heap, index, indexInfo, true, true, sample_callback, &b, NULL);

	/* k-means on the rotated sample */
	pgstat_progress_update_param(PROGRESS_CREATEIDX_SUBPHASE, IVF_PHASE_KMEANS);
	b.nlists = (uint32) Min((int64) b.lists, b.nsample);
	row = (Size) b.dim * sizeof(float);
	if (b.nlists > 0)
	{
		void	   *scratch;
		bp_status	st;

		for (int64 i = 0; i < b.nsample; i++)
			bp_ivf_rotate(b.sample + i * b.dim, b.dim, IVF_SEED, b.sample + i * b.dim);
		b.centroids = palloc(b.nlists * row);
		scratch = MemoryContextAllocHuge(CurrentMemoryContext,
										 bp_kmeans_scratch_bytes(b.nsample, b.nlists, b.dim));
		st = bp_kmeans(b.sample, b.nsample, b.dim, b.nlists, IVF_KMEANS_ITERS, IVF_SEED,
					   IVF_SPHERICAL(b.metric), b.centroids, scratch, kmeans_progress, NULL);
		if (st != BP_OK)
			report(st, 0, 0);
		pfree(scratch);
		pfree(b.sample);
		b.sample = NULL;
	}

	/* meta, centroids, head placeholders */
	meta.magic = IVF_MAGIC;
	meta.version = IVF_VERSION;
	meta.dim = b.dim;
	meta.lists = b.nlists;
	meta.bits = b.bits;
	meta.metric = b.metric;
	meta.seed = IVF_SEED;
	meta.centroids = InvalidBlockNumber;
	meta.heads = InvalidBlockNumber;
	meta.unranked = InvalidBlockNumber;
	ivf_put_meta(metapage.data, &meta);
	append_page(index, metapage.data);
	b.heads = palloc((b.nlists + 1) * sizeof(BlockNumber));
	for (uint32 l = 0; l <= b.nlists; l++)
		b.heads[l] = InvalidBlockNumber;
	if (b.nlists > 0)
	{
		meta.centroids = write_stream(index, b.centroids, b.nlists * row, IVF_PAGE_CENTROIDS,
									  InvalidBlockNumber);
		meta.heads = write_stream(index, NULL, b.nlists * sizeof(BlockNumber), IVF_PAGE_HEADS,
								  InvalidBlockNumber);
	}

	/* pass 2: codes, one page buffer per list and one for the unranked rows (the last) */
	if ((Size) (b.nlists + 1) * BLCKSZ > (Size) maintenance_work_mem * 1024)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("maintenance_work_mem is too small for %u lists", b.nlists),
				 errhint("Set maintenance_work_mem to at least %zu kB, or use fewer lists.",
						 (Size) (b.nlists + 1) * BLCKSZ / 1024 + 1)));
	pgstat_progress_update_param(PROGRESS_CREATEIDX_SUBPHASE, IVF_PHASE_ASSIGN);
	pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_TOTAL, b.rows);
	b.pages = palloc((b.nlists + 1) * sizeof(Page));
	for (uint32 l = 0; l <= b.nlists; l++)
	{
		b.pages[l] = palloc(BLCKSZ);
		ivf_init_page(b.pages[l], IVF_PAGE_CODES);
	}
	b.cb = bp_ivf_code_bytes(Max(b.dim, 1), b.bits);
	b.xr = palloc(Max(row, sizeof(float)));
	b.scratch = palloc(b.cb + row + 8);
	b.item = palloc0(IVF_ITEM_SIZE(b.cb));
	if (b.rows > 0)
		table_index_build_scan(heap, index, indexInfo, true, true, code_callback, &b, NULL);
	for (uint32 l = 0; l <= b.nlists; l++)
		flush_list(&b, l);
	if (b.nlists > 0)
		write_stream(index, b.heads, b.nlists * sizeof(BlockNumber), IVF_PAGE_HEADS, meta.heads);
	meta.unranked = b.heads[b.nlists];
	ivf_put_meta(metapage.data, &meta);
	overwrite_page(index, IVF_META_BLKNO, metapage.data);

	if (RelationNeedsWAL(index))
		log_newpage_range(index, MAIN_FORKNUM, 0, RelationGetNumberOfBlocks(index), true);

	MemoryContextDelete(b.tmpctx);
	result->heap_tuples = reltuples;
	result->index_tuples = b.indtuples;
	return result;
}

/* an unlogged table's init fork: an index of no lists, the first insert makes one */
void
ivfbuildempty(Relation index)
{
	Buffer		buf = ReadBufferExtended(index, INIT_FORKNUM, P_NEW, RBM_NORMAL, NULL);
	GenericXLogState *state;
	IvfMeta		meta = {0};

	LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
	state = GenericXLogStart(index);
	meta.magic = IVF_MAGIC;
	meta.version = IVF_VERSION;
	meta.dim = dims_of_column(index);
	meta.bits = ((IvfOptions *) index->rd_options) ? ((IvfOptions *) index->rd_options)->bits
		: IVF_DEFAULT_BITS;
	meta.metric = ivf_metric(index);
	meta.seed = IVF_SEED;
	meta.centroids = InvalidBlockNumber;
	meta.heads = InvalidBlockNumber;
	meta.unranked = InvalidBlockNumber;
	ivf_put_meta(GenericXLogRegisterBuffer(state, buf, GENERIC_XLOG_FULL_IMAGE), &meta);
	GenericXLogFinish(state);
	UnlockReleaseBuffer(buf);
}

char *
ivfbuildphasename(int64 phase)
{
	switch (phase)
	{
		case PROGRESS_CREATEIDX_SUBPHASE_INITIALIZE:
			return "initializing";
		case IVF_PHASE_SAMPLE:
			return "sampling rows";
		case IVF_PHASE_KMEANS:
			return "performing k-means";
		case IVF_PHASE_ASSIGN:
			return "coding rows";
		default:
			return NULL;
	}
}
