"""Small helpers every benchmark script shares: logging to stderr, progress bars, medians and
the way times are printed, and the exception a wrong answer raises (exit status 1)."""
from __future__ import annotations

import statistics
import sys
import time


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
