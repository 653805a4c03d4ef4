"""IVF + RaBitQ indexes of DuckDB tables (the DuckDB side of the ``bitpress_ivf`` index).

Revision ID: 0010_duckdb_ivf
Revises: 0009_params_checksums
Create Date: 2026-12-07

DuckDB only (PostgreSQL keeps its ``bitpress_ivf`` indexes in index pages: nothing changes there).

bitpress.ivf_indexes  one row per index: the table it follows (schema-qualified), its id and
                      vector columns, metric, lists, bits per dimension, rotation seed, dimensions,
                      rows indexed, and ``checksum`` (SHA-256 in hex of those parameters, as
                      bitpress.duckdb_ivf.params_checksum writes it).
bitpress.ivf_lists    one row per list: its ``centroid`` (rotated, float32 little-endian), and its
                      ``n`` rows packed: ``ids`` and ``rowids`` (int64 big-endian), ``codes``
                      (code_bytes each) and ``factors`` (five float32 little-endian each), with
                      ``checksum`` (SHA-256 in hex of the list number and those bytes).
"""
import sqlalchemy as sa
from alembic import op

revision = "0010_duckdb_ivf"
down_revision = "0009_params_checksums"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        return
    op.create_table(
        "ivf_indexes",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("id_column", sa.Text, nullable=False),
        sa.Column("vector_column", sa.Text, nullable=False),
        sa.Column("metric", sa.Text, nullable=False),
        sa.Column("lists", sa.Integer, nullable=False),
        sa.Column("bits", sa.Integer, nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("dims", sa.Integer, nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.Column("checksum", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("CURRENT_TIMESTAMP")),
        sa.CheckConstraint("metric IN ('cosine', 'l2', 'ip')", name="ivf_indexes_metric_check"),
        sa.CheckConstraint("lists > 0 AND bits BETWEEN 1 AND 4 AND dims > 0 AND n >= 0",
                           name="ivf_indexes_shape_check"),
        schema="bitpress",
    )
    op.create_table(
        "ivf_lists",
        sa.Column("index_name", sa.Text, nullable=False),
        sa.Column("list", sa.Integer, nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("centroid", sa.LargeBinary, nullable=False),
        sa.Column("ids", sa.LargeBinary, nullable=False),
        sa.Column("rowids", sa.LargeBinary, nullable=False),
        sa.Column("codes", sa.LargeBinary, nullable=False),
        sa.Column("factors", sa.LargeBinary, nullable=False),
        sa.Column("checksum", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("index_name", "list", name="ivf_lists_pkey"),
        schema="bitpress",
    )


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        return
    op.drop_table("ivf_lists", schema="bitpress")
    op.drop_table("ivf_indexes", schema="bitpress")
