"""Hostile identifiers (issue #7): table, column, codebook, store, model and layer names made of
SQL injection strings, quotes, spaces, uppercase, unicode and %s, through every entry point that
takes a name, on both engines. Each name either works (same answer as a normally named table)
or gives a clean error (a bitpress error, or a psycopg error with its proper SQLSTATE, never a
42601 syntax error); the table ``victim`` that the strings try to drop keeps its rows."""
import subprocess
import sys

import duckdb
import numpy as np
import psycopg
import pytest
import sqlalchemy as sa
from conftest import error_of

from bitpress import codebooks, errors, ffn, fit, kernels, schema, stores, tensors, tt, ttmodels
from bitpress import sa as bp
from bitpress.search import search
from bitpress.tables import execute, fetchall, kind

T = 'x"; DROP TABLE victim; --'
NAMES = [T, "x'); DROP TABLE victim; --", "Mixed Case Täble ü", "50%s off"]
ID, VEC, CODE = 'i"d', "v'); DROP TABLE victim; --", 'Code"; DROP TABLE victim; --'
CB, STORE = "cb'); DROP TABLE victim; --", 's"); DROP TABLE victim; --'
X = np.random.default_rng(7).standard_normal((200, 64)).astype(np.float32)
Q = X[3] + 0.05


def qi(name, conn=None):
    """A quoted SQL identifier (the same rule in PostgreSQL and DuckDB); with conn, % doubled for
    PostgreSQL, whose statements here run with parameters (all but COPY and error_of's)."""
    q = '"' + name.replace('"', '""') + '"'
    return q.replace("%", "%%") if conn is not None and kind(conn) == "pg" else q


def lit(s):
    return "'" + s.replace("'", "''") + "'"


def make(conn, table, idc=ID, vec=VEC):
    t, i, v = qi(table, conn), qi(idc, conn), qi(vec, conn)
    if kind(conn) == "pg":
        execute(conn, f"CREATE TABLE {t} ({i} int PRIMARY KEY, {v} vector({X.shape[1]}))")
        with conn.cursor().copy(f"COPY {qi(table)} FROM STDIN WITH (FORMAT BINARY)") as cp:  # no parameters
            cp.set_types(["int4", "vector"])
            for n, x in enumerate(X):
                cp.write_row([n, x])
    else:
        execute(conn, f"CREATE TABLE {t} AS SELECT CAST(unnest(range(%s)) AS INTEGER) AS {i}, "
                      f"CAST(unnest(%s) AS FLOAT[]) AS {v}", [len(X), X.tolist()])


def add_codes(conn, table, vec=VEC, code=CODE, book=CB):
    t, v, c = qi(table, conn), qi(vec, conn), qi(code, conn)
    execute(conn, f"ALTER TABLE {t} ADD COLUMN {c} {'varbit' if kind(conn) == 'pg' else 'BLOB'}")
    execute(conn, f"UPDATE {t} SET {c} = binarize({v}, %s)", [book])


def two_tables(conn, name=T):
    """Codebook CB; table name (columns ID, VEC, CODE) and table plain (id, v, code), the same rows."""
    codebooks.save(conn, CB, fit.fit(X, "median"))
    for table, (i, v, c) in ((name, (ID, VEC, CODE)), ("plain", ("id", "v", "code"))):
        make(conn, table, idc=i, vec=v)
        add_codes(conn, table, vec=v, code=c)


def victim_rows(conn):
    return fetchall(conn, "SELECT count(*) FROM victim")[0][0]


@pytest.fixture(params=["pg", "duckdb"])
def engine(request):
    conn = request.getfixturevalue("pg_books" if request.param == "pg" else "duck_books")
    conn.execute("CREATE TABLE victim AS SELECT * FROM (VALUES (1), (2), (3)) v(a)")
    yield conn
    assert victim_rows(conn) == 3


