#!/usr/bin/env python3
"""Sparse feed-forward layers: dense ``ffn`` vs ``sparse_ffn`` in PostgreSQL, DuckDB and numpy.

    python benchmarks/bench_sparse.py [--n 10000] [--fractions 0.1,0.3,0.5,0.7] [--repeat 3]
                                      [--engines postgresql,duckdb,numpy] [--dsn DSN] [--json PATH]

The layers are real: ``bitpress.sparsefit.fit_model(conn, 'bench', rank=64, fraction=0.3)``
fits the low-rank predictors of the three FFN layers of paraphrase-MiniLM-L3-v2 on real FFN
inputs (PyPI summaries 0..499) and stores ``bench.layer0..2`` in ``bitpress.ffn_layers``
(fitted once, in DuckDB; the same rows are copied into PostgreSQL and checked to be the same
bytes). The vectors are real too: the FFN inputs of layer 0 (one per token, 384-d) of PyPI
summaries from line 1000 on, as many sentences as it takes to reach --n (~17 tokens each).

Timed, per vector of a table of --n of them (each query computes every row on the server
and returns one number: no vector crosses the wire):

  dense          ``ffn(x, 'bench.layer0')``: every one of the 1536 neurons
  predictor      ``sparse_ffn(x, 'bench.layer0', k)``: the predictor picks k = round(f * 1536)
                 neurons (the predictor's cost is included), only those are computed
  exact          ``sparse_ffn(x, 'bench.layer0', k, 'exact')``: the first matmul in full, the
                 k neurons with the largest activations in the second
  numpy dense    ``gelu_erf(X @ W1 + b1) @ W2 + b2`` in float32 with BLAS (all cores): what a
                 user would otherwise pick
  python         ``bitpress.ffn.run`` (the same C core called from Python on the whole batch):
                 separates the kernel from the per-row cost of each database

``cosine`` is the end-to-end quality of the selection: the mean cosine between the sentence
embeddings of 300 held-out PyPI summaries (lines 3000..3299) computed with every FFN layer
replaced by ``ffn.run(layer, x, k, selector)`` and those of the unmodified model. It is computed
once per selector and fraction in Python; the SQL functions return exactly the same bits as
``ffn.run`` (checked here on sampled rows of every timed query's function, untimed), so the
same cosine applies to every engine and is put in each row.

A mismatch (a SQL answer that is not the C core's bits, a wrong row count) exits 1. Without
--dsn a throwaway PostgreSQL cluster is created in a temp dir and removed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (Mismatch, add_engine_arguments, stopped, fmt_ms, log, median_ms,  # noqa: E402
                    close_postgresql, parse_engines, same_bits, time_interleaved, unwind_on_signals)

MODEL = "bench"
LAYER = f"{MODEL}.layer0"
H = 1536
WARM_ROWS = 256
SAMPLE_IDS = 6
TARGET_FRACTION, TARGET_SPEEDUP, TARGET_COSINE = 0.3, 2.0, 0.99
SELECTORS = ("predictor", "exact")


# -- data --------------------------------------------------------------------------------------

def capture_vectors(bert, n):
    """(n, 384) float32: layer 0's real FFN inputs, from PyPI summaries at line 1000 on."""
    from bitpress.sparse import load_texts

    parts, have, offset, sentences = [], 0, 1000, 0
    while have < n:
        m = max(64, int((n - have) / 15) + 32)  # ~17 tokens per sentence, a little extra
        texts = load_texts(offset, offset + m)
        if not texts:
            raise SystemExit(f"the corpus ran out of sentences after {sentences} ({have} vectors)")
        x = bert.capture_ffn_inputs(texts)[0]
        parts.append(x)
        have += len(x)
        offset += m
        sentences += len(texts)
    x = np.ascontiguousarray(np.concatenate(parts)[:n], dtype=np.float32)
    return x, dict(source="layer-0 FFN inputs of PyPI summaries (corpus.jsonl lines 1000..)",
                   sentences=sentences, n=n)


