"""A checksum beside every code store segment.

Revision ID: 0007_store_integrity
Revises: 0006_inline_segments
Create Date: 2026-12-07

bitpress.code_segments  ``checksum``: bp_segment_checksum of the segment's ids and codes
                        (pyext/bp_topk.c, the same value in every engine), written by each
                        rebuild and checked by every read, so that a flipped byte is reported
                        (XX001) instead of served. NULL in a segment written before this
                        revision: such a store answers only after a rebuild, which the
                        upgrade runs for every PostgreSQL store (it needs the extension at
                        0.5.0 or later there, whose rebuild writes checksums). In DuckDB the
                        upgrade computes the checksum of each existing segment as it is.
"""
import sqlalchemy as sa
from alembic import op

revision = "0007_store_integrity"
down_revision = "0006_inline_segments"
branch_labels = None
depends_on = None


MIN_EXTENSION = (0, 5, 0)


def upgrade():
    from bitpress.schema import extension_schema

    bind = op.get_bind()
    schema = extension_schema(bind, MIN_EXTENSION)
    op.add_column("code_segments", sa.Column("checksum", sa.BigInteger, nullable=True), schema="bitpress")
    if schema is not None:
        # every segment gets its checksum: rewrite the existing stores
        rebuild = sa.text(f"SELECT {schema}.bitpress_store_rebuild(:name)")
        for name in bind.execute(sa.text("SELECT name FROM bitpress.code_stores ORDER BY name")).scalars():
            bind.execute(rebuild, {"name": name})
    elif bind.dialect.name != "postgresql":
        # DuckDB (a store is a snapshot there): the checksum of each segment as it is
        from bitpress import _core

        segments = bind.execute(sa.text("SELECT store, segment, ids, codes FROM bitpress.code_segments")).all()
        for store, segment, ids, codes in segments:
            if ids is not None and codes is not None:
                bind.execute(sa.text("UPDATE bitpress.code_segments SET checksum = :sum "
                                     "WHERE store = :store AND segment = :segment"),
                             {"sum": _core.segment_checksum(bytes(ids), bytes(codes)), "store": store,
                              "segment": segment})


def downgrade():
    op.drop_column("code_segments", "checksum", schema="bitpress")
