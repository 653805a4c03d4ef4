"""Reading a vector column of a user's table, in PostgreSQL or DuckDB: all rows or a sample.

Table and column names are quoted by psycopg.sql.Identifier (PostgreSQL; ``pg_ident``) or
SQLAlchemy's identifier quoting (DuckDB speaks the same quoting rules; ``quote_ident``), never
formatted into SQL as text. Statements with PostgreSQL identifiers are always executed with a
parameter tuple (``()`` at least) so that a ``%`` inside a name survives.
A table name may be schema-qualified as "schema.table".
"""
from __future__ import annotations

import contextlib
import re

import numpy as np

from . import errors
from .schema import _is_duckdb, _is_psycopg


def kind(conn) -> str:
    """"pg" for a psycopg connection, "duckdb" for a DuckDB one."""
    if _is_duckdb(conn):
        return "duckdb"
    if _is_psycopg(conn):
        return "pg"
    raise TypeError(f"expected a psycopg or DuckDB connection, got {type(conn).__name__}")


_QUOTED_OR_PLACEHOLDER = re.compile(r'("(?:[^"]|"")*"|\'(?:[^\']|\'\')*\')|%s')


def qmark(query: str) -> str:
    """A query written with %s placeholders in DuckDB's ? style; a %s inside a quoted name or
    a string literal is left alone."""
    return _QUOTED_OR_PLACEHOLDER.sub(lambda m: m.group(1) or "?", query)


def quote_ident(name: str) -> str:
    """A name quoted as an SQL identifier, by SQLAlchemy's PostgreSQL rules (which DuckDB
    shares), for statements sent to the driver as they are (no %% doubling)."""
    from sqlalchemy.dialects import postgresql

    return postgresql.dialect(paramstyle="named").identifier_preparer.quote_identifier(name)


def quote_literal(s: str, backslash_escapes: bool = True) -> str:
    """A string literal for SQL that must carry a value in its text (trigger bodies, comments,
    hints). PostgreSQL (``backslash_escapes``): E'...' when it holds a backslash, read the same
    whatever standard_conforming_strings says. DuckDB takes backslashes as they are."""
    if backslash_escapes and "\\" in s:
        return "E'" + s.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + s.replace("'", "''") + "'"


def fetchall(conn, query: str, params=()) -> list:
    """All rows of a query written with %s placeholders, on a psycopg or a DuckDB connection
    (DuckDB takes ?; fetchall also leaves no half-read DuckDB result behind)."""
    if kind(conn) == "duckdb":
        return conn.execute(qmark(query), list(params)).fetchall()
    return conn.execute(query, params).fetchall()


@contextlib.contextmanager
def transaction(conn):
    """One transaction on a psycopg or DuckDB connection: committed when the block ends, rolled
    back when it raises (Ctrl-C included). On a psycopg connection that is not in autocommit
    mode and already inside a transaction this is only a savepoint: the caller commits."""
    if kind(conn) == "pg":
        with conn.transaction():
            yield conn
        return
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def execute(conn, query: str, params=()) -> None:
    """Runs a statement written with %s placeholders on either engine, discarding its result."""
    fetch = kind(conn) == "duckdb"
    cur = conn.execute(qmark(query) if fetch else query, list(params) if fetch else params)
    if fetch and cur.description is not None:
        cur.fetchall()


def pg_ident(*names):
    """psycopg.sql.Identifier(*names) for a statement executed *with* parameters (even ``()``):
    psycopg does not escape a ``%`` inside an identifier, so ``"a%sb"`` would be read as a
    placeholder; here it is doubled, which psycopg turns back into one ``%``."""
    from psycopg import sql

    return sql.SQL(sql.Identifier(*names).as_string(None).replace("%", "%%"))


def bitpress_columns(conn, table: str) -> set:
    """The columns of bitpress.<table> in this database (later schema revisions add some)."""
    if kind(conn) == "pg":
        return {r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
            "AND NOT attisdropped", (f"bitpress.{table}",)).fetchall()}
    return {r[0] for r in conn.execute("SELECT column_name FROM duckdb_columns() WHERE database_name = "
                                       "current_database() AND schema_name = 'bitpress' AND table_name = ?",
                                       [table]).fetchall()}


def params_checksum(params: bytes) -> str:
    """What bitpress.codebooks.checksum and bitpress.ffn_layers.checksum hold (revision 0009):
    the SHA-256 of the parameters, in hex, as PostgreSQL's encode(sha256(params), 'hex')."""
    import hashlib

    return hashlib.sha256(bytes(params)).hexdigest()


def check_params(params, checksum, table: str, key: str, columns: set) -> bytes:
    """params read from bitpress.<table> row key, checked against its checksum when the table
    has one (revision 0009): a NULL is CorruptDataError, a mismatch MalformedCodebookError /
    MalformedLayerError (22P03, as a TT core whose data does not match its checksum)."""
    from . import errors

    params = bytes(errors.stored(params, f"bitpress.{table}", key, "params"))
    if "checksum" in columns:
        errors.stored(checksum, f"bitpress.{table}", key, "checksum")
        if params_checksum(params) != checksum:
            cls = errors.MalformedCodebookError if table == "codebooks" else errors.MalformedLayerError
            raise cls(f"{key}: its parameters do not match their stored checksum")
    return params


def quoted(conn, table: str, column: str | None = None):
    """(table, column) ready for SQL: psycopg.sql objects for PostgreSQL, quoted text for DuckDB."""
    parts = table.split(".")
    if kind(conn) == "pg":
        return pg_ident(*parts), None if column is None else pg_ident(column)
    return ".".join(quote_ident(p) for p in parts), None if column is None else quote_ident(column)


