"""Small helpers every benchmark script shares: logging to stderr, progress bars, medians and
the way times are printed, and the exception a wrong answer raises (exit status 1)."""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Mismatch(AssertionError):
    """An answer that differs from the reference: the benchmark stops (exit 1)."""


def stopped(exc) -> int:
    """The exit status for a run stopped by a wrong answer (Mismatch: 1) or Ctrl-C (130), after
    saying so: ``except (Mismatch, KeyboardInterrupt) as e: return stopped(e)``."""
    if isinstance(exc, Mismatch):
        log(f"\nMISMATCH: {exc}")
        return 1
    log("\ninterrupted: servers stopped, temp dirs removed")
    return 130


def same_bits(label, got, want, reference="the C core's"):
    """Raises Mismatch unless got and want are the same float32 values, bit for bit."""
    import numpy as np

    got = np.ascontiguousarray(got, dtype=np.float32)
    want = np.ascontiguousarray(want, dtype=np.float32)
    if got.shape != want.shape:
        raise Mismatch(f"{label}: shape {got.shape} != {want.shape}")
    if got.tobytes() != want.tobytes():
        bad = np.flatnonzero(got.view(np.uint32).ravel() != want.view(np.uint32).ravel())
        raise Mismatch(f"{label}: {len(bad)} of {got.size} floats differ in their bits from {reference} "
                       f"(first at flat index {bad[0]}: {got.ravel()[bad[0]]!r} vs {want.ravel()[bad[0]]!r})")


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (None where there is none)."""
    try:
        for line in open("/proc/cpuinfo").read().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def outside_repo(path) -> Path:
    """The resolved path, after refusing one inside the repository (data never goes there)."""
    out = Path(path).expanduser().resolve()
    if out == ROOT or ROOT in out.parents:
        raise SystemExit(f"refusing to write into the repository: {out}")
    return out


def save_atomic(path, a) -> None:
    """np.save to a temporary file beside ``path``, flushed to disk, then renamed over it: a
    reader, or a rerun after a kill at any moment, sees the whole array or no file."""
    import numpy as np

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npy")
    with open(tmp, "wb") as f:
        np.save(f, a)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def chunk_done(path, rows, dim) -> bool:
    """Whether ``path`` is a finished chunk: a float32 (rows, dim) .npy whose data is all there
    (only the header is read)."""
    import numpy as np

    try:
        a = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return a.dtype == np.float32 and a.shape == (rows, dim)


def embed_in_chunks(texts, chunks, prefix, chunk, embed, dim, *, stop_after=None, desc="embedding"):
    """Embed ``texts`` resumably: text ``s`` .. ``s + chunk - 1`` go to
    ``chunks/{prefix}-{s}-{chunk}.npy`` (``s`` zero-padded), each saved atomically when done;
    chunks already there are skipped (a damaged one is embedded again). ``embed(list) ->
    float32 (n, dim)``. Every chunk written appends ``{"file", "rows", "seconds"}`` to
    ``chunks/log.jsonl``. ``stop_after``: return after that many new chunks (to test resuming).

    Returns ``(paths in text order, seconds spent embedding in this call, stopped early)``."""
    chunks = Path(chunks)
    chunks.mkdir(parents=True, exist_ok=True)
    n = len(texts)
    width = max(5, len(str(n)))
    starts = range(0, n, chunk)
    paths = [chunks / f"{prefix}-{s:0{width}d}-{chunk}.npy" for s in starts]
    for tmp in chunks.glob(f"{prefix}-*.tmp.npy"):   # left by a kill during a write
        tmp.unlink()
    todo = [(s, p) for s, p in zip(starts, paths) if not chunk_done(p, min(chunk, n - s), dim)]
    for _, p in todo:
        if p.exists():
            log(f"{p.name}: incomplete or damaged, embedding it again")
    done_rows = n - sum(min(chunk, n - s) for s, _ in todo)
    seconds, written = 0.0, 0
    bar = tqdm_or_none(total=n, initial=done_rows, unit="text", desc=desc, smoothing=0.05,
                       mininterval=1 if sys.stderr.isatty() else 30)
    try:
        for s, p in todo:
            if stop_after is not None and written >= stop_after:
                return paths, seconds, True
            t = time.perf_counter()
            v = embed(texts[s:s + chunk])
            dt = time.perf_counter() - t
            if v.dtype != "float32" or v.shape != (min(chunk, n - s), dim):
                raise Mismatch(f"{p.name}: the embedder returned {v.dtype} {v.shape}")
            save_atomic(p, v)
            with open(chunks / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"file": p.name, "rows": len(v), "seconds": round(dt, 3)}) + "\n")
            seconds += dt
            written += 1
            if bar:
                bar.update(len(v))
    finally:
        if bar:
            bar.close()
    return paths, seconds, False


def exact_top(base, queries, k=100, block=32768):
    """Exact top-k by inner product (cosine for unit vectors) of each query over ``base``, in
    float64, ties to the lower row: ``(ids int32 (q, k), scores float64 (q, k))``, best first.
    ``base`` is read ``block`` rows at a time (it may be a memmap larger than memory)."""
    import numpy as np

    q = np.asarray(queries, dtype=np.float64)
    k = min(k, len(base))
    best_s = np.full((len(q), 0), -np.inf)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    for start in range(0, len(base), block):
        x = np.asarray(base[start:start + block], dtype=np.float64)
        s = np.concatenate([best_s, q @ x.T], axis=1)
        ids = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + len(x)), (len(q), len(x)))], axis=1)
        kk = min(k, s.shape[1])
        new_s, new_i = np.empty((len(q), kk)), np.empty((len(q), kk), dtype=np.int64)
        for j in range(len(q)):
            row = s[j]
            # the best k, ties to the lower id: best_i (lower ids, already in that order) comes
            # first and the block's ids ascend, so among equal scores position order is id order
            cand = np.arange(row.shape[0])
            if kk < row.shape[0]:
                cand = np.flatnonzero(-row <= np.partition(-row, kk - 1)[kk - 1])
            pos = cand[np.lexsort((cand, -row[cand]))][:kk]
            new_s[j], new_i[j] = row[pos], ids[j, pos]
        best_s, best_i = new_s, new_i
    return best_i.astype(np.int32), best_s


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def tqdm_or_none(**kw):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(file=sys.stderr, **kw)


def time_interleaved(fns, keys, warm_key, before=None, after=None, desc=None):
    """Time fns[name](key) for every key, each method in turn per key, the order alternating
    between keys (drift on a noisy machine hits all methods alike), after one untimed warm-up
    call each on warm_key. ``before(name)`` runs untimed before each call, ``after(name, key,
    answer)`` untimed after it (the checks). Returns {name: [seconds]}."""
    for name, fn in fns.items():
        if before:
            before(name)
        ans = fn(warm_key)
        if after:
            after(name, warm_key, ans)
    times = {name: [] for name in fns}
    bar = tqdm_or_none(total=len(keys) * len(fns), desc=desc, leave=False) if desc else None
    for q, key in enumerate(keys):
        for name in (list(fns) if q % 2 == 0 else list(fns)[::-1]):
            if before:
                before(name)
            t0 = time.perf_counter()
            ans = fns[name](key)
            times[name].append(time.perf_counter() - t0)
            if after:
                after(name, key, ans)
            if bar:
                bar.update(1)
    if bar:
        bar.close()
    return times


def top10(queries, corpus):
    """Each query's 10 nearest corpus rows by inner product (float64, ties to the lower row)."""
    import numpy as np

    s = queries.astype(np.float64) @ corpus.astype(np.float64).T
    return np.argsort(-s, axis=1, kind="stable")[:, :10]


