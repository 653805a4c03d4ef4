"""bitpress.ops: the Alembic operations users call from their own migrations, on both engines.

create/drop the extension; add_code_column (bit(n) column + sync trigger + registry row +
comment) and drop_code_column; each with reverse(); bad input refused before anything changes.
"""
import numpy as np
import psycopg
import pytest
import sqlalchemy as sa

from bitpress import codebooks, errors, ops, schema
from bitpress import sa as bsa
from conftest import create_docs


def codes_of(conn, q):
    return np.stack([np.frombuffer(bytes(r[0]), np.uint8) for r in conn.execute(q).fetchall()])


def test_add_code_column_keeps_codes_in_sync_in_postgresql(pg, pg_engine):
    texts, x = create_docs(pg, 300)
    schema.upgrade(pg)
    codebooks.fit_table(pg, "documents", "embedding", "docs_v1", "median", progress=False)
    book = codebooks.load(pg, "docs_v1")
    with pg_engine.begin() as c:
        ops.operations(c).add_code_column("documents", "embedding", "code", codebook="docs_v1")

    # the column, its comment and the registry row
    assert pg.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'documents'::regclass "
                      "AND attname = 'code'").fetchone()[0] == "bit(384)"
    assert pg.execute("SELECT col_description('documents'::regclass, 4)").fetchone()[0] == \
        "bitpress code of embedding: codebook docs_v1 version 1, 384 bits"
    assert pg.execute("SELECT table_schema, table_name, code_column, vector_column, codebook, version, bits, sync "
                      "FROM bitpress.code_columns").fetchall() == [
        ("public", "documents", "code", "embedding", "docs_v1", 1, 384, "trigger")]
    # existing rows wait for the backfill; new and updated rows are coded by the trigger
    assert pg.execute("SELECT count(*) FROM documents WHERE code IS NULL").fetchone()[0] == 300
    pg.execute("INSERT INTO documents (id, body, embedding) VALUES (1000, 'new', %s)", (x[5],))
    pg.execute("UPDATE documents SET embedding = %s WHERE id = 7", (x[8],))
    pg.execute("UPDATE documents SET code = NULL WHERE id = 1000")  # a code cannot be set by hand
    got = codes_of(pg, "SELECT code_bytes(code) FROM documents WHERE id IN (7, 1000) ORDER BY id")
    want = book.encode_reference(x[[8, 5]])
    assert np.array_equal(got, want)
    pg.execute("UPDATE documents SET embedding = NULL WHERE id = 7")
    assert pg.execute("SELECT code FROM documents WHERE id = 7").fetchone()[0] is None
    # a later refit adds version 2; the trigger stays pinned to version 1
    codebooks.fit_table(pg, "documents", "embedding", "docs_v1", "mean", progress=False)
    pg.execute("INSERT INTO documents (id, embedding) VALUES (1001, %s)", (x[9],))
    assert np.array_equal(codes_of(pg, "SELECT code_bytes(code) FROM documents WHERE id = 1001"),
                          book.encode_reference(x[[9]]))

    # reverse: column, trigger, function and registry row go; the extension then drops cleanly
    add = ops.AddCodeColumnOp("documents", "embedding", "code", "docs_v1")
    with pg_engine.begin() as c:
        with pytest.raises(errors.BitpressError, match="drop those code columns first"):
            ops.operations(c).drop_bitpress_extension()
    with pg_engine.begin() as c:
        ops.operations(c).invoke(add.reverse())
    assert pg.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'documents'::regclass "
                      "AND NOT tgisinternal").fetchone()[0] == 0
    assert pg.execute("SELECT count(*) FROM pg_proc WHERE proname LIKE 'bitpress_sync_%'").fetchone()[0] == 0
    assert pg.execute("SELECT count(*) FROM bitpress.code_columns").fetchone()[0] == 0
    assert pg.execute("SELECT count(*) FROM documents").fetchone()[0] == 302
    assert isinstance(add.reverse().reverse(), ops.AddCodeColumnOp)
    with pytest.raises(ValueError, match="vector column and codebook"):
        ops.DropCodeColumnOp("documents", "code").reverse()


def test_extension_operations_and_their_reverse(pg, pg_engine):
    create = ops.CreateBitpressExtensionOp()
    with pg_engine.begin() as c:
        ops.operations(c).invoke(create.reverse())  # drop
    assert pg.execute("SELECT extname FROM pg_extension ORDER BY 1").fetchall() == [("plpgsql",), ("vector",)]
    with pg_engine.begin() as c:
        ops.operations(c).create_bitpress_extension()
        ops.operations(c).create_bitpress_extension()  # IF NOT EXISTS
    assert pg.execute("SELECT extname FROM pg_extension ORDER BY 1").fetchall() == [
        ("bitpress",), ("plpgsql",), ("vector",)]


