/*
 * bitpress_ivf: an index access method over pgvector's vector and halfvec, IVF lists of RaBitQ codes
 * (pyext/bp_ivf.c computes; these files keep pages). Not a public header.
 *
 * Pages (every one has an IvfPageOpaque in its special space):
 *   block 0            the meta page (IvfMeta)
 *   centroid pages     the lists' rotated centroids, one float stream (lists x dim floats)
 *   head pages         each list's newest code page, a stream of lists BlockNumbers
 *                      (the meta page holds the head of the unranked chain: NULL rows)
 *   code pages         items (IvfItem: heap TID, factors, code) of one list; each page points
 *                      to the list's previous (older) page, so a list is a chain from its head
 * Streams fill the contents of consecutive pages, IVF_STREAM_BYTES each, so no 4-byte entry
 * straddles a page. Every change after the build is WAL-logged with generic WAL.
 */
#ifndef BITPRESS_IVF_H
#define BITPRESS_IVF_H

#include "postgres.h"

#include "access/amapi.h"
#include "access/generic_xlog.h"
#include "access/reloptions.h"
#include "nodes/execnodes.h"
#include "nodes/pathnodes.h"
#include "storage/bufmgr.h"
#include "utils/relcache.h"

#include "bp_core.h"

#define IVF_MAGIC 0x62706976	/* "bpiv" */
#define IVF_VERSION 1
#define IVF_PAGE_ID 0xB1F0

#define IVF_META_BLKNO 0
#define IVF_PAGE_META 1
#define IVF_PAGE_CENTROIDS 2
#define IVF_PAGE_HEADS 3
#define IVF_PAGE_CODES 4

#define IVF_DEFAULT_LISTS 100
#define IVF_MAX_LISTS 32768
#define IVF_DEFAULT_BITS 1
#define IVF_MAX_DIM 16000		/* pgvector's vector */
#define IVF_SEED UINT64_C(0x6269747072657373)	/* "bitpress": one rotation per index layout */
#define IVF_KMEANS_ITERS 10
#define IVF_SAMPLE_PER_LIST 32

/*
 * Lists for cosine and the inner product come from spherical k-means (unit centroids, rows
 * assigned and lists probed by the largest inner product): for the inner product this finds
 * the long vectors' lists far better than Euclidean lists do (recall@10 0.82 vs 0.65 at 10 of
 * 100 lists, MiniLM rows of lengths 0.5-2, tests/test_ivf_index.py).
 */
#define IVF_SPHERICAL(metric) ((metric) != BP_METRIC_L2)

/* build phases in pg_stat_progress_create_index (after PROGRESS_CREATEIDX_SUBPHASE_INITIALIZE) */
#define IVF_PHASE_SAMPLE 2
#define IVF_PHASE_KMEANS 3
#define IVF_PHASE_ASSIGN 4

typedef struct IvfPageOpaque
{
	BlockNumber next;			/* codes: the list's older page; streams: unused */
	uint16		kind;
	uint16		page_id;
} IvfPageOpaque;

#define IvfOpaque(page) ((IvfPageOpaque *) PageGetSpecialPointer(page))

typedef struct IvfMeta
{
	uint32		magic;
	uint32		version;
	uint32		dim;
	uint32		lists;			/* 0: built on an empty table, the first insert makes one */
	uint32		bits;
	uint32		metric;			/* BP_METRIC_* */
	uint64		seed;
	BlockNumber centroids;		/* first centroid page */
	BlockNumber heads;			/* first head page */
	BlockNumber unranked;		/* newest page of the rows without a direction (NULL, or zero
								 * for cosine), returned last */
} IvfMeta;

typedef struct IvfItem
{
	ItemPointerData tid;
	uint16		unused;
	bp_ivf_factors f;
	uint8		code[FLEXIBLE_ARRAY_MEMBER];	/* bp_ivf_code_bytes(dim, bits), 8-aligned */
} IvfItem;

#define IVF_ITEM_SIZE(cb) (offsetof(IvfItem, code) + (cb))
#define IVF_STREAM_BYTES \
	((BLCKSZ - MAXALIGN(SizeOfPageHeaderData) - MAXALIGN(sizeof(IvfPageOpaque))) & ~7)

typedef struct IvfOptions
{
	int32		vl_len_;
	int			lists;
	int			bits;
} IvfOptions;

/* what a backend keeps of an index (rd_amcache): the meta page and the centroids */
typedef struct IvfCache
{
	IvfMeta		meta;
	float	   *centroids;		/* lists x dim */
	double	   *cc;				/* |centroid|^2 of each list */
} IvfCache;

/* GUCs */
extern int	ivf_probes;
extern double ivf_epsilon;

/* ivf.c */
extern void ivf_init(void);
extern void ivf_init_page(Page page, uint16 kind);
extern void ivf_put_meta(Page page, const IvfMeta *meta);
extern void ivf_get_meta(Relation index, Buffer buf, IvfMeta *meta);
extern void ivf_check_page(Relation index, Buffer buf, Page page, uint16 kind);
extern int	ivf_metric(Relation index);
extern IvfCache *ivf_cache(Relation index);
extern bool ivf_half(Relation index);
extern float *ivf_floats(Datum value, bool half, int *dim);
extern float *ivf_vector(Relation index, Datum value, bool half, int metric, int dim, int *got_dim);
extern BlockNumber ivf_head_block(IvfMeta *meta, uint32 list, uint32 *offset);
extern void ivf_read_stream(Relation index, BlockNumber start, void *dst, Size bytes, uint16 kind);

/* ivfbuild.c */
extern IndexBuildResult *ivfbuild(Relation heap, Relation index, IndexInfo *indexInfo);
extern void ivfbuildempty(Relation index);
extern char *ivfbuildphasename(int64 phase);

/* ivfinsert.c */
extern bool ivfinsert(Relation index, Datum *values, bool *isnull, ItemPointer heap_tid,
					  Relation heap, IndexUniqueCheck checkUnique, bool indexUnchanged,
					  IndexInfo *indexInfo);

/* ivfscan.c */
extern IndexScanDesc ivfbeginscan(Relation index, int nkeys, int norderbys);
extern void ivfrescan(IndexScanDesc scan, ScanKey keys, int nkeys, ScanKey orderbys, int norderbys);
extern bool ivfgettuple(IndexScanDesc scan, ScanDirection dir);
extern void ivfendscan(IndexScanDesc scan);

/* ivfvacuum.c */
extern IndexBulkDeleteResult *ivfbulkdelete(IndexVacuumInfo *info, IndexBulkDeleteResult *stats,
											IndexBulkDeleteCallback callback, void *callback_state);
extern IndexBulkDeleteResult *ivfvacuumcleanup(IndexVacuumInfo *info, IndexBulkDeleteResult *stats);

#endif							/* BITPRESS_IVF_H */
