"""bitpress in DuckDB: ``register(con)`` adds ``binarize`` and ``hamming`` to a connection.

The functions are Arrow UDFs: DuckDB hands over whole batches (2048 rows), and each batch
is one call into the same C core the PostgreSQL extension runs. Codes are ``BLOB`` values
holding exactly the bytes of a PostgreSQL ``bit(n)`` code (MSB first, zero padding at the
end); ``code_bytes()`` / ``code_from_bytes()`` convert on the PostgreSQL side.

Why BLOB and not DuckDB's ``BIT``: DuckDB stores a ``BIT`` with a leading byte that counts
padding bits and puts the padding at the *front* of the first data byte, PostgreSQL at the
*end* of the last; Arrow has no bit-string type, so a BLOB is the one form that crosses
engines, Arrow and numpy without conversion.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from . import _core, errors
from .kernels import binarize as _binarize
from .kernels import hamming as _hamming

_MACROS = """
CREATE OR REPLACE TEMP MACRO binarize(v) AS bitpress_binarize_sign(CAST(v AS FLOAT[])),
    (v, thresholds) AS bitpress_binarize(CAST(v AS FLOAT[]), CAST(thresholds AS FLOAT[]))
"""


def _list_rows(arr, what):
    """(values float32 view, offsets int64, lengths) of a list<float> Arrow array without nulls."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        raise errors.NullValueError(f"{what} must not be NULL here")
    offsets = np.asarray(arr.offsets, dtype=np.int64)
    values = arr.values
    if values.null_count:
        raise errors.NullValueError(f"{what} must not contain nulls")
    values = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values, offsets, np.diff(offsets)


def _gather(values, offsets, rows, dim):
    if len(rows) == 0:
        return np.empty((0, dim), dtype=np.float32)
    start = offsets[rows[0]]
    if np.array_equal(offsets[rows], start + dim * np.arange(len(rows))):
        return values[start:start + dim * len(rows)].reshape(len(rows), dim)
    return values[np.add.outer(offsets[rows], np.arange(dim))]


def _codes_array(codes_by_row, n):
    """A binary Arrow array from one uint8 code per row (equal lengths: zero copy)."""
    if isinstance(codes_by_row, np.ndarray):
        nbytes = codes_by_row.shape[1]
        offsets = (np.arange(n + 1, dtype=np.int32) * nbytes)
        return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets),
                                                     pa.py_buffer(np.ascontiguousarray(codes_by_row))])
    return pa.array([c.tobytes() for c in codes_by_row], type=pa.binary())


def _binarize_batch(v, t=None):
    values, offsets, lengths = _list_rows(v, "vector")
    n = len(lengths)
    if n == 0:
        return pa.array([], type=pa.binary())
    if t is not None:
        tvalues, toffsets, tlengths = _list_rows(t, "thresholds")
        bad = np.nonzero(tlengths != lengths)[0]
        if len(bad):
            r = int(bad[0])
            _core.raise_error(_core.ERR_DIM_MISMATCH, int(lengths[r]), int(tlengths[r]))
    dims = np.unique(lengths)
    if len(dims) == 1:
        dim = int(dims[0])
        x = _gather(values, offsets, np.arange(n), dim)
        thr = None
        if t is not None:
            thr = _gather(tvalues, toffsets, np.arange(n), dim)
            if n > 1 and (thr == thr[0]).all():  # a constant argument: check and pass one row
                thr = thr[0]
        return _codes_array(_binarize(x, thr), n)
    # vectors of several lengths in one batch: one core call per length
    out = [None] * n
    for dim in dims:
        rows = np.nonzero(lengths == dim)[0]
        x = _gather(values, offsets, rows, int(dim))
        thr = None if t is None else _gather(tvalues, toffsets, rows, int(dim))
        codes = _binarize(x, thr)
        for i, r in enumerate(rows):
            out[r] = codes[i]
    return _codes_array(out, n)


def _binarize_sign_batch(v):
    return _binarize_batch(v)


def _binary_rows(arr):
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        raise errors.NullValueError("codes must not be NULL here")
    if arr.type != pa.binary():
        arr = arr.cast(pa.binary())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset:arr.offset + len(arr) + 1]
    offsets = offsets.astype(np.int64)
    data = arr.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8)
    return data, offsets, np.diff(offsets)


def _hamming_batch(a, b):
    da, oa, la = _binary_rows(a)
    db, ob, lb = _binary_rows(b)
    n = len(la)
    if n == 0:
        return pa.array([], type=pa.int32())
    bad = np.nonzero(la != lb)[0]
    if len(bad):
        r = int(bad[0])
        _core.raise_error(_core.ERR_BIT_LENGTH_MISMATCH, int(la[r]) * 8, int(lb[r]) * 8)
    nbytes = int(la[0])
    if (la == nbytes).all():
        ca = da[oa[0]:oa[0] + n * nbytes].reshape(n, nbytes)
        cb = db[ob[0]:ob[0] + n * nbytes].reshape(n, nbytes)
        # row by row even for a constant query: checking for one costs more than the kernel
        return pa.array(_hamming(ca, cb).astype(np.int32))
    d = [_hamming(da[oa[i]:oa[i + 1]], db[ob[i]:ob[i + 1]]) for i in range(n)]
    return pa.array(np.asarray(d, dtype=np.int32))


def register(con):
    """Add bitpress's functions to a DuckDB connection; returns the connection.

    ``binarize(v)``, ``binarize(v, thresholds)``: v is any numeric list or array
    (``FLOAT[]``, ``DOUBLE[]``, ``FLOAT[384]`` ...), the result a BLOB code.
    ``hamming(a, b)``: INTEGER number of differing bits of two BLOB codes.
    """
    for name in ("bitpress_binarize_sign", "bitpress_binarize", "hamming"):
        try:
            con.remove_function(name)
        except Exception:  # not registered yet
            pass
    con.create_function("bitpress_binarize_sign", _binarize_sign_batch, ["FLOAT[]"], "BLOB",
                        type="arrow", side_effects=False)
    con.create_function("bitpress_binarize", _binarize_batch, ["FLOAT[]", "FLOAT[]"], "BLOB",
                        type="arrow", side_effects=False)
    con.create_function("hamming", _hamming_batch, ["BLOB", "BLOB"], "INTEGER",
                        type="arrow", side_effects=False)
    con.execute(_MACROS)
    return con


def connect(database: str = ":memory:", **kwargs):
    """``duckdb.connect(...)`` with bitpress's functions registered."""
    import duckdb

    return register(duckdb.connect(database, **kwargs))
