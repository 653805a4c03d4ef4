"""k-NN on real embeddings inside the database: bitpress_knn against what a user would pick.

Data: ../shared/data/pypi-minilm (50,000 real all-MiniLM-L6-v2 vectors, 500 queries, exact
cosine top-100). For each engine, every method answers the same queries; the table gives
recall@10 against the exact top-10 and the median time per query (methods interleaved per
query, so drift on a shared machine hits all alike).

PostgreSQL 15 (a throwaway cluster, one backend, no parallel workers):
  exact      ORDER BY v <=> q LIMIT 10 (pgvector, brute force)          -- baseline
  hnsw       the same with pgvector's HNSW index (m 16, ef_construction 64, ef_search 40)
  pgvector_bq  pgvector's binary-quantization recipe: bit(384) column of binary_quantize(v),
             ORDER BY bq <~> binary_quantize(q) LIMIT 40, then rerank by v <=> q
  bitpress_knn[sign|median|thermometer]  bitpress_knn(NULL::items, 'code', 'v', q, 10, 4, cb)
  bitpress_knn[..., asym]  the same with scoring => 'asymmetric' (candidates by the score of
             the float query against each code, then the exact rerank)
  bitpress_knn[rabitq|rabitq2, asym(, os 10)]  RaBitQ codebooks (1 and 2 bits per dimension,
             the bitpress_ivf estimator with one list), asymmetric only, oversample 4 and 10
DuckDB (in process):
  exact      ORDER BY array_cosine_distance(v, q) LIMIT 10 over FLOAT[384]  -- baseline
  bitpress_knn[...]  the table macro, oversample 4

  python benchmarks/bench_knn.py [--queries 30] [--no-hnsw] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "pypi-minilm"
K, OVERSAMPLE = 10, 4


def timed(fns, nq):
    """{name: (median ms, [ids per query])}, methods interleaved per query after a warm-up."""
    for fn in fns.values():
        fn(nq)
    times = {n: [] for n in fns}
    got = {n: [] for n in fns}
    for qi in range(nq):
        for name in (list(fns) if qi % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            ids = fns[name](qi)
            times[name].append(time.perf_counter() - t0)
            got[name].append(ids)
    return {n: (statistics.median(times[n]) * 1e3, got[n]) for n in fns}


def recall(got, gt):
    return float(np.mean([len(set(g) & set(t[:K])) / K for g, t in zip(got, gt)]))


def fit_books(x):
    from bitpress.fit import fit

    return {"median": fit(x, "median", progress=False), "thermometer": fit(x, "thermometer", progress=False),
            "rabitq": fit(x, "rabitq"), "rabitq2": fit(x, "rabitq", 2 * x.shape[1])}


def asym_oversamples(name):
    """RaBitQ codebooks: only asymmetric ranking (Hamming is refused), at oversample 4 and 10."""
    return (4, 10) if name.startswith("rabitq") else (4,)


def bench_postgresql(x, q, gt, nq, books, hnsw, rows):
    import psycopg
    from pgvector.psycopg import register_vector

    from _pgserver import ThrowawayPostgres
    from bitpress import codebooks, schema

    settings = {"max_parallel_workers_per_gather": 0, "shared_buffers": "1GB", "jit": "off"}
    with ThrowawayPostgres(settings=settings) as srv:
        conn = psycopg.connect(srv.dsn, autocommit=True)
        conn.execute("CREATE EXTENSION vector")
        conn.execute("CREATE EXTENSION bitpress")
        register_vector(conn)
        schema.upgrade(conn)
        conn.execute(f"CREATE TABLE items (id int PRIMARY KEY, v vector({x.shape[1]}))")
        with conn.cursor().copy("COPY items (id, v) FROM STDIN WITH (FORMAT BINARY)") as cp:
            cp.set_types(["int4", "vector"])
            for i, v in enumerate(x):
                cp.write_row([i, v])
        conn.execute(f"ALTER TABLE items ADD COLUMN bq bit({x.shape[1]})")
        conn.execute("UPDATE items SET bq = binary_quantize(v)")
        stmts = {"exact": "SELECT id FROM items ORDER BY v <=> %(q)s LIMIT 10",
                 "pgvector_bq": "SELECT id FROM (SELECT id, v FROM items ORDER BY bq <~> binary_quantize(%(q)s) "
                                "LIMIT 40) s ORDER BY v <=> %(q)s LIMIT 10"}
        for name in ["sign", *books]:
            col = f"code_{name}"
            conn.execute(f"ALTER TABLE items ADD COLUMN {col} varbit")
            if name == "sign":
                conn.execute(f"UPDATE items SET {col} = binarize(v)")
                cb = "NULL"
            else:
                codebooks.save(conn, name, books[name], len(x))
                conn.execute(f"UPDATE items SET {col} = binarize(v, '{name}')")
                cb = f"'{name}'"
            if not name.startswith("rabitq"):
                stmts[f"bitpress_knn[{name}]"] = (
                    f"SELECT id FROM bitpress_knn(NULL::items, '{col}', 'v', %(q)s, 10, 4, {cb})")
            for os_ in asym_oversamples(name) if name != "sign" else ():
                stmts[f"bitpress_knn[{name}, asym{', os 10' if os_ == 10 else ''}]"] = (
                    f"SELECT id FROM bitpress_knn(NULL::items, '{col}', 'v', %(q)s, 10, {os_}, {cb}, "
                    "scoring => 'asymmetric')")
        conn.execute("VACUUM ANALYZE items")
        if hnsw:
            t0 = time.perf_counter()
            conn.execute("CREATE INDEX ON items USING hnsw (v vector_cosine_ops)")
            print(f"  hnsw build {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            stmts["hnsw"] = "SELECT id FROM items ORDER BY v <=> %(q)s LIMIT 10"
        plain = {n: s for n, s in stmts.items() if n != "hnsw"}
        if hnsw:  # the other methods must not use the index: run them with index scans off
            conn.execute("SET enable_indexscan = off")

        def run(stmt, on):
            def f(qi):
                if hnsw:
                    conn.execute(f"SET enable_indexscan = {on}")
                return [r[0] for r in conn.execute(stmt, {"q": q[qi]}).fetchall()]
            return f
        fns = {n: run(s, "off") for n, s in plain.items()}
        if hnsw:
            fns["hnsw"] = run(stmts["hnsw"], "on")
        res = timed(fns, nq)
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        for name, (ms, got) in res.items():
            rows.append({"engine": "postgresql", "method": name, "recall_at_10": recall(got, gt),
                         "ms_per_query": ms, "notes": f"pgvector {version}, 1 backend"})
        conn.close()


def bench_duckdb(x, q, gt, nq, books, rows):
    import bitpress.duckdb
    from bitpress import codebooks, schema

    con = bitpress.duckdb.connect()
    schema.upgrade(con)
    d = x.shape[1]
    con.execute(f"CREATE TABLE items AS SELECT unnest(range(?)) AS id, unnest(?)::FLOAT[{d}] AS v",
                [len(x), x.tolist()])
    fns = {}

    def exact(qi):
        return [r[0] for r in con.execute(
            f"SELECT id FROM items ORDER BY array_cosine_distance(v, ?::FLOAT[{d}]) LIMIT 10",
            [q[qi].tolist()]).fetchall()]
    fns["exact"] = exact
    for name in ["sign", *books]:
        col = f"code_{name}"
        con.execute(f"ALTER TABLE items ADD COLUMN {col} BIT")
        if name == "sign":
            con.execute(f"UPDATE items SET {col} = binarize(v)")
            cb = None
        else:
            codebooks.save(con, name, books[name], len(x))
            con.execute(f"UPDATE items SET {col} = binarize(v, '{name}')")
            cb = name

        def knn(qi, col=col, cb=cb, scoring="hamming", os_=4):
            return [r[0] for r in con.execute(
                "SELECT id FROM bitpress_knn('items', ?, 'v', ?::FLOAT[], 10, oversample := ?, "
                "codebook := ?::VARCHAR, scoring := ?)", [col, q[qi].tolist(), os_, cb, scoring]).fetchall()]
        if not name.startswith("rabitq"):
            fns[f"bitpress_knn[{name}]"] = knn
        for os_ in asym_oversamples(name) if cb is not None else ():
            fns[f"bitpress_knn[{name}, asym{', os 10' if os_ == 10 else ''}]"] = \
                lambda qi, knn=knn, os_=os_: knn(qi, scoring="asymmetric", os_=os_)
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    for name, (ms, got) in timed(fns, nq).items():
        rows.append({"engine": "duckdb", "method": name, "recall_at_10": recall(got, gt),
                     "ms_per_query": ms, "notes": f"threads={threads}"})
    con.close()


def print_table(rows):
    print(f"{'engine':<11} {'method':<32} {'recall@10':>9} {'ms/query':>9} {'vs exact':>9}  notes")
    print("-" * 96)
    for r in rows:
        print(f"{r['engine']:<11} {r['method']:<32} {r['recall_at_10']:>9.3f} {r['ms_per_query']:>9.2f} "
              f"{r['vs_exact']:>8.2f}x  {r['notes']}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=30, help="queries timed per method (median)")
    ap.add_argument("--engines", default="postgresql,duckdb")
    ap.add_argument("--no-hnsw", action="store_true", help="skip pgvector's HNSW index (build ~1-2 min)")
    ap.add_argument("--json", metavar="PATH", help="write one JSON object per row")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    x, q, gt = np.load(DATA / "corpus.npy"), np.load(DATA / "queries.npy"), np.load(DATA / "gt_top100.npy")
    nq = min(args.queries, len(q) - 1)
    gt = gt[:nq]
    books = fit_books(x)
    rows = []
    if "postgresql" in args.engines:
        bench_postgresql(x, q, gt, nq, books, not args.no_hnsw, rows)
    if "duckdb" in args.engines:
        bench_duckdb(x, q, gt, nq, books, rows)
    for r in rows:
        base = next(b for b in rows if b["engine"] == r["engine"] and b["method"] == "exact")
        r["vs_exact"] = base["ms_per_query"] / r["ms_per_query"]
    print_table(rows)
    print(f"50,000 x 384 real MiniLM vectors, {nq} queries, k=10, oversample 4; "
          f"wall time {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