def clean_error(conn, fn, sqlstate):
    """Runs fn, which must fail cleanly: the SQLSTATE in PostgreSQL, a catalog/binder error in DuckDB."""
    with pytest.raises(Exception) as ei:
        fn()
    e = ei.value
    if kind(conn) == "pg":
        assert isinstance(e, psycopg.Error) and e.sqlstate == sqlstate, (type(e), e)
    else:
        assert isinstance(e, (duckdb.CatalogException, duckdb.BinderException, errors.BitpressError)), (type(e), e)
    return str(e)


@pytest.mark.parametrize("name", NAMES)
def test_fit_table_reads_a_hostile_table_and_column(engine, name):
    make(engine, name)
    make(engine, "plain", idc="id", vec="v")
    version, cb = codebooks.fit_table(engine, name, VEC, CB)
    _, plain = codebooks.fit_table(engine, "plain", "v", "plain")
    assert version == 1 and cb.to_bytes() == plain.to_bytes()
    assert np.array_equal(cb.thr_a, fit.fit(X, "median").thr_a)
    assert cb.options["source"] == f"{name}.{VEC}"
    assert codebooks.load(engine, CB).to_bytes() == cb.to_bytes()
    assert [r["name"] for r in codebooks.list_codebooks(engine)] == [CB, "plain"]
    # the codebook name travels as a value: binarize(v, name) in SQL gives the core's codes
    add_codes(engine, name)
    got = fetchall(engine, f"SELECT {qi(CODE, engine)} FROM {qi(name, engine)} ORDER BY {qi(ID, engine)}")
    want = kernels.encode(cb, X)
    to_bytes = (lambda c: int(c, 2).to_bytes(8, "big")) if kind(engine) == "pg" else bytes
    assert [to_bytes(c) for c, in got] == [w.tobytes() for w in want]
    # a missing table or column with such a name: "does not exist", nothing stored
    msg = clean_error(engine, lambda: codebooks.fit_table(engine, "nope " + name, VEC, "n"), "42P01")
    assert "does not exist" in msg and "nope " + name in msg
    clean_error(engine, lambda: codebooks.fit_table(engine, name, "nope " + VEC, "n"), "42703")
    assert [r["name"] for r in codebooks.list_codebooks(engine)] == [CB, "plain"]


def knn_ids(conn, table, idc, code, vec):
    """ids from the k-NN SQL helpers on one table (PostgreSQL: NULL::table; DuckDB macros: the
    table as a qualified name, like query_table)."""
    i, t = qi(idc, conn), qi(table, conn)
    if kind(conn) == "pg":
        knn = f"SELECT {i} FROM bitpress_knn(NULL::{t}, %s, %s, %s::real[]::vector, 5, 4, %s, 'cosine', %s)"
        codes = f"SELECT {i} FROM bitpress_knn_codes(NULL::{t}, %s, %s::real[]::vector, 5, 4, %s, %s)"
        tbl = []
    else:
        knn = f"SELECT {i} FROM bitpress_knn(%s, %s, %s, CAST(%s AS FLOAT[]), 5, codebook := %s, scoring := %s)"
        codes = f"SELECT {i} FROM bitpress_knn_codes(%s, %s, CAST(%s AS FLOAT[]), 5, codebook := %s, scoring := %s)"
        tbl = [qi(table)]
    out = {}
    for scoring in ("hamming", "asymmetric"):
        out["knn", scoring] = [r[0] for r in fetchall(conn, knn, tbl + [code, vec, Q.tolist(), CB, scoring])]
        out["codes", scoring] = [r[0] for r in fetchall(conn, codes, tbl + [code, Q.tolist(), CB, scoring])]
    return out


