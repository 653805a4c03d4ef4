"""Model weights as Tensor-Train cores.

Revision ID: 0003_tt
Revises: 0002_code_stores
Create Date: 2026-11-23

bitpress.tt_models   one row per stored model: where it came from, the settings it was
                     compressed with, and (for ONNX) the graph without its weights
                     (``skeleton``) so that the model can be rebuilt from the database alone.
bitpress.tt_tensors  one row per weight tensor: its readable name and graph name, original
                     shape, format ('tt' or 'dense'), row and column modes, ranks, the epsilon
                     asked, sizes and the relative error measured when it was written.
bitpress.tt_cores    the cores: float32 little-endian (r0, m, n, r1) arrays in C order, with the
                     SHA-256 of their bytes; uncompressed (STORAGE EXTERNAL) in PostgreSQL.
                     A dense tensor is one core (1, rows, cols, 1).
"""
import sqlalchemy as sa
from alembic import op

revision = "0003_tt"
down_revision = "0002_code_stores"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "tt_models",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("source", sa.Text, nullable=True),
        sa.Column("settings", sa.Text, nullable=False),  # JSON
        sa.Column("skeleton", sa.LargeBinary, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("CURRENT_TIMESTAMP")),
        schema="bitpress",
    )
    op.create_table(
        "tt_tensors",
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("tensor", sa.Text, nullable=False),
        sa.Column("onnx_name", sa.Text, nullable=True),
        sa.Column("shape", sa.ARRAY(sa.Integer), nullable=False),
        sa.Column("format", sa.Text, nullable=False),
        sa.Column("row_modes", sa.ARRAY(sa.Integer), nullable=False),
        sa.Column("col_modes", sa.ARRAY(sa.Integer), nullable=False),
        sa.Column("ranks", sa.ARRAY(sa.Integer), nullable=False),
        sa.Column("eps", sa.Float, nullable=True),
        sa.Column("max_rank", sa.Integer, nullable=True),
        sa.Column("dense_bytes", sa.BigInteger, nullable=False),
        sa.Column("stored_bytes", sa.BigInteger, nullable=False),
        sa.Column("rel_error", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("CURRENT_TIMESTAMP")),
        sa.PrimaryKeyConstraint("model", "tensor", name="tt_tensors_pkey"),
        sa.CheckConstraint("format IN ('tt', 'dense')", name="tt_tensors_format_check"),
        schema="bitpress",
    )
    op.create_table(
        "tt_cores",
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("tensor", sa.Text, nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("shape", sa.ARRAY(sa.Integer), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("checksum", sa.Text, nullable=False),  # SHA-256 of data, hex
        sa.PrimaryKeyConstraint("model", "tensor", "idx", name="tt_cores_pkey"),
        schema="bitpress",
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE bitpress.tt_cores ALTER COLUMN data SET STORAGE EXTERNAL")
        op.execute("ALTER TABLE bitpress.tt_models ALTER COLUMN skeleton SET STORAGE EXTERNAL")


def downgrade():
    op.drop_table("tt_cores", schema="bitpress")
    op.drop_table("tt_tensors", schema="bitpress")
    op.drop_table("tt_models", schema="bitpress")
