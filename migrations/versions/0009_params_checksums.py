"""A checksum beside every codebook's and every feed-forward layer's parameters.

Revision ID: 0009_params_checksums
Revises: 0008_store_access
Create Date: 2026-12-07

bitpress.codebooks.checksum   SHA-256 of ``params`` in hex (encode(sha256(params), 'hex')),
bitpress.ffn_layers.checksum  as bitpress.tt_cores.checksum: written with the parameters, checked
                              when they are read (22P03 when they differ), so a flipped byte inside
                              a threshold or a weight is reported instead of changing answers.
                              Filled for the rows already there. Nullable (DuckDB cannot add
                              NOT NULL after filling it in one transaction), but bitpress always
                              writes it: a NULL is read as corrupt data (XX001).
"""
import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0009_params_checksums"
down_revision = "0008_store_access"
branch_labels = None
depends_on = None

TABLES = {"codebooks": ("name", "version"), "ffn_layers": ("name",)}


def upgrade():
    bind = op.get_bind()
    for table, key in TABLES.items():
        op.add_column(table, sa.Column("checksum", sa.Text, nullable=True), schema="bitpress")
        if bind.dialect.name == "postgresql":
            op.execute(f"UPDATE bitpress.{table} SET checksum = encode(sha256(params), 'hex') "
                       "WHERE params IS NOT NULL")
        else:
            cols = ", ".join(key)
            where = " AND ".join(f"{k} = :{k}" for k in key)
            for row in bind.execute(sa.text(f"SELECT {cols}, params FROM bitpress.{table} "
                                            "WHERE params IS NOT NULL")).all():
                bind.execute(sa.text(f"UPDATE bitpress.{table} SET checksum = :sum WHERE {where}"),
                             {**dict(zip(key, row[:-1])), "sum": hashlib.sha256(bytes(row[-1])).hexdigest()})


def downgrade():
    for table in TABLES:
        op.drop_column(table, "checksum", schema="bitpress")
