"""bitpress's own tables (bitpress.codebooks, ...), created and upgraded by Alembic.

``upgrade(target)`` runs the migrations in ``migrations/`` (shipped in the package as
``bitpress/_migrations``) against a psycopg connection, a DuckDB connection, a SQLAlchemy
engine/connection or a URL. bitpress records its revision in ``bitpress.alembic_version``,
apart from the application's own Alembic history.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

try:
    from alembic.ddl.impl import DefaultImpl

    class DuckDBImpl(DefaultImpl):
        """Alembic operations on DuckDB (through duckdb_engine), which speaks PostgreSQL's DDL."""

        __dialect__ = "duckdb"
        transactional_ddl = True
except ImportError:  # pragma: no cover - alembic is a dependency
    pass


def migrations_dir() -> Path:
    for d in (HERE / "_migrations", HERE.parent.parent / "migrations"):
        if (d / "env.py").is_file():
            return d
    raise FileNotFoundError("bitpress migrations not found (neither bitpress/_migrations nor ./migrations)")


def _config(connection):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["connection"] = connection
    return cfg


@contextlib.contextmanager
def _sa_connection(target):
    """A SQLAlchemy connection to the same database as target (a new session for psycopg,
    a cursor of the same database for DuckDB)."""
    import sqlalchemy as sa

    engine = None
    if isinstance(target, sa.engine.Connection):
        yield target
        return
    if isinstance(target, sa.engine.Engine):
        engine = target
    elif isinstance(target, str):
        engine = sa.create_engine(target)
    elif _is_duckdb(target):
        from duckdb_engine import ConnectionWrapper

        engine = sa.create_engine("duckdb://", creator=lambda: ConnectionWrapper(target.cursor()),
                                  poolclass=sa.pool.NullPool)
    elif _is_psycopg(target):
        import psycopg

        info = target.info
        engine = sa.create_engine(
            "postgresql+psycopg://", poolclass=sa.pool.NullPool,
            creator=lambda: psycopg.connect(info.dsn, password=info.password))
    else:
        raise TypeError(f"cannot migrate a {type(target).__name__}: give a psycopg or DuckDB "
                        "connection, a SQLAlchemy engine or connection, or a URL")
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        if not isinstance(target, sa.engine.Engine):
            engine.dispose()


def _is_duckdb(obj) -> bool:
    return type(obj).__module__.split(".")[0] in ("duckdb", "_duckdb")


def _is_psycopg(obj) -> bool:
    return type(obj).__module__.split(".")[0] == "psycopg"


def upgrade(target, revision: str = "head", commit: bool = True) -> str | None:
    """Brings bitpress's tables up to ``revision``; returns the revision now current.
    ``commit=False`` leaves the work in the connection's transaction (``op.upgrade_bitpress_schema``
    inside a user's migration, whose transaction commits it)."""
    from alembic import command

    with _sa_connection(target) as conn:
        command.upgrade(_config(conn), revision)
        if commit:
            conn.commit()
    return current(target)


def downgrade(target, revision: str) -> str | None:
    from alembic import command

    with _sa_connection(target) as conn:
        command.downgrade(_config(conn), revision)
        conn.commit()
    return current(target)


def current(target) -> str | None:
    """bitpress's schema revision in that database (None before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    with _sa_connection(target) as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": "alembic_version",
                                                     "version_table_schema": "bitpress"})
        return ctx.get_current_revision()


def missing_table(table: str, error):
    """The error (an ``errors`` class) for a bitpress table that was never migrated (42P01)."""
    return error(f"table {table} does not exist; create it with `bitpress migrate` "
                 "or bitpress.schema.upgrade(conn)", "42P01")


def require(conn, revision: str, table: str, error) -> None:
    """Raises ``missing_table`` unless the database is migrated to ``revision`` or later
    (revisions are numbered, so their ids sort in order)."""
    cur = current(conn)
    if cur is None or cur < revision:
        raise missing_table(table, error)


def extension_schema(bind, minimum: tuple) -> str | None:
    """For a migration on PostgreSQL: the quoted schema of the bitpress extension (None when it
    is not installed, or in DuckDB); RuntimeError when its version is below ``minimum``."""
    import sqlalchemy as sa

    if bind.dialect.name != "postgresql":
        return None
    row = bind.execute(sa.text("SELECT e.extversion, n.nspname FROM pg_extension e "
                               "JOIN pg_namespace n ON n.oid = e.extnamespace "
                               "WHERE e.extname = 'bitpress'")).first()
    if row is None:
        return None
    if tuple(int(p) for p in row[0].split(".")) < minimum:
        raise RuntimeError(
            f"the bitpress extension is at {row[0]}; this schema revision needs "
            f"{'.'.join(map(str, minimum))} or later: run ALTER EXTENSION bitpress UPDATE first")
    return bind.dialect.identifier_preparer.quote_identifier(row[1])


def head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(migrations_dir())).get_current_head()
