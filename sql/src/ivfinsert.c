/*
 * bitpress_ivf insert: a row's code goes to the newest page of its nearest list's chain, or to
 * a new page put at the chain's head when that one is full. NULL rows (zero vectors, for
 * cosine) go to the unranked chain whose head is on the meta page. Every change is generic WAL.
 *
 * Locks: a code page alone (when it has room), or the page holding the head pointer and then a
 * new page; never two code pages, so inserts, scans and VACUUM cannot deadlock.
 */
#include "postgres.h"

#include "access/generic_xlog.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/lmgr.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "bitpress.h"
#include "ivf.h"

static Buffer
new_buffer(Relation index)
{
	Buffer		buf;

	LockRelationForExtension(index, ExclusiveLock);
	buf = ReadBuffer(index, P_NEW);
	LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
	UnlockRelationForExtension(index, ExclusiveLock);
	return buf;
}

static BlockNumber *
head_pointer(Page page, uint32 offset)
{
	return (BlockNumber *) ((char *) PageGetContents(page) + offset);
}

/* item into the chain whose head pointer is at (hblk, offset) on a page of kind hkind */
static void
chain_insert(Relation index, BlockNumber hblk, uint32 offset, uint16 hkind, IvfItem *item,
			 Size size)
{
	for (;;)
	{
		Buffer		hbuf = ReadBuffer(index, hblk),
					nbuf;
		BlockNumber head;
		GenericXLogState *state;
		Page		np,
					hp;

		LockBuffer(hbuf, BUFFER_LOCK_SHARE);
		ivf_check_page(index, hbuf, BufferGetPage(hbuf), hkind);
		head = *head_pointer(BufferGetPage(hbuf), offset);
		LockBuffer(hbuf, BUFFER_LOCK_UNLOCK);

		if (head != InvalidBlockNumber)
		{
			Buffer		buf = ReadBuffer(index, head);

			LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
			ivf_check_page(index, buf, BufferGetPage(buf), IVF_PAGE_CODES);
			if (PageGetFreeSpace(BufferGetPage(buf)) >= MAXALIGN(size))
			{
				Page		page;

				state = GenericXLogStart(index);
				page = GenericXLogRegisterBuffer(state, buf, 0);
				if (PageAddItem(page, (Item) item, size, InvalidOffsetNumber, false, false) ==
					InvalidOffsetNumber)
					elog(ERROR, "bitpress_ivf: failed to add an item to block %u", head);
				GenericXLogFinish(state);
				UnlockReleaseBuffer(buf);
				ReleaseBuffer(hbuf);
				return;
			}
			UnlockReleaseBuffer(buf);
		}

		/* a new head page, under the head pointer's exclusive lock */
		LockBuffer(hbuf, BUFFER_LOCK_EXCLUSIVE);
		if (*head_pointer(BufferGetPage(hbuf), offset) != head)
		{
			UnlockReleaseBuffer(hbuf);	/* another insert moved the head: try again */
			continue;
		}
		nbuf = new_buffer(index);
		state = GenericXLogStart(index);
		np = GenericXLogRegisterBuffer(state, nbuf, GENERIC_XLOG_FULL_IMAGE);
		hp = GenericXLogRegisterBuffer(state, hbuf, 0);
		ivf_init_page(np, IVF_PAGE_CODES);
		IvfOpaque(np)->next = head;
		if (PageAddItem(np, (Item) item, size, InvalidOffsetNumber, false, false) ==
			InvalidOffsetNumber)
			elog(ERROR, "bitpress_ivf: failed to add an item to a new page");
		*head_pointer(hp, offset) = BufferGetBlockNumber(nbuf);
		GenericXLogFinish(state);
		UnlockReleaseBuffer(nbuf);
		UnlockReleaseBuffer(hbuf);
		return;
	}
}

/*
 * An index built on a table without vectors has no list: the first vector makes one, with a
 * zero centroid (REINDEX once the table holds data gives real lists).
 */
