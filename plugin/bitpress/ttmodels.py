"""ONNX models stored as Tensor-Train cores: ``compress`` an ONNX file into the database and
``export`` it back to a working ONNX file. ``bitpress tt compress`` / ``bitpress tt export``.

compress
    reads every float32 initializer of the model (``bitpress.onnx_weights``); the ones
    ``onnx_weights.select`` marks (by default the 2-D weight matrices, not embeddings, norms
    or biases) are decomposed with TT-SVD at the relative accuracy ``eps``
    (``bitpress.tt.decompose``, which keeps a tensor dense when its TT would not be smaller);
    the others are stored dense (one core), so the model can be rebuilt from the database
    alone. The graph without its weights goes to ``bitpress.tt_models.skeleton``.
    Each tensor is written in its own transaction: an interrupted run is resumed by running
    the same command again (tensors already stored are skipped, none is stored twice); the
    model row records the settings and the file's SHA-256, and a resume with other settings
    or another file is refused unless ``replace=True``.
export
    rebuilds every tensor from its cores in the C core (the same code as ``tt_reconstruct`` in
    SQL) and writes the original graph with these weights.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import errors, onnx_weights, progress, tensors, tt
from .tables import fetchall as _rows
from .tables import execute, transaction


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_row(conn, name):
    rows = _rows(conn, f"SELECT settings FROM {tensors.MODELS} WHERE name = %s", (name,))
    return json.loads(rows[0][0]) if rows else None


def drop(conn, name: str) -> int:
    """Removes a stored model, its tensors and cores; returns the number of tensors removed."""
    tensors._ensure_tables(conn)
    n = len(_rows(conn, f"SELECT tensor FROM {tensors.TENSORS} WHERE model = %s", (name,)))
    with transaction(conn):
        for table in (tensors.CORES, tensors.TENSORS):
            execute(conn, f"DELETE FROM {table} WHERE model = %s", (name,))
        execute(conn, f"DELETE FROM {tensors.MODELS} WHERE name = %s", (name,))
    return n


def compress(conn, path, name: str, eps: float = 0.3, max_rank: int | None = None,
             include: str | None = None, exclude: str | None = None,
             min_size: int | None = None, replace: bool = False, progress_bar=None,
             stop_after: int | None = None, layout: str = "auto") -> list[dict]:
    """Stores the ONNX model at ``path`` as ``name``; returns one dict per tensor stored in
    this run (name, format, ranks, sizes, measured error). ``layout`` ("auto", "svd", "ttm")
    restricts the layouts tried (``bitpress.tt.decompose``). ``stop_after`` stops after that
    many tensors (for tests of resuming)."""
    tensors._ensure_tables(conn)
    if not isinstance(name, str) or not name:
        raise errors.InvalidParameterError("a model needs a non-empty name")
    eps = float(eps)
    model = onnx_weights.load_model(path)
    if layout not in tt.LAYOUTS:
        raise errors.InvalidParameterError(f"layout must be one of {', '.join(tt.LAYOUTS)}, got {layout!r}")
    settings = {"eps": eps, "max_rank": max_rank, "include": include, "exclude": exclude,
                "min_size": min_size, "layout": layout, "sha256": _sha256(path)}
    old = _model_row(conn, name)
    if old is not None and old != settings:
        if not replace:
            raise errors.InvalidParameterError(
                f'model "{name}" is already stored with other settings or from another file '
                f"({json.dumps(old)}); pass replace=True (--replace) to store it again")
        drop(conn, name)
        old = None
    chosen = onnx_weights.select(model, include=include, exclude=exclude, min_size=min_size)
    if old is None:
        skeleton = onnx_weights.graph_without_weights(model, [w.onnx_name for w, _ in chosen])
        execute(conn, f"INSERT INTO {tensors.MODELS} (name, source, settings, skeleton) "
                       "VALUES (%s, %s, %s, %s)",
                 (name, str(Path(path).name), json.dumps(settings), skeleton))
    done = {r[0] for r in _rows(conn, f"SELECT tensor FROM {tensors.TENSORS} WHERE model = %s", (name,))}
    todo = [(w, d) for w, d in chosen if w.name not in done]
    out = []
    with progress.bar(total=len(chosen), initial=len(chosen) - len(todo), desc=f"compress {name}",
                      progress=progress_bar, unit="tensor") as bar:
        for info, decompose in todo:
            if stop_after is not None and len(out) >= stop_after:
                break
            bar.set_postfix_str(info.name[-40:])
            a = onnx_weights.tensor(model, info.onnx_name)
            if decompose:
                res = tt.decompose(a, eps=eps, max_rank=max_rank, layout=layout)
            else:
                res = tt.decompose(a, modes=[tt.matrix_shape(a.shape)])
            tensors.write(conn, name, info.name, res, onnx_name=info.onnx_name)
            out.append({"tensor": info.name, "shape": tuple(a.shape), "format": res.format,
                        "ranks": res.ranks, "dense_bytes": res.dense_bytes,
                        "stored_bytes": res.stored_bytes, "rel_error": res.rel_error,
                        "decomposed": decompose})
            bar.update(1)
    return out


def summary(conn, name: str) -> dict:
    """Sizes of a stored model: dense bytes, stored bytes, tensors by format, worst error."""
    rows = tensors.list_tensors(conn, name)
    if not rows:
        raise errors.UnknownTensorError(f'model "{name}" does not exist or has no tensors')
    dense = sum(r["dense_bytes"] for r in rows)
    stored = sum(r["stored_bytes"] for r in rows)
    tt_rows = [r for r in rows if r["format"] == "tt"]
    return {"tensors": len(rows), "tt_tensors": len(tt_rows), "dense_bytes": dense,
            "stored_bytes": stored, "ratio": dense / stored if stored else float("nan"),
            "max_rel_error": max((r["rel_error"] for r in rows), default=0.0)}


def export(conn, name: str, out_path, progress_bar=None) -> Path:
    """Writes model ``name`` rebuilt from its cores to ``out_path`` (an ONNX file)."""
    tensors._ensure_tables(conn)
    rows = _rows(conn, f"SELECT skeleton FROM {tensors.MODELS} WHERE name = %s", (name,))
    if not rows or rows[0][0] is None:
        raise errors.UnknownTensorError(f'model "{name}" does not exist (or was stored without its graph)')
    skeleton = bytes(rows[0][0])
    listed = _rows(conn, f"SELECT tensor, onnx_name FROM {tensors.TENSORS} WHERE model = %s ORDER BY tensor",
                   (name,))
    weights = {}
    with progress.bar(total=len(listed), desc=f"export {name}", progress=progress_bar, unit="tensor") as bar:
        for tensor, onnx_name in listed:
            weights[onnx_name or tensor] = tensors.load(conn, name, tensor).reconstruct()
            bar.update(1)
    model = onnx_weights.rebuild(skeleton, weights)
    onnx_weights.save(model, out_path)
    return Path(out_path)
