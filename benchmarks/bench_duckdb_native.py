"""Top-10 Hamming search in DuckDB: the native extension vs the Python UDF vs DuckDB's own popcount.

    python benchmarks/bench_duckdb_native.py [--n 1000000] [--bits 384] [--queries 20] [--threads 1]
                                             [--simd auto] [--json PATH]

The query of issue #17, ``SELECT id FROM t ORDER BY hamming(code, q) LIMIT 10`` over a plain
table of n random codes, timed in one run, methods interleaved per query:

- ``native``: ``hamming(BLOB, BLOB)`` (the query ``from_hex(?)``) of bitpress.duckdb_extension (duckdb/src/hamming.c, the
  C core's kernel) on a BLOB column;
- ``native_bit``: the extension's ``hamming(BIT, BIT)`` on a BIT column of the same codes;
- ``udf``: ``hamming`` of ``bitpress.duckdb.connect()`` (a macro over the Arrow UDF
  ``bitpress_hamming_blobs``) on the BLOB column;
- ``bit_count_xor``: DuckDB's ``bit_count(xor(code, q))`` on the BIT column.

The codes live in DuckDB tables only (no copy in Python). Every answer is checked against numpy
(the distances of the 10 rows returned are the 10 smallest) before it counts.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import Mismatch, cpu_model, fmt_ms, log, median_ms, stopped, time_interleaved  # noqa: E402

METHODS = ("native", "native_bit", "udf", "bit_count_xor")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--bits", type=int, default=384, help="code length (a multiple of 8)")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="SET threads on both connections")
    ap.add_argument("--simd", default="auto", help="kernel path for the extension and the UDF (bitpress_set_simd, "
                                                   "bitpress.set_simd): scalar, popcnt, avx2, avx512, auto")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    if args.bits % 8:
        ap.error("--bits must be a multiple of 8 (BLOB codes hold whole bytes)")
    try:
        return run(args)
    except (Mismatch, KeyboardInterrupt) as e:
        return stopped(e)


def cpu_flags() -> list[str]:
    try:
        return sorted(set(re.findall(r"\bavx512[a-z0-9_]*", open("/proc/cpuinfo").read())))
    except OSError:
        return []


def load(con, codes, n_bytes):
    import pyarrow as pa

    n = len(codes)
    con.register("_codes", pa.table({"id": pa.array(np.arange(n, dtype=np.int64)),
                                     "code": pa.array([c.tobytes() for c in codes], pa.binary())}))
    con.execute("CREATE TABLE t AS SELECT id, code FROM _codes")
    con.unregister("_codes")


def run(args) -> int:
    import duckdb

    import bitpress
    import bitpress.duckdb
    from bitpress import duckdb_native

    n_bytes = args.bits // 8
    rng = np.random.default_rng(17)
    codes = rng.integers(0, 256, size=(args.n, n_bytes), dtype=np.uint8)
    qcodes = rng.integers(0, 256, size=(args.queries + 1, n_bytes), dtype=np.uint8)
    # every query passes its code as a string parameter: hex for BLOB, '0101...' for BIT (a Python
    # bytes parameter bound as ?::BLOB made DuckDB 2.0.1's plan ~2x slower here, for every method)
    qhex = [q.tobytes().hex() for q in qcodes]
    qbits = ["".join(f"{b:08b}" for b in q) for q in qcodes]

    ext = duckdb_native.build()
    nat = duckdb_native.connect()
    udf = bitpress.duckdb.connect()
    for con in (nat, udf):
        con.execute(f"SET threads = {int(args.threads)}")
    nat.execute("SELECT bitpress_set_simd(?)", [args.simd]).fetchall()
    bitpress.set_simd(args.simd)
    t0 = time.perf_counter()
    load(nat, codes, n_bytes)
    # the same codes as BIT: DuckDB's own cast of a BLOB of whole bytes keeps them bit for bit
    nat.execute("CREATE TABLE tb AS SELECT id, CAST(code AS BIT) AS code FROM t")
    load(udf, codes, n_bytes)
    log(f"duckdb {duckdb.__version__}, {args.n:,} x {args.bits}-bit codes loaded in "
        f"{time.perf_counter() - t0:.1f} s, threads={args.threads}, extension {ext}")
    if nat.execute("SELECT bit_length(code) FROM tb LIMIT 1").fetchone()[0] != args.bits:
        raise Mismatch("BIT column has the wrong length")

    def ids(con, sql, arg):
        return np.array([r[0] for r in con.execute(sql, [arg]).fetchall()], dtype=np.int64)

    fns = {
        "native": lambda qi: ids(nat, "SELECT id FROM t ORDER BY hamming(code, from_hex(?)) LIMIT 10", qhex[qi]),
        "native_bit": lambda qi: ids(nat, "SELECT id FROM tb ORDER BY hamming(code, ?::BIT) LIMIT 10", qbits[qi]),
        "udf": lambda qi: ids(udf, "SELECT id FROM t ORDER BY hamming(code, from_hex(?)) LIMIT 10", qhex[qi]),
        "bit_count_xor": lambda qi: ids(nat, "SELECT id FROM tb ORDER BY bit_count(xor(code, ?::BIT)) LIMIT 10",
                                        qbits[qi]),
    }
    want = {}

    def check(name, qi, got):
        if qi not in want:
            want[qi] = np.sort(np.bitwise_count(codes ^ qcodes[qi]).sum(1))[:10]
        d = np.sort(np.bitwise_count(codes[got] ^ qcodes[qi]).sum(1)) if len(got) == 10 else None
        if d is None or not np.array_equal(d, want[qi]):
            raise Mismatch(f"{name}: query {qi}: distances {None if d is None else d.tolist()} "
                           f"!= {want[qi].tolist()}")

    times = time_interleaved(fns, list(range(1, args.queries + 1)), 0, after=check, desc="queries")
    simd = nat.execute("SELECT bitpress_simd()").fetchone()[0]
    if simd != bitpress.simd():
        raise Mismatch(f"the extension runs {simd}, the UDF {bitpress.simd()}")
    cpu, flags = cpu_model(), cpu_flags()
    base = median_ms(times["bit_count_xor"])
    print(f"ORDER BY hamming(code, q) LIMIT 10 over {args.n:,} x {args.bits}-bit codes, DuckDB {duckdb.__version__}, "
          f"threads={args.threads}, {args.queries} queries (median)")
    print(f"CPU {cpu}; kernel path {simd} (bitpress {bitpress.__version__}); "
          f"cpuinfo: {' '.join(flags) or 'no avx512'}")
    print(f"{'method':<15} {'ms':>9} {'vs bit_count(xor)':>18}")
    out = []
    for name in METHODS:
        ms = median_ms(times[name])
        out.append({"method": name, "ms": ms, "speedup_vs_bit_count_xor": base / ms, "runs": len(times[name])})
        print(f"{name:<15} {fmt_ms(ms):>9} {base / ms:>17.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "n": args.n, "bits": args.bits, "threads": args.threads, "queries": args.queries, "cpu": cpu,
            "cpu_avx512_flags": flags, "simd": simd, "duckdb": duckdb.__version__, "bitpress": bitpress.__version__,
            "python": platform.python_version(), "results": out}, indent=1))
    nat.close()
    udf.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