def duckdb_find_table(conn, parts) -> list | None:
    """The table DuckDB reads for a name split in ``parts`` (1 to 3 of them), as the parts of
    the qualified name bitpress records: [database,] schema, table, the database only when it is
    not the current one (a TEMP table: temp, main, t); None when there is none. Unqualified
    names are looked up as DuckDB does: temporary tables, then the search_path, then the current
    schema. Names match as DuckDB matches them, case-insensitively."""
    db, schema, path = conn.execute("SELECT current_database(), current_schema(), "
                                    "current_setting('search_path')").fetchall()[0]
    if len(parts) == 3:
        places = [tuple(parts[:2])]
    elif len(parts) == 2:
        places = [(db, parts[0]), (parts[0], "main")]
    else:
        entries = [e.strip().strip('"') for e in (path or "").split(",") if e.strip()]
        places = ([("temp", "main")] + [tuple(e.split(".", 1)) if "." in e else (db, e) for e in entries]
                  + [(db, schema), (db, "main")])
    for d, sch in places:
        found = conn.execute("SELECT database_name, schema_name, table_name FROM duckdb_tables() "
                             "WHERE lower(database_name) = lower(?) AND lower(schema_name) = lower(?) "
                             "AND lower(table_name) = lower(?)", [d, sch, parts[-1]]).fetchall()
        if found:
            d, sch, name = found[0]
            return ([d] if d != db else []) + [sch, name]
    return None


def check_matrix(x, what) -> np.ndarray:
    """x as a C-contiguous float32 matrix with at least one finite row and column."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise errors.InvalidParameterError(
            f"{what} must be a non-empty 2-D array (one vector per row), got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise errors.NonFiniteError(f"NaN or infinity in {what} (row {int(np.argmin(finite))})")
    return x


def _from_arrow(arr, what) -> np.ndarray:
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if len(arr) == 0:
        raise errors.InvalidParameterError(f"no vectors in {what}")
    if pa.types.is_fixed_size_list(arr.type):
        dim = arr.type.list_size
    elif pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        lengths = np.diff(arr.offsets.to_numpy())
        if len(set(lengths.tolist())) != 1:
            raise errors.DimensionMismatchError(
                f"{what} holds vectors of different lengths ({lengths.min()} to {lengths.max()})")
        dim = int(lengths[0])
    else:
        raise errors.InvalidParameterError(f"{what} is {arr.type}, not a list of numbers")
    if arr.flatten().null_count:
        raise errors.NullValueError(f"{what} holds vectors with NULL elements")
    return check_matrix(arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), dim), what)


def read_vectors(conn, table: str, column: str, sample: int | None = None, seed: int = 0,
                 progress=None) -> np.ndarray:
    """The non-NULL vectors of ``table.column`` as a float32 matrix.

    ``sample=None`` reads every row; ``sample=n`` reads about n rows chosen in SQL:
    PostgreSQL ``TABLESAMPLE BERNOULLI ... REPEATABLE (seed)`` sized for n (topped up in table
    order when it falls short), DuckDB ``USING SAMPLE reservoir(n ROWS) REPEATABLE (seed)``.
    """
    from .progress import bar

    what = f"{table}.{column}"
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, (int, np.integer))
                               or sample < 1):
        raise errors.InvalidParameterError(f"sample size must be a positive integer, got {sample!r}")
    t, c = quoted(conn, table, column)
    if kind(conn) == "duckdb":
        q = f"SELECT CAST({c} AS FLOAT[]) FROM (SELECT {c} FROM {t} WHERE {c} IS NOT NULL)"
        if sample is not None:
            q += f" USING SAMPLE reservoir({int(sample)} ROWS) REPEATABLE ({int(seed)})"
        with bar(total=None, desc=f"reading {what}", progress=progress):
            rel = conn.sql(q)
            table = rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()  # duckdb < 1.4
            return _from_arrow(table.column(0), what)

    from psycopg import sql

    total = conn.execute(sql.SQL("SELECT count({c}) FROM {t}").format(c=c, t=t), ()).fetchone()[0]
    want = total if sample is None else min(sample, total)
    plain = sql.SQL("SELECT {c}::real[] FROM {t} WHERE {c} IS NOT NULL LIMIT %s").format(c=c, t=t)
    if want == total:
        query, args = plain, (want,)
    else:
        query = sql.SQL("SELECT {c}::real[] FROM {t} TABLESAMPLE BERNOULLI (%s) REPEATABLE (%s) "
                        "WHERE {c} IS NOT NULL LIMIT %s").format(c=c, t=t)
        args = (min(100.0, 100.0 * sample * 1.25 / total), seed, want)
    rows = []
    with bar(total=want, desc=f"reading {what}", progress=progress) as pb:
        with conn.cursor(binary=True) as cur:
            cur.execute(query, args)
            while chunk := cur.fetchmany(4096):
                rows.extend(r[0] for r in chunk)
                pb.update(len(chunk))
        if len(rows) < want:  # the Bernoulli sample fell short: take the rows in table order
            with conn.cursor(binary=True) as cur:
                rows = [r[0] for r in cur.execute(plain, (want,)).fetchall()]
            pb.update(want - pb.n)
    if not rows:
        raise errors.InvalidParameterError(f"no vectors in {what}")
    if len({len(r) for r in rows}) != 1:
        raise errors.DimensionMismatchError(f"{what} holds vectors of different lengths")
    if any(v is None for r in rows for v in r):
        raise errors.NullValueError(f"{what} holds vectors with NULL elements")
    return check_matrix(np.asarray(rows, dtype=np.float32), what)