@pytest.mark.parametrize("name", [T, "50%s off"])
def test_knn_helpers_with_hostile_table_and_column_names(engine, name):
    two_tables(engine, name)
    got = knn_ids(engine, name, ID, CODE, VEC)
    assert got == knn_ids(engine, "plain", "id", "code", "v")
    assert got["knn", "hamming"][0] == 3 and len(got["codes", "asymmetric"]) == 5
    # a column that is an injection string is a missing column, nothing more
    if kind(engine) == "pg":
        q = f"SELECT * FROM bitpress_knn(NULL::{qi(name)}, {lit(CODE + ' x')}, {lit(VEC)}, '{Q.tolist()}', 3)"
        assert error_of(engine, q)[0] == "42703"
        q = f"SELECT * FROM bitpress_knn_codes(NULL::{qi(name)}, {lit('code) FROM victim; --')}, '{Q.tolist()}', 3)"
        assert error_of(engine, q)[0] == "42703"
    else:
        for bad in (f"{lit(CODE + ' x')}, {lit(VEC)}", f"{lit(CODE)}, {lit('v) FROM victim; --')}"):
            with pytest.raises(duckdb.BinderException, match="empty set of columns"):
                engine.execute(f"SELECT * FROM bitpress_knn({lit(qi(name))}, {bad}, {Q.tolist()}, 3)").fetchall()
        with pytest.raises(duckdb.CatalogException, match="does not exist"):
            engine.execute(f"SELECT * FROM bitpress_knn({lit('plain; DROP TABLE victim; --')}, 'code', 'v', "
                           f"{Q.tolist()}, 3)").fetchall()


@pytest.mark.parametrize("engine", ["pg", "duckdb"], indirect=True)
def test_search_takes_a_raw_hostile_table_name(engine):
    two_tables(engine)
    got = search(engine, T, Q, 5, code_column=CODE, vector_column=VEC, codebook=CB)
    want = search(engine, "plain", Q, 5, code_column="code", vector_column="v", codebook=CB)
    assert [r[ID] for r in got] == [r["id"] for r in want] and got[0][ID] == 3


@pytest.mark.parametrize("name", [T, "50%s off"])
def test_stores_over_hostile_names(engine, name):
    two_tables(engine, name)
    qcode = kernels.encode(fit.fit(X, "median"), X[7:8])[0]
    for table, store, cols in ((name, STORE, (ID, CODE, VEC)), ("plain", "plain", ("id", "code", "v"))):
        if kind(engine) == "pg":  # the SQL function takes a regclass: the quoted name
            n = engine.execute("SELECT bitpress_store_create(%s, %s::regclass, %s, %s, 64)",
                               (store, qi(table), cols[0], cols[1])).fetchone()[0]
        else:  # the Python API takes the name itself
            n = stores.create(engine, store, table, cols[0], cols[1], segment_codes=64)
        assert n == 200
        # a new row: PostgreSQL's triggers (named from the store) record it, DuckDB refreshes
        t, (i, c, v) = qi(table, engine), (qi(x, engine) for x in cols)
        execute(engine, f"INSERT INTO {t} SELECT 1000, {v}, {c} FROM {t} WHERE {i} = 7")
    got = stores.knn(engine, STORE, qcode, 10, refresh=True)
    assert got == stores.knn(engine, "plain", qcode, 10, refresh=True)
    assert got[:2] == [(7, 0), (1000, 0)] and stores.check(engine, STORE)
    if kind(engine) == "pg":
        ids = "SELECT {} FROM bitpress_knn(NULL::{}, %s, %s, %s::real[]::vector, 5, 4, %s)"
        weird, plain = [CODE, VEC], ["code", "v"]
    else:
        assert fetchall(engine, "SELECT id, distance FROM bitpress_store_knn(%s, %s, 10)", [STORE, qcode.tobytes()]) == got
        ids = "SELECT {} FROM bitpress_knn_store(%s, %s, %s, %s, CAST(%s AS FLOAT[]), 5, codebook := %s)"
        weird, plain = [qi(name), STORE, ID, VEC], ["plain", "plain", "id", "v"]
    weird = fetchall(engine, ids.format(qi(ID, engine), qi(name, engine)), weird + [Q.tolist(), CB])
    plain = fetchall(engine, ids.format("id", "plain"), plain + [Q.tolist(), CB])
    assert weird == plain and weird[0][0] == 3
    stores.drop(engine, STORE)
    with pytest.raises(errors.UnknownCodebookError, match="does not exist") as ei:
        stores.knn(engine, STORE, qcode, 10)
    assert ei.value.sqlstate == "42704"
    if kind(engine) == "pg":
        assert engine.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                              (qi(name),)).fetchone()[0] == 0
        assert error_of(engine, f"SELECT bitpress_store_create('s', {lit(qi('nope ' + T))}, 'id', 'c')")[0] == "42P01"
        assert error_of(engine, f"SELECT bitpress_store_create('s', {lit(qi(name))}, 'id', {lit('c; --')})")[0] == "42703"