def median_ms(times):
    return statistics.median(times) * 1e3


def fmt_ms(ms):
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


ENGINES = ("postgresql", "duckdb", "numpy")


def add_engine_arguments(ap, what="a table"):
    """--engines, --dsn, --pg-jit and --duckdb-threads, the same in every side-by-side script."""
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma list of " + ", ".join(ENGINES))
    ap.add_argument("--dsn", help="use this PostgreSQL server instead of a throwaway cluster "
                                  f"(needs pgvector and bitpress installed; {what} is created and removed)")
    ap.add_argument("--pg-jit", choices=["default", "on", "off"], default="default",
                    help="SET jit for the PostgreSQL sessions (default: the server's setting)")
    ap.add_argument("--duckdb-threads", type=int, default=0, help="SET threads (default: DuckDB's default)")


def parse_engines(ap, args) -> list[str]:
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(engines) - set(ENGINES)
    if unknown or not engines:
        ap.error(f"unknown engines: {', '.join(sorted(unknown)) or '(none)'}")
    return engines


def unwind_on_signals():
    """SIGTERM / SIGHUP unwind like Ctrl-C: finally blocks stop the server and remove temp dirs."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


def close_postgresql(conns, server):
    """End of a PostgreSQL benchmark: close its connections (errors ignored: the server may
    be gone) and stop the throwaway cluster, if one was started."""
    for c in {id(c): c for c in conns if c is not None}.values():
        try:
            c.close()
        except Exception:
            pass
    if server is not None:
        log("postgresql: stopping the throwaway cluster")
        server.stop()
