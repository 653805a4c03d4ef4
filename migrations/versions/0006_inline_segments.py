"""Code store segments stored inline, one heap page each, and what a rebuild wrote.

Revision ID: 0006_inline_segments
Revises: 0005_code_columns
Create Date: 2026-11-23

bitpress.code_stores    three new columns, set by each rebuild in the same transaction as its
                        segments: ``segments`` (how many it wrote) and ``first_block`` /
                        ``last_block`` (the heap blocks holding them). ``bitpress_store_knn``
                        reads only those blocks and checks that it met every segment; when rows
                        moved (VACUUM FULL, CLUSTER) it scans the whole table instead.
bitpress.code_segments  in PostgreSQL, ``ids`` and ``codes`` become STORAGE PLAIN (inline, never
                        compressed) and segments hold as many codes as fit one 8 kB page (the
                        rebuild of extension 0.4.0 sizes them). A query then scores each segment
                        where it lies in shared buffers, without copying it out of TOAST, and a
                        parallel sequential scan can split the pages among workers.

The upgrade needs the extension at 0.4.0 or later where it is installed (an older rebuild writes
segments too big for a page), and rebuilds the existing stores in the new layout.
"""
import sqlalchemy as sa
from alembic import op

revision = "0006_inline_segments"
down_revision = "0005_code_columns"
branch_labels = None
depends_on = None

MIN_EXTENSION = (0, 4, 0)


def _extension(bind):
    """(version tuple, schema) of the installed bitpress extension, or None."""
    row = bind.execute(sa.text("SELECT e.extversion, n.nspname FROM pg_extension e "
                               "JOIN pg_namespace n ON n.oid = e.extnamespace "
                               "WHERE e.extname = 'bitpress'")).first()
    if row is None:
        return None
    return tuple(int(p) for p in row[0].split(".")), row[1]


def upgrade():
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    ext = _extension(bind) if postgres else None
    if ext is not None and ext[0] < MIN_EXTENSION:
        raise RuntimeError(
            f"the bitpress extension is at {'.'.join(map(str, ext[0]))}; this schema revision needs "
            f"{'.'.join(map(str, MIN_EXTENSION))} or later: run ALTER EXTENSION bitpress UPDATE first")
    op.add_column("code_stores", sa.Column("segments", sa.BigInteger, nullable=True), schema="bitpress")
    op.add_column("code_stores", sa.Column("first_block", sa.BigInteger, nullable=True), schema="bitpress")
    op.add_column("code_stores", sa.Column("last_block", sa.BigInteger, nullable=True), schema="bitpress")
    if postgres:
        op.execute("ALTER TABLE bitpress.code_segments ALTER COLUMN codes SET STORAGE PLAIN, "
                   "ALTER COLUMN ids SET STORAGE PLAIN, RESET (fillfactor)")
        if ext is not None:
            # rewrite the existing stores as page-sized inline segments
            schema = bind.dialect.identifier_preparer.quote_identifier(ext[1])
            rebuild = sa.text(f"SELECT {schema}.bitpress_store_rebuild(:name)")
            for name in bind.execute(sa.text("SELECT name FROM bitpress.code_stores ORDER BY name")).scalars():
                bind.execute(rebuild, {"name": name})


def downgrade():
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # inline segments stay readable; new ones go out of line again
        op.execute("ALTER TABLE bitpress.code_segments ALTER COLUMN codes SET STORAGE EXTERNAL, "
                   "ALTER COLUMN ids SET STORAGE EXTERNAL, SET (fillfactor = 10)")
    op.drop_column("code_stores", "last_block", schema="bitpress")
    op.drop_column("code_stores", "first_block", schema="bitpress")
    op.drop_column("code_stores", "segments", schema="bitpress")
