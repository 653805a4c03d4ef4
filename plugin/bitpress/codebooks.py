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
from .tables import fetchall as _rows
from .tables import kind as _kind
from .tables import bitpress_columns, check_params, params_checksum, qmark, transaction

TABLE = "bitpress.codebooks"


def _ensure_table(conn):
    from . import schema

    schema.require(conn, "0001_codebooks", TABLE, errors.UnknownCodebookError)


def save(conn, name: str, codebook: Codebook, sample_size: int = 0) -> int:
    """Stores ``codebook`` as the next version of ``name``; returns that version."""
    if not isinstance(name, str) or not name:
        raise errors.InvalidParameterError("a codebook needs a non-empty name")
    codebook.validate()
    _ensure_table(conn)
    options = json.dumps(codebook.options, sort_keys=True, default=float)
    params = codebook.to_bytes()
    summed = "checksum" in bitpress_columns(conn, "codebooks")  # schema revision 0009
    insert = (f"INSERT INTO {TABLE} (name, version, method, dims, bits, params, options, sample_size"
              f"{', checksum' if summed else ''}) "
              f"SELECT %s, coalesce(max(version), 0) + 1, %s, %s, %s, %s, %s, %s{', %s' if summed else ''} "
              f"FROM {TABLE} WHERE name = %s RETURNING version")
    args = (name, codebook.method, codebook.dims, codebook.bits, params, options, int(sample_size),
            *([params_checksum(params)] if summed else []), name)
    if _kind(conn) == "pg":
        with conn.transaction():
            # one writer per name at a time, so two fits never take the same version
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('bitpress.codebooks'), hashtext(%s))", (name,))
            return conn.execute(insert, args).fetchone()[0]
    with transaction(conn):
        return conn.execute(qmark(insert), list(args)).fetchall()[0][0]


def load(conn, name: str, version: int | None = None) -> Codebook:
    """The codebook ``name`` (its latest version unless ``version`` is given)."""
    _ensure_table(conn)
    columns = bitpress_columns(conn, "codebooks")
    q = (f"SELECT version, method, params, options{', checksum' if 'checksum' in columns else ', NULL'} "
         f"FROM {TABLE} WHERE name = %s")
    args = [name]
    if version is not None:
        q += " AND version = %s"
        args.append(int(version))
    rows = _rows(conn, q + " ORDER BY version DESC LIMIT 1", args)
    if not rows:
        what = f"codebook {name!r}" + (f" version {version}" if version is not None else "")
        raise errors.UnknownCodebookError(f"{what} does not exist")
    v, method, params, options, checksum = rows[0]
    errors.stored(v, TABLE, f'codebook "{name}"', "version")
    params = check_params(params, checksum, "codebooks", f'codebook "{name}" version {v}', columns)
    options = dict(json.loads(options or "{}"), name=name, version=v)
    return Codebook.from_bytes(bytes(params), method=method, options=options)


def list_codebooks(conn) -> list[dict]:
    """Name, version, method, dims, bits, sample size and creation time of every stored version."""
    _ensure_table(conn)
    rows = _rows(conn, f"SELECT name, version, method, dims, bits, sample_size, CAST(created_at AS VARCHAR) FROM {TABLE} "
                       "ORDER BY name, version")
    keys = ("name", "version", "method", "dims", "bits", "sample_size", "created_at")
    return [dict(zip(keys, r)) for r in rows]


def sample(conn, table: str, column: str, n: int = 50_000, seed: int = 0, progress=None) -> np.ndarray:
    """About ``n`` non-NULL vectors of ``table.column``, sampled in SQL (see tables.read_vectors)."""
    from .tables import read_vectors

    return read_vectors(conn, table, column, sample=n, seed=seed, progress=progress)


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
