"""Alembic operations for your own migrations: the extension, and code columns kept in sync.

::

    from alembic import op
    import bitpress.ops  # noqa: F401  registers the operations below on ``op``

    def upgrade():
        op.create_bitpress_extension()                 # CREATE EXTENSION vector, bitpress
        op.upgrade_bitpress_schema()                   # bitpress's own tables (bitpress db upgrade)
        op.add_code_column("documents", "embedding", "code", codebook="docs_v1")

    def downgrade():
        op.drop_code_column("documents", "code")
        op.drop_bitpress_extension()

The ``bitpress_ivf`` index (PostgreSQL; docs/INDEX.md)::

    op.create_ivf_index("documents_embedding_ivf", "documents", "embedding", metric="cosine", lists=224)
    op.drop_ivf_index("documents_embedding_ivf")   # the reverse of the line above

``add_code_column`` adds ``code bit(n)`` (n = the codebook's bits), pins the codebook's latest
version (or ``version=``), and in PostgreSQL creates a row trigger that sets
``code = binarize(embedding, 'docs_v1', version)`` on every insert and on every update of either
column, so the code is always derived from the vector. Existing rows keep a NULL code until
``bitpress backfill`` fills them in batches (a single UPDATE in a migration would lock the
whole table). DuckDB has no triggers: there the column is a ``BIT`` (binarize's type, which
carries the length as ``bit(n)`` does; BLOB columns made before 0.5.0 keep working, filled
through ``code_bytes``) and ``bitpress backfill`` also codes the rows written since. Every column is recorded in ``bitpress.code_columns`` (migration
0005), which ``bitpress backfill`` reads, and commented (``COMMENT ON COLUMN``) for people
reading the schema.

Identifiers are quoted by SQLAlchemy's PostgreSQL rules (``tables.quote_ident``, shared by
DuckDB) and statements go to the driver as they are (no bind-parameter parsing of ``:`` or
``%``), so any table or column name is safe.
"""
from __future__ import annotations

import hashlib
import re

import sqlalchemy as sa
from alembic.operations import MigrateOperation, Operations

from . import errors, schema  # noqa: F401  (schema: Alembic's DuckDB implementation)
from .tables import quote_ident, quote_literal

__all__ = ["CreateBitpressExtensionOp", "DropBitpressExtensionOp", "AddCodeColumnOp",
           "DropCodeColumnOp", "UpgradeBitpressSchemaOp", "CreateIvfIndexOp", "DropIvfIndexOp", "sync_function_name", "COMMENT_PREFIX"]

COMMENT_PREFIX = "bitpress code"
REGISTRY = "bitpress.code_columns"


def sync_function_name(table: str, code_column: str) -> str:
    """The name of the trigger and of its function for a code column: readable, made unique by
    a hash of the exact (table, column) pair, and at most 63 bytes (PostgreSQL's limit)."""
    digest = hashlib.sha256(f"{table}\0{code_column}".encode()).hexdigest()[:10]
    head = f"bitpress_sync_{table}_{code_column}".encode()[:52].decode(errors="ignore")
    return f"{head}_{digest}"


def _run(bind, statement: str) -> None:
    # straight to the driver: no bind-parameter parsing of ':' or '%' inside quoted names
    bind.execution_options(no_parameters=True).exec_driver_sql(statement)