@pytest.mark.parametrize("args, sqlstate, match", [
    (dict(codebook="nope"), "42704", "codebook 'nope' does not exist"),
    (dict(codebook="docs_v1", version=9), "42704", "version 9 does not exist"),
    (dict(codebook="small"), "22000", "codes 16-d vectors, but documents.embedding is vector\\(384\\)"),
    (dict(codebook="docs_v1", vector_column="missing"), "42703", 'column "missing"'),
])
def test_add_code_column_refuses_bad_input_and_changes_nothing(pg, pg_engine, args, sqlstate, match):
    create_docs(pg, 50)
    schema.upgrade(pg)
    codebooks.fit_table(pg, "documents", "embedding", "docs_v1", "median", progress=False)
    pg.execute("CREATE TABLE small (id int PRIMARY KEY, v vector(16))")
    pg.execute("INSERT INTO small SELECT i, array_fill(i::real, ARRAY[16])::vector FROM generate_series(1, 20) i")
    codebooks.fit_table(pg, "small", "v", "small", "median", progress=False)
    kw = dict(table="documents", vector_column="embedding", code_column="code") | args
    with pytest.raises(errors.BitpressError, match=match) as ei:
        with pg_engine.begin() as c:
            ops.operations(c).add_code_column(kw.pop("table"), kw.pop("vector_column"), kw.pop("code_column"), **kw)
    assert ei.value.sqlstate == sqlstate
    assert pg.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'documents' "
                      "AND column_name = 'code'").fetchone()[0] == 0


def test_add_code_column_needs_the_bitpress_schema(pg, pg_engine):
    create_docs(pg, 10)
    with pytest.raises(errors.BitpressError, match="bitpress migrate") as ei:
        with pg_engine.begin() as c:
            ops.operations(c).add_code_column("documents", "embedding", "code", codebook="docs_v1")
    assert ei.value.sqlstate == "42P01"


ODD = 'x"; DROP TABLE victim; --'


def test_odd_names_are_quoted_everywhere(pg, pg_engine):
    """Injection strings as table, column and codebook names: created, synced and dropped as
    names, nothing else runs."""
    from psycopg import sql

    pg.execute("CREATE TABLE victim (id int)")
    pg.execute("INSERT INTO victim VALUES (1)")
    schema.upgrade(pg)
    texts, x = create_docs(pg, 100, table=ODD)
    pg.execute(sql.SQL("ALTER TABLE {} RENAME COLUMN embedding TO {}").format(sql.Identifier(ODD), sql.Identifier(ODD + "v")))
    codebooks.fit_table(pg, ODD, ODD + "v", "o'; DROP TABLE victim; --", "median", progress=False)
    book = codebooks.load(pg, "o'; DROP TABLE victim; --")
    with pg_engine.begin() as c:
        ops.operations(c).add_code_column(ODD, ODD + "v", ODD + ":c %s", codebook="o'; DROP TABLE victim; --")
    pg.execute(sql.SQL("INSERT INTO {} (id, {}) VALUES (500, %s)").format(sql.Identifier(ODD), sql.Identifier(ODD + "v")),
               (x[3],))
    got = pg.execute(sql.SQL("SELECT code_bytes({}) FROM {} WHERE id = 500").format(
        sql.Identifier(ODD + ":c %s"), sql.Identifier(ODD))).fetchone()[0]
    assert bytes(got) == book.encode_reference(x[[3]])[0].tobytes()
    with pg_engine.begin() as c:
        ops.operations(c).drop_code_column(ODD, ODD + ":c %s")
    assert pg.execute("SELECT count(*) FROM victim").fetchone()[0] == 1
    assert pg.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(ODD))).fetchone()[0] == 101


def test_sync_names_fit_postgresql_identifiers():
    assert ops.sync_function_name("documents", "code").startswith("bitpress_sync_documents_code_")
    # ("a_b", "c") and ("a", "b_c") read alike: the hash keeps them apart
    assert ops.sync_function_name("a_b", "c") != ops.sync_function_name("a", "b_c")
    a, b = ops.sync_function_name("t" * 60, "code_a"), ops.sync_function_name("t" * 60, "code_b")
    assert a != b and len(a.encode()) <= 63 and len(b.encode()) <= 63
    assert len(ops.sync_function_name("é" * 40, "c").encode()) <= 63


