"""Code stores follow their table by OID and are readable exactly as their table is.

Revision ID: 0008_store_access
Revises: 0007_store_integrity
Create Date: 2026-12-07

PostgreSQL only (DuckDB has neither OIDs nor privileges: nothing changes there).

bitpress.code_stores.source  becomes ``regclass`` (the table's OID, shown by name): a renamed
                             table is followed, a table of the same name in another schema is
                             never read. A store whose table cannot be found refuses the upgrade.
row-level security           on code_stores, code_segments and code_delta, SELECT granted to
                             PUBLIC (and USAGE on schema bitpress): a role sees a store, its
                             segments and its delta exactly when bitpress_store_readable() says
                             the store may serve it (it may read the table's id and code
                             columns, no row-level security of the table acts on it, the
                             store's triggers are in place). Writing stays with the owner of
                             bitpress's tables; the triggers write the delta as the extension's
                             owner. Needs the extension at 0.5.0 or later (without the
                             extension there are no stores: only the type changes).
"""
import sqlalchemy as sa
from alembic import op

revision = "0008_store_access"
down_revision = "0007_store_integrity"
branch_labels = None
depends_on = None

MIN_EXTENSION = (0, 5, 0)
TABLES = ("code_stores", "code_segments", "code_delta")


def upgrade():
    from bitpress.schema import extension_schema

    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    ext = extension_schema(bind, MIN_EXTENSION)
    lost = bind.execute(sa.text("SELECT name, source FROM bitpress.code_stores "
                                "WHERE to_regclass(source) IS NULL ORDER BY name")).all()
    if lost:
        raise RuntimeError("code stores whose table cannot be found: "
                           + ", ".join(f'"{n}" ({s})' for n, s in lost)
                           + "; drop them (bitpress_store_drop) or fix their source first")
    op.execute("ALTER TABLE bitpress.code_stores ALTER COLUMN source TYPE regclass USING source::regclass")
    if ext is None:  # no extension, so no stores: their tables stay the owner's alone
        return
    for t in TABLES:
        op.execute(f"ALTER TABLE bitpress.{t} ENABLE ROW LEVEL SECURITY")
        op.execute(f"GRANT SELECT ON bitpress.{t} TO PUBLIC")
    op.execute(f"CREATE POLICY bitpress_store_readers ON bitpress.code_stores FOR SELECT "
               f"USING ({ext}.bitpress_store_readable(name, source, id_column, code_column))")
    for t in TABLES[1:]:
        op.execute(f"CREATE POLICY bitpress_store_readers ON bitpress.{t} FOR SELECT "
                   "USING (store IN (SELECT s.name FROM bitpress.code_stores s))")
    op.execute("GRANT USAGE ON SCHEMA bitpress TO PUBLIC")


def downgrade():
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("REVOKE USAGE ON SCHEMA bitpress FROM PUBLIC")
    for t in TABLES:
        op.execute(f"DROP POLICY IF EXISTS bitpress_store_readers ON bitpress.{t}")
        op.execute(f"REVOKE SELECT ON bitpress.{t} FROM PUBLIC")
        op.execute(f"ALTER TABLE bitpress.{t} DISABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE bitpress.code_stores ALTER COLUMN source TYPE text USING source::text")
