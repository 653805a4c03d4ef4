/*
 * bitpress_ivf: the access method's handler, options, settings, costs and shared page helpers.
 */
#include "postgres.h"

#include <float.h>
#include <math.h>

#include "access/amapi.h"
#include "access/reloptions.h"
#include "catalog/pg_type.h"
#include "commands/progress.h"
#include "commands/vacuum.h"
#include "fmgr.h"
#include "storage/bufmgr.h"
#include "utils/guc.h"
#include "utils/rel.h"
#include "utils/selfuncs.h"
#include "utils/spccache.h"
#include "utils/syscache.h"

#include "bitpress.h"
#include "ivf.h"

int			ivf_probes = 10;
double		ivf_epsilon = 1.9;

static relopt_kind ivf_relopt_kind;

void
ivf_init(void)
{
	ivf_relopt_kind = add_reloption_kind();
	add_int_reloption(ivf_relopt_kind, "lists", "Number of inverted lists",
					  IVF_DEFAULT_LISTS, 1, IVF_MAX_LISTS, AccessExclusiveLock);
	add_int_reloption(ivf_relopt_kind, "bits", "Bits per dimension of a code (1 to 4)",
					  IVF_DEFAULT_BITS, 1, BP_IVF_MAX_BITS, AccessExclusiveLock);
	DefineCustomIntVariable("bitpress.probes", "Lists a bitpress_ivf scan probes first.",
							"More probes: higher recall, slower. A scan that needs more rows "
							"than these lists hold goes on to the next nearest lists.",
							&ivf_probes, 10, 1, IVF_MAX_LISTS, PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomRealVariable("bitpress.epsilon", "Width of the error bound a bitpress_ivf scan "
							 "reranks within.",
							 "A code is reranked by its exact distance while its estimate minus "
							 "epsilon error bounds can still beat the rows found. 0: rerank "
							 "by the estimate alone; larger: higher recall, more heap reads.",
							 &ivf_epsilon, 1.9, 0.0, 16.0, PGC_USERSET, 0, NULL, NULL, NULL);
}

static bytea *
ivfoptions(Datum reloptions, bool validate)
{
	static const relopt_parse_elt tab[] = {
		{"lists", RELOPT_TYPE_INT, offsetof(IvfOptions, lists)},
		{"bits", RELOPT_TYPE_INT, offsetof(IvfOptions, bits)},
	};

	return (bytea *) build_reloptions(reloptions, validate, ivf_relopt_kind, sizeof(IvfOptions),
									  tab, lengthof(tab));
}

/* ---- pages ---- */

void
ivf_init_page(Page page, uint16 kind)
{
	PageInit(page, BLCKSZ, sizeof(IvfPageOpaque));
	IvfOpaque(page)->next = InvalidBlockNumber;
	IvfOpaque(page)->kind = kind;
	IvfOpaque(page)->page_id = IVF_PAGE_ID;
}

/* page becomes the meta page holding meta */
void
ivf_put_meta(Page page, const IvfMeta *meta)
{
	ivf_init_page(page, IVF_PAGE_META);
	memcpy(PageGetContents(page), meta, sizeof(IvfMeta));
	((PageHeader) page)->pd_lower = (char *) PageGetContents(page) + sizeof(IvfMeta) - (char *) page;
}

/* bitpress's own pages are untrusted input too: a page of the wrong kind is corrupt data */
void
ivf_check_page(Relation index, Buffer buf, Page page, uint16 kind)
{
	if (PageIsNew(page) || PageGetSpecialSize(page) != MAXALIGN(sizeof(IvfPageOpaque)) ||
		IvfOpaque(page)->page_id != IVF_PAGE_ID || IvfOpaque(page)->kind != kind)
		ereport(ERROR,
				(errcode(ERRCODE_INDEX_CORRUPTED),
				 errmsg("index \"%s\" contains an unexpected page at block %u",
						RelationGetRelationName(index), BufferGetBlockNumber(buf)),
				 errhint("REINDEX the index.")));
}

/* bytes of a stream (centroids, heads) from consecutive pages starting at start */
void
ivf_read_stream(Relation index, BlockNumber start, void *dst, Size bytes, uint16 kind)
{
	BlockNumber nblocks = RelationGetNumberOfBlocks(index);
	char	   *out = dst;

	for (BlockNumber b = start; bytes > 0; b++)
	{
		Buffer		buf;
		Page		page;
		Size		n = Min(bytes, (Size) IVF_STREAM_BYTES);

		if (b >= nblocks)
			ereport(ERROR,
					(errcode(ERRCODE_INDEX_CORRUPTED),
					 errmsg("index \"%s\" ends before its metadata does",
							RelationGetRelationName(index)),
					 errhint("REINDEX the index.")));
		buf = ReadBuffer(index, b);
		LockBuffer(buf, BUFFER_LOCK_SHARE);
		page = BufferGetPage(buf);
		ivf_check_page(index, buf, page, kind);
		memcpy(out, PageGetContents(page), n);
		UnlockReleaseBuffer(buf);
		out += n;
		bytes -= n;
	}
}

/* the head page holding list's entry, and the entry's byte offset in the page's contents */
BlockNumber
ivf_head_block(IvfMeta *meta, uint32 list, uint32 *offset)
{
	Size		at = (Size) list * sizeof(BlockNumber);

	*offset = (uint32) (at % IVF_STREAM_BYTES);
	return meta->heads + (BlockNumber) (at / IVF_STREAM_BYTES);
}

/* the meta page's contents of buf (locked by the caller), checked */
void
ivf_get_meta(Relation index, Buffer buf, IvfMeta *meta)
{
	Page		page = BufferGetPage(buf);

	ivf_check_page(index, buf, page, IVF_PAGE_META);
	memcpy(meta, PageGetContents(page), sizeof(IvfMeta));
	if (meta->magic != IVF_MAGIC || meta->version != IVF_VERSION || meta->dim > IVF_MAX_DIM ||
		meta->lists > IVF_MAX_LISTS || meta->bits < 1 || meta->bits > BP_IVF_MAX_BITS ||
		meta->metric > BP_METRIC_COSINE || (meta->lists > 0 && meta->dim == 0))
		ereport(ERROR,
				(errcode(ERRCODE_INDEX_CORRUPTED),
				 errmsg("index \"%s\" has an invalid meta page", RelationGetRelationName(index)),
				 errhint("REINDEX the index.")));
}

static void
read_meta(Relation index, IvfMeta *meta)
{
	Buffer		buf = ReadBuffer(index, IVF_META_BLKNO);

	LockBuffer(buf, BUFFER_LOCK_SHARE);
	ivf_get_meta(index, buf, meta);
	UnlockReleaseBuffer(buf);
}

/*
 * The meta page and the centroids, kept in the relcache entry once the index has lists (they
 * never change after that: REINDEX makes a new relfilenode, which resets rd_amcache).
 */
IvfCache *
ivf_cache(Relation index)
{
	IvfCache   *c = (IvfCache *) index->rd_amcache;
	IvfMeta		meta;
	MemoryContext old;
	Size		bytes;

	if (c != NULL)
		return c;
	read_meta(index, &meta);
	old = MemoryContextSwitchTo(meta.lists > 0 ? index->rd_indexcxt : CurrentMemoryContext);
	c = palloc0(sizeof(IvfCache));
	c->meta = meta;
	bytes = (Size) meta.lists * meta.dim * sizeof(float);
	if (meta.lists > 0)
	{
		c->centroids = palloc(bytes);
		ivf_read_stream(index, meta.centroids, c->centroids, bytes, IVF_PAGE_CENTROIDS);
		c->cc = palloc(meta.lists * sizeof(double));
		for (uint32 l = 0; l < meta.lists; l++)
		{
			const float *v = c->centroids + (Size) l * meta.dim;

			for (uint32 t = 0; t < meta.dim; t++)
				if (!isfinite(v[t]))
					ereport(ERROR,
							(errcode(ERRCODE_INDEX_CORRUPTED),
							 errmsg("index \"%s\" has a centroid that is not finite",
									RelationGetRelationName(index)),
							 errhint("REINDEX the index.")));
			c->cc[l] = bp_dot(v, v, meta.dim);
		}
		index->rd_amcache = c;
	}
	MemoryContextSwitchTo(old);
	return c;
}

/* the metric of the index's operator class (its support function 1 returns it) */
int
ivf_metric(Relation index)
{
	FmgrInfo   *proc = index_getprocinfo(index, 1, 1);
	int			m = DatumGetInt32(FunctionCall1(proc, PointerGetDatum(NULL)));

	if (m < BP_METRIC_L2 || m > BP_METRIC_COSINE)
		elog(ERROR, "bitpress_ivf: operator class support function returned metric %d", m);
	return m;
}

/* whether the index's column is pgvector's halfvec (else vector) */
bool
ivf_half(Relation index)
{
	Oid			typid = TupleDescAttr(RelationGetDescr(index), 0)->atttypid;
	HeapTuple	tup = SearchSysCache1(TYPEOID, ObjectIdGetDatum(typid));
	bool		half;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for type %u", typid);
	half = strcmp(NameStr(((Form_pg_type) GETSTRUCT(tup))->typname), "halfvec") == 0;
	ReleaseSysCache(tup);
	return half;
}

/* a palloc'd copy of the floats of a vector (or, half, a halfvec), layout checked */
float *
ivf_floats(Datum value, bool half, int *dim)
{
	PgVector   *v;
	float	   *x;

	if (half)
		return halfvec_floats(value, dim);
	v = DatumGetPgVector(value);
	if (v->dim < 1 || v->dim > IVF_MAX_DIM ||
		VARSIZE_ANY(v) < offsetof(PgVector, x) + (Size) v->dim * sizeof(float))
		ereport(ERROR, (errcode(ERRCODE_DATA_CORRUPTED), errmsg("malformed vector")));
	*dim = v->dim;
	x = palloc(v->dim * sizeof(float));
	memcpy(x, v->x, v->dim * sizeof(float));
	if ((Pointer) v != DatumGetPointer(value))
		pfree(v);
	return x;
}

/*
 * A palloc'd copy of a vector's floats as the index sees it (cosine: normalized); NULL for a
 * vector cosine cannot rank (zero norm). dim > 0: the dimensions it must have.
 */
float *
ivf_vector(Relation index, Datum value, bool half, int metric, int dim, int *got_dim)
{
	float	   *x = ivf_floats(value, half, got_dim);

	if (*got_dim < 1 || *got_dim > IVF_MAX_DIM)
		ereport(ERROR, (errcode(ERRCODE_DATA_CORRUPTED), errmsg("malformed vector")));
	if (dim > 0 && *got_dim != dim)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("expected %d dimensions, not %d", dim, *got_dim),
				 errdetail("Index \"%s\" holds vectors of %d dimensions.",
						   RelationGetRelationName(index), dim)));
	for (int t = 0; t < *got_dim; t++)
		if (!isfinite(x[t]))
			report(BP_ERR_NONFINITE_VALUE, t, 0);
	if (metric == BP_METRIC_COSINE)
	{
		double		s = 0.0;

		for (int t = 0; t < *got_dim; t++)
			s += (double) x[t] * x[t];
		if (s == 0.0)
		{
			pfree(x);
			return NULL;
		}
		bp_ivf_normalize(x, *got_dim);
	}
	return x;
}