def methods(fractions):
    """(name, selector, fraction, k) of every timed method; dense first."""
    out = [("dense", None, 1.0, None)]
    for sel in SELECTORS:
        for f in fractions:
            out.append((sel, sel, f, int(round(f * H))))
    return out


def sql_call(selector, k, x="x"):
    if selector is None:
        return f"ffn({x}, '{LAYER}')"
    if selector == "predictor":
        return f"sparse_ffn({x}, '{LAYER}', {k})"
    return f"sparse_ffn({x}, '{LAYER}', {k}, 'exact')"


def add_rows(results, engine, ms_list, n, cosines, neurons, notes=""):
    for (name, sel, f, k), t in ms_list:
        results.append(dict(engine=engine, method=name, selector=sel, active_fraction=f, k=k if k else H,
                            ms_per_vector=median_ms(t) / n, ms_total=median_ms(t),
                            all_ms=[s * 1e3 for s in t], n=n,
                            cosine=cosines[(sel, f)], mean_neurons=neurons.get((sel, f)), note=notes))


# -- cosine ------------------------------------------------------------------------------------

def measure_cosines(bert, blobs, fractions):
    """{(selector, fraction): mean cosine} of end-to-end sentence embeddings, and the mean
    number of neurons ffn.run computed per token."""
    from bitpress import ffn
    from bitpress.sparse import load_texts

    texts = load_texts(3000, 3300)
    ref = bert.encode(texts)
    out, neurons = {}, {}
    for sel, f, k in [(None, 1.0, None)] + [(s, f, int(round(f * H))) for s in SELECTORS for f in fractions]:
        counts = []

        def repl(b):
            def fn(x):
                y, m = ffn.run(b, x, k=k, selector=sel or "predictor")
                counts.append(m)
                return y
            return fn

        emb = bert.encode(texts, ffn={i: repl(b) for i, b in enumerate(blobs)})
        cos = np.sum(emb.astype(np.float64) * ref, axis=1) / (
            np.linalg.norm(emb.astype(np.float64), axis=1) * np.linalg.norm(ref.astype(np.float64), axis=1))
        out[(sel, f)] = float(np.mean(cos))
        neurons[(sel, f)] = float(np.mean(counts))
        log(f"cosine {sel or 'dense'} f={f:g}: {out[(sel, f)]:.5f} (min {float(np.min(cos)):.4f})")
    return out, neurons, len(texts)


# -- engines -----------------------------------------------------------------------------------

def bench_numpy(x, blobs, bert, fractions, args, results, cosines, neurons):
    from bitpress import ffn
    from bitpress.sparse import gelu_erf

    p = bert.ffn_params(0)
    w1, b1, w2, b2 = (np.ascontiguousarray(p[k], dtype=np.float32) for k in ("w1", "b1", "w2", "b2"))
    n = len(x)
    blob = blobs[0]
    ref_dense = ffn.run(blob, x[:WARM_ROWS])[0]

    def numpy_dense(warm):
        xx = x[:WARM_ROWS] if warm else x
        return gelu_erf(xx @ w1 + b1) @ w2 + b2

    t = time_interleaved({"dense": numpy_dense}, [False] * args.repeat, True, desc="numpy dense")
    y = numpy_dense(True)
    rel = float(np.max(np.abs(y - ref_dense)) / np.max(np.abs(ref_dense)))
    if rel > 1e-4:
        raise Mismatch(f"numpy dense differs from ffn.run dense by {rel:.3g} x max|y|")
    add_rows(results, "numpy", [(("dense", None, 1.0, None), t["dense"])], n, cosines, neurons,
             notes=f"float32 BLAS, all cores; max diff vs ffn.run {rel:.2g} x max|y|")

    ms = methods(fractions)
    fns = {}
    for name, sel, f, k in ms:
        fns[(name, f)] = (lambda sel, k: lambda warm: ffn.run(blob, x[:WARM_ROWS] if warm else x, k=k,
                                                              selector=sel or "predictor")[0])(sel, k)
    t = time_interleaved(fns, [False] * args.repeat, True, desc="python ffn.run")
    add_rows(results, "python", [(m, t[(m[0], m[2])]) for m in ms], n, cosines, neurons,
             notes="bitpress.ffn.run: the C core on the whole batch, one thread")


