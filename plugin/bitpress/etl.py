"""Filling a column of an existing table in batches: ``bitpress backfill`` (codes from a vector
column) and ``bitpress embed`` (embeddings from a text column).

Both walk the table in key order (keyset pagination on the primary key, never OFFSET) and
commit every batch in one transaction together with the job's row in ``bitpress.etl_jobs``
(migration 0005): after Ctrl-C, kill -9 or a crash, the committed batches are done and
recorded, the interrupted one is rolled back, and a rerun resumes after the last recorded key.
Every write is idempotent (a row is set only when its value differs, or is still NULL), so a
batch done twice changes nothing and no row is ever inserted or deleted.

While the application keeps writing, PostgreSQL's sync trigger (``op.add_code_column``, see
bitpress.ops) codes every row it inserts or updates; the backfill's own UPDATE re-reads a row
that changed under it (READ COMMITTED), so it never writes a stale code. DuckDB has no triggers
and one writer per file: run ``bitpress backfill`` again after new rows arrive (it then codes
only those, since the others are already right).

Table and column names are quoted (psycopg.sql.Identifier, or the same PostgreSQL quoting
rules for DuckDB); values are always parameters.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from . import errors, progress, tables
from .tables import execute, fetchall, kind, transaction

JOBS = "bitpress.etl_jobs"
CODE_COLUMNS = "bitpress.code_columns"


@dataclass
class Target:
    """A table of the user's database, with the names resolved and checked."""

    schema: str
    table: str
    key: str
    columns: dict  # name -> data type (as information_schema spells it)
    key_type: str = "bigint"  # the key's SQL type (from KEY_TYPES), for CAST(last key AS ...)

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


# key types a job can walk by and store exactly (as JSON) between runs; floats are not exact
KEY_TYPES = re.compile(r"(smallint|integer|bigint|hugeint|ubigint|uinteger|usmallint|utinyint|tinyint|"
                       r"text|character varying|varchar|uuid|date|timestamp( with(out)? time zone)?|"
                       r"(numeric|decimal)(\(\d+,\s*\d+\))?)", re.I)


def _locate(conn, table: str):
    """(schema, name) of a table: PostgreSQL resolves an unqualified name on search_path as
    any query would; DuckDB looks in its current schema."""
    if kind(conn) == "pg":
        from psycopg import sql

        rel = sql.Identifier(*table.split(".")).as_string(None)
        row = fetchall(conn, "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
                             "ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)", (rel,))
        if not row:
            raise errors.BitpressError(f'relation "{table}" does not exist', "42P01")
        return row[0]
    schema, _, name = table.rpartition(".")
    return (schema or fetchall(conn, "SELECT current_schema()")[0][0]), name


def _is_unique(conn, schema: str, name: str, column: str) -> bool:
    """Whether a unique index or constraint covers exactly this one column."""
    if kind(conn) == "pg":
        from psycopg import sql

        rel = sql.Identifier(schema, name).as_string(None)
        return bool(fetchall(conn, "SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                                   "AND a.attnum = i.indkey[0] WHERE i.indrelid = to_regclass(%s) AND i.indisunique "
                                   "AND i.indnkeyatts = 1 AND i.indpred IS NULL AND a.attname = %s", (rel, column)))
    return bool(fetchall(conn, "SELECT 1 FROM duckdb_constraints() WHERE schema_name = %s AND table_name = %s "
                               "AND constraint_type IN ('PRIMARY KEY', 'UNIQUE') "
                               "AND constraint_column_names = [%s]", (schema, name, column)))


