"""Code columns kept in sync with a vector column, and the progress of ETL jobs.

Revision ID: 0005_code_columns
Revises: 0004_ffn_layers
Create Date: 2026-11-23

bitpress.code_columns  one row per code column added by ``op.add_code_column`` (bitpress.ops):
                       which vector column it codes, with which codebook version (pinned, so
                       the trigger, ``bitpress backfill`` and later refits never mix versions),
                       its length in bits, and how it is kept in sync ('trigger' in PostgreSQL,
                       'backfill' in DuckDB, which has no triggers).
bitpress.etl_jobs      one row per resumable job (``bitpress backfill``, ``bitpress embed``):
                       the last key done, committed in the same transaction as the rows of its
                       batch, so a rerun after a crash resumes exactly there.
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_code_columns"
down_revision = "0004_ffn_layers"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "code_columns",
        sa.Column("table_schema", sa.Text, nullable=False),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("code_column", sa.Text, nullable=False),
        sa.Column("vector_column", sa.Text, nullable=False),
        sa.Column("codebook", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("bits", sa.Integer, nullable=False),
        sa.Column("sync", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("CURRENT_TIMESTAMP")),
        sa.PrimaryKeyConstraint("table_schema", "table_name", "code_column", name="code_columns_pkey"),
        sa.CheckConstraint("sync IN ('trigger', 'backfill')", name="code_columns_sync_check"),
        schema="bitpress",
    )
    op.create_table(
        "etl_jobs",
        sa.Column("job", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("key_column", sa.Text, nullable=False),
        sa.Column("last_key", sa.Text, nullable=True),  # JSON of the last key done
        sa.Column("settings", sa.Text, nullable=False),  # JSON: what the job computes
        sa.Column("rows_seen", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rows_changed", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("CURRENT_TIMESTAMP")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        schema="bitpress",
    )


def downgrade():
    # sync triggers call binarize with a codebook: never take the tables from under them
    left = op.get_bind().execute(sa.text("SELECT table_schema || '.' || table_name || '.' || code_column "
                                         "FROM bitpress.code_columns WHERE sync = 'trigger'")).scalars().all()
    if left:
        raise RuntimeError(f"bitpress.code_columns lists sync triggers ({', '.join(left)}): drop those "
                           "code columns first (op.drop_code_column), then downgrade bitpress's schema")
    op.drop_table("etl_jobs", schema="bitpress")
    op.drop_table("code_columns", schema="bitpress")