def check_sample(tag, got_rows, x, ids, blob, sel, k):
    from bitpress import ffn

    want = ffn.run(blob, x[ids], k=k, selector=sel or "predictor")[0]
    same_bits(f"{tag}: {sql_call(sel, k)} on rows {ids.tolist()}", np.array(got_rows, dtype=np.float32), want,
              reference="ffn.run's")


def bench_sql(engine, con, q, table, x, blob, fractions, args, results, cosines, neurons, ids, fetch_rows):
    """q(sql) -> first row; fetch_rows(call) -> the result vectors of the sample ids, in order."""
    n = len(x)
    ms = methods(fractions)
    size = "vector_dims" if engine == "postgresql" else "len"
    for name, sel, f, k in ms:
        check_sample(engine, fetch_rows(sql_call(sel, k)), x, ids, blob, sel, k)
    fns = {}
    for name, sel, f, k in ms:
        sql = f"SELECT count(*), sum({size}({sql_call(sel, k)})) FROM {table}"
        fns[(name, f)] = (lambda sql: lambda warm: q(sql + (f" WHERE id < {WARM_ROWS}" if warm else "")))(sql)

    def after(name, warm, ans):
        want = WARM_ROWS if warm else n
        if tuple(int(a) for a in ans) != (want, want * 384):
            raise Mismatch(f"{engine} {name}: got {tuple(ans)}, expected {(want, want * 384)}")

    t = time_interleaved(fns, [False] * args.repeat, True, after=after, desc=engine)
    add_rows(results, engine, [(m, t[(m[0], m[2])]) for m in ms], n, cosines, neurons)
    return f"{engine}: every SQL function's sampled rows ({len(ids)}) are ffn.run's bits; row counts checked"


