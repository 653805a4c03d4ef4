"""What the store access check costs a query: bitpress_store_knn with and without it.

    python benchmarks/bench_store_access.py [--n 100000] [--bits 384] [--queries 50] [--json PATH]

Extension 0.5.0 makes every store query look its store up through bitpress_store_catalog() and
check bitpress_store_readable() for the caller (docs/GUARANTEES.md); a role that does not own
bitpress's tables also reads them through their row-level security policies. Three methods, on
the same store, the same library, timed interleaved in one run (the machine is shared):

- ``no check``: the path the library takes for an extension script older than 0.5.0 (no
  catalog function: it is renamed away for those calls), reading bitpress.code_stores itself;
- ``superuser``: the 0.5.0 path as the owner of everything (no policy applies);
- ``reader``: the 0.5.0 path as a role granted SELECT on the table only (the policies apply).

Every answer is checked against numpy before it counts. A throwaway PostgreSQL cluster is made
in a temp dir (benchmarks/_pgserver.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (Mismatch, close_postgresql, cpu_model, fmt_ms, log, median_ms, stopped,  # noqa: E402
                    time_interleaved)
from bench_hamming import make_codes  # noqa: E402

METHODS = ("no check", "superuser", "reader")


def brute(codes, q, k):
    d = np.unpackbits(codes ^ q, axis=1).sum(axis=1)
    order = np.lexsort((np.arange(len(codes)), d))[:k]
    return [(int(i), int(d[i])) for i in order]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="codes in the store (default 100,000)")
    ap.add_argument("--bits", type=int, default=384)
    ap.add_argument("--queries", type=int, default=50, help="queries timed per method (median)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", metavar="PATH", help="write the measurements as a JSON list")
    args = ap.parse_args(argv)

    import psycopg

    import bitpress
    from bitpress import schema
    from _pgserver import ThrowawayPostgres

    log(f"bitpress {bitpress.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs")
    codes = make_codes(args.n, args.bits, args.seed)
    queries = make_codes(args.queries + 1, args.bits, args.seed + 1)
    bits = lambda c: "".join(format(b, "08b") for b in c.tobytes())[:args.bits]  # noqa: E731
    server = conn = None
    try:
        server = ThrowawayPostgres(settings={"max_parallel_workers_per_gather": 0})
        server.start()
        conn = psycopg.connect(server.dsn, autocommit=True, prepare_threshold=None)
        conn.execute("CREATE EXTENSION vector")
        conn.execute("CREATE EXTENSION bitpress")
        schema.upgrade(conn)
        conn.execute(f"CREATE TABLE items (id bigint PRIMARY KEY, code bit({args.bits}))")
        with conn.cursor().copy("COPY items (id, code) FROM STDIN") as cp:
            for i, c in enumerate(codes):
                cp.write_row([i, bits(c)])
        conn.execute("SELECT bitpress_store_create('s', 'items', 'id', 'code')")
        simd = conn.execute("SELECT bitpress_simd()").fetchone()[0]  # the server's Hamming path
        conn.execute("DROP ROLE IF EXISTS bench_reader")
        conn.execute("CREATE ROLE bench_reader")
        conn.execute("GRANT SELECT ON items TO bench_reader")

        def before(name):
            conn.execute("RESET ROLE")
            have = conn.execute("SELECT to_regprocedure('bitpress_store_catalog()') IS NOT NULL").fetchone()[0]
            if name == "no check" and have:
                conn.execute("ALTER FUNCTION bitpress_store_catalog() RENAME TO bitpress_store_catalog_off")
            elif name != "no check" and not have:
                conn.execute("ALTER FUNCTION bitpress_store_catalog_off() RENAME TO bitpress_store_catalog")
            if name == "reader":
                conn.execute("SET ROLE bench_reader")

        def after(name, i, got):
            want = brute(codes, queries[i], 10)
            if got != want:
                raise Mismatch(f"{name}: query {i} answered {got[:3]}..., numpy {want[:3]}...")

        def query(i):
            return [tuple(r) for r in conn.execute("SELECT id, distance FROM bitpress_store_knn('s', %s::varbit, 10)",
                                                   (bits(queries[i]),)).fetchall()]

        times = time_interleaved({m: query for m in METHODS}, list(range(args.queries)), args.queries,
                                 before=before, after=after, desc="queries")
        before("superuser")
    except (Mismatch, KeyboardInterrupt) as e:
        return stopped(e)
    finally:
        close_postgresql([conn], server)

    base = median_ms(times["no check"])
    results = [{"method": m, "n": args.n, "bits": args.bits, "queries": args.queries,
                "median_ms": median_ms(times[m]), "vs_no_check": median_ms(times[m]) / base,
                "simd": simd, "cpu": cpu_model()} for m in METHODS]
    print(f"bitpress_store_knn, top 10 of {args.n:,} codes of {args.bits} bits, median of {args.queries} "
          f"queries ({cpu_model()}, server Hamming path {simd}):\n")
    print("| method | ms per query | vs no check |\n| --- | --- | --- |")
    for r in results:
        print(f"| {r['method']} | {fmt_ms(r['median_ms'])} | {r['vs_no_check']:.3f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
