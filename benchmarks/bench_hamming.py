#!/usr/bin/env python3
"""Exact top-10 Hamming search over N random binary codes, in PostgreSQL, DuckDB and numpy.

    python benchmarks/bench_hamming.py --n 1000000 --bits 384 [--queries 5] [--json PATH]
                                       [--engines postgresql,duckdb,numpy] [--dsn DSN]

Each engine runs bitpress next to that engine's own way of doing the same thing, on the same
data in the same run (the machine may be shared and noisy: compare ratios, not absolutes):

  postgresql  bitpress ``ORDER BY hamming(code, q) LIMIT 10``  vs  pgvector ``ORDER BY code <~> q``
              on one ``code bit(BITS)`` table, one backend (no parallel workers)
  duckdb      bitpress ``hamming(code, q)`` on a BLOB column  vs  ``bit_count(xor(bcode, q))``
              on a BIT column holding the same codes
  numpy       ``np.bitwise_count(codes ^ q).sum(1)`` + argpartition  vs  ``bitpress.hamming`` +
              argpartition; and the distance kernel alone under each SIMD path bitpress supports

Every answer is checked against numpy: the sorted top-10 distances must match, and each
returned id must have the distance returned with it. A mismatch stops the run (exit 1).

Without --dsn a throwaway PostgreSQL cluster is created in a temp dir (as the ``postgres`` user
when run as root) and removed at the end, also on Ctrl-C.
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
                    close_postgresql, parse_engines, tqdm_or_none, unwind_on_signals)

K = 10
BASELINES = {"postgresql": "pgvector", "duckdb": "bit_count_xor", "numpy": "bitwise_count",
             "kernel": "bitwise_count_kernel"}




# -- data and ground truth -----------------------------------------------------------------------

def make_codes(n, bits, seed):
    nbytes = (bits + 7) // 8
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    if bits % 8:  # padding bits are zero, as in PostgreSQL bit(n)
        codes[:, -1] &= np.uint8((0xFF << (8 - bits % 8)) & 0xFF)
    return codes


def bitstring(code, bits):
    return (np.unpackbits(code)[:bits] + ord("0")).tobytes().decode()


class Truth:
    """numpy distances of every row to each query code; checks what an engine returned."""

    def __init__(self, codes, queries):
        self.dist = [np.bitwise_count(codes ^ q).sum(1, dtype=np.int64) for q in queries]
        self.k = min(K, len(codes))
        self.top = [np.sort(np.partition(d, self.k - 1)[:self.k]).tolist() for d in self.dist]

    def check(self, label, qi, rows):
        """rows: [(id, distance), ...] in the order the engine returned them."""
        d = self.dist[qi]
        got = [int(round(float(x))) for _, x in rows]
        if len(rows) != self.k:
            raise Mismatch(f"{label}, query {qi}: {len(rows)} rows, expected {self.k}")
        if got != sorted(got):
            raise Mismatch(f"{label}, query {qi}: distances not in ascending order: {got}")
        if got != self.top[qi]:
            raise Mismatch(f"{label}, query {qi}: top-{self.k} distances {got} != numpy {self.top[qi]}")
        for i, x in zip((int(r[0]) for r in rows), got):
            if d[i] != x:
                raise Mismatch(f"{label}, query {qi}: id {i} returned with distance {x}, numpy says {d[i]}")


def time_interleaved(fns, nq, before=None, after=None):
    """Time fns[name](qi) for qi in 0..nq-1, every method on each query code in turn (the order
    alternates per query, so drift on a noisy machine hits all methods alike), after one
    warm-up call each on the extra query code nq. ``before(name)`` runs untimed before each
    call, ``after(name, qi)`` untimed after it (the correctness checks). {name: [seconds]}."""
    for name, fn in fns.items():
        if before:
            before(name)
        fn(nq)
    times = {name: [] for name in fns}
    for qi in range(nq):
        for name in (list(fns) if qi % 2 == 0 else list(fns)[::-1]):
            if before:
                before(name)
            t0 = time.perf_counter()
            fns[name](qi)
            times[name].append(time.perf_counter() - t0)
            if after:
                after(name, qi)
    return times


# -- numpy ---------------------------------------------------------------------------------------

def bench_numpy(codes, queries, nq, truth, bits, results):
    import bitpress

    n = len(codes)
    k = truth.k

    def topk(d):
        idx = np.argpartition(d, k - 1)[:k]
        idx = idx[np.argsort(d[idx], kind="stable")]
        return idx, d[idx]

    last = {}

    def m_numpy(qi):
        d = np.bitwise_count(codes ^ queries[qi]).sum(1)
        last["bitwise_count"] = topk(d)

    def m_bitpress(qi):
        d = bitpress.hamming(codes, queries[qi])
        last["bitpress"] = topk(d)

    def check(name, qi):
        idx, dd = last[name]
        truth.check(f"numpy/{name}", qi, list(zip(idx.tolist(), dd.tolist())))

    times = time_interleaved({"bitwise_count": m_numpy, "bitpress": m_bitpress}, nq, after=check)
    simd = bitpress.simd()
    results.append(dict(engine="numpy", method="bitwise_count", n=n, bits=bits,
                        ms_per_query=median_ms(times["bitwise_count"]),
                        all_ms=[t * 1e3 for t in times["bitwise_count"]],
                        note=f"numpy {np.__version__}"))
    results.append(dict(engine="numpy", method="bitpress", n=n, bits=bits,
                        ms_per_query=median_ms(times["bitpress"]),
                        all_ms=[t * 1e3 for t in times["bitpress"]], simd=simd,
                        note=f"simd={simd}"))

    # the distance kernel alone (no top-k), numpy vs each bitpress SIMD path
    paths = bitpress.simd_supported()
    kern = {"bitwise_count_kernel": lambda qi: np.bitwise_count(codes ^ queries[qi]).sum(1)}
    for p in paths:
        kern[p] = lambda qi: bitpress.hamming(codes, queries[qi])

    def use_path(name):
        if name != "bitwise_count_kernel":
            bitpress.set_simd(name)

    try:
        for p in paths:  # each path must give numpy's distances
            bitpress.set_simd(p)
            if not np.array_equal(bitpress.hamming(codes, queries[0]), truth.dist[0]):
                raise Mismatch(f"bitpress.hamming under simd={p} differs from numpy")
        ktimes = time_interleaved(kern, nq, before=use_path)
    finally:
        bitpress.set_simd("auto")
    results.append(dict(engine="numpy", method="bitwise_count_kernel", group="kernel", n=n, bits=bits,
                        ms_per_query=median_ms(ktimes["bitwise_count_kernel"]),
                        all_ms=[t * 1e3 for t in ktimes["bitwise_count_kernel"]],
                        note="distances only"))
    for p in paths:
        results.append(dict(engine="numpy", method=f"bitpress_kernel[{p}]", group="kernel", n=n,
                            bits=bits, simd=p, ms_per_query=median_ms(ktimes[p]),
                            all_ms=[t * 1e3 for t in ktimes[p]],
                            note="distances only" + (" (auto)" if p == simd else "")))


# -- DuckDB --------------------------------------------------------------------------------------

def bench_duckdb(codes, queries, nq, truth, bits, results, threads, chunk):
    import duckdb
    import pyarrow as pa

    import bitpress.duckdb

    n, nbytes = codes.shape
    con = bitpress.duckdb.connect()
    try:
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        nthreads = con.execute("SELECT current_setting('threads')").fetchone()[0]
        con.execute("CREATE TABLE codes (id INTEGER, code BLOB, bcode BIT)")
        to_bit = "code::BIT" if bits % 8 == 0 else f"substring(code::BIT::VARCHAR, 1, {bits})::BIT"
        log(f"duckdb {duckdb.__version__}: loading {n:,} codes (BLOB + BIT columns), threads={nthreads}")
        t0 = time.perf_counter()
        bar = tqdm_or_none(total=n, unit="row", unit_scale=True, desc="duckdb load")
        for s in range(0, n, chunk):
            part = np.ascontiguousarray(codes[s:s + chunk])
            m = len(part)
            offs = np.arange(m + 1, dtype=np.int32) * nbytes
            blob = pa.Array.from_buffers(pa.binary(), m, [None, pa.py_buffer(offs), pa.py_buffer(part)])
            tbl = pa.table({"id": pa.array(np.arange(s, s + m, dtype=np.int32)), "code": blob})
            con.register("chunk_in", tbl)
            con.execute(f"INSERT INTO codes SELECT id, code, {to_bit} FROM chunk_in")
            con.unregister("chunk_in")
            if bar:
                bar.update(m)
        if bar:
            bar.close()
        load_s = time.perf_counter() - t0
        log(f"duckdb: loaded in {load_s:.1f} s")

        # the BIT column must hold exactly the same codes
        bad = con.execute(f"SELECT count(*) FROM codes WHERE bit_length(bcode) <> {bits} "
                          f"OR octet_length(code) <> {nbytes}").fetchone()[0]
        total = con.execute("SELECT sum(bit_count(bcode)) FROM codes").fetchone()[0]
        if bad or int(total) != int(np.bitwise_count(codes).sum(dtype=np.int64)):
            raise Mismatch(f"duckdb: BIT column differs from the codes ({bad} bad lengths, "
                           f"{total} set bits vs {int(np.bitwise_count(codes).sum(dtype=np.int64))})")
        sample = np.linspace(0, n - 1, min(n, 500)).astype(np.int64)
        got = dict(con.execute("SELECT id, bcode::VARCHAR FROM codes WHERE id IN (SELECT unnest(?))",
                               [sample.tolist()]).fetchall())
        for i in sample.tolist():
            if got.get(i) != bitstring(codes[i], bits):
                raise Mismatch(f"duckdb: BIT code of row {i} differs from the BLOB code")

        qbytes = [q.tobytes() for q in queries]
        qbits = [bitstring(q, bits) for q in queries]
        sql_bp = f"SELECT id, hamming(code, ?::BLOB) AS d FROM codes ORDER BY d LIMIT {K}"
        sql_bc = f"SELECT id, bit_count(xor(bcode, ?::BIT)) AS d FROM codes ORDER BY d LIMIT {K}"
        last = {}

        def m_bp(qi):
            last["bitpress"] = con.execute(sql_bp, [qbytes[qi]]).fetchall()

        def m_bc(qi):
            last["bit_count_xor"] = con.execute(sql_bc, [qbits[qi]]).fetchall()

        # the packed code store: segments read once into memory, one C scan per query
        from bitpress import schema, stores

        schema.upgrade(con)
        t0 = time.perf_counter()
        stores.create(con, "bench", "codes", "id", "code", SEGMENT_CODES)
        store_s = time.perf_counter() - t0
        sql_st = f"SELECT id, distance FROM bitpress_store_knn('bench', ?::BLOB, {K})"
        t0 = time.perf_counter()
        con.execute(sql_st, [qbytes[0]]).fetchall()  # first query loads the segments
        first_ms = (time.perf_counter() - t0) * 1e3
        log(f"duckdb: store built in {store_s:.1f} s; first query (loads the segments) {first_ms:.0f} ms")

        def m_st(qi):
            last["bitpress_store"] = con.execute(sql_st, [qbytes[qi]]).fetchall()

        fns = {"bit_count_xor": m_bc, "bitpress": m_bp, "bitpress_store": m_st}
        times = time_interleaved(fns, nq,
                                 after=lambda name, qi: truth.check(f"duckdb/{name}", qi, last[name]))
        for name in fns:
            results.append(dict(engine="duckdb", method=name, n=n, bits=bits,
                                ms_per_query=median_ms(times[name]),
                                all_ms=[t * 1e3 for t in times[name]], threads=int(nthreads),
                                load_s=round(load_s, 2),
                                note=f"threads={nthreads}" + (
                                    f", simd={bitpress.simd()}" if name.startswith("bitpress") else "")
                                + (f", packed, segments cached (first query {first_ms:.0f} ms)"
                                   if name.startswith("bitpress_store") else "")))
    finally:
        con.close()


# -- PostgreSQL ----------------------------------------------------------------------------------

def copy_binary_rows(codes, bits, start):
    """COPY ... (FORMAT binary) rows (id int4, code bit(bits)) for a block of codes."""
    n, nbytes = codes.shape
    dt = np.dtype([("nf", ">i2"), ("l1", ">i4"), ("id", ">i4"), ("l2", ">i4"), ("nbits", ">i4"),
                   ("code", "u1", (nbytes,))])
    rows = np.empty(n, dtype=dt)
    rows["nf"] = 2
    rows["l1"] = 4
    rows["id"] = np.arange(start, start + n, dtype=np.int32)
    rows["l2"] = 4 + nbytes
    rows["nbits"] = bits
    rows["code"] = codes
    return rows.tobytes()


# codes per store segment: DuckDB's segments (read into memory once); in PostgreSQL a cap only,
# its segments hold as many codes as fit one heap page (unless BITPRESS_SEGMENT_CODES is lower)
SEGMENT_CODES = int(os.environ.get("BITPRESS_SEGMENT_CODES", "16384"))
# bitpress_store_par: max_parallel_workers_per_gather; 1 worker + the leader = this machine's 2 cores
PARALLEL_WORKERS = int(os.environ.get("BITPRESS_PARALLEL_WORKERS", "1"))


def bench_postgresql(codes, queries, nq, truth, bits, results, dsn, chunk, jit):
    import psycopg

    n, nbytes = codes.shape
    table = "codes" if dsn is None else f"bitpress_bench_codes_{os.getpid()}"
    server = None
    conn = None
    try:
        if dsn is None:
            from _pgserver import ThrowawayPostgres

            server = ThrowawayPostgres(settings={"shared_buffers": "'1GB'", "work_mem": "'256MB'",
                                                "max_parallel_workers_per_gather": 0})
            log(f"postgresql: starting a throwaway cluster ({server.bindir}) ...")
            server.start()
            dsn = server.dsn
            log(f"postgresql: cluster in {server.tmpdir}, port {server.port}")
        conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=None)
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE EXTENSION IF NOT EXISTS bitpress")
        conn.execute("LOAD 'bitpress'")
        conn.execute("SET max_parallel_workers_per_gather = 0")
        if jit != "default":
            conn.execute(f"SET jit = {jit}")

        log(f"postgresql: loading {n:,} codes with COPY (FORMAT binary) into {table} (code bit({bits}))")
        t0 = time.perf_counter()
        bar = tqdm_or_none(total=n, unit="row", unit_scale=True, desc="postgresql load")
        with conn.transaction():
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"CREATE TABLE {table} (id integer NOT NULL, code bit({bits}) NOT NULL)")
            with conn.cursor() as cur:
                # created in this transaction: FREEZE writes the rows frozen (no hint-bit
                # rewrites on the first scans) and wal_level=minimal skips the WAL
                with cur.copy(f"COPY {table} (id, code) FROM STDIN (FORMAT binary, FREEZE)") as cp:
                    cp.write(b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8)
                    for s in range(0, n, chunk):
                        cp.write(copy_binary_rows(codes[s:s + chunk], bits, s))
                        if bar:
                            bar.update(min(chunk, n - s))
                    cp.write(b"\xff\xff")
        if bar:
            bar.close()
        # a code store keeps one code per id: its table needs a unique id (since 0.5.0)
        conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id)")
        conn.execute(f"VACUUM (ANALYZE) {table}")
        load_s = time.perf_counter() - t0

        def show(name):
            return conn.execute(f"SHOW {name}").fetchone()[0]

        def extversion(name):
            return conn.execute("SELECT extversion FROM pg_extension WHERE extname = %s",
                                [name]).fetchone()[0]

        info = {
            "server_version": show("server_version"),
            "pgvector_version": extversion("vector"),
            "bitpress_version": extversion("bitpress"),
            "max_parallel_workers_per_gather": show("max_parallel_workers_per_gather"),
            "jit": show("jit"),
            "shared_buffers": show("shared_buffers"),
            "work_mem": show("work_mem"),
            "table_size": conn.execute(f"SELECT pg_size_pretty(pg_table_size('{table}'))").fetchone()[0],
        }
        simd = conn.execute("SELECT bitpress_simd()").fetchone()[0]
        log(f"postgresql: loaded in {load_s:.1f} s; " + ", ".join(f"{k}={v}" for k, v in info.items())
            + f", bitpress_simd()={simd}")

        # the table must hold exactly the codes: row count, total set bits, and a sample as text
        setbits = int(np.bitwise_count(codes).sum(dtype=np.int64))
        cnt = conn.execute(f"SELECT count(*), sum(bit_count(code)) FROM {table}").fetchone()
        if cnt[0] != n or int(cnt[1]) != setbits:
            raise Mismatch(f"postgresql: table holds {cnt[0]} rows / {cnt[1]} set bits, expected "
                           f"{n} / {setbits}")
        sample = np.linspace(0, n - 1, min(n, 500)).astype(np.int64).tolist()
        got = dict(conn.execute(f"SELECT id, code::text FROM {table} WHERE id = ANY(%s)",
                                [sample]).fetchall())
        for i in sample:
            if got.get(i) != bitstring(codes[i], bits):
                raise Mismatch(f"postgresql: code of row {i} differs from the generated code")

        # the packed code store (segments of many codes per row, one C call each)
        from bitpress import schema

        schema.upgrade(conn)
        conn.execute("SELECT bitpress_store_drop(name) FROM bitpress.code_stores WHERE name = 'bench'")
        t0 = time.perf_counter()
        conn.execute(f"SELECT bitpress_store_create('bench', '{table}', 'id', 'code', {SEGMENT_CODES})")
        conn.execute("VACUUM (ANALYZE) bitpress.code_segments")
        store_s = time.perf_counter() - t0
        store_bytes = conn.execute("SELECT pg_total_relation_size('bitpress.code_segments')").fetchone()[0]
        per_segment = conn.execute("SELECT max(n) FROM bitpress.code_segments WHERE store = 'bench'").fetchone()[0]
        info_store = {"store_build_s": round(store_s, 2), "store_bytes": store_bytes,
                      "store_vs_raw_codes": round(store_bytes / (n * nbytes), 3),
                      "segment_codes": per_segment}
        log(f"postgresql: store built in {store_s:.1f} s, {store_bytes / 1e6:.1f} MB on disk = "
            f"{store_bytes / (n * nbytes):.2f}x the raw codes (ids take 4 or 8 bytes per code)")

        qbits = [bitstring(q, bits) for q in queries]
        sql = {
            "pgvector": f"SELECT id, code <~> %s::bit({bits}) AS d FROM {table} ORDER BY d LIMIT {K}",
            "bitpress": f"SELECT id, hamming(code, %s::bit({bits})) AS d FROM {table} ORDER BY d LIMIT {K}",
            "bitpress_store": f"SELECT id, distance FROM bitpress_store_knn('bench', %s::varbit, {K})",
        }
        for name, q in sql.items():
            plan = conn.execute("EXPLAIN (COSTS OFF) " + q, [qbits[0]]).fetchall()
            text = " / ".join(r[0].strip() for r in plan).replace(qbits[0], "<q>")
            log(f"postgresql plan [{name}]: {text}")

        last = {}
        # the same store through bitpress_store_knn_parallel, in a session that allows workers
        pconn = psycopg.connect(dsn, autocommit=True, prepare_threshold=None)
        pconn.execute(f"SET max_parallel_workers_per_gather = {PARALLEL_WORKERS}")
        sql_par = f"SELECT id, distance FROM bitpress_store_knn_parallel('bench', %s::varbit, {K})"

        def method(name):
            def f(qi):
                last[name] = conn.execute(sql[name], [qbits[qi]]).fetchall()
            return f

        fns = {name: method(name) for name in sql}

        def m_par(qi):
            last["bitpress_store_par"] = pconn.execute(sql_par, [qbits[qi]]).fetchall()
        fns["bitpress_store_par"] = m_par
        # the warm-up also reads the table into shared_buffers
        times = time_interleaved(fns, nq,
                                 after=lambda name, qi: truth.check(f"postgresql/{name}", qi, last[name]))
        for name in fns:
            extra = {"simd": simd} if name.startswith("bitpress") else {}
            if name.startswith("bitpress_store"):
                extra.update(info_store)
            results.append(dict(
                engine="postgresql", method=name, n=n, bits=bits, ms_per_query=median_ms(times[name]),
                all_ms=[t * 1e3 for t in times[name]], load_s=round(load_s, 2), **info, **extra,
                note=f"workers={PARALLEL_WORKERS if name == 'bitpress_store_par' else info['max_parallel_workers_per_gather']}, jit={info['jit']}, "
                     + (f"simd={simd}" if name.startswith("bitpress") else f"pgvector {info['pgvector_version']}")
                     + (f", {info_store['segment_codes']} codes/segment, {info_store['store_vs_raw_codes']}x raw"
                        if name.startswith("bitpress_store") else "")))
    finally:
        if server is None and dsn is not None:  # an existing server: leave no table behind
            try:
                with psycopg.connect(dsn, autocommit=True) as c2:
                    c2.execute(f"DROP TABLE IF EXISTS {table}")
            except Exception as e:
                log(f"postgresql: could not drop {table}: {e}")
        close_postgresql([conn], server)


# -- report --------------------------------------------------------------------------------------

def add_ratios(results):
    for r in results:
        group = r.get("group", r["engine"])
        base_method = BASELINES[group]
        base = next((b for b in results if b.get("group", b["engine"]) == group
                     and b["method"] == base_method), None)
        if base is not None:
            r["baseline"] = base_method
            r["speedup_vs_baseline"] = base["ms_per_query"] / r["ms_per_query"]


def print_table(results):
    hdr = ("engine", "method", "n", "bits", "ms_per_query", "vs baseline", "notes")
    rows = []
    for r in results:
        eng = r["engine"] + (" (kernel)" if r.get("group") == "kernel" else "")
        sp = r.get("speedup_vs_baseline")
        ratio = "-" if sp is None else ("baseline" if r["method"] == r["baseline"] else f"{sp:.2f}x")
        rows.append((eng, r["method"], f"{r['n']:,}", str(r["bits"]), fmt_ms(r["ms_per_query"]),
                     ratio, r.get("note", "")))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(hdr)]
    right = {2, 3, 4, 5}

    def fmt(row):
        cells = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
        return "  ".join(cells).rstrip()

    print(fmt(hdr))
    print("  ".join("-" * w for w in widths))
    prev = None
    for row in rows:
        if prev is not None and row[0] != prev:
            print()
        prev = row[0]
        print(fmt(row))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="number of codes (default 1,000,000)")
    ap.add_argument("--bits", type=int, default=384, help="bits per code (default 384)")
    ap.add_argument("--queries", type=int, default=5, help="query codes timed per method (median)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", metavar="PATH", help="write the measurements as a JSON list")
    ap.add_argument("--chunk", type=int, default=100_000, help="rows per load batch")
    add_engine_arguments(ap, "a table")
    args = ap.parse_args(argv)

    engines = parse_engines(ap, args)
    if args.n < 1 or args.bits < 1 or args.queries < 1:
        ap.error("--n, --bits and --queries must be positive")

    unwind_on_signals()

    import bitpress

    wall0 = time.perf_counter()
    log(f"bitpress {bitpress.__version__}, simd={bitpress.simd()} "
        f"(supported: {', '.join(bitpress.simd_supported())}), "
        f"numpy {np.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs")
    log(f"generating {args.n:,} random codes of {args.bits} bits (seed {args.seed}) and "
        f"{args.queries} + 1 warm-up query codes")
    results = []
    order = [e for e in ("numpy", "duckdb", "postgresql") if e in engines]
    try:
        codes = make_codes(args.n, args.bits, args.seed)
        queries = make_codes(args.queries + 1, args.bits, args.seed + 1)  # the last one warms up
        truth = Truth(codes, queries)
        for eng in order:
            t0 = time.perf_counter()
            if eng == "numpy":
                bench_numpy(codes, queries, args.queries, truth, args.bits, results)
            elif eng == "duckdb":
                bench_duckdb(codes, queries, args.queries, truth, args.bits, results,
                             args.duckdb_threads, args.chunk)
            else:
                bench_postgresql(codes, queries, args.queries, truth, args.bits, results, args.dsn,
                                 args.chunk, args.pg_jit)
            log(f"{eng}: done in {time.perf_counter() - t0:.1f} s")
    except (Mismatch, KeyboardInterrupt) as e:
        return stopped(e)
    finally:
        try:
            bitpress.set_simd("auto")
        except Exception:
            pass

    # keep the printed order: postgresql, duckdb, numpy, kernel
    rank = {"postgresql": 0, "duckdb": 1, "numpy": 2, "kernel": 3}
    results.sort(key=lambda r: rank[r.get("group", r["engine"])])
    add_ratios(results)
    print(f"\nexact top-{K} Hamming search, {args.n:,} codes x {args.bits} bits, "
          f"median of {args.queries} queries (after a warm-up); "
          f"vs baseline = baseline ms / ms (>1 is faster)\n")
    print_table(results)
    print(f"\nall answers checked against numpy; wall time {time.perf_counter() - wall0:.1f} s")
    if args.json:
        for r in results:
            r["queries"] = args.queries
            r["seed"] = args.seed
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
