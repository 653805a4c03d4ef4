"""bitpress.codebooks: fitted codebooks, one row per (name, version).

Revision ID: 0001_codebooks
Revises:
Create Date: 2026-11-23

The same table in PostgreSQL and DuckDB. ``params`` is the codebook in the stored form the C
core reads (plugin/bitpress/codebook.py); ``options`` is JSON text saying how it was fitted.
Versions are never rewritten: refitting a name adds version + 1, so codes made with an older
version can still be matched with it.
"""
import sqlalchemy as sa
from alembic import op

revision = "0001_codebooks"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "codebooks",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("dims", sa.Integer, nullable=False),
        sa.Column("bits", sa.Integer, nullable=False),
        sa.Column("params", sa.LargeBinary, nullable=False),
        sa.Column("options", sa.Text, nullable=False, server_default="{}"),
        sa.Column("sample_size", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("CURRENT_TIMESTAMP")),
        sa.PrimaryKeyConstraint("name", "version", name="codebooks_pkey"),
        sa.CheckConstraint("version > 0", name="codebooks_version_check"),
        sa.CheckConstraint("dims > 0 AND bits > 0", name="codebooks_shape_check"),
        schema="bitpress",
    )


def downgrade():
    op.drop_table("codebooks", schema="bitpress")
