"""Tensor-Train functions in DuckDB: ``tt_reconstruct``, ``tt_reconstruct_row``, ``tt_element``
and ``tt_matvec``, the same C core as the PostgreSQL functions of the same names.

Arrow UDFs: one core call per batch. The cores of each tensor are read once through a cursor
of the same database and kept while the tensor's stamp (its cores' checksums and shapes,
``bitpress.tensors.stamp``) stays the same; the stamp is read once per batch.

DuckDB fixes a function's return type, so ``tt_reconstruct`` returns the tensor flattened in
row-major order as ``FLOAT[]`` (PostgreSQL returns a ``real[]`` of the tensor's own shape);
``bitpress.tt_tensors.shape`` has the shape. Indexes are 1-based, as in PostgreSQL.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from . import _core, errors, tensors
from .schema import missing_table
from .duckdb import _groups, map_groups, udf


class _Tensors:
    """The stored tensors one connection has used."""

    def __init__(self, con):
        self.con = con
        self.cache = {}

    def get(self, model: str, tensor: str) -> tensors.StoredTensor:
        cur = self.con.cursor()
        try:
            try:
                stamp = tensors.stamp(cur, model, tensor)
            except Exception as e:
                if "tt_tensors" in str(e):
                    raise missing_table(tensors.CORES, errors.UnknownTensorError) from None
                raise
            if stamp is None:
                raise errors.UnknownTensorError(f'tensor "{tensor}" of model "{model}" does not exist')
            hit = self.cache.get((model, tensor))
            if hit is not None and hit[0] == stamp:
                return hit[1]
            t = tensors.load(cur, model, tensor)
        finally:
            cur.close()
        self.cache[(model, tensor)] = (stamp, t)
        return t


def _floats(arrays) -> pa.Array:
    """A list<float> Arrow array from float32 numpy rows (a list of them, or a 2-D array)."""
    lengths = np.array([len(a) for a in arrays], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32)
    values = np.concatenate(arrays) if len(arrays) else np.empty(0, np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.float32()))


def _reconstruct_batch(cache, model, tensor):
    out = [None] * len(model)
    for (m, t), rows in _groups(model, tensor).items():
        flat = cache.get(m, t).reconstruct().reshape(-1)
        for r in rows:
            out[r] = flat
    return _floats(out)


def _row_batch(cache, model, tensor, i):
    out = [None] * len(model)
    idx = np.asarray(i.to_numpy(zero_copy_only=False), dtype=np.int64)
    for (m, t), rows in _groups(model, tensor).items():
        st = cache.get(m, t)
        for r in rows:
            out[r] = st.row(_one_based(idx[r], st.rows)).reshape(-1)
    return _floats(out)


def _element_batch(cache, model, tensor, i, j):
    out = np.empty(len(model), dtype=np.float32)
    ii = np.asarray(i.to_numpy(zero_copy_only=False), dtype=np.int64)
    jj = np.asarray(j.to_numpy(zero_copy_only=False), dtype=np.int64)
    for (m, t), rows in _groups(model, tensor).items():
        st = cache.get(m, t)
        for r in rows:
            out[r] = st.element(_one_based(ii[r], st.rows), _one_based(jj[r], st.cols))
    return pa.array(out, type=pa.float32())


def _one_based(i, n):
    """A 1-based SQL index as a checked 0-based one (the core's message, as in PostgreSQL)."""
    i = int(i)
    if not 1 <= i <= n:
        _core.raise_error(_core.ERR_TT_INDEX, i, n)
    return i - 1


def _matvec_batch(cache, model, tensor, x):
    def prepare(key):
        st = cache.get(*key)
        return st.rows, _core.ERR_TT_INPUT_DIM, st.matvec

    return _floats(map_groups(x, (model, tensor), prepare))


def register(con):
    """Add the Tensor-Train functions to a DuckDB connection (bitpress.duckdb.register calls it)."""
    cache = _Tensors(con)
    specs = [
        ("tt_reconstruct", lambda m, t: _reconstruct_batch(cache, m, t), ["VARCHAR", "VARCHAR"]),
        ("tt_reconstruct_row", lambda m, t, i: _row_batch(cache, m, t, i), ["VARCHAR", "VARCHAR", "INTEGER"]),
        ("tt_matvec", lambda m, t, x: _matvec_batch(cache, m, t, x), ["VARCHAR", "VARCHAR", "FLOAT[]"]),
    ]
    for name, fn, params in specs:
        # side effects: the result depends on bitpress.tt_cores, so never fold it into a plan
        udf(con, name, fn, params, "FLOAT[]", side_effects=True)
    udf(con, "tt_element", lambda m, t, i, j: _element_batch(cache, m, t, i, j),
        ["VARCHAR", "VARCHAR", "INTEGER", "INTEGER"], "FLOAT", side_effects=True)
    return con
