"""benchmarks/make_pypi_embeddings.py, the builder of the ~1M real-vector set, on a small TSV:
resumed after stops and a kill's leftovers it loses and repeats no row, its vectors are a direct
embed of the texts, its ground truth is the brute-force top-k."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bitpress import embed

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "make_pypi_embeddings.py"
CHUNK, LIMIT, QUERIES, K = 64, 300, 20, 10


def make_tsv(path):
    """300 package rows (and 20 past --limit): empty, blank and padded summaries, duplicates."""
    rng = np.random.default_rng(7)
    what = ["parser", "client", "toolkit", "wrapper", "plugin", "library", "CLI", "SDK"]
    for_ = ["JSON", "PostgreSQL", "images", "audio", "Django", "time series", "AWS", "PDF files",
            "GPUs", "vectors", "graphs", "the terminal"]
    lines = ["name\tversion\tmonth\trank_among_15000_most_downloaded\tsummary"]
    for i in range(LIMIT + 20):
        r = rng.random()
        if r < 0.08:
            summary = ""
        elif r < 0.12:
            summary = "   "
        elif r < 0.30 and i > 10:
            summary = f"  {rng.choice(what)} for {rng.choice(for_)} "   # often a duplicate
        else:
            summary = f"A {rng.choice(what)} for {rng.choice(for_)}, release {i}"
        lines.append(f"pkg-{i}\t{i % 5}.0\t2020-01\t\t{summary}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines[1:LIMIT + 1]


def run(tsv, cache, *extra):
    cmd = [sys.executable, str(SCRIPT), "--tsv", str(tsv), "--cache", str(cache), "--limit", str(LIMIT),
           "--chunk", str(CHUNK), "--queries", str(QUERIES), "--k", str(K), "--threads", "1", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The set built in three runs: stopped after 1 chunk, a kill's leftovers planted (a temp
    file and a truncated chunk), stopped after 1 more chunk, then run to the end."""
    d = tmp_path_factory.mktemp("bench_data")
    tsv, cache = d / "pypi.tsv", d / "cache"
    rows = make_tsv(tsv)
    first = run(tsv, cache, "--stop-after-chunks", "1")
    assert first.returncode == 3, first.stderr
    chunks = sorted((cache / "chunks").glob("texts-*.npy"))
    assert [p.name for p in chunks] == [f"texts-00000-{CHUNK}.npy"]
    # what a kill leaves: a half-written temp file, and (from a copy without atomic writes) a
    # truncated chunk; both must be embedded again, not used
    (cache / "chunks" / f"texts-00064-{CHUNK}.npy.tmp.npy").write_bytes(chunks[0].read_bytes()[:500])
    (cache / "chunks" / f"texts-00128-{CHUNK}.npy").write_bytes(chunks[0].read_bytes()[:2000])
    second = run(tsv, cache, "--stop-after-chunks", "1")
    assert second.returncode == 3, second.stderr
    done = run(tsv, cache)
    assert done.returncode == 0, done.stderr
    assert "incomplete or damaged" in second.stderr + done.stderr
    return rows, cache, [first, second, done]


def expected(rows):
    texts, counts, mapping = [], {}, []
    for line in rows:
        name, version, _, _, summary = line.split("\t")
        s = summary.strip()
        if s:
            if s not in counts:
                texts.append(s)
                counts[s] = 0
            counts[s] += 1
            mapping.append((name, version, texts.index(s)))
    return texts, [counts[t] for t in texts], mapping


