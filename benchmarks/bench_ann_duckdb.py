"""Approximate k-NN in DuckDB: bitpress's IVF index (bitpress_ivf_search, a probes sweep) against
DuckDB's exact scan (array_cosine_distance ORDER BY LIMIT) and the vss extension's HNSW index
(an hnsw_ef_search sweep), on the same real vectors and queries.

bitpress and the exact scan run here, on the DuckDB this venv has. vss has no build for that
DuckDB: it runs in a venv of its own (duckdb==1.5.5 and duckdb-extension-vss==1.5.5, created
with ``python3 -m venv`` at --vss-venv when missing), as a child process given the same data,
with its own exact scan as a reference. Every method answers every query from one client, one
connection, one statement per query (the query vector passed as a VARCHAR parameter cast to
FLOAT[d], the cheapest way found to hand DuckDB 1.5.5 a vector: binding a 384-float list costs
about 39 ms there, a 384-number literal about 8 ms to parse). recall@10 is against the exact
cosine top 10 of gt_top100.npy; latency is the mean over the queries (after 20 warm-up queries),
the median of --rounds rounds, every method's settings in a shuffled order each round (the vss
child answers one setting per command), so drift on a shared machine hits all alike. --delta N
also deletes N rows and inserts them again after the rounds (new rowids: searched exactly, as
every row changed since a build is) and times bitpress again.

  python benchmarks/bench_ann_duckdb.py [--queries 500] [--json PATH] [--plot PNG] [--no-vss]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench import Mismatch, cpu_model, log, stopped  # noqa: E402

SHARED = Path(os.environ.get("BITPRESS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
VSS_VENV = Path("/var/cache/bitpress-bench/vss-venv")
VSS_PINS = ["duckdb==1.5.5", "duckdb-extension-vss==1.5.5", "numpy", "pyarrow"]
WARMUP = 20


def literal(v) -> str:
    return "[" + ",".join(repr(float(f)) for f in v) + "]"


def timed(con, sql, qstrs):
    """(mean seconds per query after WARMUP warm-up queries, the ids each query returned)."""
    for s in qstrs[:WARMUP]:
        con.execute(sql, [s]).fetchall()
    out = []
    t = time.perf_counter()
    for s in qstrs:
        out.append([r[0] for r in con.execute(sql, [s]).fetchall()])
    return (time.perf_counter() - t) / len(qstrs), out


def recall(got, gt, k=10) -> float:
    return float(np.mean([len(set(g[:k]) & set(t[:k].tolist())) / k for g, t in zip(got, gt)]))


def load_table(con, x, dim):
    import pyarrow as pa

    t = pa.table({"id": pa.array(np.arange(len(x)), pa.int64()),
                  "e": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim)})
    con.register("_load", t)
    con.execute(f"CREATE TABLE docs AS SELECT id, CAST(e AS FLOAT[{dim}]) AS embedding FROM _load ORDER BY id")
    con.unregister("_load")


# The vss part, run by the vss venv's python: a JSON job on its first stdin line, then one JSON
# command per line ("exact", "build", {"ef": n}, "quit"), each answered by one JSON line, so that
# the parent can interleave vss's settings with its own in every round.
VSS_CHILD = r"""
import glob, json, os, sys, time
import numpy as np
import duckdb
import duckdb_extension_vss
job = json.loads(sys.stdin.readline())
x = np.load(job["corpus"]); q = np.load(job["queries"])[:job["queries_n"]]
gt = np.load(job["gt"])[:len(q)]
dim = x.shape[1]
ext = glob.glob(os.path.join(os.path.dirname(duckdb_extension_vss.__file__), "extensions", "*", "vss.duckdb_extension"))[0]
con = duckdb.connect()
con.execute(f"SET threads = {job['threads']}")
con.execute("SET enable_progress_bar = false")  # it writes to stdout, the protocol's channel
con.execute(f"LOAD '{ext}'")
exec(job["helpers"])
load_table(con, x, dim)
con.execute("CREATE TABLE docs_plain AS SELECT * FROM docs")  # no index on it: the exact scan
qstrs = [literal(v) for v in q]
sql = f"SELECT id FROM docs ORDER BY array_cosine_distance(embedding, CAST(? AS FLOAT[{dim}])) LIMIT 10"
sql_exact = sql.replace("FROM docs", "FROM docs_plain")
def reply(d):
    sys.stdout.write(json.dumps(d) + "\n"); sys.stdout.flush()
