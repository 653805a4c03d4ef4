"""Tensors stored as Tensor-Train cores in ``bitpress.tt_tensors`` / ``bitpress.tt_cores``.

The same tables in PostgreSQL and DuckDB (migration 0003). ``write`` stores one decomposed
tensor (a ``bitpress.tt.TTResult``) in one transaction; ``load`` reads it back as
``StoredTensor``, checked as the PostgreSQL extension checks it (cores numbered 0..d-1,
SHA-256 equal to the stored checksum, ranks chained, sizes right, finite values, the shape of
the tensor), and computes with the C core: ``reconstruct()``, ``row(i)``, ``element(i, j)``,
``matvec(x)`` give the same bits as ``tt_reconstruct``, ``tt_reconstruct_row``,
``tt_element`` and ``tt_matvec`` in SQL (which take 1-based indexes; Python's are 0-based).

Layout of the cores: see ``bitpress.tt`` and pyext/bp_core.h.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from . import _core, errors
from .tt import matrix_shape
from .tables import fetchall as _rows
from .tables import execute, qmark, transaction
from .tables import kind as _kind

TENSORS = "bitpress.tt_tensors"
CORES = "bitpress.tt_cores"
MODELS = "bitpress.tt_models"


def _named(e: errors.BitpressError, model: str, tensor: str):
    return type(e)(f'tensor "{tensor}" of model "{model}": {e}', e.sqlstate)


def _malformed(model, tensor, problem, core):
    try:
        _core.raise_error(_core.ERR_MALFORMED_TT, problem, core)
    except errors.BitpressError as e:
        return _named(e, model, tensor)


@dataclass
class StoredTensor:
    """A tensor's cores as read from the database, checked, ready for the C core."""

    model: str
    tensor: str
    shape: tuple
    cores: list  # float32 arrays (r0, m, n, r1)
    onnx_name: str | None = None
    format: str = "tt"
    _dense: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        # the cores are checked once here (finite values too), and kept as read-only views so
        # that the C calls below can skip scanning them again
        self.cores = [np.ascontiguousarray(c, dtype=np.float32).view() for c in self.cores]
        for c in self.cores:
            c.flags.writeable = False
        self._shapes = np.array([c.shape for c in self.cores], dtype=np.int64).reshape(-1, 4)
        try:
            self.rows, self.cols, self.matvec_cost, self.prefers_dense = _core.tt_shape(
                self.cores, self._shapes)
        except errors.BitpressError as e:
            raise _named(e, self.model, self.tensor) from None
        if (self.rows, self.cols) != matrix_shape(self.shape):
            raise errors.MalformedTensorError(
                f'tensor "{self.tensor}" of model "{self.model}": its cores make a '
                f"{self.rows} x {self.cols} matrix but its shape needs "
                f"{' x '.join(map(str, matrix_shape(self.shape)))}")

    def _call(self, what, i=0, j=0, x=None, nvec=0, out=None):
        try:
            return _core.tt_into(self.cores, self._shapes, what, i, j, x, nvec, out, True)
        except errors.BitpressError as e:
            raise _named(e, self.model, self.tensor) from None

    def reconstruct(self) -> np.ndarray:
        """The whole tensor, in its original shape."""
        out = np.empty((self.rows, self.cols), dtype=np.float32)
        self._call(0, out=out)
        return out.reshape(self.shape)

    def row(self, i: int) -> np.ndarray:
        """Row i (0-based) of the 2-D view, shaped like shape[1:] (1-D tensors: the tensor)."""
        out = np.empty(self.cols, dtype=np.float32)
        self._call(1, i=self._index(i, self.rows), out=out)
        return out.reshape(self.shape[1:] if len(self.shape) >= 2 else (self.cols,))

    def element(self, i: int, j: int) -> float:
        """Element (i, j) (0-based) of the 2-D view."""
        return self._call(2, i=self._index(i, self.rows), j=self._index(j, self.cols))

    def matvec(self, x) -> np.ndarray:
        """x @ W for one vector (rows,) or a batch (n, rows), as ONNX MatMul computes it.

        Through the cores, or through the rebuilt tensor when that costs fewer operations
        (bp_tt_prefers_dense, the rule tt_matvec follows in SQL too)."""
        x = np.asarray(x)
        one = x.ndim == 1
        x = np.ascontiguousarray(x.reshape(1, -1) if one else x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.rows:
            _core.raise_error(_core.ERR_TT_INPUT_DIM, int(x.shape[-1]), self.rows)
        out = np.empty((x.shape[0], self.cols), dtype=np.float32)
        if self.prefers_dense:
            if self._dense is None:
                self._dense = self.reconstruct().reshape(self.rows, self.cols)
            try:
                _core.dense_matvec_into(self._dense, self.rows, self.cols, x, x.shape[0], out)
            except errors.BitpressError as e:
                raise _named(e, self.model, self.tensor) from None
        else:
            self._call(3, x=x, nvec=x.shape[0], out=out)
        return out[0] if one else out

    def _index(self, i, n):
        i = int(i)
        if not 0 <= i < n:
            _core.raise_error(_core.ERR_TT_INDEX, i, n)
        return i


def _ensure_tables(conn):
    from . import schema

    schema.require(conn, "0003_tt", CORES, errors.UnknownTensorError)


def stamp(conn, model: str, tensor: str) -> str | None:
    """A text that changes whenever the tensor's row or one of its cores is rewritten
    (None if there is no such tensor): the checksums, shapes and indexes of its cores."""
    rows = _rows(conn, f"SELECT CAST(shape AS VARCHAR) FROM {TENSORS} WHERE model = %s AND tensor = %s",
                 (model, tensor))
    if not rows:
        return None
    cores = _rows(conn, f"SELECT idx, checksum, CAST(shape AS VARCHAR) FROM {CORES} "
                        "WHERE model = %s AND tensor = %s ORDER BY idx", (model, tensor))
    return json.dumps([rows[0][0], [list(c) for c in cores]])


def load(conn, model: str, tensor: str) -> StoredTensor:
    """The stored tensor, its cores checked (MalformedTensorError names tensor and core)."""
    _ensure_tables(conn)
    rows = _rows(conn, f"SELECT shape, onnx_name, format FROM {TENSORS} WHERE model = %s AND tensor = %s",
                 (model, tensor))
    if not rows:
        raise errors.UnknownTensorError(f'tensor "{tensor}" of model "{model}" does not exist')
    key = f'tensor "{tensor}" of model "{model}"'
    shape, onnx_name, fmt = errors.stored(rows[0][0], TENSORS, key, "shape"), rows[0][1], rows[0][2]
    shape = tuple(int(s) for s in shape)
    for d, s in enumerate(shape):
        if s < 1:
            raise errors.MalformedTensorError(
                f"{key}: its shape has {s} in dimension {d + 1}, every dimension must be at least 1")
    cores = []
    for k, row in enumerate(_rows(
            conn, f"SELECT idx, shape, data, checksum FROM {CORES} WHERE model = %s AND tensor = %s "
                  "ORDER BY idx", (model, tensor))):
        idx, cshape, data, checksum = (errors.stored(v, CORES, f"{key}, core {k}", c)
                                       for v, c in zip(row, ("idx", "shape", "data", "checksum")))
        if idx != k:
            raise _malformed(model, tensor, _core.TT_MISSING, k)
        data = bytes(data)
        if hashlib.sha256(data).hexdigest() != checksum:
            raise _malformed(model, tensor, _core.TT_CHECKSUM, k)
        cshape = tuple(int(s) for s in cshape)
        if len(cshape) != 4 or min(cshape) < 1 or len(data) % 4:
            raise _malformed(model, tensor, _core.TT_SHAPE, k)
        core = np.frombuffer(data, dtype="<f4").astype(np.float32)  # aligned, native copy
        if core.size != int(np.prod(cshape, dtype=np.int64)):
            raise _malformed(model, tensor, _core.TT_SIZE, k)
        cores.append(core.reshape(cshape))
    if not cores:
        raise _malformed(model, tensor, _core.TT_NO_CORES, 0)
    return StoredTensor(model, tensor, shape, cores, onnx_name, fmt)


def core_rows(model: str, name: str, cores) -> list[tuple]:
    """(model, tensor, idx, shape, data, checksum) rows of the cores as they are stored."""
    out = []
    for k, c in enumerate(cores):
        data = np.ascontiguousarray(c, dtype="<f4").tobytes()
        out.append((model, name, k, [int(s) for s in c.shape], data, hashlib.sha256(data).hexdigest()))
    return out


def write(conn, model: str, name: str, result, onnx_name: str | None = None) -> None:
    """Stores one decomposed tensor (a bitpress.tt.TTResult) and its cores, in one
    transaction; an existing tensor of that name is replaced."""
    _ensure_tables(conn)
    modes = list(result.modes)
    tensor_row = (model, name, onnx_name, [int(s) for s in result.shape], result.format,
                  [int(m) for m, _ in modes], [int(n) for _, n in modes],
                  [int(r) for r in result.ranks],
                  None if result.eps is None else float(result.eps),
                  None if result.max_rank is None else int(result.max_rank),
                  int(result.dense_bytes), int(result.stored_bytes), float(result.rel_error))
    insert_tensor = (f"INSERT INTO {TENSORS} (model, tensor, onnx_name, shape, format, row_modes, "
                     "col_modes, ranks, eps, max_rank, dense_bytes, stored_bytes, rel_error) "
                     "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
    insert_core = f"INSERT INTO {CORES} (model, tensor, idx, shape, data, checksum) VALUES (%s, %s, %s, %s, %s, %s)"
    cores = core_rows(model, name, result.cores)
    with transaction(conn):
        for table in (CORES, TENSORS):
            execute(conn, f"DELETE FROM {table} WHERE model = %s AND tensor = %s", (model, name))
        execute(conn, insert_tensor, tensor_row)
        if _kind(conn) == "pg":
            with conn.cursor() as cur:
                cur.executemany(insert_core, cores)
        else:
            conn.executemany(qmark(insert_core), [list(c) for c in cores])


def list_tensors(conn, model: str) -> list[dict]:
    """The stored tensors of a model with their format, ranks, sizes and measured error."""
    _ensure_tables(conn)
    keys = ("tensor", "onnx_name", "shape", "format", "ranks", "eps", "dense_bytes",
            "stored_bytes", "rel_error")
    rows = _rows(conn, f"SELECT {', '.join(keys)} FROM {TENSORS} WHERE model = %s ORDER BY tensor", (model,))
    return [dict(zip(keys, r)) for r in rows]
