"""``bitpress demo``: embed real text, keep it as binary codes in DuckDB, search it in SQL.

Runs anywhere bitpress is installed, with no server and no download: the corpus is the
docstrings of the installed Python standard library, the embeddings come from the bundled
paraphrase-MiniLM-L3-v2 ONNX model (``bitpress.embed``), the database is embedded DuckDB.
Every printed figure is measured on the run that prints it.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import itertools
import os
import pkgutil
import re
import sys
import time
import warnings

import numpy as np
import pyarrow as pa

from .errors import BitpressError
from .kernels import binarize

DEFAULT_QUERIES = (
    "how do I parse JSON",
    "compress data with gzip",
    "run a command in a subprocess",
    "current date and time",
)

# never imported: side effects (a browser, a banner, a GUI), Windows-only, deprecated
# internals, test suites; posix/genericpath are read through os and os.path instead
_SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3",
         "distutils", "ensurepip", "pydoc_data", "readline", "rlcompleter", "msilib", "msvcrt",
         "nt", "ntpath", "nturl2path", "winreg", "winsound", "posix", "genericpath", "test",
         "tests", "idle_test", "encodings", "sre_compile", "sre_constants", "sre_parse"}
_ALIAS = {"posix": "os", "posixpath": "os.path", "genericpath": "os.path"}
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)\s*(-+>.*)?$")  # "split(sep=None) -> list" lines


def _home(module_name: str) -> str:
    """The public name a module's objects are shown under (``_json`` -> ``json``)."""
    return _ALIAS.get(module_name, module_name).lstrip("_")


def _public(module_name: str) -> bool:
    return not any(p.startswith("_") or p in _SKIP for p in module_name.split("."))


def first_paragraph(doc) -> str | None:
    """The first paragraph of a docstring that is not a call signature, on one line."""
    if not isinstance(doc, str):
        return None
    for para in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        text = " ".join(para.split())
        if text and not _SIGNATURE.match(text):
            return text
    return None


def _stdlib_modules():
    """(name, module) of the public standard library modules and their submodules, sorted."""
    mods = []
    with open(os.devnull, "w") as quiet, warnings.catch_warnings(), \
            contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        warnings.simplefilter("ignore")
        for name in sorted(n for n in sys.stdlib_module_names if _public(n)):
            try:
                mod = importlib.import_module(name)
            except Exception:  # noqa: BLE001 - platform-specific or broken: skip it
                continue
            mods.append((name, mod))
            subs = pkgutil.walk_packages(getattr(mod, "__path__", None) or [], name + ".",
                                         onerror=lambda _name: None)
            for sub in sorted(s.name for s in subs):
                if _public(sub) and not sub.endswith(".__main__"):
                    try:
                        mods.append((sub, importlib.import_module(sub)))
                    except Exception:  # noqa: BLE001
                        pass
    return mods


def _module_texts(modname, mod, min_chars, max_chars):
    """(label, text) of a module: its docstring, its classes and functions, their methods."""
    label = _home(modname)
    names = getattr(mod, "__all__", None)
    if not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
        names = sorted(vars(mod))
    members = []
    for name in names:
        obj = getattr(mod, name, None)
        defined_here = _home(str(getattr(obj, "__module__", ""))) == label
        if not name.startswith("_") and defined_here and (
                inspect.isclass(obj) or inspect.isroutine(obj)):
            members.append((f"{label}.{name}", obj))
    docs = [(label, mod.__doc__)] + [(lbl, obj.__doc__) for lbl, obj in members]
    for lbl, cls in members:
        if inspect.isclass(cls):
            for name in vars(cls):
                meth = getattr(cls, name, None)
                if not name.startswith("_") and inspect.isroutine(meth):
                    docs.append((f"{lbl}.{name}", meth.__doc__))
    texts = ((lbl, first_paragraph(doc)) for lbl, doc in docs)
    return [(lbl, t) for lbl, t in texts if t and min_chars <= len(t) <= max_chars]


