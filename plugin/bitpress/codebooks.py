"""Codebooks in the database: ``bitpress.codebooks``, the same table in PostgreSQL and DuckDB.

``save`` adds a version, ``load`` reads one back, ``fit_table`` samples a table's vector column
in SQL, fits a codebook (``bitpress.fit``) and saves it. ``binarize(v, 'name')`` in SQL then
uses it. Versions are never rewritten, so codes made with version 1 can still be compared
with queries coded by version 1 after a refit (``binarize(v, 'name', 1)``).
"""
from __future__ import annotations

import json

import numpy as np

from . import errors
from .codebook import Codebook
from .schema import _is_duckdb, _is_psycopg

TABLE = "bitpress.codebooks"


def _kind(conn) -> str:
    if _is_duckdb(conn):
        return "duckdb"
    if _is_psycopg(conn):
        return "pg"
    raise TypeError(f"expected a psycopg or DuckDB connection, got {type(conn).__name__}")


def _rows(conn, query, params=()):
    if _kind(conn) == "duckdb":
        return conn.execute(query.replace("%s", "?"), list(params)).fetchall()
    return conn.execute(query, params).fetchall()


def _ensure_table(conn):
    from . import schema

    if schema.current(conn) is None:
        raise errors.UnknownCodebookError(
            f"table {TABLE} does not exist; create it with `bitpress migrate` "
            "or bitpress.schema.upgrade(conn)", "42P01")


def save(conn, name: str, codebook: Codebook, sample_size: int = 0) -> int:
    """Stores ``codebook`` as the next version of ``name``; returns that version."""
    if not isinstance(name, str) or not name:
        raise errors.InvalidParameterError("a codebook needs a non-empty name")
    codebook.validate()
    _ensure_table(conn)
    options = json.dumps(codebook.options, sort_keys=True, default=float)
    params = codebook.to_bytes()
    insert = (f"INSERT INTO {TABLE} (name, version, method, dims, bits, params, options, sample_size) "
              f"SELECT %s, coalesce(max(version), 0) + 1, %s, %s, %s, %s, %s, %s FROM {TABLE} "
              "WHERE name = %s RETURNING version")
    args = (name, codebook.method, codebook.dims, codebook.bits, params, options, int(sample_size), name)
    if _kind(conn) == "pg":
        with conn.transaction():
            # one writer per name at a time, so two fits never take the same version
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('bitpress.codebooks'), hashtext(%s))", (name,))
            return conn.execute(insert, args).fetchone()[0]
    conn.execute("BEGIN TRANSACTION")
    try:
        version = conn.execute(insert.replace("%s", "?"), list(args)).fetchone()[0]
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise
    return version


def load(conn, name: str, version: int | None = None) -> Codebook:
    """The codebook ``name`` (its latest version unless ``version`` is given)."""
    _ensure_table(conn)
    q = f"SELECT version, method, params, options FROM {TABLE} WHERE name = %s"
    args = [name]
    if version is not None:
        q += " AND version = %s"
        args.append(int(version))
    rows = _rows(conn, q + " ORDER BY version DESC LIMIT 1", args)
    if not rows:
        what = f"codebook {name!r}" + (f" version {version}" if version is not None else "")
        raise errors.UnknownCodebookError(f"{what} does not exist")
    v, method, params, options = rows[0]
    options = dict(json.loads(options or "{}"), name=name, version=v)
    return Codebook.from_bytes(bytes(params), method=method, options=options)


def list_codebooks(conn) -> list[dict]:
    """Name, version, method, dims, bits, sample size and creation time of every stored version."""
    _ensure_table(conn)
    rows = _rows(conn, f"SELECT name, version, method, dims, bits, sample_size, CAST(created_at AS VARCHAR) FROM {TABLE} "
                       "ORDER BY name, version")
    keys = ("name", "version", "method", "dims", "bits", "sample_size", "created_at")
    return [dict(zip(keys, r)) for r in rows]


