"""Feed-forward layers stored in ``bitpress.ffn_layers`` and run by the C core, dense or sparse.

A layer is y = act(x @ W1 + b1) @ W2 + b2 (ONNX MatMul order: W1 is (d, h), W2 is (h, d)).
``Layer`` holds the numpy parameters and writes the "BPFF" form the C core reads
(pyext/bp_ffn.c): W1 transposed and W2 as they are, so each neuron's two weight rows are
contiguous; float32, or int8 with one scale per row; the low-rank predictor P (d, r), Q (r, h)
of ``bitpress.sparse``; per-neuron thresholds. ``run`` computes a batch through the C core,
the same code as ``ffn(x, 'layer')`` / ``sparse_ffn(x, 'layer', k)`` in SQL, so the results
are the same bits. ``save`` / ``load`` / ``list_layers`` use the table (migration 0004).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import numpy as np

from . import _core, errors
from .tables import bitpress_columns, check_params, execute, fetchall, params_checksum, transaction

TABLE = "bitpress.ffn_layers"
ACTIVATIONS = {"gelu_erf": 0, "gelu_tanh": 1, "relu": 2, "silu": 3}
_NAMES = {v: k for k, v in ACTIVATIONS.items()}
_F_INT8, _F_PREDICTOR, _F_THRESHOLDS, _F_OFFSETS = 1, 2, 4, 8
SELECTORS = ("predictor", "exact")


def _f32(a, shape, what):
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.shape != shape:
        raise errors.DimensionMismatchError(f"{what} must have shape {shape}, got {a.shape}")
    if not np.isfinite(a).all():
        raise errors.NonFiniteError(f"NaN or infinity in {what}")
    return a


def _int8_rows(a):
    """Per-row symmetric int8: (q int8, scale float32) with a ~= q * scale[:, None]."""
    peak = np.abs(a).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(a / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


@dataclass
class Layer:
    """One feed-forward layer and, optionally, its predictor and thresholds."""

    w1: np.ndarray            # (d, h)
    b1: np.ndarray            # (h,)
    w2: np.ndarray            # (h, d)
    b2: np.ndarray            # (d,)
    activation: str = "gelu_erf"
    p: np.ndarray | None = None           # (d, r)
    q: np.ndarray | None = None           # (r, h)
    thresholds: np.ndarray | None = None  # (h,)
    offsets: np.ndarray | None = None     # (h,): each neuron's off value (bitpress.sparse.neuron_offsets)
    settings: dict = field(default_factory=dict)

    @property
    def d(self) -> int:
        return int(np.shape(self.w1)[0])

    @property
    def h(self) -> int:
        return int(np.shape(self.w1)[1])

    @property
    def rank(self) -> int:
        return 0 if self.p is None else int(np.shape(self.p)[1])

    def to_bytes(self, int8: bool = False) -> bytes:
        """The "BPFF" form (checked by the C core before it is returned)."""
        if self.activation not in ACTIVATIONS:
            raise errors.InvalidParameterError(
                f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        d, h, r = self.d, self.h, self.rank
        w1t = _f32(self.w1, (d, h), "w1").T.copy()
        w2 = _f32(self.w2, (h, d), "w2")
        b1 = _f32(self.b1, (h,), "b1")
        b2 = _f32(self.b2, (d,), "b2")
        flags = (_F_INT8 if int8 else 0) | (_F_PREDICTOR if r else 0) | \
            (_F_THRESHOLDS if self.thresholds is not None else 0) | \
            (_F_OFFSETS if self.offsets is not None else 0)
        parts = [b"BPFF", struct.pack("<HHIIIIII", 1, flags, d, h, r, ACTIVATIONS[self.activation], 0, 0)]
        if int8:
            q1, s1 = _int8_rows(w1t)
            q2, s2 = _int8_rows(w2)
            parts += [s1.tobytes(), s2.tobytes(), b1.tobytes(), b2.tobytes()]
        else:
            parts += [w1t.tobytes(), b1.tobytes(), w2.tobytes(), b2.tobytes()]
        if r:
            parts += [_f32(self.p, (d, r), "p").T.copy().tobytes(), _f32(self.q, (r, h), "q").tobytes()]
        if self.thresholds is not None:
            parts.append(_f32(self.thresholds, (h,), "thresholds").tobytes())
        if self.offsets is not None:
            c = _f32(self.offsets, (h,), "offsets")
            # the output when every neuron is off; with int8 rows, of the rows as stored
            w2_used = (q2.astype(np.float64) * s2[:, None]) if int8 else w2.astype(np.float64)
            b2c = (b2.astype(np.float64) + c.astype(np.float64) @ w2_used).astype(np.float32)
            parts += [c.tobytes(), b2c.tobytes()]
        if int8:
            blocks = q1.tobytes() + q2.tobytes()
            parts.append(blocks + b"\0" * (-len(blocks) % 4))
        blob = b"".join(parts)
        _core.ffn_shape(blob)
        return blob


def shape(blob) -> dict:
    """d, h, rank, activation, format and whether thresholds are stored, of a stored layer."""
    d, h, r, act, int8, thr, off = _core.ffn_shape(blob)
    return {"d": d, "h": h, "rank": r, "activation": _NAMES[act],
            "format": "int8" if int8 else "float32", "thresholds": bool(thr), "offsets": bool(off)}


def dims(blob) -> int:
    """The input (= output) dimension d from the stored form's header (written by
    ``Layer.to_bytes``; the C core checks the whole form when it runs it)."""
    return struct.unpack_from("<I", blob, 8)[0]


def run(blob, x, k: int | None = None, thresholds: bool = False,
        selector: str = "predictor") -> tuple[np.ndarray, float]:
    """y for one input (d,) or a batch (n, d), and the mean number of neurons computed.

    Dense by default; ``k``: only the k neurons ranked highest, by the predictor
    (``selector="predictor"``) or by their exact activations (``"exact"``: the first matmul in
    full, only the second one sparse); ``thresholds``: only those the predictor puts above
    their stored thresholds."""
    x = np.asarray(x)
    one = x.ndim == 1
    x = np.ascontiguousarray(x.reshape(1, -1) if one else x, dtype=np.float32)
    if x.ndim != 2:
        raise errors.InvalidParameterError(f"x must be one vector or a 2-D batch, got shape {x.shape}")
    d = dims(blob) if len(blob) >= 12 else 0
    if not 1 <= d <= _core.MAX_DIM:
        _core.ffn_shape(blob)  # not a layer's header: raises the core's error
    out = np.empty((x.shape[0], d), dtype=np.float32)
    if selector not in SELECTORS:
        raise errors.InvalidParameterError(f"selector must be predictor or exact, got {selector!r}")
    mode = 0 if k is None and not thresholds else (2 if thresholds else (3 if selector == "exact" else 1))
    total = _core.ffn_into(blob, x, x.shape[0], x.shape[1], out, mode, 0 if k is None else int(k))
    return (out[0] if one else out), total / max(len(x), 1)


def _ensure_table(conn):
    from . import schema

    schema.require(conn, "0004_ffn_layers", TABLE, errors.UnknownLayerError)


def save(conn, name: str, layer: Layer, int8: bool = False, source: str | None = None) -> None:
    """Stores (or replaces) layer ``name``."""
    if not isinstance(name, str) or not name:
        raise errors.InvalidParameterError("a layer needs a non-empty name")
    _ensure_table(conn)
    blob = layer.to_bytes(int8=int8)
    summed = "checksum" in bitpress_columns(conn, "ffn_layers")  # schema revision 0009
    with transaction(conn):
        execute(conn, f"DELETE FROM {TABLE} WHERE name = %s", (name,))
        execute(conn, f"INSERT INTO {TABLE} (name, d, h, rank, activation, format, params, source, settings"
                      f"{', checksum' if summed else ''}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s"
                      f"{', %s' if summed else ''})",
                (name, layer.d, layer.h, layer.rank, layer.activation, "int8" if int8 else "float32",
                 blob, source, json.dumps(layer.settings, sort_keys=True, default=float),
                 *([params_checksum(blob)] if summed else [])))


def load(conn, name: str) -> bytes:
    """The stored form of layer ``name`` (run it with ``run``)."""
    _ensure_table(conn)
    columns = bitpress_columns(conn, "ffn_layers")
    rows = fetchall(conn, f"SELECT params, {'checksum' if 'checksum' in columns else 'NULL'} FROM {TABLE} "
                          "WHERE name = %s", (name,))
    if not rows:
        raise errors.UnknownLayerError(f'layer "{name}" does not exist')
    return check_params(rows[0][0], rows[0][1], "ffn_layers", f'layer "{name}"', columns)


def list_layers(conn) -> list[dict]:
    _ensure_table(conn)
    keys = ("name", "d", "h", "rank", "activation", "format", "source", "settings")
    return [dict(zip(keys, r)) for r in fetchall(conn, f"SELECT {', '.join(keys)} FROM {TABLE} ORDER BY name")]