def stdlib_docstrings(limit: int = 3000, min_chars: int = 30, max_chars: int = 400):
    """Up to ``limit`` (label, text) pairs from the docstrings of the standard library.

    Each text is the first paragraph of a module, class, function or method docstring,
    whitespace collapsed, ``min_chars``..``max_chars`` long. Modules (about 340, sorted by
    name) are taken round-robin: each module's first text, then each module's second, ...,
    so a limit of a few thousand spans the whole library (a limit below the number of
    modules keeps the first ones by name). Duplicates (same label or same text) are dropped.
    The order is deterministic for a given Python installation.
    """
    per_module = [_module_texts(n, m, min_chars, max_chars) for n, m in _stdlib_modules()]
    seen_labels, seen_texts, out = set(), set(), []
    for item in itertools.chain.from_iterable(itertools.zip_longest(*per_module)):
        if item is None or item[0] in seen_labels or item[1] in seen_texts:
            continue
        seen_labels.add(item[0])
        seen_texts.add(item[1])
        out.append(item)
        if len(out) >= limit:
            break
    return out


def _trim(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1].rstrip() + "…"


def _store(con, labels, texts, embeddings, thresholds):
    """Create ``docs`` and fill it in one INSERT ... SELECT; the codes are computed in SQL."""
    n, dim = embeddings.shape
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), dim)
    batch = pa.table({"id": pa.array(np.arange(n, dtype=np.int32)), "label": labels,
                      "text": texts, "embedding": vectors})
    con.execute(f"CREATE OR REPLACE TABLE docs(id INTEGER, label VARCHAR, text VARCHAR, "
                f"embedding FLOAT[{dim}], code BIT)")
    con.register("bitpress_demo_batch", batch)
    try:
        con.execute("INSERT INTO docs SELECT id, label, text, embedding, "
                    "binarize(embedding, $t::FLOAT[]) FROM bitpress_demo_batch",
                    {"t": thresholds.tolist()})
    finally:
        con.unregister("bitpress_demo_batch")
    con.execute(f"CREATE OR REPLACE TABLE doc_thresholds(thresholds FLOAT[{dim}])")
    con.execute(f"INSERT INTO doc_thresholds VALUES ($t::FLOAT[{dim}])", {"t": thresholds.tolist()})


def search_sql(dim: int) -> str:
    """The compressed search: Hamming top-$candidates on the codes, exact cosine rerank."""
    return f"""
        SELECT id, label, text, array_cosine_similarity(embedding, $q::FLOAT[{dim}]) AS score
        FROM (SELECT id, label, text, embedding FROM docs
              ORDER BY hamming(code, $code::BIT), id LIMIT $candidates)
        ORDER BY score DESC, id LIMIT $k"""