@pytest.mark.parametrize("name", ["Docs", *NAMES])
@pytest.mark.parametrize("engine", ["pg", "duckdb"], indirect=True)
def test_stores_create_takes_a_raw_table_name(engine, name):
    codebooks.save(engine, CB, fit.fit(X, "median"))
    make(engine, name)
    add_codes(engine, name)
    assert stores.create(engine, STORE, name, ID, CODE) == 200
    assert stores.knn(engine, STORE, kernels.encode(codebooks.load(engine, CB), X[5:6])[0], 1) == [(5, 0)]


@pytest.mark.parametrize("which", ["pg", "duckdb"])
def test_sqlalchemy_knn_on_a_hostile_table(request, which):
    if which == "pg":
        from pgvector.sqlalchemy import Vector

        i = request.getfixturevalue("pg").info
        eng, vtype = sa.create_engine(f"postgresql+psycopg://{i.user}@{i.host}:{i.port}/{i.dbname}"), Vector(64)
    else:
        eng, vtype = bp.duckdb_engine(), sa.ARRAY(sa.Float)
    md = sa.MetaData()
    tables = [sa.Table(t, md, sa.Column(i, sa.Integer, primary_key=True, autoincrement=False),
                       sa.Column(v, vtype), sa.Column(c, bp.BITCODE(64)))
              for t, i, v, c in ((T, ID, VEC, CODE), ("plain", "id", "v", "code"))]
    with eng.begin() as conn:
        conn.execute(sa.text("CREATE TABLE victim (a int)"))
        conn.execute(sa.text("INSERT INTO victim VALUES (1), (2)"))
    md.create_all(eng)
    result = []
    with eng.begin() as conn:
        for tbl in tables:
            i, v, c = list(tbl.c)
            conn.execute(tbl.insert(), [{i.key: n, v.key: x.tolist()} for n, x in enumerate(X)])
            conn.execute(sa.update(tbl).values({c: bp.binarize(v)}))
            rows = conn.execute(bp.knn(tbl, c, v, Q, k=5, oversample=4)).all()
            result.append([(r[0], r[2]) for r in rows])
        assert conn.execute(sa.text("SELECT count(*) FROM victim")).scalar() == 2
    assert result[0] == result[1] and result[0][0] == (3, bytes(kernels.binarize(X[3])))
    eng.dispose()


def test_model_and_layer_names_are_values(engine):
    M, N, L = 'm"; DROP TABLE victim; --', "w'); DROP TABLE victim; --", "L ü'); DELETE FROM victim; --"
    w = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    tensors.write(engine, M, N, tt.decompose(w, modes=[tt.matrix_shape(w.shape)]))
    assert fetchall(engine, "SELECT tt_element(%s, %s, 2, 3)", [M, N])[0][0] == w[1, 2]
    assert np.array_equal(np.asarray(fetchall(engine, "SELECT tt_reconstruct_row(%s, %s, 2)", [M, N])[0][0],
                                     np.float32), w[1])
    assert ttmodels.summary(engine, M)["tensors"] == 1 and ttmodels.drop(engine, M) == 1
    assert error_of(engine, f"SELECT tt_element({lit(M)}, {lit(N)}, 1, 1)")[0] == "42704"
    rng = np.random.default_rng(2)
    layer = ffn.Layer(*(rng.standard_normal(s).astype(np.float32) for s in ((4, 8), (8,), (8, 4), (4,))), "relu")
    ffn.save(engine, L, layer)
    x = rng.standard_normal(4).astype(np.float32)
    cast = "real[]" if kind(engine) == "pg" else "FLOAT[]"
    got = fetchall(engine, f"SELECT ffn(CAST(%s AS {cast}), %s)", [x.tolist(), L])[0][0]
    assert np.array_equal(np.asarray(got, np.float32), ffn.run(ffn.load(engine, L), x)[0])
    assert [r["name"] for r in ffn.list_layers(engine)] == [L]
    assert error_of(engine, f"SELECT ffn(CAST(ARRAY{x.tolist()} AS {cast}), {lit(L + 'x')})")[0] == "42704"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "bitpress", *args], capture_output=True, text=True)


