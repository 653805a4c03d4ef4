"""``bitpress eval``: how well each kind of code finds the true nearest neighbours.

Loads real vectors (an ``.npy`` file, a dataset directory with ``corpus.npy``,
``queries.npy`` and ``gt_top100.npy``, or a PostgreSQL / DuckDB table), fits each codebook
on the corpus (or a seeded sample of it; never on the queries), encodes the corpus with the
C core and measures, per method and size:

- ``recall_at_10``: the Hamming top-10 of the codes alone (ties go to the lower row, by
  ``kernels.topk_smallest``) against the exact cosine top-10, scored on sets;
- ``recall_at_10_oversample_{2,4,10}``: the Hamming top ``10 * os`` reranked by exact
  cosine on the full float vectors;
- ``ms_per_query``: the codes-only search, timed per query: encode the query
  (``kernels.encode``), Hamming distance to every code (``kernels.hamming``), top-10
  (``kernels.topk_smallest``); mean over the queries.
- ``recall_..._stderr`` (JSON only): the standard error of each recall over the queries.

Rows named ``method+asym`` rank the same codes by ``kernels.asymmetric_scores`` (the float
query against each code's reconstruction; no full vectors) instead of Hamming distance;
their time is that of the scores plus the top-10.

Each row is printed as soon as it is measured; ``--json PATH`` writes one JSON object per
row (keys: method, bits, bytes, compression, recall_at_10, recall_at_10_oversample_2, _4,
_10, ms_per_query, and extras).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import errors, kernels
from .fit import DEFAULT_OPTIONS, METHODS, fit
from .tables import check_matrix as _check_vectors

DEFAULT_METHODS = (
    "sign", "mean", "median", "learned", "thermometer",
    "matryoshka:256", "hybrid:256", "pca:256", "itq:256",
    "matryoshka:128", "pca:128", "itq:128",
    "matryoshka:32", "pca:32", "itq:32",
    "sign+asym", "median+asym", "learned+asym", "thermometer+asym",
)
DEFAULT_OVERSAMPLE = (2, 4, 10)


@dataclasses.dataclass
class Spec:
    """One table row: a method, its size (None: the method's own, e.g. 1 bit/dim) and
    whether the codes are ranked by Hamming distance or by the asymmetric score."""
    method: str
    bits: int | None = None
    asym: bool = False

    @property
    def name(self) -> str:
        return self.method + ("+asym" if self.asym else "")

    @property
    def fit_key(self):
        return (self.method, self.bits)


def parse_methods(text) -> list[Spec]:
    """``"sign,pca:256,median+asym"`` -> specs. Each item is ``method[:bits][+asym]``."""
    items = text if isinstance(text, (list, tuple)) else [t for t in str(text).split(",")]
    specs = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        asym = item.endswith("+asym")
        body = item[:-5] if asym else item
        method, _, bits = body.partition(":")
        if method not in METHODS:
            raise errors.InvalidParameterError(
                f"unknown method {method!r} in {item!r}; choose from: {', '.join(METHODS)}")
        if bits:
            try:
                nbits = int(bits)
            except ValueError:
                raise errors.InvalidParameterError(f"bits must be a number in {item!r}") from None
        else:
            nbits = None
        specs.append(Spec(method, nbits, asym))
    if not specs:
        raise errors.InvalidParameterError("no methods given")
    return specs


def parse_fit_options(items) -> dict:
    """``["thermometer.cut=tertile", "itq.iterations=20"]`` -> ``{"thermometer": {"cut": "tertile"}, ...}``.

    Values are read as JSON when they parse (numbers, true/false), else kept as text.
    """
    out = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not eq or not dot or not name or method not in METHODS:
            raise errors.InvalidParameterError(
                f"--fit-option must be METHOD.KEY=VALUE with a known method, got {item!r}")
        try:
            value = json.loads(value)
        except ValueError:
            pass
        if name not in DEFAULT_OPTIONS[method]:
            raise errors.InvalidParameterError(
                f"unknown option {name!r} for {method}"
                + (f" (it takes: {', '.join(sorted(DEFAULT_OPTIONS[method]))})" if DEFAULT_OPTIONS[method] else " (it takes none)"))
        out.setdefault(method, {})[name] = value
    return out


# ---------------------------------------------------------------------------------------------
# data
@dataclasses.dataclass
class Data:
    corpus: np.ndarray      # float32 n x d (as given)
    queries: np.ndarray     # float32 q x d
    gt: np.ndarray          # int q x >=k: exact cosine top neighbours, best first
    source: str


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def exact_topk(corpus, queries, k):
    """Exact cosine top-k of each query (ties to the lower row), in blocks of queries."""
    c = _unit(corpus)
    q = _unit(queries)
    k = min(k, c.shape[0])
    out = np.empty((q.shape[0], k), dtype=np.int64)
    for s in range(0, q.shape[0], 256):
        sim = q[s:s + 256] @ c.T
        for j, row in enumerate(sim):
            out[s + j] = _top_by_score(row, np.arange(row.shape[0]), k)
    return out


def _top_by_score(scores, ids, k):
    """ids of the k highest scores, ties to the lower id."""
    if k < scores.shape[0]:
        kth = np.partition(-scores, k - 1)[k - 1]
        keep = np.flatnonzero(-scores <= kth)
        scores, ids = scores[keep], ids[keep]
    order = np.lexsort((ids, -scores))[:k]
    return ids[order]


def holdout(vectors, n_queries, k, seed=0, source="vectors") -> Data:
    """Hold out ``n_queries`` random rows (seeded) as queries; the rest is the corpus; the
    ground truth is the exact cosine top-k of each query in that corpus."""
    x = _check_vectors(vectors, source)
    n = x.shape[0]
    if n_queries < 1 or n_queries >= n:
        raise errors.InvalidParameterError(
            f"--queries must be 1..{n - 1} for {n} vectors, got {n_queries}")
    perm = np.random.default_rng(seed).permutation(n)
    qi, ci = np.sort(perm[:n_queries]), np.sort(perm[n_queries:])
    corpus, queries = x[ci], x[qi]
    return Data(corpus, queries, exact_topk(corpus, queries, k), source)


def load_dataset(path, k, n_queries=None) -> Data:
    """A directory with corpus.npy, queries.npy and (optionally) gt_top100.npy."""
    d = Path(path)
    for f in ("corpus.npy", "queries.npy"):
        if not (d / f).is_file():
            raise errors.InvalidParameterError(f"{d} has no {f}")
    corpus = _check_vectors(np.load(d / "corpus.npy"), "corpus.npy")
    queries = _check_vectors(np.load(d / "queries.npy"), "queries.npy")
    if n_queries is not None:
        queries = queries[:n_queries]
    gt_file = d / "gt_top100.npy"
    gt = np.load(gt_file)[:len(queries)] if gt_file.is_file() else None
    if gt is None or gt.shape[1] < k:
        gt = exact_topk(corpus, queries, k)
    return Data(corpus, queries, gt, str(d))


def read_pg(dsn, table, column) -> np.ndarray:
    """The non-NULL vectors of ``table.column`` in PostgreSQL (pgvector ``vector`` or ``real[]``)."""
    import psycopg

    from .tables import read_vectors

    with psycopg.connect(dsn) as conn:
        return read_vectors(conn, table, column)


def read_duckdb(path, table, column) -> np.ndarray:
    """The non-NULL vectors of ``table.column`` in a DuckDB file (FLOAT[n], FLOAT[], DOUBLE[]...)."""
    import duckdb

    from .tables import read_vectors

    con = duckdb.connect(str(path), read_only=True)
    try:
        return read_vectors(con, table, column)
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------
# measuring
def _recall(found, truth, k):
    return len(set(np.asarray(found[:k]).tolist()) & set(np.asarray(truth[:k]).tolist())) / k


def evaluate(data: Data, specs, *, k=10, oversample=DEFAULT_OVERSAMPLE, sample=None, seed=0,
             progress=None, out=print, fit_options=None):
    """Measure each spec on ``data``; returns the rows (dicts) and prints the table."""
    if k < 1:
        raise errors.InvalidParameterError(f"--k must be at least 1, got {k}")
    oversample = sorted(set(int(o) for o in oversample))
    if any(o < 1 for o in oversample):
        raise errors.InvalidParameterError("oversample factors must be at least 1")
    started = time.perf_counter()
    corpus, queries, gt = data.corpus, data.queries, data.gt
    n, d = corpus.shape
    if queries.shape[1] != d:
        raise errors.DimensionMismatchError(f"queries have {queries.shape[1]} dimensions but the corpus has {d}")
    k = min(k, n)
    cand_max = min(n, k * max(oversample)) if oversample else k
    train = corpus
    if sample is not None and sample < n:
        idx = np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
        train = corpus[idx]
    unit_corpus = _unit(corpus)
    unit_queries = _unit(queries)
    fit_options = fit_options or {}

    cols = _columns(k, oversample)
    out(f"corpus {n:,} x {d} ({data.source}), {len(queries):,} queries, recall@{k} vs exact cosine; "
        f"codebooks fitted on {len(train):,} corpus rows (seed {seed}); "
        f"simd={kernels.simd()}")
    out(_header(cols))
    show = progress if progress is not None else bool(getattr(sys.stderr, "isatty", lambda: False)())
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=len(specs), desc="eval", unit="row", file=sys.stderr, leave=False)

    def say(line):  # a table line, with the progress bar out of its way
        if bar is not None:
            bar.clear()
        out(line)
        if bar is not None:
            bar.refresh()

    rows, fitted, row_recall = [], {}, []
    try:
        for spec in specs:
            if bar is not None:
                bar.set_description(f"eval {spec.method}" + (f":{spec.bits}" if spec.bits else "")
                                    + ("+asym" if spec.asym else ""))
            key = spec.fit_key
            if key not in fitted:
                t = time.perf_counter()
                try:
                    cb = fit(train, spec.method, spec.bits, seed=seed, progress=show,
                             **fit_options.get(spec.method, {}))
                except errors.InvalidParameterError as e:
                    fitted[key] = e
                else:
                    fit_s = time.perf_counter() - t
                    blob = cb.to_bytes()
                    t = time.perf_counter()
                    codes = kernels.encode(blob, corpus)
                    enc_s = time.perf_counter() - t
                    fitted[key] = (cb, blob, codes, fit_s, enc_s)
            got = fitted[key]
            if isinstance(got, Exception):
                say(f"{spec.name:<17} {spec.bits or '-':>6}  skipped: {got}")
                if bar is not None:
                    bar.update(1)
                continue
            cb, blob, codes, fit_s, enc_s = got
            if spec.asym and not cb.asymmetric:
                say(f"{spec.name:<17} {cb.bits:>6}  skipped: {spec.method} codes have no reconstruction levels")
                if bar is not None:
                    bar.update(1)
                continue
            row, per_query = _measure(spec, cb, blob, codes, queries, unit_corpus, unit_queries,
                                      gt, k, oversample, cand_max)
            row_recall.append(per_query)
            row.update(fit_seconds=round(fit_s, 3), encode_seconds=round(enc_s, 3), n_corpus=n,
                       n_queries=len(queries), dims=d, k=k, fit_rows=len(train), seed=seed,
                       search="asymmetric" if spec.asym else "hamming", dataset=data.source,
                       fit=cb.options)
            rows.append(row)
            say(_line(row, cols))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    _paired_vs_sign(rows, row_recall, k, out)
    total = time.perf_counter() - started
    out(f"total {total:.1f} s (fits, encoding, {len(queries)} queries x {len(rows)} rows)")
    return rows, total


def _measure(spec, cb, blob, codes, queries, unit_corpus, unit_queries, gt, k, oversample, cand_max):
    nq = len(queries)
    recall = np.empty(nq)
    recall_os = {o: np.empty(nq) for o in oversample}
    times = np.empty(nq)
    for i in range(nq):
        q = queries[i]
        if spec.asym:
            t = time.perf_counter()
            scores = kernels.asymmetric_scores(blob, q, codes)
            top = kernels.topk_smallest(-scores, k)
            times[i] = time.perf_counter() - t
            cand = kernels.topk_smallest(-scores, cand_max)
        else:
            t = time.perf_counter()
            qcode = kernels.encode(blob, q)
            dist = kernels.hamming(qcode, codes)
            top = kernels.topk_smallest(dist, k)
            times[i] = time.perf_counter() - t
            cand = kernels.topk_smallest(dist, cand_max)
        truth = gt[i]
        recall[i] = _recall(top, truth, k)
        exact = unit_corpus[cand] @ unit_queries[i]
        for o in oversample:
            c = cand[:min(len(cand), k * o)]
            recall_os[o][i] = _recall(_top_by_score(exact[:len(c)], c, k), truth, k)
    bits = cb.bits
    nbytes = cb.code_bytes
    row = {"method": spec.name, "bits": bits, "bytes": nbytes,
           "compression": round(cb.dims * 4 / nbytes, 2),
           f"recall_at_{k}": round(float(recall.mean()), 4)}
    for o in oversample:
        row[f"recall_at_{k}_oversample_{o}"] = round(float(recall_os[o].mean()), 4)
    row["ms_per_query"] = round(float(times.mean() * 1e3), 4)
    # standard error of each mean over the queries (extra keys)
    se = lambda r: round(float(r.std(ddof=1) / np.sqrt(nq)), 4) if nq > 1 else None
    row[f"recall_at_{k}_stderr"] = se(recall)
    for o in oversample:
        row[f"recall_at_{k}_oversample_{o}_stderr"] = se(recall_os[o])
    return row, recall


def _paired_vs_sign(rows, row_recall, k, out):
    """Rows of the same size as ``sign``: their recall@k minus sign's, paired by query."""
    ref = [i for i, r in enumerate(rows) if r["method"] == "sign"]
    if not ref or len(row_recall[ref[0]]) < 2:
        return
    base, bits = row_recall[ref[0]], rows[ref[0]]["bits"]
    parts = []
    for r, rec in zip(rows, row_recall):
        if r["method"] == "sign" or r["bits"] != bits:
            continue
        diff = rec - base
        mean, se = float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))
        r[f"recall_at_{k}_minus_sign"], r[f"recall_at_{k}_minus_sign_stderr"] = round(mean, 4), round(se, 4)
        parts.append(f"{r['method']} {mean:+.3f} ± {se:.3f}")
    if parts:
        out(f"recall@{k} minus sign's, paired by query (± standard error): " + ", ".join(parts))