def run(database: str = ":memory:", limit: int = 3000, k: int = 5, oversample: int = 4,
        queries=None, out=print, *, embedder=None, progress: bool = True) -> dict:
    """Run the demo and return its measured figures.

    Keys: n, dim, bytes_float32, bytes_codes, compression, embed_seconds, texts_per_second,
    ms_per_query (the SQL search), recall_at_k (mean over queries), and per_query (label,
    score and recall of each query's results).
    """
    from . import duckdb as bp_duckdb
    from .embed import Embedder

    if k < 1 or oversample < 1 or limit < 1:
        raise BitpressError("--limit, --k and --oversample must be at least 1")
    queries = list(DEFAULT_QUERIES if not queries else queries)
    started = time.perf_counter()

    t = time.perf_counter()
    corpus = stdlib_docstrings(limit)
    labels, texts = [c[0] for c in corpus], [c[1] for c in corpus]
    n = len(texts)
    out(f"1. corpus: {n} docstrings of the Python {sys.version.split()[0]} standard library "
        f"({time.perf_counter() - t:.2f} s)")
    for i in np.linspace(0, n - 1, num=min(3, n), dtype=int):
        out(f"     {labels[i]}: {_trim(texts[i], 80)}")

    t = time.perf_counter()
    embedder = embedder or Embedder()
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    emb = embedder.encode(texts, progress=progress)
    embed_s = time.perf_counter() - t
    dim = emb.shape[1]
    out(f"2. embedded with {embedder.model_path.name} ({dim} dimensions, CPU): "
        f"{embed_s:.1f} s, {n / embed_s:.0f} texts/s (model loaded in {load_s:.2f} s)")

    t = time.perf_counter()
    thresholds = np.median(emb, axis=0).astype(np.float32)
    out(f"3. thresholds: the median of each of the {dim} dimensions over the corpus "
        f"({(time.perf_counter() - t) * 1e3:.1f} ms)")

    t = time.perf_counter()
    con = bp_duckdb.connect(database)
    try:
        _store(con, labels, texts, emb, thresholds)
        out(f"4. DuckDB ({database}): table docs(id, label, text, embedding FLOAT[{dim}], code BIT), "
            f"codes computed in SQL by binarize(embedding, thresholds) "
            f"({time.perf_counter() - t:.2f} s)")

        bytes_codes, code_bits = con.execute(
            "SELECT sum(octet_length(code)), min(bit_length(code)) FROM docs").fetchone()
        bytes_float32 = n * dim * 4
        ratio = bytes_float32 / bytes_codes
        out(f"5. size: float32 vectors {bytes_float32:,} bytes ({dim} x 4 per text), "
            f"codes {bytes_codes:,} bytes ({code_bits} bits = {-(-code_bits // 8)} per text): "
            f"{ratio:.1f}x smaller")
        out("   (the table keeps the float32 vectors too, only to rerank the few candidates)")

        k = min(k, n)
        candidates = min(n, k * oversample)
        out(f"6. search: Hamming top-{candidates} on the codes, reranked by exact cosine "
            f"(array_cosine_similarity) to the top {k}, in one SQL query")
        sql = search_sql(dim)
        sql_ms, per_query = [], []
        for query in queries:
            t = time.perf_counter()
            q = embedder.encode([query])[0]
            code = "".join(map(str, np.unpackbits(binarize(q, thresholds))[:dim]))  # a BIT literal
            embed_ms = (time.perf_counter() - t) * 1e3
            t = time.perf_counter()
            rows = con.execute(sql, {"q": q.tolist(), "code": code,
                                     "candidates": candidates, "k": k}).fetchall()
            sql_ms.append((time.perf_counter() - t) * 1e3)
            exact = np.argsort(-(emb @ q), kind="stable")[:k]
            recall = len({r[0] for r in rows} & set(exact.tolist())) / k
            per_query.append({"query": query, "ids": [r[0] for r in rows],
                              "labels": [r[1] for r in rows], "scores": [r[3] for r in rows],
                              "exact_ids": exact.tolist(), "recall": recall})
            out(f"\n   query: {query!r}  (SQL {sql_ms[-1]:.1f} ms, query embedding "
                f"{embed_ms:.1f} ms, recall@{k} vs exact float search {recall:.2f})")
            width = max((len(r[1]) for r in rows), default=0)
            for _, label, text, score in rows:
                out(f"     {score:.3f}  {label:<{width}}  {_trim(text, 100 - width)}")
    finally:
        con.close()

    recall_mean = float(np.mean([p["recall"] for p in per_query]))
    ms_per_query = float(np.mean(sql_ms))
    out(f"\n7. {len(queries)} {'query' if len(queries) == 1 else 'queries'}: {ms_per_query:.1f} ms per SQL search on average, "
        f"mean recall@{k} {recall_mean:.2f} against exact float32 cosine search "
        f"(total run {time.perf_counter() - started:.1f} s)")
    return {"n": n, "dim": dim, "bytes_float32": bytes_float32, "bytes_codes": int(bytes_codes),
            "compression": ratio, "embed_seconds": embed_s, "texts_per_second": n / embed_s,
            "ms_per_query": ms_per_query, "recall_at_k": recall_mean, "per_query": per_query}


def add_arguments(parser) -> None:
    """The options of ``bitpress demo`` on an argparse (sub)parser."""
    parser.add_argument("--database", metavar="PATH", default=":memory:",
                        help="DuckDB database file to write the docs table to (default: in memory)")
    parser.add_argument("--limit", metavar="N", type=int, default=3000,
                        help="number of docstrings to embed (default: 3000)")
    parser.add_argument("--k", type=int, default=5, help="results per query (default: 5)")
    parser.add_argument("--oversample", type=int, default=4,
                        help="Hamming candidates per result, reranked exactly (default: 4)")
    parser.add_argument("--query", metavar="TEXT", action="append", dest="queries",
                        help="a search query (repeatable; default: four example questions)")


def main(args) -> int:
    """``bitpress demo`` with parsed arguments; returns the exit code."""
    run(database=args.database, limit=args.limit, k=args.k, oversample=args.oversample,
        queries=args.queries)
    return 0