@pytest.fixture(params=["pg", "duckdb"])
def target(request, tmp_path):
    """(CLI target arguments, a function that opens the same database), with victim and table T."""
    if request.param == "pg":
        pg = request.getfixturevalue("pg")
        i = pg.info
        args, connect = ["--dsn", f"host={i.host} port={i.port} user={i.user} dbname={i.dbname}"], lambda: pg
    else:
        import bitpress.duckdb

        path = str(tmp_path / "db.duckdb")
        args, connect = ["--duckdb", path], lambda: bitpress.duckdb.connect(path)
    conn = connect()
    conn.execute("CREATE TABLE victim AS SELECT * FROM (VALUES (1), (2), (3)) v(a)")
    make(conn, T)
    close(conn)
    return args, connect


def close(conn):
    """Closes a DuckDB connection (the CLI opens the file after it); the psycopg one stays open."""
    if kind(conn) == "duckdb":
        conn.close()


def test_cli_fit_with_a_hostile_table_column_and_name(target):
    args, connect = target
    r = cli("fit", *args, "--table", T, "--vector-col", VEC, "--name", CB, "--sample", "1000", "--quiet")
    assert r.returncode == 0, r.stderr
    assert f"codebook {CB!r} version 1: median, 64 dims -> 64 bits" in r.stdout
    r = cli("fit", *args, "--table", "nope " + T, "--vector-col", VEC, "--name", "n", "--quiet")
    assert r.returncode == 2 and "does not exist" in r.stderr and "syntax" not in r.stderr.lower(), r.stderr
    conn = connect()
    try:
        assert np.array_equal(codebooks.load(conn, CB).thr_a, fit.fit(X, "median").thr_a)
        assert [b["name"] for b in codebooks.list_codebooks(conn)] == [CB]
        assert victim_rows(conn) == 3
    finally:
        close(conn)


def test_cli_tt_and_sparse_commands_with_hostile_names(target):
    args, connect = target
    M, L = 'm"; DROP TABLE victim; --', "l'); DROP TABLE victim; --"
    conn = connect()
    schema.upgrade(conn)
    w = np.arange(24, dtype=np.float32).reshape(4, 6)
    tensors.write(conn, M, "w", tt.decompose(w, modes=[tt.matrix_shape(w.shape)]))
    tensors.write(conn, "other", "w", tt.decompose(w, modes=[tt.matrix_shape(w.shape)]))
    ffn.save(conn, L, ffn.Layer(np.ones((4, 8)), np.ones(8), np.ones((8, 4)), np.ones(4), "relu"))
    close(conn)
    r = cli("tt", "list", *args, M)
    assert r.returncode == 0 and r.stdout.startswith(f"{M}: 1 tensors (0 TT)"), r.stderr
    r = cli("sparse", "list", *args)
    assert r.returncode == 0 and r.stdout.startswith(f"{L:<24} 4x8 relu"), r.stderr
    r = cli("tt", "drop", *args, M)
    assert r.returncode == 0 and f"model {M!r}: 1 tensors removed" in r.stdout, r.stderr
    r = cli("tt", "list", *args, M)
    assert r.returncode == 2 and "does not exist" in r.stderr, r.stderr
    conn = connect()
    try:
        assert ttmodels.summary(conn, "other")["tensors"] == 1 and victim_rows(conn) == 3
    finally:
        close(conn)