def test_column_types_binarize_cannot_read_and_foreign_columns_are_refused(pg, pg_engine):
    create_docs(pg, 30)
    schema.upgrade(pg)
    codebooks.fit_table(pg, "documents", "embedding", "docs_v1", "median", progress=False)
    with pytest.raises(errors.BitpressError, match="is of type text") as ei:
        with pg_engine.begin() as c:
            ops.operations(c).add_code_column("documents", "body", "code", codebook="docs_v1")
    assert ei.value.sqlstate == "42804"
    with pytest.raises(errors.BitpressError, match="not a code column") as ei:
        with pg_engine.begin() as c:
            ops.operations(c).drop_code_column("documents", "embedding")
    assert ei.value.sqlstate == "42704"
    assert pg.execute("SELECT count(embedding) FROM documents").fetchone()[0] == 30
    # bitpress's schema cannot be downgraded from under a sync trigger
    with pg_engine.begin() as c:
        ops.operations(c).add_code_column("documents", "embedding", "code", codebook="docs_v1")
    with pytest.raises(RuntimeError, match="drop those code columns first"):
        schema.downgrade(pg, "base")
    assert schema.current(pg) == schema.head()


def test_add_code_column_in_duckdb_records_a_bit_column(tmp_path):
    import bitpress.duckdb

    path = str(tmp_path / "docs.duckdb")
    con = bitpress.duckdb.connect(path)
    schema.upgrade(con)
    create_docs(con, 200)
    codebooks.fit_table(con, "documents", "embedding", "docs_v1", "median", progress=False)
    engine = bsa.duckdb_engine(path, poolclass=sa.pool.NullPool)
    with engine.begin() as c:
        ops.operations(c).create_bitpress_extension()  # nothing to do in DuckDB
        ops.operations(c).add_code_column("documents", "embedding", "code", codebook="docs_v1")
    assert con.execute("SELECT data_type FROM information_schema.columns WHERE table_name = 'documents' "
                       "AND column_name = 'code'").fetchone()[0] == "BIT"  # binarize's type: carries the length
    assert con.execute("SELECT sync, bits, version FROM bitpress.code_columns").fetchall() == [("backfill", 384, 1)]
    with engine.begin() as c:
        ops.operations(c).drop_code_column("documents", "code")
    assert con.execute("SELECT count(*) FROM bitpress.code_columns").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM documents").fetchone()[0] == 200
    engine.dispose()
    con.close()


def test_db_command_upgrades_downgrades_and_reports(tmp_path):
    from conftest import run_cli

    path = str(tmp_path / "db.duckdb")
    assert run_cli("db", "current", "--duckdb", path).stdout.startswith("bitpress schema: none (head 0010_duckdb_ivf)")
    assert run_cli("db", "upgrade", "--duckdb", path).stdout.startswith("bitpress schema: none -> 0010_duckdb_ivf")
    out = run_cli("db", "downgrade", "--duckdb", path)
    assert out.returncode == 0 and out.stdout.startswith("bitpress schema: 0010_duckdb_ivf -> 0009_params_checksums")
    assert run_cli("db", "downgrade", "--duckdb", path, "base").stdout.startswith(
        "bitpress schema: 0009_params_checksums -> none")


def test_upgrade_bitpress_schema_runs_inside_the_users_migration(pg, pg_engine):
    """bitpress's own revisions applied from a user's migration share its transaction: rolled
    back with it, committed with it."""
    create_docs(pg, 20)
    with pytest.raises(RuntimeError, match="later step failed"):
        with pg_engine.begin() as c:
            ops.operations(c).upgrade_bitpress_schema()
            assert schema.current(c) == schema.head()
            raise RuntimeError("a later step failed")
    assert schema.current(pg) is None
    assert pg.execute("SELECT to_regclass('bitpress.codebooks')").fetchone()[0] is None
    with pg_engine.begin() as c:
        ops.operations(c).upgrade_bitpress_schema()
    assert schema.current(pg) == schema.head() == "0010_duckdb_ivf"


def test_an_unqualified_table_is_found_on_search_path(pg, pg_test_dsn):
    """Like any query: the table is found in the first schema of search_path that has it, not
    in current_schema() (which may be another schema without it)."""
    pg.execute("CREATE SCHEMA app")
    pg.execute("CREATE SCHEMA postgres")  # "$user": current_schema() is now this empty schema
    pg.execute("CREATE TABLE app.docs (id int PRIMARY KEY, v vector(3))")
    pg.execute("INSERT INTO app.docs SELECT i, ARRAY[i, -i, 1]::real[]::vector FROM generate_series(1, 50) i")
    schema.upgrade(pg)
    codebooks.fit_table(pg, "app.docs", "v", "small", "median", progress=False)
    engine = sa.create_engine("postgresql+psycopg://", poolclass=sa.pool.NullPool,
                              creator=lambda: psycopg.connect(pg_test_dsn, options='-c search_path="$user",app,public'))
    with engine.begin() as c:
        ops.operations(c).add_code_column("docs", "v", "code", codebook="small")
    engine.dispose()
    assert pg.execute("SELECT table_schema FROM bitpress.code_columns").fetchall() == [("app",)]
    pg.execute("INSERT INTO app.docs VALUES (100, '[1, 2, 3]')")
    assert pg.execute("SELECT code IS NOT NULL FROM app.docs WHERE id = 100").fetchone()[0]