/* ---- planner ---- */

static void
ivfcostestimate(PlannerInfo *root, IndexPath *path, double loop_count, Cost *indexStartupCost,
				Cost *indexTotalCost, Selectivity *indexSelectivity, double *indexCorrelation,
				double *indexPages)
{
	GenericCosts costs;
	Relation	index;
	double		lists,
				ratio;

	/* only an ORDER BY distance uses the index */
	if (path->indexorderbys == NIL)
	{
		*indexStartupCost = DBL_MAX;
		*indexTotalCost = DBL_MAX;
		*indexSelectivity = 0;
		*indexCorrelation = 0;
		*indexPages = 0;
		return;
	}
	index = index_open(path->indexinfo->indexoid, NoLock);
	lists = Max(1, ivf_cache(index)->meta.lists);
	index_close(index, NoLock);
	ratio = Min(1.0, ivf_probes / lists);

	MemSet(&costs, 0, sizeof(costs));
	costs.numIndexTuples = path->indexinfo->tuples * ratio;
	genericcostestimate(root, path, loop_count, &costs);
	/* the probed lists are read before the first row comes back */
	*indexStartupCost = costs.indexTotalCost;
	*indexTotalCost = costs.indexTotalCost;
	*indexSelectivity = costs.indexSelectivity;
	*indexCorrelation = 0;
	*indexPages = costs.numIndexPages;
}