reply({"duckdb": duckdb.__version__})
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd == "quit":
        break
    if cmd == "exact":
        n = job["exact_queries"]
        s, got = timed(con, sql_exact, qstrs[:n])
        reply({"s": s, "recall": recall(got, gt[:n]), "queries": n})
    elif cmd == "build":
        t = time.perf_counter()
        con.execute(f"CREATE INDEX hnsw ON docs USING HNSW (embedding) WITH (metric = 'cosine', M = {job['m']}, "
                    f"ef_construction = {job['ef_construction']})")
        build = time.perf_counter() - t
        plan = con.execute("EXPLAIN " + sql.replace("CAST(? AS", "CAST('" + qstrs[0] + "' AS")).fetchall()[0][1]
        try:
            mem = int(con.execute("SELECT approx_memory_usage FROM pragma_hnsw_index_info()").fetchall()[0][0])
        except Exception:
            mem = None
        reply({"build_s": build, "uses_index": "HNSW" in plan, "memory_bytes": mem})
    else:
        con.execute(f"SET hnsw_ef_search = {cmd['ef']}")
        s, got = timed(con, sql, qstrs)
        reply({"s": s, "recall": recall(got, gt), "queries": len(qstrs)})
"""


class VssChild:
    """The vss child process and its one-line-per-command protocol."""

    def __init__(self, py, job):
        self.p = subprocess.Popen([str(py), "-c", VSS_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        self.version = self.ask(job)["duckdb"]

    def ask(self, cmd):
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise SystemExit(f"the vss child died (exit {self.p.wait()})")
            if line.startswith("{"):
                return json.loads(line)

    def close(self):
        try:
            self.ask("quit")
        except (SystemExit, BrokenPipeError, json.JSONDecodeError):
            pass
        self.p.wait(timeout=60)


def helpers_source() -> str:
    """The functions the vss child shares with this script (timing, recall, loading)."""
    import inspect

    return "\n".join(inspect.getsource(f) for f in (literal, timed, recall, load_table)) + f"\nWARMUP = {WARMUP}\n"


def vss_python(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        log(f"creating {venv} (python3 -m venv; pip install {' '.join(VSS_PINS)})")
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *VSS_PINS], check=True)
    return py


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(SHARED / "pypi-minilm"), help="corpus.npy, queries.npy, gt_top100.npy")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--exact-queries", type=int, default=100, help="queries for the (slow) exact scans")
    ap.add_argument("--lists", type=int, default=224)
    ap.add_argument("--bits", type=int, default=1)
    ap.add_argument("--probes", default="4,8,16,24,32,48,64,96")
    ap.add_argument("--ef", default="16,32,64,128,256", help="vss hnsw_ef_search values")
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="DuckDB threads (both DuckDBs)")
    ap.add_argument("--delta", type=int, default=1000, help="rows deleted and inserted again after the build")
    ap.add_argument("--delta-probes", type=int, default=48)
    ap.add_argument("--vss-venv", default=str(VSS_VENV))
    ap.add_argument("--no-vss", action="store_true")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--plot", metavar="PNG")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except (Mismatch, KeyboardInterrupt) as e:
        return stopped(e)


def run(args) -> int:
    import random

    import duckdb

    import bitpress
    import bitpress.duckdb
    from bitpress import schema

    data = Path(args.data)
    x = np.load(data / "corpus.npy")
    q = np.load(data / "queries.npy")[:args.queries]
    gt = np.load(data / "gt_top100.npy")[:len(q)]
    n, dim = x.shape
    ne = min(args.exact_queries, len(q))
    conditions = {"cpu": cpu_model(), "cores": os.cpu_count(), "loadavg_start": os.getloadavg(),
                  "duckdb": duckdb.__version__, "bitpress": getattr(bitpress, "__version__", None),
                  "rows": n, "dims": dim, "queries": len(q), "threads": args.threads, "rounds": args.rounds}
    log(f"{n} x {dim}, {len(q)} queries; CPU {conditions['cpu']} x {os.cpu_count()}; load {conditions['loadavg_start']}")
    vss = None
    if not args.no_vss:
        job = {"corpus": str(data / "corpus.npy"), "queries": str(data / "queries.npy"),
               "gt": str(data / "gt_top100.npy"), "queries_n": len(q), "exact_queries": ne, "m": args.m,
               "ef_construction": args.ef_construction, "threads": args.threads, "helpers": helpers_source()}
        vss = VssChild(vss_python(Path(args.vss_venv)), job)
        log(f"vss (DuckDB {vss.version}, child process): building HNSW ...")
        vss_build = vss.ask("build")
        if not vss_build["uses_index"]:
            raise SystemExit("vss: the query plan does not use the HNSW index")
        log(f"vss: built in {vss_build['build_s']:.1f} s")
    con = bitpress.duckdb.connect()
    con.execute(f"SET threads = {args.threads}")
    schema.upgrade(con)
    load_table(con, x, dim)
    qstrs = [literal(v) for v in q]
    sql_exact = f"SELECT id FROM docs ORDER BY array_cosine_distance(embedding, CAST(? AS FLOAT[{dim}])) LIMIT 10"
    t = time.perf_counter()
    con.execute(f"SELECT bitpress_ivf_create('docs', 'id', 'embedding', lists := {args.lists}, bits := {args.bits}, "
                "metric := 'cosine')").fetchall()
    build = time.perf_counter() - t
    size = con.execute("SELECT sum(octet_length(centroid) + octet_length(ids) + octet_length(rowids) + "
                       "octet_length(codes) + octet_length(factors)) FROM bitpress.ivf_lists").fetchall()[0][0]
    sql_ivf = f"SELECT id FROM bitpress_ivf_search('docs', CAST(? AS FLOAT[{dim}]), 10, probes := {{p}})"
    t = time.perf_counter()
    con.execute(sql_ivf.format(p=1), [qstrs[0]]).fetchall()  # a connection's first search reads the table
    first = time.perf_counter() - t
    log(f"bitpress index: built in {build:.1f} s, {size / 2**20:.1f} MiB; first search {first:.2f} s")
    ivf_name = f"bitpress_ivf (lists {args.lists}, bits {args.bits})"
    tasks = [("exact", f"exact scan (DuckDB {duckdb.__version__})", "", None)]
    tasks += [("ivf", ivf_name, f"probes {p}", p) for p in [int(v) for v in args.probes.split(",")]]
    if vss is not None:
        tasks += [("vss-exact", f"exact scan (DuckDB {vss.version})", "", None)]
        tasks += [("vss", f"vss HNSW (M {args.m}, ef_construction {args.ef_construction})", f"ef_search {ef}", ef)
                  for ef in [int(v) for v in args.ef.split(",")]]
    times = {i: [] for i in range(len(tasks))}
    recalls = {}
    rng = random.Random(0)
    for rnd in range(args.rounds):
        order = list(range(len(tasks)))
        rng.shuffle(order)  # drift on a shared machine hits every method alike
        for i in order:
            kind, method, setting, val = tasks[i]
            if kind == "exact":
                s, got = timed(con, sql_exact, qstrs[:ne])
                rec = recall(got, gt[:ne])
            elif kind == "ivf":
                s, got = timed(con, sql_ivf.format(p=val), qstrs)
                rec = recall(got, gt)
            else:
                r = vss.ask("exact" if kind == "vss-exact" else {"ef": val})
                s, rec = r["s"], r["recall"]
            if "exact" in kind and rec < 0.99:  # ties aside, an exact scan finds the exact top 10
                raise Mismatch(f"{method}: recall@10 {rec:.3f}: not an exact scan")
            times[i].append(s)
            recalls[i] = rec
            log(f"round {rnd + 1}: {method} {setting}: {s * 1e3:.2f} ms, recall {rec:.3f}")
    rows = []
    for i, (kind, method, setting, val) in enumerate(tasks):
        s = float(np.median(times[i]))
        rows.append({"method": method, "setting": setting, "recall": recalls[i], "ms": s * 1e3, "qps": 1 / s,
                     "queries": ne if "exact" in kind else len(q), "rounds_ms": [t * 1e3 for t in times[i]]})
    if args.delta:  # after the rounds: it changes the table
        con.execute(f"CREATE TEMP TABLE moved AS SELECT * FROM docs WHERE id % {n // args.delta} = 0 "
                    f"LIMIT {args.delta}")
        con.execute("DELETE FROM docs WHERE id IN (SELECT id FROM moved)")
        con.execute("INSERT INTO docs SELECT * FROM moved")
        ts = []
        for _ in range(args.rounds):
            s, got = timed(con, sql_ivf.format(p=args.delta_probes), qstrs)
            ts.append(s)
        s = float(np.median(ts))
        rows.append({"method": ivf_name, "setting": f"probes {args.delta_probes}, {args.delta} rows changed since "
                     "the build", "recall": recall(got, gt), "ms": s * 1e3, "qps": 1 / s, "queries": len(q),
                     "delta": True, "rounds_ms": [t * 1e3 for t in ts]})
        log(f"delta {args.delta}: {s * 1e3:.2f} ms")
    con.close()
    if vss is not None:
        vss.close()
    conditions["loadavg_end"] = os.getloadavg()
    result = {"conditions": conditions, "bitpress_build_s": build, "bitpress_first_search_s": first,
              "bitpress_index_bytes": size,
              "vss": None if vss is None else {"duckdb": vss.version, **vss_build}, "rows": rows}
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(result, args.plot)
    return 0


def table(result) -> str:
    c = result["conditions"]
    lines = ["| method | setting | recall@10 | ms / query | QPS |", "| --- | --- | ---: | ---: | ---: |"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['setting']} | {r['recall']:.3f} | {r['ms']:.2f} | {r['qps']:.0f} |")
    vss = result.get("vss") or {}
    lines.append("")
    lines.append(f"{c['rows']:,} x {c['dims']} vectors, {c['queries']} queries, median of {c['rounds']} "
                 f"interleaved rounds; CPU {c['cpu']} ({c['cores']} cores, "
                 f"DuckDB threads {c['threads']}); load average {c['loadavg_start'][0]:.1f} at the start, "
                 f"{c['loadavg_end'][0]:.1f} at the end. bitpress index: built in {result['bitpress_build_s']:.1f} s, "
                 f"{result['bitpress_index_bytes'] / 2**20:.1f} MiB of index tables, first search of a "
                 f"connection {result['bitpress_first_search_s']:.1f} s"
                 + (f"; vss HNSW (DuckDB {vss['duckdb']}): built in {vss['build_s']:.1f} s" if vss else "")
                 + (f", {vss['memory_bytes'] / 2**20:.1f} MiB" if vss.get("memory_bytes") else "") + ".")
    return "\n".join(lines)


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = {}
    for r in result["rows"]:
        if r.get("delta"):
            continue
        groups.setdefault(r["method"], []).append(r)
    for method, rs in groups.items():
        style = "o-" if len(rs) > 1 else "s"
        ax.plot([r["recall"] for r in rs], [r["qps"] for r in rs], style, label=method)
    ax.set_xlabel("recall@10")
    ax.set_ylabel("queries per second (one client)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    c = result["conditions"]
    ax.set_title(f"DuckDB, {c['rows']:,} x {c['dims']} MiniLM vectors", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
