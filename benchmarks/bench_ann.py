"""Approximate k-NN in PostgreSQL, side by side in one run: bitpress_ivf (1 and 2 bits, a probes
sweep) against pgvector's HNSW (m 16, ef_construction 64, an ef_search sweep), pgvector's
IVFFlat (a probes sweep) and the exact scan, on the same real vectors and queries.

Every method gets its own copy of the table (so the planner uses the index meant), is built on
the first rows, takes the last --inserts rows as inserts into the built index (timed), and then
answers every query as a prepared statement from one client, one backend: recall@10 against the
exact top 10, and latency (mean over the queries; the median over --rounds rounds, the methods'
order shuffled each round, so drift on a shared machine hits all alike). Also index size, build
time and the building backend's peak memory (VmHWM).

  python benchmarks/bench_ann.py [--dataset minilm|DIR] [--queries 500] [--json PATH] [--plot PNG]

DIR holds base.npy (float32 n x d), queries.npy and gt_top100.npy (int, exact cosine top-100 of
each query), as benchmarks/make_pypi_embeddings.py writes them.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import Mismatch, cpu_model, log, stopped, tqdm_or_none  # noqa: E402

SHARED = Path(os.environ.get("BITPRESS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def load(dataset: str):
    if dataset == "minilm":
        d = SHARED / "pypi-minilm"
        return np.load(d / "corpus.npy"), np.load(d / "queries.npy"), np.load(d / "gt_top100.npy")
    d = Path(dataset)
    return np.load(d / "base.npy", mmap_mode="r"), np.load(d / "queries.npy"), np.load(d / "gt_top100.npy")


def copy_rows(conn, table, x, start, stop, bar=None):
    with conn.cursor().copy(f"COPY {table} (id, v) FROM STDIN WITH (FORMAT BINARY)") as cp:
        cp.set_types(["int4", "vector"])
        for i in range(start, stop):
            cp.write_row([i, np.asarray(x[i], np.float32)])
            if bar and i % 1000 == 0:
                bar.update(1000)


def vmhwm_kib(pid: int) -> int | None:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


PROBES = [0.02, 0.04, 0.07, 0.11, 0.15, 0.21, 0.3, 0.45, 0.65, 1.0]  # of the lists

METHODS = {
    # name: (index DDL or None, setting, values); {lists} is sqrt(rows), {lists2} twice that,
    # a float value a fraction of the index's lists
    "bitpress_ivf 1-bit": ("USING bitpress_ivf (v bitpress_cosine_ops) WITH (lists = {lists}, bits = 1)",
                           "bitpress.probes", PROBES),
    "bitpress_ivf 1-bit 2x lists": ("USING bitpress_ivf (v bitpress_cosine_ops) WITH (lists = {lists2}, bits = 1)",
                                     "bitpress.probes", PROBES),
    "bitpress_ivf 2-bit": ("USING bitpress_ivf (v bitpress_cosine_ops) WITH (lists = {lists}, bits = 2)",
                           "bitpress.probes", PROBES[1:]),
    "pgvector hnsw": ("USING hnsw (v vector_cosine_ops) WITH (m = 16, ef_construction = 64)",
                      "hnsw.ef_search", [10, 20, 40, 80, 160, 320, 800]),
    "pgvector ivfflat": ("USING ivfflat (v vector_cosine_ops) WITH (lists = {lists})",
                         "ivfflat.probes", [0.02, 0.04, 0.07, 0.15, 0.3]),
    "exact scan": (None, None, [None]),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="minilm", help="minilm (the shared 50k set) or a directory")
    ap.add_argument("--limit", type=int, default=0, help="use the first N base rows (0: all)")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--exact-queries", type=int, default=50, help="queries for the (slow) exact scan")
    ap.add_argument("--inserts", type=int, default=10_000, help="rows inserted into each built index")
    ap.add_argument("--lists", type=int, default=0, help="IVF lists (0: sqrt(rows))")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--dsn", help="an existing server (vector and bitpress installed) instead of a throwaway one")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--plot", metavar="PNG")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except (Mismatch, KeyboardInterrupt) as e:
        return stopped(e)


def run(args) -> int:
    import psycopg
    from pgvector.psycopg import register_vector

    import bitpress

    x, q, gt = load(args.dataset)
    n = min(len(x), args.limit) if args.limit else len(x)
    if args.limit and args.limit < len(x):
        # the ground truth is for the whole base: recompute it for the first n rows
        xs = np.asarray(x[:n], np.float64)
        xs /= np.linalg.norm(xs, axis=1, keepdims=True)
        gt = np.argsort(-(q[: args.queries].astype(np.float64) @ xs.T), axis=1, kind="stable")[:, :100]
    q, gt = q[: args.queries], gt[: args.queries, :10]
    lists = args.lists or max(1, round(math.sqrt(n)))
    n_build = n - args.inserts
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    cpu = cpu_model()
    log(f"{n} rows x {x.shape[1]} ({n_build} built, {args.inserts} inserted), {len(q)} queries, "
        f"lists {lists}; CPU {cpu}; bitpress kernel path {bitpress.simd()}")

    settings = {"max_parallel_workers_per_gather": 0, "max_parallel_maintenance_workers": 0,
                "shared_buffers": "2GB", "maintenance_work_mem": "2GB", "jit": "off"}
    srv = None
    if args.dsn:
        dsn = args.dsn
    else:
        from _pgserver import ThrowawayPostgres

        srv = ThrowawayPostgres(settings=settings).start()
        dsn = srv.dsn
    results, builds = [], {}
    try:
        conn = psycopg.connect(dsn, autocommit=True)
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE EXTENSION IF NOT EXISTS bitpress")
        register_vector(conn)
        simd_pg = conn.execute("SELECT bitpress_simd()").fetchone()[0]
        for m in methods:
            ddl = METHODS[m][0]
            table = "t_" + "".join(c if c.isalnum() else "_" for c in m)
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v vector({x.shape[1]}))")
            bar = tqdm_or_none(total=n_build, desc=f"load {m}", leave=False)
            copy_rows(conn, table, x, 0, n_build, bar)
            if bar:
                bar.close()
            conn.execute(f"VACUUM ANALYZE {table}")
            info = {"table": table}
            if ddl:
                bconn = psycopg.connect(dsn, autocommit=True)
                pid = bconn.execute("SELECT pg_backend_pid()").fetchone()[0]
                for k, v in settings.items():
                    if k.startswith("max_parallel") or k == "maintenance_work_mem":
                        bconn.execute(f"SET {k} = '{v}'")
                t0 = time.perf_counter()
                if "{lists" in ddl:
                    info["lists"] = 2 * lists if "{lists2}" in ddl else lists
                bconn.execute(f"CREATE INDEX {table}_idx ON {table} " + ddl.format(lists=lists, lists2=2 * lists))
                info["build_s"] = time.perf_counter() - t0
                info["build_peak_rss_mib"] = (vmhwm_kib(pid) or 0) / 1024
                bconn.close()
                info["index_mib"] = conn.execute(
                    f"SELECT pg_relation_size('{table}_idx')").fetchone()[0] / 2**20
            t0 = time.perf_counter()
            copy_rows(conn, table, x, n_build, n)
            info["insert_rows_per_s"] = args.inserts / (time.perf_counter() - t0) if args.inserts else None
            conn.execute(f"VACUUM ANALYZE {table}")
            info["index_mib_after_inserts"] = conn.execute(
                f"SELECT pg_relation_size('{table}_idx')").fetchone()[0] / 2**20 if ddl else None
            builds[m] = info
            log(f"  {m}: " + ", ".join(f"{k} {v:.1f}" for k, v in info.items() if isinstance(v, float)))

        def setting_value(m, val):
            if isinstance(val, float):
                return max(1, round(val * builds[m]["lists"]))
            return val

        points = [(m, setting_value(m, val)) for m in methods for val in METHODS[m][2]]
        lat = {p: [] for p in points}
        rec = {}
        for r in range(args.rounds):
            order = points[:]
            random.Random(r).shuffle(order)
            bar = tqdm_or_none(total=len(order), desc=f"round {r + 1}/{args.rounds}", leave=False)
            for m, val in order:
                ddl, setting, _ = METHODS[m]
                table = builds[m]["table"]
                conn.execute("SET enable_indexscan = " + ("on" if ddl else "off"))
                if setting:
                    conn.execute(f"SET {setting} = {val}")
                nq = args.exact_queries if ddl is None else len(q)
                sql = f"SELECT id FROM {table} ORDER BY v <=> %s LIMIT 10"
                conn.execute(sql, (q[0],), prepare=True).fetchall()  # warm
                hits, t0 = 0, time.perf_counter()
                for i in range(nq):
                    ids = [row[0] for row in conn.execute(sql, (q[i],), prepare=True)]
                    if len(ids) != 10:
                        raise Mismatch(f"{m} returned {len(ids)} rows for LIMIT 10")
                    hits += len(set(ids) & set(gt[i].tolist()))
                lat[m, val].append((time.perf_counter() - t0) / nq)
                rec[m, val] = hits / (10 * nq)
                if ddl is None and rec[m, val] < 0.999:
                    raise Mismatch(f"the exact scan's recall is {rec[m, val]:.3f}: the ground truth is wrong")
                if bar:
                    bar.update(1)
            if bar:
                bar.close()
        conn.execute("RESET enable_indexscan")
        for m, val in points:
            ms = float(np.median(lat[m, val])) * 1e3
            results.append({"method": m, "setting": METHODS[m][1], "value": val, "recall@10": rec[m, val],
                            "ms_per_query": ms, "qps": 1e3 / ms,
                            **{k: v for k, v in builds[m].items() if k != "table"}})
        conn.close()
    finally:
        if srv:
            srv.stop()

    report(results, builds, n, x.shape[1], lists, cpu, simd_pg, args)
    return 0


def qps_at(results, method, target):
    """The best QPS of a method at recall >= target (None if it never gets there)."""
    ok = [r["qps"] for r in results if r["method"] == method and r["recall@10"] >= target]
    return max(ok) if ok else None


def report(results, builds, n, dim, lists, cpu, simd_pg, args):
    print(f"\n{n} rows x {dim}, {len(results)} settings, lists {lists}; CPU {cpu}; "
          f"bitpress kernel path (server) {simd_pg}; one backend, one client\n")
    print("| method | setting | recall@10 | ms/query | QPS |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        setting = f"{r['setting']} = {r['value']}" if r["setting"] else "-"
        print(f"| {r['method']} | {setting} | {r['recall@10']:.3f} | {r['ms_per_query']:.2f} | {r['qps']:.0f} |")
    print("\n| method | lists | build s | index MiB (after inserts) | build peak RSS MiB | inserts rows/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for m, b in builds.items():
        f = lambda k, fmt: fmt.format(b[k]) if b.get(k) is not None else "-"  # noqa: E731
        print(f"| {m} | {f('lists', '{}')} | {f('build_s', '{:.1f}')} | {f('index_mib', '{:.1f}')} "
              f"({f('index_mib_after_inserts', '{:.1f}')}) | {f('build_peak_rss_mib', '{:.0f}')} | "
              f"{f('insert_rows_per_s', '{:.0f}')} |")
    print("\n| target recall@10 | " + " | ".join(m for m in builds if m != "exact scan") + " |")
    print("| --- |" + " --- |" * (len(builds) - ("exact scan" in builds)))
    for target in (0.90, 0.95, 0.99):
        cells = []
        for m in builds:
            if m == "exact scan":
                continue
            v = qps_at(results, m, target)
            cells.append(f"{v:.0f}" if v else "not reached")
        print(f"| {target:.2f} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": n, "dim": dim, "lists": lists, "cpu": cpu, "simd": simd_pg,
                       "dataset": args.dataset, "queries": args.queries, "results": results,
                       "builds": builds}, fh, indent=1)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for m in builds:
            pts = sorted((r["recall@10"], r["qps"]) for r in results if r["method"] == m)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if len(pts) > 1 else "s", label=m)
        ax.set_xlabel("recall@10")
        ax.set_ylabel("queries per second (one backend)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{n:,} x {dim} ({args.dataset}), CPU {cpu or '?'}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