def bench_duckdb(con, x, blobs, fractions, args, results, cosines, neurons, ids):
    import duckdb
    import pyarrow as pa

    n, dim = x.shape
    if args.duckdb_threads:
        con.execute(f"SET threads = {int(args.duckdb_threads)}")
    threads = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    t0 = time.perf_counter()
    tbl = pa.table({"id": pa.array(np.arange(n, dtype=np.int32)),
                    "x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), type=pa.float32()), dim)})
    con.register("h_in", tbl)
    con.execute(f"CREATE TABLE h AS SELECT id, x::FLOAT[{dim}] AS x FROM h_in")
    con.unregister("h_in")
    log(f"duckdb {duckdb.__version__}: {n:,} vectors in h(id INTEGER, x FLOAT[{dim}]) in "
        f"{time.perf_counter() - t0:.1f} s, threads={threads}")

    def fetch_rows(call):
        got = con.execute(f"SELECT id, {call} FROM h WHERE id IN (SELECT unnest(?)) ORDER BY id",
                          [ids.tolist()]).fetchall()
        if [g[0] for g in got] != ids.tolist():
            raise Mismatch(f"duckdb: sample returned ids {[g[0] for g in got]}")
        return [g[1] for g in got]

    check = bench_sql("duckdb", con, lambda s: con.execute(s).fetchall()[0], "h", x, blobs[0], fractions, args,
                      results, cosines, neurons, ids, fetch_rows)
    return check, dict(duckdb_version=duckdb.__version__, threads=int(threads))


def bench_postgresql(layer_rows, x, blobs, fractions, args, results, cosines, neurons, ids):
    import psycopg
    from pgvector.psycopg import register_vector

    from bitpress import ffn, schema, tables

    n, dim = x.shape
    own = args.dsn is None
    table = "h" if own else f"bitpress_bench_h_{os.getpid()}"
    server = conn = None
    names = []
    try:
        dsn = args.dsn
        if own:
            from _pgserver import ThrowawayPostgres

            server = ThrowawayPostgres(settings={"shared_buffers": "'512MB'", "work_mem": "'256MB'",
                                                "max_parallel_workers_per_gather": 0})
            log(f"postgresql: starting a throwaway cluster ({server.bindir}) ...")
            server.start()
            dsn = server.dsn
        conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=None)
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE EXTENSION IF NOT EXISTS bitpress")
        register_vector(conn)
        schema.upgrade(conn)
        conn.execute("SET max_parallel_workers_per_gather = 0")
        if args.pg_jit != "default":
            conn.execute(f"SET jit = {args.pg_jit}")
        # the fitted layers, row for row (refused if a layer of that name exists on a --dsn server)
        for row in layer_rows:
            if tables.fetchall(conn, f"SELECT 1 FROM {ffn.TABLE} WHERE name = %s", (row[0],)):
                raise SystemExit(f"postgresql: layer {row[0]} already exists in {ffn.TABLE}; not touching it")
            tables.execute(conn, f"INSERT INTO {ffn.TABLE} (name, d, h, rank, activation, format, params, source, "
                                 "settings) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", row)
            names.append(row[0])
        for i, b in enumerate(blobs):
            if ffn.load(conn, f"{MODEL}.layer{i}") != b:
                raise Mismatch(f"postgresql: stored {MODEL}.layer{i} differs from DuckDB's")
        t0 = time.perf_counter()
        with conn.transaction():
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"CREATE TABLE {table} (id integer NOT NULL, x vector({dim}) NOT NULL)")
            with conn.cursor() as cur:
                with cur.copy(f"COPY {table} (id, x) FROM STDIN (FORMAT binary, FREEZE)") as cp:
                    cp.set_types(["int4", "vector"])
                    for i in range(n):
                        cp.write_row((i, x[i]))
        conn.execute(f"VACUUM (ANALYZE) {table}")
        info = dict(server_version=conn.execute("SHOW server_version").fetchone()[0],
                    jit=conn.execute("SHOW jit").fetchone()[0],
                    bitpress_version=conn.execute(
                        "SELECT extversion FROM pg_extension WHERE extname = 'bitpress'").fetchone()[0],
                    max_parallel_workers_per_gather=0)
        log(f"postgresql: {n:,} vectors in {table}(id integer, x vector({dim})) in "
            f"{time.perf_counter() - t0:.1f} s; " + ", ".join(f"{k}={v}" for k, v in info.items()))

        def fetch_rows(call):
            got = conn.execute(f"SELECT id, {call} FROM {table} WHERE id = ANY(%s) ORDER BY id",
                               [ids.tolist()]).fetchall()
            if [g[0] for g in got] != ids.tolist():
                raise Mismatch(f"postgresql: sample returned ids {[g[0] for g in got]}")
            return [np.asarray(g[1].to_numpy(), dtype=np.float32) for g in got]

        check = bench_sql("postgresql", conn, lambda s: conn.execute(s).fetchone(), table, x, blobs[0],
                          fractions, args, results, cosines, neurons, ids, fetch_rows)
        return check, info
    finally:
        try:
            if conn is not None and not own:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
                for nm in names:
                    conn.execute(f"DELETE FROM {ffn.TABLE} WHERE name = %s", [nm])
        finally:
            close_postgresql([conn], server)


# -- report ------------------------------------------------------------------------------------

def add_ratios(results):
    dense = {r["engine"]: r["ms_per_vector"] for r in results if r["method"] == "dense"}
    numpy_ms = dense.get("numpy")
    for r in results:
        r["speedup_vs_dense"] = dense[r["engine"]] / r["ms_per_vector"]
        r["speedup_vs_numpy"] = numpy_ms / r["ms_per_vector"] if numpy_ms else None