def _quoted(conn, table: str, column: str):
    """(table, column) quoted for SQL: psycopg.sql for PostgreSQL, SQLAlchemy's quoting for DuckDB.
    ``table`` may be schema-qualified as "schema.table"."""
    parts = table.split(".") if isinstance(table, str) else list(table)
    if _kind(conn) == "pg":
        from psycopg import sql

        return sql.Identifier(*parts), sql.Identifier(column)
    from sqlalchemy.dialects import postgresql

    prep = postgresql.dialect().identifier_preparer
    return ".".join(prep.quote_identifier(p) for p in parts), prep.quote_identifier(column)


def sample(conn, table: str, column: str, n: int = 50_000, seed: int = 0, progress=None) -> np.ndarray:
    """Up to ``n`` non-NULL vectors of ``table.column``, sampled in SQL, as float32 rows.

    PostgreSQL: ``TABLESAMPLE BERNOULLI ... REPEATABLE (seed)`` sized for about n rows (all rows
    when the table is small); DuckDB: ``USING SAMPLE reservoir(n ROWS) REPEATABLE (seed)``.
    """
    from .progress import bar

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise errors.InvalidParameterError(f"sample size must be a positive integer, got {n!r}")
    t, c = _quoted(conn, table, column)
    rows = []
    if _kind(conn) == "pg":
        from psycopg import sql

        total = conn.execute(sql.SQL("SELECT count({c}) FROM {t}").format(c=c, t=t)).fetchone()[0]
        want = min(n, total)
        pct = 100.0 if want == total else min(100.0, 100.0 * n * 1.25 / total)
        q = sql.SQL("SELECT {c}::real[] FROM {t} TABLESAMPLE BERNOULLI (%s) REPEATABLE (%s) "
                    "WHERE {c} IS NOT NULL LIMIT %s").format(c=c, t=t)
        with bar(total=want, desc=f"sampling {table}.{column}", progress=progress) as pb:
            with conn.cursor(binary=True) as cur:
                cur.execute(q, (pct, seed, n))
                while chunk := cur.fetchmany(4096):
                    rows.extend(r[0] for r in chunk)
                    pb.update(len(chunk))
            if len(rows) < want:  # Bernoulli fell short: take the rest in table order
                cur = conn.cursor(binary=True)
                cur.execute(sql.SQL("SELECT {c}::real[] FROM {t} WHERE {c} IS NOT NULL LIMIT %s")
                            .format(c=c, t=t), (want,))
                rows = [r[0] for r in cur.fetchall()]
                pb.update(want - pb.n)
    else:
        q = (f"SELECT CAST({c} AS FLOAT[]) FROM (SELECT {c} FROM {t} WHERE {c} IS NOT NULL) "
             f"USING SAMPLE reservoir({int(n)} ROWS) REPEATABLE ({int(seed)})")
        with bar(total=None, desc=f"sampling {table}.{column}", progress=progress):
            rows = [r[0] for r in conn.execute(q).fetchall()]
    return _stack(rows)


def _stack(rows) -> np.ndarray:
    if not rows:
        raise errors.InvalidParameterError("the column holds no vectors to fit on")
    dims = {len(r) for r in rows}
    if len(dims) != 1:
        raise errors.DimensionMismatchError(f"the sampled vectors have different dimensions: {sorted(dims)[:5]}")
    return np.asarray(rows, dtype=np.float32)


def fit_table(conn, table: str, column: str, name: str, method: str = "median",
              bits: int | None = None, sample_size: int = 50_000, seed: int = 0,
              progress=None, **options) -> tuple[int, Codebook]:
    """Samples ``table.column`` in SQL, fits a codebook and saves it as the next version of
    ``name``; returns (version, codebook)."""
    from .fit import fit

    x = sample(conn, table, column, n=sample_size, seed=seed, progress=progress)
    cb = fit(x, method, bits, seed=seed, progress=progress, **options)
    cb.options.setdefault("source", f"{table}.{column}")
    version = save(conn, name, cb, sample_size=len(x))
    cb.options.update(name=name, version=version)
    return version, cb