def _columns(k, oversample):
    return [(f"recall_at_{k}", f"R@{k}")] + [(f"recall_at_{k}_oversample_{o}", f"os{o}") for o in oversample]


def _header(cols):
    rec = " ".join(f"{label:>6}" for _, label in cols)
    return (f"{'method':<17} {'bits':>6} {'bytes':>6} {'compr':>7}  {rec}  {'ms/query':>8} {'fit s':>6}\n"
            + "-" * (17 + 1 + 6 + 1 + 6 + 1 + 7 + 2 + 7 * len(cols) - 1 + 2 + 8 + 1 + 6))


def _line(row, cols):
    rec = " ".join(f"{row[key]:>6.3f}" for key, _ in cols)
    return (f"{row['method']:<17} {row['bits']:>6} {row['bytes']:>6} {row['compression']:>6.1f}x  {rec}  "
            f"{row['ms_per_query']:>8.3f} {row['fit_seconds']:>6.1f}")


# ---------------------------------------------------------------------------------------------
# CLI
def add_arguments(parser) -> None:
    """The options of ``bitpress eval`` on an argparse (sub)parser."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--vectors", metavar="PATH.npy",
                     help="float vectors, one per row; --queries random rows are held out as queries")
    src.add_argument("--dataset", metavar="DIR",
                     help="a directory with corpus.npy, queries.npy and gt_top100.npy (exact top-100)")
    src.add_argument("--dsn", help="read the vectors from this PostgreSQL database (with --table, --vector-col)")
    src.add_argument("--duckdb", metavar="PATH", help="read the vectors from this DuckDB file (with --table, --vector-col)")
    parser.add_argument("--table", help="table (or schema.table) holding the vectors")
    parser.add_argument("--vector-col", metavar="COLUMN", help="the vector column")
    parser.add_argument("--queries", metavar="N", type=int, default=None,
                        help="queries held out from --vectors / a table (default 500, at most a tenth "
                             "of the rows); with --dataset, use only its first N queries")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (default: 10)")
    parser.add_argument("--oversample", default="2,4,10",
                        help="rerank factors: Hamming top k*os, then exact cosine (default: 2,4,10)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="comma-separated method[:bits][+asym] (default: %(default)s)")
    parser.add_argument("--sample", metavar="N", type=int, default=None,
                        help="fit the codebooks on N random corpus rows (default: the whole corpus)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the query split, sample and fits")
    parser.add_argument("--fit-option", metavar="METHOD.KEY=VALUE", action="append", default=[],
                        help="a fit option, e.g. thermometer.cut=tertile or pca.threshold=median (repeatable)")
    parser.add_argument("--json", metavar="PATH", help="write one JSON object per table row")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args) -> int:
    """``bitpress eval`` with parsed arguments; returns the exit code."""
    specs = parse_methods(args.methods)
    try:
        oversample = [int(o) for o in str(args.oversample).split(",") if o.strip()]
    except ValueError:
        raise errors.InvalidParameterError(f"--oversample must be numbers like 2,4,10, got {args.oversample!r}") from None
    fit_options = parse_fit_options(args.fit_option)
    if args.sample is not None and args.sample < 2:
        raise errors.InvalidParameterError("--sample must be at least 2")
    if args.dataset:
        data = load_dataset(args.dataset, args.k, args.queries)
    else:
        if args.vectors:
            vectors, source = np.load(args.vectors), args.vectors
        else:
            if not args.table or not args.vector_col:
                raise errors.InvalidParameterError("--dsn and --duckdb need --table and --vector-col")
            if args.dsn:
                vectors, source = read_pg(args.dsn, args.table, args.vector_col), f"postgresql {args.table}.{args.vector_col}"
            else:
                vectors, source = read_duckdb(args.duckdb, args.table, args.vector_col), f"{args.duckdb} {args.table}.{args.vector_col}"
        nq = args.queries if args.queries is not None else max(1, min(500, len(vectors) // 10))
        data = holdout(vectors, nq, args.k, args.seed, source)
    rows, _ = evaluate(data, specs, k=args.k, oversample=oversample, sample=args.sample, seed=args.seed,
                       progress=False if args.no_progress else None, fit_options=fit_options)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return 0
