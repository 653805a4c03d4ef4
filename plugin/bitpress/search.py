"""``bitpress.search``: k nearest rows of a table from Python, on PostgreSQL or DuckDB.

It calls the SQL functions (``bitpress_knn`` / ``bitpress_knn_codes``), so the rows are the
ones a SQL user gets: Hamming top ``k * oversample`` over the codes, then an exact rerank on
the stored vectors (or, with ``vector_column=None``, the codebook's asymmetric score).
"""
from __future__ import annotations

import numpy as np

from . import errors
from .kernels import check_count
from .tables import kind as _kind
from .tables import quoted as _quoted


def _check(k, oversample, metric):
    check_count("k", k)
    check_count("oversample", oversample)
    if metric not in ("cosine", "ip", "l2"):
        raise errors.InvalidParameterError(f"metric must be cosine, ip or l2, got {metric!r}")


def _check_scoring(scoring, codebook):
    if scoring not in ("hamming", "asymmetric"):
        raise errors.InvalidParameterError(f"scoring must be hamming or asymmetric, got {scoring!r}")
    if scoring == "asymmetric" and codebook is None:
        raise errors.InvalidParameterError("asymmetric scoring needs a codebook with reconstruction levels")


def search(conn, table: str, query, k: int = 10, *, oversample: int = 4, code_column: str = "code",
           vector_column: str | None = "embedding", codebook: str | None = None,
           metric: str = "cosine", scoring: str = "hamming", store: str | None = None) -> list[dict]:
    """The k rows of ``table`` nearest ``query``, best first, as dicts of column -> value.

    ``conn`` is a psycopg connection (bitpress extension created) or a DuckDB connection
    (``bitpress.duckdb.register`` done). ``codebook`` names the stored codebook the codes were
    made with (None: sign codes, ``binarize(v)``). ``scoring="asymmetric"`` picks the
    candidates by the codebook's asymmetric score of the float query instead of Hamming
    distance (with ``vector_column=None``: every code is scored, no Hamming stage).

    ``store`` names a packed code store over ``table.code_column`` for the Hamming stage. In
    PostgreSQL, ``bitpress_knn`` finds such a store by itself; in DuckDB the store is a
    snapshot (see ``bitpress.stores``), so pass it explicitly.
    """
    _check(k, oversample, metric)
    _check_scoring(scoring, codebook)
    q = np.asarray(query, dtype=np.float32)
    if q.ndim != 1:
        raise errors.BitpressError("query must be one vector (1-D)")
    if _kind(conn) == "pg":
        from psycopg import sql

        t, _ = _quoted(conn, table, code_column)
        if vector_column is None:
            stmt = sql.SQL("SELECT * FROM bitpress_knn_codes(NULL::{t}, %s, %s::real[]::vector, %s, %s, %s, %s)").format(t=t)
            args = (code_column, q.tolist(), k, oversample, codebook, scoring)
        else:
            stmt = sql.SQL("SELECT * FROM bitpress_knn(NULL::{t}, %s, %s, %s::real[]::vector, %s, %s, %s, %s, %s)").format(t=t)
            args = (code_column, vector_column, q.tolist(), k, oversample, codebook, metric, scoring)
        cur = conn.execute(stmt, args)
    elif store is not None and vector_column is not None and scoring == "hamming":
        cur = _duckdb_store_search(conn, table, q, k, oversample, store, vector_column, codebook, metric)
    else:
        if vector_column is None:
            stmt = ("SELECT * FROM bitpress_knn_codes(?, ?, ?::FLOAT[], ?, oversample := ?, "
                    "codebook := ?::VARCHAR, scoring := ?)")
            args = [_quoted(conn, table)[0], code_column, q.tolist(), k, oversample, codebook, scoring]
        else:
            stmt = ("SELECT * FROM bitpress_knn(?, ?, ?, ?::FLOAT[], ?, oversample := ?, "
                    "codebook := ?::VARCHAR, metric := ?, scoring := ?)")
            args = [_quoted(conn, table)[0], code_column, vector_column, q.tolist(), k, oversample, codebook,
                    metric, scoring]
        cur = conn.execute(stmt, args)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _duckdb_store_search(conn, table, q, k, oversample, store, vector_column, codebook, metric):
    """DuckDB: the bitpress_knn_store macro (the store's exact Hamming top k*oversample, then the
    exact rerank)."""
    from . import stores

    source, id_column, _, _, _ = stores._store(conn, store)
    if source != stores._duckdb_source(conn, table):
        raise errors.InvalidParameterError(f'code store "{store}" follows {source}, not {table}')
    return conn.execute("SELECT * FROM bitpress_knn_store(?, ?, ?, ?, ?::FLOAT[], ?, oversample := ?, "
                        "codebook := ?::VARCHAR, metric := ?)",
                        [_quoted(conn, table)[0], store, id_column, vector_column, q.tolist(), k, oversample,
                         codebook, metric])