def targets(results):
    out = []
    for r in results:
        if r["selector"] and abs(r["active_fraction"] - TARGET_FRACTION) < 1e-9 and r["engine"] != "numpy":
            out.append(dict(engine=r["engine"], selector=r["selector"], speedup_vs_dense=r["speedup_vs_dense"],
                            cosine=r["cosine"],
                            met=bool(r["speedup_vs_dense"] >= TARGET_SPEEDUP and r["cosine"] >= TARGET_COSINE)))
    return out


def print_report(results, tgts, vinfo, ncos):
    hdr = ("engine", "method", "fraction", "k", "ms/vector", "us/vector", "vs own dense", "vs numpy", "cosine")
    rows = [(r["engine"], r["method"], f"{r['active_fraction']:.1f}", str(r["k"]), f"{r['ms_per_vector']:.4f}",
             f"{r['ms_per_vector'] * 1e3:.1f}", f"{r['speedup_vs_dense']:.2f}x",
             f"{r['speedup_vs_numpy']:.2f}x" if r["speedup_vs_numpy"] else "-", f"{r['cosine']:.4f}")
            for r in results]
    widths = [max(len(h), *(len(x[i]) for x in rows)) for i, h in enumerate(hdr)]
    right = {2, 3, 4, 5, 6, 7, 8}

    def line(cells):
        return " | ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print(f"\n{vinfo['n']:,} vectors: {vinfo['source']} ({vinfo['sentences']:,} sentences); layer {LAYER} "
          f"(d=384, h={H})\n")
    print(line(hdr))
    print("-+-".join("-" * w for w in widths))
    prev = None
    for r, cells in zip(results, rows):
        if prev is not None and r["engine"] != prev:
            print("-+-".join("-" * w for w in widths))
        prev = r["engine"]
        print(line(cells))
    print(f"\ncosine: mean end-to-end sentence-embedding cosine (all 3 layers replaced) vs the unmodified model "
          f"on {ncos} held-out sentences, computed with ffn.run; the SQL functions return the same bits, so "
          "it holds for every engine.\nvs own dense: the engine's dense ffn ms / the row's ms (numpy: its BLAS "
          "dense). PostgreSQL: one backend, no parallel workers; DuckDB: Python UDF batches, its threads; "
          "numpy's BLAS uses every core; the C core is single-threaded.")
    print(f"\ntarget: at {TARGET_FRACTION:.0%} active, >= {TARGET_SPEEDUP:g}x faster than the engine's own dense "
          f"ffn at cosine >= {TARGET_COSINE}:")
    for t in tgts:
        print(f"  {t['engine']:<10} {t['selector']:<9} {t['speedup_vs_dense']:.2f}x faster, cosine "
              f"{t['cosine']:.4f}: {'met' if t['met'] else 'MISSED'}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000,
                    help="vectors in the table (default 10,000: fitting the predictors alone takes 70-90 s on "
                         "2 shared cores, and the 9 methods x 3 engines x (repeat + warm-up) queries then "
                         "keep the run near 4 minutes; the issue's --n 100000 works, ~10x the timing part)")
    ap.add_argument("--fractions", default="0.1,0.3,0.5,0.7", help="active fractions (default 0.1,0.3,0.5,0.7)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per method (median; default 3)")
    ap.add_argument("--rank", type=int, default=64, help="predictor rank for fit_model (default 64)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", metavar="PATH", help="write every number and the machine")
    add_engine_arguments(ap, "a table and the layers bench.layer0..2")
    args = ap.parse_args(argv)
    engines = parse_engines(ap, args)
    try:
        fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
    except ValueError:
        ap.error(f"--fractions must be numbers, got {args.fractions!r}")
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        ap.error("--fractions must be in (0, 1]")
    if args.n < WARM_ROWS or args.repeat < 1:
        ap.error(f"--n must be >= {WARM_ROWS}, --repeat >= 1")
    unwind_on_signals()

    import bitpress
    import bitpress.duckdb
    from bitpress import ffn, schema, sparsefit
    from bitpress.bert import Bert

    wall0 = time.perf_counter()
    results, checks, engine_info = [], [], {}
    dcon = None
    try:
        bert = Bert()
        dcon = bitpress.duckdb.connect()
        schema.upgrade(dcon)
        t0 = time.perf_counter()
        reports = sparsefit.fit_model(dcon, MODEL, rank=args.rank, fraction=0.3, calibration=400, held_out=100)
        log(f"fit_model: {len(reports)} layers in {time.perf_counter() - t0:.1f} s; " + "; ".join(
            f"{r['layer']} recall@k {r['recall_at_k']:.3f}" for r in reports))
        blobs = [ffn.load(dcon, f"{MODEL}.layer{i}") for i in range(len(reports))]
        layer_rows = dcon.execute(f"SELECT name, d, h, rank, activation, format, params, source, settings "
                                  f"FROM {ffn.TABLE} WHERE name LIKE '{MODEL}.layer%' ORDER BY name").fetchall()
        layer_rows = [tuple(bytes(v) if i == 6 else v for i, v in enumerate(r)) for r in layer_rows]
        t0 = time.perf_counter()
        x, vinfo = capture_vectors(bert, args.n)
        log(f"vectors: {args.n:,} layer-0 FFN inputs from {vinfo['sentences']:,} sentences in "
            f"{time.perf_counter() - t0:.1f} s")
        cosines, neurons, ncos = measure_cosines(bert, blobs, fractions)
        rng = np.random.default_rng(args.seed)
        ids = np.unique(np.concatenate([[0, args.n - 1], rng.choice(args.n, SAMPLE_IDS, replace=False)]))
        for eng in [e for e in ("numpy", "duckdb", "postgresql") if e in engines]:
            t0 = time.perf_counter()
            if eng == "numpy":
                bench_numpy(x, blobs, bert, fractions, args, results, cosines, neurons)
                checks.append("numpy dense agrees with ffn.run dense within 1e-4 x max|y|")
            elif eng == "duckdb":
                c, engine_info["duckdb"] = bench_duckdb(dcon, x, blobs, fractions, args, results, cosines,
                                                        neurons, ids)
                checks.append(c)
            else:
                c, engine_info["postgresql"] = bench_postgresql(layer_rows, x, blobs, fractions, args, results,
                                                                cosines, neurons, ids)
                checks.append(c)
            log(f"{eng}: done in {time.perf_counter() - t0:.1f} s")
    except (Mismatch, KeyboardInterrupt) as e:
        return stopped(e)
    finally:
        if dcon is not None:
            dcon.close()

    rank = {"postgresql": 0, "duckdb": 1, "python": 2, "numpy": 3}
    order = {(m[0], m[2]): i for i, m in enumerate(methods(fractions))}
    results.sort(key=lambda r: (rank[r["engine"]], order.get((r["method"], r["active_fraction"]), -1)))
    add_ratios(results)
    tgts = targets(results)
    print_report(results, tgts, vinfo, ncos)
    wall = time.perf_counter() - wall0
    print(f"\nall answers checked ({len(checks)} checks, see --json); wall time {wall:.1f} s")
    if args.json:
        machine = dict(platform=platform.platform(), cpu_count=os.cpu_count(), python=platform.python_version(),
                       numpy=np.__version__, bitpress=bitpress.__version__, simd=bitpress.simd())
        doc = dict(benchmark="bench_sparse", args=vars(args), machine=machine, layer=LAYER,
                   fit=reports, vectors=vinfo, cosine_sentences=ncos, engines=engine_info,
                   results=results, targets=tgts, checks=checks, wall_s=round(wall, 1))
        Path(args.json).write_text(json.dumps(doc, indent=2, default=float) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