def resolve(conn, table: str, needed=(), key: str | None = None) -> Target:
    """Checks that ``table`` ("name" or "schema.name") and the columns ``needed`` exist and
    finds its single-column primary key, or checks that ``key`` is unique and NOT NULL and
    of a type walked exactly (integers, numeric, text, uuid, date, timestamp): 42P01 / 42703 /
    22023 otherwise."""
    schema, name = _locate(conn, table)
    rows = fetchall(conn, "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                          "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position", (schema, name))
    cols = {r[0]: r[1] for r in rows}
    nullable = {r[0] for r in rows if r[2] == "YES"}
    if not cols:
        raise errors.BitpressError(f'relation "{schema}.{name}" does not exist', "42P01")
    for col in list(needed) + ([key] if key is not None else []):
        if col not in cols:
            raise errors.BitpressError(f'column "{col}" of relation "{schema}.{name}" does not exist', "42703")
    if key is None:
        pk = [r[0] for r in fetchall(
            conn, "SELECT k.column_name FROM information_schema.table_constraints c "
                  "JOIN information_schema.key_column_usage k ON k.constraint_name = c.constraint_name "
                  "AND k.table_schema = c.table_schema AND k.table_name = c.table_name "
                  "WHERE c.constraint_type = 'PRIMARY KEY' AND c.table_schema = %s AND c.table_name = %s "
                  "ORDER BY k.ordinal_position", (schema, name))]
        if len(pk) != 1:
            raise errors.InvalidParameterError(
                f"{schema}.{name} has {'a composite' if pk else 'no'} primary key: name a unique, "
                "NOT NULL column to walk the table by (--key)")
        key = pk[0]
    elif key in nullable or not _is_unique(conn, schema, name, key):
        raise errors.InvalidParameterError(
            f"{schema}.{name}.{key} cannot be walked by: the key must be NOT NULL and have a unique "
            "index or constraint of its own")
    key_type = cols[key]
    if not KEY_TYPES.fullmatch(key_type):
        raise errors.InvalidParameterError(
            f"{schema}.{name}.{key} is {key_type}: walk by an integer, numeric, text, uuid, date or "
            "timestamp key (--key)")
    return Target(schema, name, key, cols, key_type)


def _names(conn, target: Target, *columns):
    """Quoted table and columns as psycopg.sql objects (PostgreSQL) or text (DuckDB)."""
    if kind(conn) == "pg":
        return tuple(tables.pg_ident(*n) for n in [(target.schema, target.table)] + [(c,) for c in columns])
    return (f"{tables.quote_ident(target.schema)}.{tables.quote_ident(target.table)}",) + \
        tuple(tables.quote_ident(c) for c in columns)


def _sql(conn, template: str, **parts):
    """A statement with quoted names put in: ``{t}`` etc. are psycopg.sql parts or DuckDB text."""
    if kind(conn) == "pg":
        from psycopg import sql

        return sql.SQL(template).format(**parts)
    return template.format(**parts)


def _changed(conn, query, params) -> int:
    """Runs an UPDATE and returns how many rows it changed, on either engine."""
    if kind(conn) == "duckdb":
        return int(conn.execute(tables.qmark(query), list(params)).fetchone()[0])
    return conn.execute(query, params).rowcount


def _check_autocommit(conn) -> None:
    if kind(conn) == "pg" and not conn.autocommit:
        raise errors.InvalidParameterError(
            "bitpress.etl needs a psycopg connection in autocommit mode (psycopg.connect(..., "
            "autocommit=True)): each batch commits on its own, and in a transaction nothing would")


def _json_key(key):
    """A key as it is stored in bitpress.etl_jobs (JSON): ints stay ints, the other KEY_TYPES
    (text, numeric, uuid, dates) become their text form, cast back in SQL by ``_after``."""
    if key is None or isinstance(key, (int, str)):
        return key
    return str(key)


class Job:
    """The progress row of one resumable job in bitpress.etl_jobs."""

    def __init__(self, conn, job: str, job_kind: str, key: str, settings: dict, restart: bool):
        from . import schema

        _check_autocommit(conn)
        schema.require(conn, "0005_code_columns", JOBS, errors.BitpressError)
        self.conn, self.job = conn, job
        text = json.dumps(settings, sort_keys=True)
        row = fetchall(conn, f"SELECT key_column, last_key, settings, finished_at IS NOT NULL, rows_seen "
                             f"FROM {JOBS} WHERE job = %s", (job,))
        resume = bool(row) and not restart and not row[0][3]
        if resume and (row[0][0] != key or row[0][2] != text):
            raise errors.InvalidParameterError(
                f"job {job!r} was started with other settings ({row[0][2]}, key {row[0][0]}); "
                "rerun with those, or with --restart to start again from the first row")
        self.last_key = json.loads(row[0][1]) if resume and row[0][1] is not None else None
        self.resumed_rows = row[0][4] if resume else 0
        with transaction(conn):
            if not row:
                execute(conn, f"INSERT INTO {JOBS} (job, kind, key_column, settings) VALUES (%s, %s, %s, %s)",
                        (job, job_kind, key, text))
            elif not resume:
                execute(conn, f"UPDATE {JOBS} SET key_column = %s, settings = %s, last_key = NULL, "
                              "rows_seen = 0, rows_changed = 0, started_at = CURRENT_TIMESTAMP, "
                              "updated_at = NULL, finished_at = NULL WHERE job = %s", (key, text, job))

    def record(self, last_key, seen: int, changed: int) -> None:
        """Inside the batch's transaction: the batch up to ``last_key`` is done."""
        self.last_key = last_key = _json_key(last_key)
        execute(self.conn, f"UPDATE {JOBS} SET last_key = %s, rows_seen = rows_seen + %s, "
                           "rows_changed = rows_changed + %s, updated_at = CURRENT_TIMESTAMP WHERE job = %s",
                (json.dumps(last_key), seen, changed, self.job))

    def finish(self) -> tuple[int, int]:
        with transaction(self.conn):
            execute(self.conn, f"UPDATE {JOBS} SET finished_at = CURRENT_TIMESTAMP WHERE job = %s", (self.job,))
        return tuple(fetchall(self.conn, f"SELECT rows_seen, rows_changed FROM {JOBS} WHERE job = %s",
                              (self.job,))[0])


def _after(last_key, key_type: str):
    """(SQL condition, params) for rows after the last key done, or every row. The key comes
    back from JSON as a number or a string and is cast to the key's own type (from KEY_TYPES)."""
    if last_key is None:
        return "TRUE", ()
    return "{key} > CAST(%s AS " + key_type + ")", (last_key,)


def _remaining(conn, parts, last_key, key_type, extra="") -> int:
    """Rows still to walk over (the progress bar's total)."""
    cond, params = _after(last_key, key_type)
    return int(fetchall(conn, _sql(conn, "SELECT count(*) FROM {t} WHERE " + cond + extra, **parts), params)[0][0])


@dataclass
class Result:
    job: str
    rows_seen: int       # rows walked over in the whole job (resumed parts included)
    rows_changed: int    # rows whose value was written
    resumed_from: object  # the key the run started after (None: from the first row)
    seconds: float


def code_column(conn, target: Target, code_col: str):
    """The bitpress.code_columns row of a code column, or None."""
    from . import schema

    revision = schema.current(conn)  # one lookup: on psycopg it opens a session of its own
    if revision is None or revision < "0005_code_columns":
        return None
    rows = fetchall(conn, f"SELECT vector_column, codebook, version, bits, sync FROM {CODE_COLUMNS} "
                          "WHERE table_schema = %s AND table_name = %s AND code_column = %s",
                    (target.schema, target.table, code_col))
    return dict(zip(("vector_column", "codebook", "version", "bits", "sync"), rows[0])) if rows else None


def has_sync_trigger(conn, target: Target, code_col: str) -> bool:
    """Whether PostgreSQL has the sync trigger bitpress.ops creates for this code column."""
    if kind(conn) != "pg":
        return False
    from psycopg import sql

    from .ops import sync_function_name

    rel = sql.Identifier(target.schema, target.table).as_string(conn)
    return bool(fetchall(conn, "SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s "
                               "AND tgenabled <> 'D'", (rel, sync_function_name(target.table, code_col))))


def _latest_version(conn, codebook: str) -> int:
    from .codebooks import TABLE

    rows = fetchall(conn, f"SELECT max(version) FROM {TABLE} WHERE name = %s", (codebook,))
    if not rows or rows[0][0] is None:
        raise errors.UnknownCodebookError(f"codebook {codebook!r} does not exist; fit it first (`bitpress fit`)")
    return int(rows[0][0])


def backfill(conn, table: str, code_col: str, vector_col: str | None = None, codebook: str | None = None,
             version: int | None = None, key: str | None = None, batch_size: int = 2000,
             restart: bool = False, progress_bar=None, log=print, on_batch=None) -> Result:
    """Sets ``code_col = binarize(vector_col, codebook, version)`` on every row of ``table``.

    A code column added by ``op.add_code_column`` brings its vector column and pinned codebook
    version (arguments that disagree are refused); otherwise ``vector_col`` and ``codebook`` are
    needed and the codebook's latest version is pinned for the whole job. Only rows whose code
    differs are written. Resumes an interrupted job unless ``restart``. ``on_batch(last_key,
    rows, changed)`` is called after each batch is committed.
    """
    import time

    from .kernels import check_count

    batch_size = check_count("batch_size", batch_size)
    _check_autocommit(conn)
    target = resolve(conn, table, [code_col] + ([vector_col] if vector_col else []), key)
    reg = code_column(conn, target, code_col)
    if reg is not None:
        given = {"vector column": (vector_col, reg["vector_column"]), "codebook": (codebook, reg["codebook"]),
                 "version": (version, reg["version"])}
        for what, (arg, stored) in given.items():
            if arg is not None and arg != stored:
                raise errors.InvalidParameterError(
                    f"{target.name}.{code_col} is kept in sync with {what} {stored!r} "
                    f"(bitpress.code_columns), not {arg!r}")
        vector_col, codebook, version = reg["vector_column"], reg["codebook"], reg["version"]
        if vector_col not in target.columns:
            raise errors.BitpressError(f'column "{vector_col}" of relation "{target.name}" does not exist', "42703")
    elif vector_col is None or codebook is None:
        raise errors.InvalidParameterError(
            f"{target.name}.{code_col} was not added by op.add_code_column: give the vector "
            "column and the codebook (--vector-col, --codebook)")
    if version is None:
        version = _latest_version(conn, codebook)
    if kind(conn) == "pg" and not has_sync_trigger(conn, target, code_col):
        log(f"warning: {target.name}.{code_col} has no bitpress sync trigger: rows the application "
            "writes during or after this backfill may keep a stale or NULL code (see bitpress.ops)")

    job = Job(conn, f"backfill {target.name}.{code_col}", "backfill", target.key,
              {"vector_column": vector_col, "codebook": codebook, "version": int(version)}, restart)
    started_after = job.last_key
    names = _names(conn, target, target.key, code_col, vector_col)
    parts = dict(t=names[0], key=names[1], code=names[2], vec=names[3])
    code = "binarize({vec}, %s, %s)"
    if kind(conn) == "duckdb" and target.columns[code_col] == "BLOB":  # a column made before 0.5.0:
        code = f"code_bytes({code})"  # PostgreSQL's bytes, not DuckDB's own BIT -> BLOB cast
    t0 = time.perf_counter()
    bar = progress.bar(total=_remaining(conn, parts, job.last_key, target.key_type),
                       desc=f"backfill {target.table}", progress=progress_bar, unit="row")
    try:
        while True:
            cond, params = _after(job.last_key, target.key_type)
            with transaction(conn):
                # the batch's last key by ORDER BY, not max(): uuid has no max() in PostgreSQL 15
                top = fetchall(conn, _sql(conn, "SELECT k, count(*) OVER () FROM (SELECT {key} AS k FROM {t} WHERE "
                                                + cond + " ORDER BY {key} LIMIT %s) AS batch ORDER BY k DESC LIMIT 1",
                                          **parts), params + (batch_size,))
                if not top:
                    break
                hi, seen = _json_key(top[0][0]), int(top[0][1])
                if hi is None or hi == job.last_key:
                    raise errors.InvalidParameterError(
                        f"the walk by {target.key} does not advance past {hi!r}: is the key unique?")
                changed = _changed(conn, _sql(
                    conn, "UPDATE {t} SET {code} = " + code + " WHERE " + cond + " AND {key} <= %s AND "
                          "{code} IS DISTINCT FROM " + code, **parts),
                    (codebook, version) + params + (hi, codebook, version))
                job.record(hi, seen, changed)
            bar.update(seen)
            if on_batch is not None:
                on_batch(hi, seen, changed)
    finally:
        bar.close()
    seen, changed = job.finish()
    return Result(job.job, seen, changed, started_after, time.perf_counter() - t0)


def _vector_text(v) -> str:
    return "[" + ",".join(map(repr, v.tolist())) + "]"


def embed(conn, table: str, text_col: str, vector_col: str, embedder=None, key: str | None = None,
          batch_size: int = 256, overwrite: bool = False, restart: bool = False,
          progress_bar=None, on_batch=None, read_ahead: int = 8) -> Result:
    """Sets ``vector_col`` to the embedding of ``text_col`` (an ``bitpress.embed.Embedder``,
    by default paraphrase-MiniLM-L3-v2) on every row whose vector is NULL (every row with
    ``overwrite``). Rows whose text is NULL are left alone. Resumes unless ``restart``.

    ``read_ahead`` batches are read and embedded together (sorted by length, texts of one
    model batch are padded less: 1.7x faster than batches of 256 on PyPI summaries) and then
    committed one ``batch_size`` batch at a time; an interruption loses at most that window's
    embedding work, never a committed row."""
    import time

    from .embed import Embedder
    from .kernels import check_count

    batch_size, read_ahead = check_count("batch_size", batch_size), check_count("read_ahead", read_ahead)
    _check_autocommit(conn)
    target = resolve(conn, table, [text_col, vector_col], key)
    embedder = embedder or Embedder()
    _check_dims(conn, target, vector_col, embedder.dim)
    from .embed import file_sha256

    settings = {"text_column": text_col, "vector_column": vector_col, "overwrite": bool(overwrite),
                "model_sha256": file_sha256(embedder.model_path), "model": embedder.model_path.name}
    job = Job(conn, f"embed {target.name}.{vector_col}", "embed", target.key, settings, restart)
    started_after = job.last_key
    names = _names(conn, target, target.key, text_col, vector_col)
    parts = dict(t=names[0], key=names[1], text=names[2], vec=names[3])
    todo = "" if overwrite else " AND {vec} IS NULL"
    t0 = time.perf_counter()
    bar = progress.bar(total=_remaining(conn, parts, job.last_key, target.key_type, todo),
                       desc=f"embed {target.table}", progress=progress_bar, unit="row")
    try:
        while True:
            cond, params = _after(job.last_key, target.key_type)
            rows = fetchall(conn, _sql(conn, "SELECT {key}, {text} FROM {t} WHERE " + cond + todo +
                                       " ORDER BY {key} LIMIT %s", **parts), params + (batch_size * read_ahead,))
            if not rows:
                break
            # one encode call for the whole window (the embedder sorts it by length, so batches
            # carry little padding), then written and committed batch by batch in key order
            texts = [t for _, t in rows if t is not None]
            encoded = iter(embedder.encode(texts) if texts else [])
            for start in range(0, len(rows), batch_size):
                part = rows[start:start + batch_size]
                keys = [k for k, t in part if t is not None]
                vectors = [next(encoded) for _ in keys]
                texts_of = [t for _, t in part if t is not None]
                with transaction(conn):
                    changed = _write_vectors(conn, parts, keys, texts_of, vectors, overwrite)
                    job.record(part[-1][0], len(part), changed)
                bar.update(len(part))
                if on_batch is not None:
                    on_batch(part[-1][0], len(part), changed)
    finally:
        bar.close()
    seen, changed = job.finish()
    return Result(job.job, seen, changed, started_after, time.perf_counter() - t0)


def _check_dims(conn, target: Target, column: str, dim: int) -> None:
    if kind(conn) == "pg":
        from psycopg import sql

        rel = sql.Identifier(target.schema, target.table).as_string(conn)
        row = fetchall(conn, "SELECT a.atttypmod, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                             "WHERE a.attrelid = to_regclass(%s) AND a.attname = %s", (rel, column))
        declared = row[0][0] if row and row[0][1] == "vector" and row[0][0] > 0 else None
    else:
        import re

        m = re.fullmatch(r"FLOAT\[(\d+)\]", target.columns[column])
        declared = int(m.group(1)) if m else None
    if declared is not None and declared != dim:
        raise errors.DimensionMismatchError(
            f"the model makes {dim}-d vectors but {target.name}.{column} holds {declared}")


def _write_vectors(conn, parts, keys, texts, vectors, overwrite: bool) -> int:
    """Writes each row's vector only if its text is still the one embedded (the application
    may have changed it meanwhile: the rerun then embeds the new text)."""
    if not keys:
        return 0
    only_null = "" if overwrite else " AND {vec} IS NULL"
    if kind(conn) == "pg":
        q = _sql(conn, "UPDATE {t} SET {vec} = CAST(%s AS vector) WHERE {key} = %s AND {text} = %s" + only_null,
                 **parts)
        with conn.cursor() as cur:
            cur.executemany(q, [(_vector_text(v), k, t) for k, t, v in zip(keys, texts, vectors)], returning=False)
            return cur.rowcount
    q = _sql(conn, "UPDATE {t} SET {vec} = src.v FROM (SELECT unnest(?) AS k, unnest(?) AS txt, unnest(?) AS v) "
                   "AS src WHERE {t}.{key} = src.k AND {t}.{text} = src.txt" + only_null, **parts)
    return int(conn.execute(q, [list(keys), list(texts), [v.tolist() for v in vectors]]).fetchone()[0])
