"""What DuckDB's code type costs: binarize, hamming, bitpress_knn_codes and bitpress_score.

    python benchmarks/bench_duckdb_codes.py [--n 500000] [--dim 384] [--queries 20] [--json PATH]

Since 0.5.0 DuckDB's ``binarize`` returns a ``BIT`` (it carries its bit length, as PostgreSQL's
varbit); before, a BLOB. This script times the paths that changed, with whatever bitpress is
imported: run it once as installed and once with ``PYTHONPATH=<older checkout>/plugin`` to
compare (docs/BENCHMARKS.md has both runs). The same SQL runs on both versions:

- ``binarize``: ``CREATE TABLE ... AS SELECT binarize(v)`` over n vectors (BIT now, BLOB before);
- ``hamming``: top-10 ``ORDER BY hamming(code, binarize(q))`` over that column (two BITs: DuckDB's
  own ``bit_count(xor)`` now; two BLOBs through the UDF before);
- ``hamming_blob``: the same over a BLOB column (``code_bytes(binarize(v))``), as a table made
  before 0.5.0 holds: now a BLOB read at the BIT query's length (code_from_bytes' checks);
- ``knn_codes``: ``bitpress_knn_codes`` top-10 (the macro's Hamming stage);
- ``score``: top-10 by ``bitpress_score`` over codes of a median codebook (the UDF's input is
  ``code_bytes(code)``: native SQL for a BIT now).

Every answer is checked against numpy (distances of the top 10, the exact scores' order) before
it counts; timings are medians over the queries, the methods interleaved.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import Mismatch, cpu_model, fmt_ms, log, median_ms, stopped, time_interleaved  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=500_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except (Mismatch, KeyboardInterrupt) as e:
        return stopped(e)


def run(args) -> int:
    import duckdb
    import pyarrow as pa

    import bitpress
    import bitpress.duckdb
    from bitpress import codebooks, schema

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    queries = rng.standard_normal((args.queries + 1, args.dim)).astype(np.float32)
    codes = bitpress.binarize(x)
    con = bitpress.duckdb.connect()
    con.execute(f"SET threads = {int(args.threads)}")
    schema.upgrade(con)
    con.register("_x", pa.table({"id": pa.array(np.arange(args.n, dtype=np.int64)),
                                 "v": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), args.dim)}))
    con.execute(f"CREATE TABLE t AS SELECT id, CAST(v AS FLOAT[{args.dim}]) AS v FROM _x")
    con.unregister("_x")
    codebooks.fit_table(con, "t", "v", "cb", "median", sample_size=20_000, progress=False)
    book = codebooks.load(con, "cb")
    con.execute("CREATE TABLE cb AS SELECT id, binarize(v, 'cb') AS code FROM t")
    con.execute("CREATE TABLE blob AS SELECT id, code_bytes(binarize(v)) AS code FROM t")
    kind = con.execute("SELECT typeof(binarize([1.0]))").fetchone()[0]
    log(f"duckdb {duckdb.__version__}, bitpress from {Path(bitpress.__file__).parent}: binarize returns {kind}; "
        f"{args.n:,} x {args.dim}, threads={args.threads}")

    def check_top(label, qi, ids):
        d = np.bitwise_count(codes[ids] ^ bitpress.binarize(queries[qi])).sum(1)
        want = np.sort(np.bitwise_count(codes ^ bitpress.binarize(queries[qi])).sum(1))[:10]
        if len(ids) != 10 or not np.array_equal(np.sort(d), want):
            raise Mismatch(f"{label}: query {qi}: distances {np.sort(d).tolist()} != {want.tolist()}")

    cb_codes = book.encode_reference(x)

    def check_score(qi, ids):
        s = bitpress.kernels.asymmetric_scores(book.to_bytes(), queries[qi], cb_codes)
        if len(ids) != 10 or not np.allclose(np.sort(s[ids])[::-1], np.sort(s)[::-1][:10], rtol=0, atol=1e-4):
            raise Mismatch(f"score: query {qi}: the top 10 are not the 10 best scores")

    def binarize_all(qi):
        con.execute("CREATE OR REPLACE TABLE c AS SELECT id, binarize(v) AS code FROM t")

    def top(table):
        sql = f"SELECT id FROM {table} ORDER BY hamming(code, binarize(?::FLOAT[])), id LIMIT 10"
        return lambda qi: np.array([r[0] for r in con.execute(sql, [queries[qi].tolist()]).fetchall()])

    def knn_codes(qi):
        return np.array([r[0] for r in con.execute("SELECT id FROM bitpress_knn_codes('c', 'code', ?::FLOAT[], 10)",
                                                   [queries[qi].tolist()]).fetchall()])

    def score(qi):
        return np.array([r[0] for r in con.execute("SELECT id FROM cb ORDER BY bitpress_score(code, ?::FLOAT[], 'cb') "
                                                   "DESC, id LIMIT 10", [queries[qi].tolist()]).fetchall()])

    binarize_all(0)
    got = np.array([np.frombuffer(r[0], np.uint8) for r in con.execute(
        "SELECT code_bytes(code) FROM c ORDER BY id").fetchall()])
    if not np.array_equal(got, codes):
        raise Mismatch("binarize: DuckDB's codes differ from the C core's")
    fns = {"binarize": binarize_all, "hamming": top("c"), "hamming_blob": top("blob"), "knn_codes": knn_codes,
           "score": score}

    def after(name, qi, ans):
        if name in ("hamming", "hamming_blob", "knn_codes"):
            check_top(name, qi, ans)
        elif name == "score":
            check_score(qi, ans)

    keys = list(range(1, args.queries + 1))
    # binarize rewrites the table the others read: timed on its own, the others interleaved
    t_bin = []
    for _ in range(3):
        t0 = time.perf_counter()
        binarize_all(0)
        t_bin.append(time.perf_counter() - t0)
    del fns["binarize"]
    times = time_interleaved(fns, keys, 0, after=after, desc="queries")
    times["binarize"] = t_bin
    cpu = cpu_model()
    print(f"{'method':<14} {'ms (median)':>12}   bitpress {bitpress.__version__ if hasattr(bitpress, '__version__') else '?'}"
          f", binarize -> {kind}, {args.n:,} x {args.dim}, CPU {cpu}, simd={bitpress.simd()}")
    out = []
    for name in ("binarize", "hamming", "hamming_blob", "knn_codes", "score"):
        ms = median_ms(times[name])
        out.append({"method": name, "ms": ms, "runs": len(times[name])})
        print(f"{name:<14} {fmt_ms(ms):>12}")
    if args.json:
        Path(args.json).write_text(json.dumps({"kind": kind, "n": args.n, "dim": args.dim, "cpu": cpu,
                                               "python": platform.python_version(), "duckdb": duckdb.__version__,
                                               "results": out}, indent=1))
    con.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
