"""Asymmetric scoring without an index: today's codebooks (`bitpress eval`'s ``+asym`` rows)
against the IVF index's RaBitQ estimator used with a single list, side by side in one run.

Each method ranks every corpus code against the float query, keeps the top ``10 * os`` and
reranks them by the exact cosine on the full vectors (what ``bitpress_knn(..., oversample)``
does); recall@10 is against the exact top 10. The RaBitQ rows are the C core's
``bp_ivf_encode`` / ``bp_ivf_estimate`` (bitpress.ivf) with one centroid, the corpus mean, a
seeded rotation, and the five correction floats per vector kept as float32, rounded to
float16, or replaced by their means over the corpus (the codes alone). Bytes are per vector:
code plus factors. Time is the score of every code plus the top ``10 * os`` selection, mean per
query, one thread.

  python benchmarks/bench_asym.py [--dataset minilm|DIR] [--queries 500] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import cpu_model, log  # noqa: E402

OVERSAMPLE = (2, 4, 10)


def load(dataset):
    from bitpress.evaluate import load_dataset

    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "pypi-minilm" if dataset == "minilm" else Path(dataset)
    if (path / "base.npy").exists():  # make_pypi_embeddings.py's layout
        x = np.load(path / "base.npy", mmap_mode="r")
        return np.asarray(x, np.float32), np.load(path / "queries.npy"), np.load(path / "gt_top100.npy")
    d = load_dataset(path, 10)
    return d.corpus, d.queries, d.gt


def recall_of(scores_fn, x, q, gt, k=10):
    """scores_fn(i) -> smaller-is-better scores of every row for query i; recall per oversample."""
    hits = {o: 0 for o in OVERSAMPLE}
    spent = 0.0
    for i in range(len(q)):
        t0 = time.perf_counter()
        s = scores_fn(i)
        cand = np.argpartition(s, k * max(OVERSAMPLE))[: k * max(OVERSAMPLE)]
        spent += time.perf_counter() - t0
        cand = cand[np.argsort(s[cand], kind="stable")]
        truth = set(gt[i, :k].tolist())
        for o in OVERSAMPLE:
            c = cand[: k * o]
            top = c[np.argsort(-(x[c] @ q[i]), kind="stable")[:k]]
            hits[o] += len(truth & set(top.tolist()))
    return {o: hits[o] / (k * len(q)) for o in OVERSAMPLE}, 1000 * spent / len(q)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="minilm")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)

    import bitpress
    from bitpress import evaluate, ivf

    x, q, gt = load(args.dataset)
    q, gt = q[: args.queries], gt[: args.queries]
    x, q = ivf.normalize(x), ivf.normalize(q)
    n, d = x.shape
    log(f"{n} rows x {d}, {len(q)} queries; CPU {cpu_model()}; bitpress kernel path {bitpress.simd()}")
    rows = []

    # today's asymmetric scoring, measured by bitpress eval itself
    data = evaluate.Data(x, q, gt, str(args.dataset))
    for r in evaluate.evaluate(data, evaluate.parse_methods("sign+asym,learned+asym,thermometer+asym"),
                               oversample=OVERSAMPLE, out=lambda s: None, progress=False)[0]:
        rows.append({"method": r["method"], "bytes": r["bytes"],
                     **{f"recall_os{o}": r[f"recall_at_10_oversample_{o}"] for o in OVERSAMPLE},
                     "ms_per_query": r["ms_per_query"]})

    c = x.mean(axis=0, keepdims=True)
    xr, qr, cr = ivf.rotate(x, args.seed), ivf.rotate(q, args.seed), ivf.rotate(c, args.seed)
    for bits in (1, 2):
        enc = ivf.encode(xr, cr, bits, lists=np.zeros(n, np.int32))
        for kind in ("float32", "float16", "replaced by their means"):
            if kind == "float32":
                f = enc.factors
            elif kind == "float16":
                f = enc.factors.astype(np.float16).astype(np.float32)
            else:  # what the codes alone can do: one set of factors for every vector
                f = np.ascontiguousarray(np.broadcast_to(enc.factors.mean(axis=0), enc.factors.shape))
            rec, ms = recall_of(lambda i: ivf.estimate(qr[i], cr[0], enc.codes, f, bits, "cosine")[0], x, q, gt)
            rows.append({"method": f"rabitq {bits}-bit, factors {kind}",
                         "bytes": enc.codes.shape[1] + ivf.FACTORS * {"float32": 4, "float16": 2}.get(kind, 0),
                         **{f"recall_os{o}": rec[o] for o in OVERSAMPLE}, "ms_per_query": ms})

    head = ["method", "bytes/vector"] + [f"recall@10 os {o}" for o in OVERSAMPLE] + ["ms/query (scores + top)"]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for r in rows:
        print(f"| {r['method']} | {r['bytes']} | " + " | ".join(f"{r[f'recall_os{o}']:.4f}" for o in OVERSAMPLE)
              + f" | {r['ms_per_query']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_model(), "simd": bitpress.simd(), "rows": n,
                                               "dims": d, "queries": len(q), "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
