"""The N and bit-length sweeps of bench_hamming.py, one run per size, then one summary table.

  python benchmarks/sweep_hamming.py [--out DIR] [--json PATH]

Runs bench_hamming.py for N = 1M, 3M, 10M at 384 bits (3 timed queries each) and for 256, 768
and 1536 bits at N = 1M (5 queries), every engine side by side in each run, and prints ms per
query and ns per code for each method. Each run's own table and JSON stay in --out. A size
already measured there (its JSON exists) is not run again, so an interrupted sweep resumes.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = [(1_000_000, 384, 3), (3_000_000, 384, 3), (10_000_000, 384, 3),
         (1_000_000, 256, 5), (1_000_000, 768, 5), (1_000_000, 1536, 5)]
METHODS = ["pgvector", "bitpress", "bitpress_store", "bitpress_store_par", "bit_count_xor", "bitwise_count"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/bitpress-sweep", help="directory for each run's JSON and log")
    ap.add_argument("--json", help="write the summary rows here (one JSON object per line)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (n, bits, queries) in enumerate(SIZES, 1):
        js = out / f"n{n}-b{bits}.json"
        if not js.is_file():
            print(f"[{i}/{len(SIZES)}] {n:,} codes x {bits} bits ...", file=sys.stderr, flush=True)
            with open(out / f"n{n}-b{bits}.log", "w") as log:
                subprocess.run([sys.executable, str(HERE / "bench_hamming.py"), "--n", str(n), "--bits",
                                str(bits), "--queries", str(queries), "--json", str(js)],
                               stdout=log, stderr=subprocess.STDOUT, check=True)
        else:
            print(f"[{i}/{len(SIZES)}] {n:,} codes x {bits} bits: reusing {js} from an earlier run "
                  "(delete it to measure again)", file=sys.stderr, flush=True)
        rows += [r for r in json.loads(js.read_text()) if r["method"] in METHODS]
    print(f"{'engine':<11} {'method':<15} {'n':>11} {'bits':>5} {'ms/query':>9} {'ns/code':>8}  store size")
    print("-" * 76)
    for r in rows:
        size = f"{r['store_vs_raw_codes']:.2f}x raw" if "store_vs_raw_codes" in r else ""
        print(f"{r['engine']:<11} {r['method']:<15} {r['n']:>11,} {r['bits']:>5} {r['ms_per_query']:>9.1f} "
              f"{r['ms_per_query'] * 1e6 / r['n']:>8.1f}  {size}")
    if args.json:
        with open(args.json, "w") as f:
            for r in rows:
                f.write(json.dumps({k: r[k] for k in ("engine", "method", "n", "bits", "ms_per_query")}) + "\n")


if __name__ == "__main__":
    main()
