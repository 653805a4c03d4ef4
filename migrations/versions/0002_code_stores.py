"""Packed code stores: codes of a table's column kept as segments of many codes per row.

Revision ID: 0002_code_stores
Revises: 0001_codebooks
Create Date: 2026-11-23

bitpress.code_stores   one row per store: which table, id column and code column it follows.
bitpress.code_segments the packed codes: per segment, n codes back to back (``codes``) and
                       their ids big-endian, 4 bytes each when they all fit in int4, else 8
                       (``ids``); uncompressed (STORAGE EXTERNAL)
                       in PostgreSQL, so a scan reads the bytes as they are.
bitpress.code_delta    rows changed since the segments were written (id, new code; NULL code =
                       deleted), written by the source table's triggers; the latest seq per id
                       wins over the segments. Rebuilding the store folds it back in.
"""
import sqlalchemy as sa
from alembic import op

revision = "0002_code_stores"
down_revision = "0001_codebooks"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "code_stores",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("id_column", sa.Text, nullable=False),
        sa.Column("code_column", sa.Text, nullable=False),
        sa.Column("bits", sa.Integer, nullable=False),
        sa.Column("segment_codes", sa.Integer, nullable=False),
        # DuckDB (no triggers): count and hash of the (id, code) pairs when the segments were
        # written, so stores.check() can tell a stale store from a current one
        sa.Column("fingerprint", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("CURRENT_TIMESTAMP")),
        sa.CheckConstraint("bits > 0 AND segment_codes > 0", name="code_stores_shape_check"),
        schema="bitpress",
    )
    op.create_table(
        "code_segments",
        sa.Column("store", sa.Text, nullable=False),
        sa.Column("segment", sa.Integer, nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("ids", sa.LargeBinary, nullable=False),
        sa.Column("codes", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("store", "segment", name="code_segments_pkey"),
        schema="bitpress",
    )
    op.execute(sa.schema.CreateSequence(sa.Sequence("code_delta_seq", schema="bitpress")))
    op.create_table(
        "code_delta",
        sa.Column("store", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False,
                  server_default=sa.text("nextval('bitpress.code_delta_seq')")),
        sa.Column("id", sa.BigInteger, nullable=False),
        sa.Column("code", sa.LargeBinary, nullable=True),
        sa.PrimaryKeyConstraint("store", "seq", name="code_delta_pkey"),
        schema="bitpress",
    )
    op.create_index("code_delta_store_id", "code_delta", ["store", "id"], schema="bitpress")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE bitpress.code_segments ALTER COLUMN codes SET STORAGE EXTERNAL, "
                   "ALTER COLUMN ids SET STORAGE EXTERNAL")
        # segment rows are small (their bytes live in TOAST): spread them over pages (fillfactor)
        # so that parallel workers can split them (bitpress_store_knn_parallel)
        op.execute("ALTER TABLE bitpress.code_segments SET (fillfactor = 10)")


def downgrade():
    op.drop_index("code_delta_store_id", table_name="code_delta", schema="bitpress")
    op.drop_table("code_delta", schema="bitpress")
    op.execute(sa.schema.DropSequence(sa.Sequence("code_delta_seq", schema="bitpress")))
    op.drop_table("code_segments", schema="bitpress")
    op.drop_table("code_stores", schema="bitpress")