def test_texts_are_deduped_with_counts_and_every_package_mapped(built):
    rows, cache, _ = built
    texts, counts, mapping = expected(rows)
    assert len(texts) < sum(counts)                      # the TSV does have duplicates
    got = [json.loads(line) for line in open(cache / "texts.jsonl", encoding="utf-8")]
    assert [g["id"] for g in got] == list(range(len(texts)))
    assert [g["text"] for g in got] == texts
    assert [g["count"] for g in got] == counts
    lines = (cache / "packages.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "name\tversion\ttext_id"
    assert [tuple(line.split("\t")) for line in lines[1:]] == [(n, v, str(t)) for n, v, t in mapping]
    manifest = json.loads((cache / "manifest.json").read_text())
    assert (manifest["rows"], manifest["rows_with_summary"], manifest["texts"]) == (LIMIT, sum(counts), len(texts))
    assert (manifest["base"], manifest["queries"]) == (len(texts) - QUERIES, QUERIES)


def test_resumed_runs_embed_every_chunk_once_and_lose_no_row(built):
    rows, cache, _ = built
    n = len(expected(rows)[0])
    files = [f"texts-{s:05d}-{CHUNK}.npy" for s in range(0, n, CHUNK)]
    log = [json.loads(line)["file"] for line in open(cache / "chunks" / "log.jsonl")]
    assert sorted(log) == files                          # each chunk embedded exactly once
    assert sorted(p.name for p in (cache / "chunks").glob("*.npy")) == files   # no temp file left
    base_ids, query_ids = np.load(cache / "base_ids.npy"), np.load(cache / "query_ids.npy")
    assert base_ids.dtype == query_ids.dtype == np.int32
    assert np.array_equal(np.sort(np.concatenate([base_ids, query_ids])), np.arange(n))
    assert np.all(np.diff(base_ids) > 0) and np.all(np.diff(query_ids) > 0)
    again = run(cache.parent / "pypi.tsv", cache)        # complete: a rerun embeds nothing
    assert again.returncode == 0, again.stderr
    assert len(open(cache / "chunks" / "log.jsonl").readlines()) == len(files)


def test_vectors_are_a_direct_embed_of_the_texts(built):
    rows, cache, _ = built
    texts = expected(rows)[0]
    direct = embed.Embedder(threads=1).encode(texts)
    base, queries = np.load(cache / "base.npy"), np.load(cache / "queries.npy")
    assert base.dtype == queries.dtype == np.float32 and base.shape == (len(texts) - QUERIES, 384)
    assert np.abs(base - direct[np.load(cache / "base_ids.npy")]).max() < 1e-5
    assert np.abs(queries - direct[np.load(cache / "query_ids.npy")]).max() < 1e-5
    assert Path(cache / "corpus.npy").resolve() == (cache / "base.npy").resolve()


def test_ground_truth_is_the_brute_force_top_k(built):
    _, cache, _ = built
    base, queries = np.load(cache / "base.npy"), np.load(cache / "queries.npy")
    s = queries.astype(np.float64) @ base.astype(np.float64).T
    want = np.array([np.lexsort((np.arange(len(r)), -r))[:K] for r in s])
    gt = np.load(cache / f"gt_top{K}.npy")
    assert gt.dtype == np.int32 and np.array_equal(gt, want)
    scores = np.take_along_axis(s, want, axis=1)
    assert np.allclose(np.load(cache / f"gt_top{K}_scores.npy"), scores, atol=1e-6)
    assert np.allclose(np.load(cache / f"gt_top{K}_distances.npy"), 1 - scores, atol=1e-6)


def test_a_cache_of_other_inputs_is_refused(built):
    _, cache, _ = built
    other = run(cache.parent / "pypi.tsv", cache, "--chunk", "50")
    assert other.returncode != 0 and "other inputs" in other.stderr and "chunk" in other.stderr
    inside = run(cache.parent / "pypi.tsv", SCRIPT.parent / "pypi-cache")
    assert inside.returncode != 0 and "refusing to write into the repository" in inside.stderr
    assert not (SCRIPT.parent / "pypi-cache").exists()


def test_exact_top_merges_blocks_with_ties_to_the_lower_row(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    from _bench import exact_top

    rng = np.random.default_rng(3)
    base = rng.standard_normal((50, 8)).astype(np.float32)
    base[[7, 19, 33, 48]] = base[2]            # exact ties spread over several blocks
    base[[5, 40]] = base[11]
    queries = np.vstack([base[2], base[11], rng.standard_normal((6, 8))]).astype(np.float32)
    np.save(tmp_path / "base.npy", base)
    s = queries.astype(np.float64) @ base.astype(np.float64).T
    want = np.array([np.lexsort((np.arange(50), -r))[:12] for r in s])
    for block in (1, 3, 7, 50, 64):
        ids, scores = exact_top(np.load(tmp_path / "base.npy", mmap_mode="r"), queries, 12, block=block)
        assert np.array_equal(ids, want), block
        assert np.allclose(scores, np.take_along_axis(s, want, axis=1), rtol=1e-12, atol=0), block
    assert ids[0, :5].tolist() == [2, 7, 19, 33, 48] and ids[1, :3].tolist() == [5, 11, 40]
