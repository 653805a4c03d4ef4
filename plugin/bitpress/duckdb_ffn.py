"""Feed-forward layers in DuckDB: ``ffn(x, 'layer')`` and ``sparse_ffn(x, 'layer'[, k])``, the
same C core as the PostgreSQL functions of the same names (pyext/bp_ffn.c).

Arrow UDFs: one core call per batch of rows. Each layer's stored form is read once through a
cursor of the same database and kept while the hash of its ``params`` stays the same (DuckDB has
no row versions; hashing 5 MB costs 2-5 ms, once per batch of 2,048 rows).
"""
from __future__ import annotations

import numpy as np

from . import _core, errors, ffn
from .schema import missing_table
from .duckdb import map_groups, udf
from .duckdb_tt import _floats

_MACRO = """
CREATE OR REPLACE TEMP MACRO bitpress_ffn_k(k) AS
    CASE WHEN k >= 1 THEN CAST(k AS INTEGER)
         ELSE error('k must be at least 1, got ' || coalesce(CAST(k AS VARCHAR), 'NULL')) END;
CREATE OR REPLACE TEMP MACRO sparse_ffn(x, layer) AS
        bitpress_sparse_ffn_udf(CAST(x AS FLOAT[]), layer, 0, 'predictor'),
    (x, layer, k) AS bitpress_sparse_ffn_udf(CAST(x AS FLOAT[]), layer, bitpress_ffn_k(k), 'predictor'),
    (x, layer, k, selector) AS bitpress_sparse_ffn_udf(CAST(x AS FLOAT[]), layer, bitpress_ffn_k(k), selector)
"""


class _Layers:
    def __init__(self, con):
        self.con = con
        self.cache = {}

    def get(self, name):
        cur = self.con.cursor()
        try:
            try:
                rows = cur.execute(f"SELECT CAST(hash(params) AS VARCHAR) FROM {ffn.TABLE} WHERE name = ?",
                                   [name]).fetchall()
            except Exception as e:
                if "ffn_layers" in str(e):
                    raise missing_table(ffn.TABLE, errors.UnknownLayerError) from None
                raise
            if not rows:
                raise errors.UnknownLayerError(f'layer "{name}" does not exist')
            hit = self.cache.get(name)
            if hit is not None and hit[0] == rows[0][0]:
                return hit[1]
            blob = np.frombuffer(bytes(ffn.load(cur, name)), dtype=np.uint8).copy()
        finally:
            cur.close()
        try:
            _core.ffn_shape(blob)
        except errors.BitpressError as e:
            raise type(e)(f'layer "{name}": {e}', e.sqlstate) from None
        self.cache[name] = (rows[0][0], blob)
        return blob


def _batch(layers, x, layer, k=None, selector=None):
    def prepare(key):
        blob = layers.get(key[0])
        kk = None if k is None else int(key[1])
        return ffn.dims(blob), _core.ERR_FFN_INPUT_DIM, lambda m: ffn.run(
            blob, m, k=kk or None, thresholds=kk == 0, selector="predictor" if k is None else key[2])[0]

    return _floats(map_groups(x, (layer,) if k is None else (layer, k, selector), prepare))


def register(con):
    """Add ffn / sparse_ffn to a DuckDB connection (bitpress.duckdb.register calls it)."""
    layers = _Layers(con)
    udf(con, "ffn", lambda x, l_: _batch(layers, x, l_), ["FLOAT[]", "VARCHAR"], "FLOAT[]",
        side_effects=True)
    udf(con, "bitpress_sparse_ffn_udf", lambda x, l_, k, s_: _batch(layers, x, l_, k, s_),
        ["FLOAT[]", "VARCHAR", "INTEGER", "VARCHAR"], "FLOAT[]", side_effects=True)
    for macro in _MACRO.split(";"):
        con.execute(macro)
    return con
