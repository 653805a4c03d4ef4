"""Feed-forward layers for sparse inference in SQL.

Revision ID: 0004_ffn_layers
Revises: 0003_tt
Create Date: 2026-11-23

bitpress.ffn_layers  one row per stored layer y = act(x @ W1 + b1) @ W2 + b2: its shape,
                     activation, weight format ('float32' or 'int8' with per-row scales),
                     predictor rank, and ``params``, the "BPFF" form the C core reads
                     (pyext/bp_ffn.c: weights, biases, the low-rank predictor P, Q and the
                     per-neuron thresholds); ``settings`` (JSON) records how the predictor was
                     fitted and what it measured. Uncompressed (STORAGE EXTERNAL) in PostgreSQL.
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_ffn_layers"
down_revision = "0003_tt"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "ffn_layers",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("d", sa.Integer, nullable=False),
        sa.Column("h", sa.Integer, nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("activation", sa.Text, nullable=False),
        sa.Column("format", sa.Text, nullable=False),
        sa.Column("params", sa.LargeBinary, nullable=False),
        sa.Column("source", sa.Text, nullable=True),
        sa.Column("settings", sa.Text, nullable=False),  # JSON
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("CURRENT_TIMESTAMP")),
        sa.CheckConstraint("format IN ('float32', 'int8')", name="ffn_layers_format_check"),
        schema="bitpress",
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE bitpress.ffn_layers ALTER COLUMN params SET STORAGE EXTERNAL")


def downgrade():
    op.drop_table("ffn_layers", schema="bitpress")
