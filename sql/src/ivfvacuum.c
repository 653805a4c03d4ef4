/*
 * bitpress_ivf VACUUM: every code page is read once and the items whose heap rows are dead
 * are removed (generic WAL). Pages stay in their chains; inserts fill the room made.
 */
#include "postgres.h"

#include "access/generic_xlog.h"
#include "commands/vacuum.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "utils/rel.h"

#include "ivf.h"

IndexBulkDeleteResult *
ivfbulkdelete(IndexVacuumInfo *info, IndexBulkDeleteResult *stats,
			  IndexBulkDeleteCallback callback, void *callback_state)
{
	Relation	index = info->index;
	BlockNumber nblocks = RelationGetNumberOfBlocks(index);

	if (stats == NULL)
		stats = palloc0(sizeof(IndexBulkDeleteResult));
	for (BlockNumber blk = IVF_META_BLKNO + 1; blk < nblocks; blk++)
	{
		Buffer		buf;
		Page		page;
		OffsetNumber dead[MaxOffsetNumber];
		int			ndead = 0;
		OffsetNumber max;

		vacuum_delay_point();
		buf = ReadBufferExtended(index, MAIN_FORKNUM, blk, RBM_NORMAL, info->strategy);
		LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
		page = BufferGetPage(buf);
		if (PageIsNew(page) || IvfOpaque(page)->kind != IVF_PAGE_CODES)
		{
			/* a page left new by a crash during an extension, or a stream page */
			UnlockReleaseBuffer(buf);
			continue;
		}
		ivf_check_page(index, buf, page, IVF_PAGE_CODES);
		max = PageGetMaxOffsetNumber(page);
		for (OffsetNumber off = FirstOffsetNumber; off <= max; off++)
		{
			ItemId		iid = PageGetItemId(page, off);
			IvfItem    *item;

			if (!ItemIdIsNormal(iid) || ItemIdGetLength(iid) < offsetof(IvfItem, code))
				continue;
			item = (IvfItem *) PageGetItem(page, iid);
			if (callback(&item->tid, callback_state))
				dead[ndead++] = off;
			else
				stats->num_index_tuples++;
		}
		if (ndead > 0)
		{
			GenericXLogState *state = GenericXLogStart(index);

			page = GenericXLogRegisterBuffer(state, buf, 0);
			PageIndexMultiDelete(page, dead, ndead);
			GenericXLogFinish(state);
			stats->tuples_removed += ndead;
		}
		UnlockReleaseBuffer(buf);
	}
	stats->num_pages = nblocks;
	return stats;
}

IndexBulkDeleteResult *
ivfvacuumcleanup(IndexVacuumInfo *info, IndexBulkDeleteResult *stats)
{
	if (info->analyze_only)
		return stats;
	if (stats == NULL)
	{
		/* no bulk delete ran: count the items */
		Relation	index = info->index;
		BlockNumber nblocks = RelationGetNumberOfBlocks(index);

		stats = palloc0(sizeof(IndexBulkDeleteResult));
		for (BlockNumber blk = IVF_META_BLKNO + 1; blk < nblocks; blk++)
		{
			Buffer		buf = ReadBufferExtended(index, MAIN_FORKNUM, blk, RBM_NORMAL,
												 info->strategy);
			Page		page;

			LockBuffer(buf, BUFFER_LOCK_SHARE);
			page = BufferGetPage(buf);
			if (!PageIsNew(page) && IvfOpaque(page)->kind == IVF_PAGE_CODES)
				stats->num_index_tuples += PageGetMaxOffsetNumber(page);
			UnlockReleaseBuffer(buf);
		}
		stats->num_pages = nblocks;
	}
	return stats;
}