def _schema_of(bind, schema, table: str):
    """The schema of ``table``: as given, or, in PostgreSQL, where search_path finds the table
    (as any query would; 42P01 when it does not exist), in DuckDB the current schema."""
    if schema is not None:
        return schema
    if bind.dialect.name == "postgresql":
        found = bind.execute(sa.text("SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                     "WHERE c.oid = to_regclass(:rel)"), {"rel": quote_ident(table)}).scalar()
        if found is None:
            raise errors.BitpressError(f'relation "{table}" does not exist', "42P01")
        return found
    return bind.execute(sa.text("SELECT current_schema()")).scalar()


def _has_table(bind, schema: str, table: str) -> bool:
    # information_schema, not SQLAlchemy's inspector: duckdb_engine cannot reflect columns
    return bind.execute(sa.text("SELECT count(*) FROM information_schema.tables WHERE table_schema = :s "
                                "AND table_name = :t"), {"s": schema, "t": table}).scalar() > 0


def _has_registry(bind) -> bool:
    return _has_table(bind, "bitpress", "code_columns")


def _codebook(bind, name: str, version: int | None):
    if not _has_table(bind, "bitpress", "codebooks"):
        raise errors.UnknownCodebookError(
            f"codebook {name!r} does not exist: bitpress.codebooks was never created "
            "(run `bitpress migrate`, then `bitpress fit`)")
    q = "SELECT version, dims, bits FROM bitpress.codebooks WHERE name = :name"
    params = {"name": name}
    if version is not None:
        q += " AND version = :version"
        params["version"] = int(version)
    row = bind.execute(sa.text(q + " ORDER BY version DESC LIMIT 1"), params).first()
    if row is None:
        what = f"codebook {name!r}" + ("" if version is None else f" version {version}")
        raise errors.UnknownCodebookError(f"{what} does not exist; fit it first (`bitpress fit`)")
    return row


def _vector_dims(bind, schema: str, table: str, column: str):
    """The declared dimension of the vector column (None when undeclared), raising 42703 when
    the column does not exist and 42804 when binarize cannot read its type (the trigger would
    then fail on every write, so the migration must fail instead)."""
    dtype = bind.execute(sa.text("SELECT data_type FROM information_schema.columns WHERE table_schema = :s "
                                 "AND table_name = :t AND column_name = :c"),
                         {"s": schema, "t": table, "c": column}).scalar()
    if dtype is None:
        raise errors.BitpressError(f'column "{column}" of table "{schema}.{table}" does not exist', "42703")
    if bind.dialect.name != "postgresql":
        if not re.fullmatch(r"(FLOAT|DOUBLE|REAL|INTEGER|BIGINT|SMALLINT)\[\d*\]", dtype, re.I):
            raise errors.BitpressError(f"{table}.{column} is {dtype}: a code needs a FLOAT[] column", "42804")
        m = re.search(r"\[(\d+)\]", dtype)
        return int(m.group(1)) if m else None
    typmod, typname = bind.execute(sa.text(
        "SELECT a.atttypmod, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = CAST(CAST(:rel AS text) AS regclass) AND a.attname = :col"),
        {"rel": _qualified(bind, schema, table), "col": column}).first()
    if typname not in ("vector", "_float4", "_int4"):
        raise errors.BitpressError(f"{table}.{column} is of type {typname}: binarize reads vector and "
                                   "real[] columns", "42804")
    return typmod if typname == "vector" and typmod > 0 else None


def _qualified(bind, schema, name):
    return f"{quote_ident(schema)}.{quote_ident(name)}"


@Operations.register_operation("create_bitpress_extension")
class CreateBitpressExtensionOp(MigrateOperation):
    """``CREATE EXTENSION IF NOT EXISTS vector`` (unless ``vector=False``) and ``bitpress``.
    On DuckDB it does nothing: bitpress's functions are registered on each connection."""

    def __init__(self, schema: str | None = None, vector: bool = True):
        self.schema, self.vector = schema, vector

    @classmethod
    def create_bitpress_extension(cls, operations, schema: str | None = None, vector: bool = True):
        return operations.invoke(cls(schema, vector))

    def reverse(self):
        return DropBitpressExtensionOp(self.schema, self.vector)


@Operations.register_operation("drop_bitpress_extension")
class DropBitpressExtensionOp(MigrateOperation):
    """``DROP EXTENSION IF EXISTS bitpress`` (pgvector stays: other things may use it). Refused
    while code columns with sync triggers exist, since their triggers call bitpress."""

    def __init__(self, schema: str | None = None, vector: bool = True):
        self.schema, self.vector = schema, vector

    @classmethod
    def drop_bitpress_extension(cls, operations, schema: str | None = None, vector: bool = True):
        return operations.invoke(cls(schema, vector))

    def reverse(self):
        return CreateBitpressExtensionOp(self.schema, self.vector)


@Operations.implementation_for(CreateBitpressExtensionOp)
def _create_extension(operations, operation):
    bind = operations.get_bind()
    if bind.dialect.name != "postgresql":
        return
    where = "" if operation.schema is None else f" SCHEMA {quote_ident(operation.schema)}"
    if operation.vector:
        _run(bind, f"CREATE EXTENSION IF NOT EXISTS vector{where}")
    _run(bind, f"CREATE EXTENSION IF NOT EXISTS bitpress{where}")


@Operations.implementation_for(DropBitpressExtensionOp)
def _drop_extension(operations, operation):
    bind = operations.get_bind()
    if bind.dialect.name != "postgresql":
        return
    if _has_registry(bind):
        left = bind.execute(sa.text(
            f"SELECT table_schema, table_name, code_column FROM {REGISTRY} WHERE sync = 'trigger' "
            "ORDER BY 1, 2, 3")).all()
        if left:
            names = ", ".join(f"{s}.{t}.{c}" for s, t, c in left)
            raise errors.BitpressError(
                f"cannot drop extension bitpress: the sync triggers of {names} call it; "
                "drop those code columns first (op.drop_code_column)", "2BP01")
    _run(bind, "DROP EXTENSION IF EXISTS bitpress")


@Operations.register_operation("add_code_column")
class AddCodeColumnOp(MigrateOperation):
    """Adds ``code_column`` holding the code of ``vector_column`` under ``codebook`` (its latest
    version, or ``version``), kept in sync by a trigger in PostgreSQL."""

    def __init__(self, table: str, vector_column: str, code_column: str, codebook: str,
                 version: int | None = None, schema: str | None = None):
        self.table, self.vector_column, self.code_column = table, vector_column, code_column
        self.codebook, self.version, self.schema = codebook, version, schema

    @classmethod
    def add_code_column(cls, operations, table: str, vector_column: str, code_column: str, *,
                        codebook: str, version: int | None = None, schema: str | None = None):
        return operations.invoke(cls(table, vector_column, code_column, codebook, version, schema))

    def reverse(self):
        return DropCodeColumnOp(self.table, self.code_column, self.schema, _reverse=self)


@Operations.register_operation("drop_code_column")
class DropCodeColumnOp(MigrateOperation):
    """Drops a code column, its sync trigger and function, and its ``bitpress.code_columns`` row."""

    def __init__(self, table: str, code_column: str, schema: str | None = None, _reverse=None):
        self.table, self.code_column, self.schema = table, code_column, schema
        self._reverse = _reverse

    @classmethod
    def drop_code_column(cls, operations, table: str, code_column: str, *, schema: str | None = None):
        return operations.invoke(cls(table, code_column, schema))

    def reverse(self):
        if self._reverse is None:
            raise ValueError("a dropped code column can be re-added only by op.add_code_column "
                             "with its vector column and codebook")
        return self._reverse


@Operations.implementation_for(AddCodeColumnOp)
def _add_code_column(operations, operation):
    bind = operations.get_bind()
    pg = bind.dialect.name == "postgresql"
    if not _has_registry(bind):
        raise errors.BitpressError(
            f"table {REGISTRY} does not exist; run `bitpress migrate` (bitpress.schema.upgrade) "
            "before adding code columns", "42P01")
    version, dims, bits = _codebook(bind, operation.codebook, operation.version)
    schema = _schema_of(bind, operation.schema, operation.table)
    declared = _vector_dims(bind, schema, operation.table, operation.vector_column)
    if declared is not None and declared != dims:
        raise errors.DimensionMismatchError(
            f"codebook {operation.codebook!r} version {version} codes {dims}-d vectors, but "
            f"{operation.table}.{operation.vector_column} is vector({declared})")

    table, code, vec = _qualified(bind, schema, operation.table), quote_ident(operation.code_column), quote_ident(operation.vector_column)
    _run(bind, f"ALTER TABLE {table} ADD COLUMN {code} {f'bit({bits})' if pg else 'BIT'}")
    comment = (f"{COMMENT_PREFIX} of {operation.vector_column}: codebook {operation.codebook} "
               f"version {version}, {bits} bits")
    _run(bind, f"COMMENT ON COLUMN {table}.{code} IS {quote_literal(comment, backslash_escapes=pg)}")
    if pg:
        ext = bind.execute(sa.text("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
                                   "ON n.oid = e.extnamespace WHERE e.extname = 'bitpress'")).scalar()
        if ext is None:
            raise errors.BitpressError("extension bitpress is not created in this database "
                                       "(op.create_bitpress_extension())", "42704")
        name = sync_function_name(operation.table, operation.code_column)
        func = _qualified(bind, schema, name)
        body = (f"BEGIN NEW.{code} := {quote_ident(ext)}.binarize(NEW.{vec}, {quote_literal(operation.codebook)}, "
                f"{int(version)}); RETURN NEW; END")
        _run(bind, f"CREATE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS {quote_literal(body)}")
        _run(bind, f"COMMENT ON FUNCTION {func}() IS "
                   f"{quote_literal(f'keeps {operation.table}.{operation.code_column} in sync (bitpress)')}")
        _run(bind, f"CREATE TRIGGER {quote_ident(name)} BEFORE INSERT OR UPDATE OF {vec}, {code} ON {table} "
                   f"FOR EACH ROW EXECUTE FUNCTION {func}()")
    bind.execute(sa.text(
        f"INSERT INTO {REGISTRY} (table_schema, table_name, code_column, vector_column, codebook, "
        "version, bits, sync) VALUES (:s, :t, :c, :v, :cb, :ver, :bits, :sync)"),
        {"s": schema, "t": operation.table, "c": operation.code_column, "v": operation.vector_column,
         "cb": operation.codebook, "ver": int(version), "bits": int(bits),
         "sync": "trigger" if pg else "backfill"})


@Operations.implementation_for(DropCodeColumnOp)
def _drop_code_column(operations, operation):
    bind = operations.get_bind()
    schema = _schema_of(bind, operation.schema, operation.table)
    known = _has_registry(bind) and bind.execute(sa.text(
        f"SELECT count(*) FROM {REGISTRY} WHERE table_schema = :s AND table_name = :t AND code_column = :c"),
        {"s": schema, "t": operation.table, "c": operation.code_column}).scalar()
    if not known:  # never drop a column bitpress did not add (the vectors, say)
        raise errors.BitpressError(f"{schema}.{operation.table}.{operation.code_column} is not a code column "
                                   f"added by op.add_code_column (no row in {REGISTRY})", "42704")
    table = _qualified(bind, schema, operation.table)
    if bind.dialect.name == "postgresql":
        name = sync_function_name(operation.table, operation.code_column)
        _run(bind, f"DROP TRIGGER IF EXISTS {quote_ident(name)} ON {table}")
        _run(bind, f"DROP FUNCTION IF EXISTS {_qualified(bind, schema, name)}()")
    _run(bind, f"ALTER TABLE {table} DROP COLUMN {quote_ident(operation.code_column)}")
    bind.execute(sa.text(f"DELETE FROM {REGISTRY} WHERE table_schema = :s AND table_name = :t "
                         "AND code_column = :c"), {"s": schema, "t": operation.table, "c": operation.code_column})


@Operations.register_operation("upgrade_bitpress_schema")
class UpgradeBitpressSchemaOp(MigrateOperation):
    """Runs bitpress's own migrations (``bitpress db upgrade``) inside your migration, in its
    transaction: a failure later in your migration rolls them back too (PostgreSQL). No
    ``reverse()``: downgrading would drop fitted codebooks, so it is never done implicitly."""

    def __init__(self, revision: str = "head"):
        self.revision = revision

    @classmethod
    def upgrade_bitpress_schema(cls, operations, revision: str = "head"):
        return operations.invoke(cls(revision))


@Operations.implementation_for(UpgradeBitpressSchemaOp)
def _upgrade_schema(operations, operation):
    import alembic.context
    import alembic.op

    # bitpress's Alembic run installs, then removes, its own ``op`` and ``context`` proxies:
    # put back those of the user's migration that is running this operation
    saved = [getattr(m, "_proxy", None) for m in (alembic.op, alembic.context)]
    try:
        schema.upgrade(operations.get_bind(), operation.revision, commit=False)
    finally:
        for proxy in saved:
            if proxy is not None:
                proxy._install_proxy()


@Operations.register_operation("create_ivf_index")
class CreateIvfIndexOp(MigrateOperation):
    """``CREATE INDEX name ON [schema.]table USING bitpress_ivf (column bitpress_<metric>_ops)
    WITH (lists, bits)`` (``bitpress.index.create``: a halfvec column gets the halfvec classes;
    42P01 / 42703 / 42804 for a missing table, a missing column, a column of another type).
    It runs in the migration's transaction (not CONCURRENTLY): the table is locked for writes
    while the index builds."""

    def __init__(self, name: str, table: str, column: str, metric: str = "cosine", lists: int | None = None,
                 bits: int = 1, schema: str | None = None):
        self.name, self.table, self.column, self.schema = name, table, column, schema
        self.metric, self.lists, self.bits = metric, lists, bits

    @classmethod
    def create_ivf_index(cls, operations, name: str, table: str, column: str, *, metric: str = "cosine",
                         lists: int | None = None, bits: int = 1, schema: str | None = None):
        return operations.invoke(cls(name, table, column, metric, lists, bits, schema))

    def reverse(self):
        return DropIvfIndexOp(self.name, self.schema, _reverse=self)


@Operations.register_operation("drop_ivf_index")
class DropIvfIndexOp(MigrateOperation):
    """``DROP INDEX [schema.]name`` of a bitpress_ivf index (any other index is refused, 42809).
    Its ``reverse()`` makes the index again when the drop knows its definition: it is the
    reverse of ``create_ivf_index``, or was given ``table`` and ``column`` (and the options)."""

    def __init__(self, name: str, schema: str | None = None, table: str | None = None, column: str | None = None,
                 metric: str = "cosine", lists: int | None = None, bits: int = 1, _reverse=None):
        self.name, self.schema = name, schema
        self._reverse = _reverse
        if _reverse is None and table is not None and column is not None:
            self._reverse = CreateIvfIndexOp(name, table, column, metric, lists, bits, schema)

    @classmethod
    def drop_ivf_index(cls, operations, name: str, *, schema: str | None = None, table: str | None = None,
                       column: str | None = None, metric: str = "cosine", lists: int | None = None, bits: int = 1):
        return operations.invoke(cls(name, schema, table, column, metric, lists, bits))

    def reverse(self):
        if self._reverse is None:
            raise ValueError("a dropped bitpress_ivf index can be made again only with its table and column: "
                             "op.drop_ivf_index(name, table=..., column=..., metric=..., lists=..., bits=...)")
        return self._reverse


def _psycopg(bind):
    if bind.dialect.name != "postgresql":
        raise errors.BitpressError("bitpress_ivf is a PostgreSQL index access method", "0A000")
    return bind.connection.driver_connection


@Operations.implementation_for(CreateIvfIndexOp)
def _create_ivf_index(operations, operation):
    from . import index

    bind = operations.get_bind()
    table = operation.table if operation.schema is None else (operation.schema, operation.table)
    index.create(_psycopg(bind), table, operation.column, metric=operation.metric, lists=operation.lists,
                 bits=operation.bits, name=operation.name)


@Operations.implementation_for(DropIvfIndexOp)
def _drop_ivf_index(operations, operation):
    from . import index

    bind = operations.get_bind()
    name = operation.name if operation.schema is None else (operation.schema, operation.name)
    conn = _psycopg(bind)
    oid = index._table(conn, name)  # 42P01 when there is no such index
    if oid[3] not in ("i", "I"):  # a table's name: never drop all of its indexes from a migration
        raise errors.BitpressError(f'"{oid[1]}.{oid[2]}" is not an index', "42809")
    index.drop(conn, name)


def operations(connection) -> Operations:
    """Alembic ``Operations`` on a SQLAlchemy connection, to use these outside a migration:
    ``bitpress.ops.operations(conn).add_code_column(...)``."""
    from alembic.runtime.migration import MigrationContext

    return Operations(MigrationContext.configure(connection))