static bool
ivfvalidate(Oid opclassoid)
{
	return true;
}

PG_FUNCTION_INFO_V1(bitpress_ivf_handler);
Datum
bitpress_ivf_handler(PG_FUNCTION_ARGS)
{
	IndexAmRoutine *am = makeNode(IndexAmRoutine);

	am->amstrategies = 1;
	am->amsupport = 1;
	am->amoptsprocnum = 0;
	am->amcanorder = false;
	am->amcanorderbyop = true;
	am->amcanbackward = false;
	am->amcanunique = false;
	am->amcanmulticol = false;
	am->amoptionalkey = true;
	am->amsearcharray = false;
	am->amsearchnulls = false;
	am->amstorage = false;
	am->amclusterable = false;
	am->ampredlocks = false;
	am->amcanparallel = false;
	am->amcaninclude = false;
	am->amusemaintenanceworkmem = false;
	am->amparallelvacuumoptions = VACUUM_OPTION_PARALLEL_BULKDEL;
	am->amkeytype = InvalidOid;

	am->ambuild = ivfbuild;
	am->ambuildempty = ivfbuildempty;
	am->aminsert = ivfinsert;
	am->ambulkdelete = ivfbulkdelete;
	am->amvacuumcleanup = ivfvacuumcleanup;
	am->amcanreturn = NULL;
	am->amcostestimate = ivfcostestimate;
	am->amoptions = ivfoptions;
	am->amproperty = NULL;
	am->ambuildphasename = ivfbuildphasename;
	am->amvalidate = ivfvalidate;
	am->amadjustmembers = NULL;
	am->ambeginscan = ivfbeginscan;
	am->amrescan = ivfrescan;
	am->amgettuple = ivfgettuple;
	am->amgetbitmap = NULL;
	am->amendscan = ivfendscan;
	am->ammarkpos = NULL;
	am->amrestrpos = NULL;
	am->amestimateparallelscan = NULL;
	am->aminitparallelscan = NULL;
	am->amparallelrescan = NULL;

	PG_RETURN_POINTER(am);
}

/* the operator classes' support function 1: which distance the index computes */
PG_FUNCTION_INFO_V1(bitpress_ivf_l2);
Datum
bitpress_ivf_l2(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(BP_METRIC_L2);
}

PG_FUNCTION_INFO_V1(bitpress_ivf_ip);
Datum
bitpress_ivf_ip(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(BP_METRIC_IP);
}

PG_FUNCTION_INFO_V1(bitpress_ivf_cosine);
Datum
bitpress_ivf_cosine(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(BP_METRIC_COSINE);
}
