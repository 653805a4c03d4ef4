"""Alembic environment of bitpress's own schema (run through bitpress.schema.upgrade).

bitpress keeps its revision in bitpress.alembic_version, never in the application's own
alembic_version table, so it lives side by side with the user's migrations.
"""
from alembic import context

import bitpress.schema  # noqa: F401  registers Alembic's DuckDB implementation


VERSION_TABLE = "alembic_version"
VERSION_SCHEMA = "bitpress"


def run_migrations_online():
    connection = context.config.attributes["connection"]
    connection.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS bitpress")
    context.configure(connection=connection, version_table=VERSION_TABLE,
                      version_table_schema=VERSION_SCHEMA, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("bitpress migrations run online only: bitpress migrate --dsn ... | --duckdb ...")
run_migrations_online()