static IvfCache *
first_list(Relation index, int dim)
{
	Buffer		mbuf = ReadBuffer(index, IVF_META_BLKNO),
				hbuf;
	IvfMeta		meta;
	Size		bytes = (Size) dim * sizeof(float);
	BlockNumber first = InvalidBlockNumber;
	GenericXLogState *state;
	Page		hp;

	LockBuffer(mbuf, BUFFER_LOCK_EXCLUSIVE);
	ivf_get_meta(index, mbuf, &meta);
	if (meta.lists > 0)
	{
		UnlockReleaseBuffer(mbuf);
		return ivf_cache(index);
	}
	/* the centroid pages, each logged; unreferenced until the meta page names them */
	for (Size done = 0; done < bytes; done += IVF_STREAM_BYTES)
	{
		Buffer		cbuf = new_buffer(index);
		Page		cp;

		state = GenericXLogStart(index);
		cp = GenericXLogRegisterBuffer(state, cbuf, GENERIC_XLOG_FULL_IMAGE);
		ivf_init_page(cp, IVF_PAGE_CENTROIDS);
		((PageHeader) cp)->pd_lower += (LocationIndex) Min(bytes - done, (Size) IVF_STREAM_BYTES);
		GenericXLogFinish(state);
		if (first == InvalidBlockNumber)
			first = BufferGetBlockNumber(cbuf);
		UnlockReleaseBuffer(cbuf);
	}
	hbuf = new_buffer(index);
	state = GenericXLogStart(index);
	hp = GenericXLogRegisterBuffer(state, hbuf, GENERIC_XLOG_FULL_IMAGE);
	ivf_init_page(hp, IVF_PAGE_HEADS);
	*head_pointer(hp, 0) = InvalidBlockNumber;
	((PageHeader) hp)->pd_lower += sizeof(BlockNumber);
	meta.dim = dim;
	meta.lists = 1;
	meta.centroids = first;
	meta.heads = BufferGetBlockNumber(hbuf);
	ivf_put_meta(GenericXLogRegisterBuffer(state, mbuf, 0), &meta);
	GenericXLogFinish(state);
	UnlockReleaseBuffer(hbuf);
	UnlockReleaseBuffer(mbuf);
	return ivf_cache(index);
}

bool
ivfinsert(Relation index, Datum *values, bool *isnull, ItemPointer heap_tid, Relation heap,
		  IndexUniqueCheck checkUnique, bool indexUnchanged, IndexInfo *indexInfo)
{
	MemoryContext ctx = AllocSetContextCreate(CurrentMemoryContext, "bitpress_ivf insert",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(ctx);
	IvfCache   *c = ivf_cache(index);
	float	   *x = NULL;
	int			dim = 0;
	IvfItem    *item;
	Size		cb;

	if (!isnull[0])
		x = ivf_vector(index, values[0], ivf_half(index), c->meta.metric, c->meta.dim, &dim);
	if (x == NULL)
	{
		item = palloc0(offsetof(IvfItem, code));
		item->tid = *heap_tid;
		chain_insert(index, IVF_META_BLKNO, offsetof(IvfMeta, unranked), IVF_PAGE_META, item,
					 offsetof(IvfItem, code));
	}
	else
	{
		float	   *xr = palloc(dim * sizeof(float));
		uint32		list,
					offset;
		BlockNumber hblk;
		bp_status	st;

		if (c->meta.lists == 0)
			c = first_list(index, dim);
		cb = bp_ivf_code_bytes(dim, c->meta.bits);
		item = palloc0(IVF_ITEM_SIZE(cb));
		item->tid = *heap_tid;
		bp_ivf_rotate(x, dim, c->meta.seed, xr);
		list = (uint32) bp_ivf_nearest(xr, c->centroids, c->meta.lists, dim,
									   IVF_SPHERICAL(c->meta.metric), NULL);
		st = bp_ivf_encode(xr, c->centroids + (Size) list * dim, dim, c->meta.bits,
						   palloc(cb + dim * sizeof(float) + 8), item->code, &item->f);
		if (st != BP_OK)
			report(st, 0, 0);
		hblk = ivf_head_block(&c->meta, list, &offset);
		chain_insert(index, hblk, offset, IVF_PAGE_HEADS, item, IVF_ITEM_SIZE(cb));
	}
	MemoryContextSwitchTo(old);
	MemoryContextDelete(ctx);
	return false;
}
