"""bitpress in in-process DuckDB: the same codes and distances as numpy, NULLs, list and
array types, several batches, ragged columns, and bad input."""
import duckdb
import numpy as np
import pyarrow as pa
import pytest

import bitpress


def load(con, x, name="t"):
    con.register("_x", pa.table({"id": np.arange(len(x)),
                                 "v": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])}))
    con.execute(f"CREATE TABLE {name} AS SELECT id, v::FLOAT[{x.shape[1]}] AS v FROM _x")
    con.unregister("_x")


def codes(con, sql, params=None):
    """The codes a query gives (BIT: its first column read through code_bytes) as a uint8 matrix."""
    col = con.execute(f"SELECT code_bytes(c) FROM ({sql}) q(c)", params or []).fetchall()
    return np.array([np.frombuffer(r[0], np.uint8) for r in col])


def test_binarize_matches_numpy_over_many_batches(duck, minilm):
    load(duck, minilm)  # 2000 rows: more than one 2048-row batch after the join below
    t = np.median(minilm, axis=0)
    assert np.array_equal(codes(duck, "SELECT binarize(v) FROM t ORDER BY id"), np.packbits(minilm > 0, axis=1))
    assert duck.execute("SELECT DISTINCT typeof(binarize(v)), bit_length(binarize(v)) FROM t").fetchall() == [("BIT", 384)]
    got = codes(duck, "SELECT binarize(v, ?::FLOAT[]) FROM t ORDER BY id", [t.tolist()])
    assert np.array_equal(got, np.packbits(minilm > t, axis=1))
    n = duck.execute("SELECT count(*) FROM t a, (SELECT * FROM t LIMIT 3) b "
                     "WHERE binarize(a.v) = binarize(a.v)").fetchone()[0]
    assert n == 6000


def test_hamming_matches_numpy(duck, minilm):
    load(duck, minilm)
    q = bitpress.binarize(minilm[11])
    d = duck.execute("SELECT hamming(binarize(v), ?) FROM t ORDER BY id", [q.tobytes()]).fetchnumpy()
    ref = np.bitwise_count(np.packbits(minilm > 0, axis=1) ^ q).sum(1)
    assert np.array_equal(next(iter(d.values())), ref)
    top = duck.execute("SELECT id FROM t ORDER BY hamming(binarize(v), ?), id LIMIT 5", [q.tobytes()]).fetchall()
    assert [r[0] for r in top] == np.lexsort((np.arange(len(ref)), ref))[:5].tolist()


def test_types_lists_arrays_doubles_ints(duck):
    sql = ("SELECT {f}(binarize([1, -2, 3]::INTEGER[])), {f}(binarize([0.5, -0.5]::DOUBLE[])), "
           "{f}(binarize([1.0, 2.0, 3.0]::FLOAT[3], [2.0, 2.0, 2.0])), {f}(binarize([1, 2]::FLOAT[], [0, 5]::DOUBLE[]))")
    assert duck.execute(sql.format(f="")).fetchone() == ("101", "10", "001", "10")  # BIT: one bit a dimension
    row = duck.execute(sql.format(f="code_bytes")).fetchone()
    assert row == (bytes([0b10100000]), bytes([0b10000000]), bytes([0b00100000]), bytes([0b10000000]))


def test_nulls_and_ragged_columns(duck):
    rows = duck.execute("SELECT binarize(v), code_bytes(binarize(v)) FROM (VALUES ([1.0, -1.0]), (NULL), "
                        "([1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0])) t(v)").fetchall()
    assert rows == [("10", bytes([0b10000000])), (None, None), ("111011111", bytes([0b11101111, 0b10000000]))]
    assert duck.execute("SELECT hamming(NULL, binarize([1.0]))").fetchone()[0] is None


def test_per_row_thresholds(duck):
    got = duck.execute("SELECT binarize(v, t), code_bytes(binarize(v, t)) FROM (VALUES ([1.0, 2.0], [0.0, 3.0]), "
                       "([1.0, 2.0], [2.0, 0.0])) s(v, t)").fetchall()
    assert got == [("10", bytes([0b10000000])), ("01", bytes([0b01000000]))]


@pytest.mark.parametrize("sql,error,message", [
    ("SELECT binarize([1.0, 'nan'::FLOAT])", "NonFiniteError", "NaN or infinity not allowed in vector (element 2)"),
    ("SELECT binarize([1.0, 'inf'::DOUBLE])", "NonFiniteError", "NaN or infinity not allowed in vector (element 2)"),
    ("SELECT binarize([1.0, 2.0], [0.0, 'nan'::FLOAT])", "NonFiniteError",
     "NaN or infinity not allowed in thresholds (element 2)"),
    ("SELECT binarize([1.0, 2.0], [0.0])", "DimensionMismatchError", "vector has 2 dimensions but thresholds have 1"),
    ("SELECT binarize([]::FLOAT[])", "EmptyVectorError", "vector must have at least 1 dimension"),
    ("SELECT binarize([1.0, NULL])", "NullValueError", "vector must not contain nulls"),
    ("SELECT hamming(binarize([1.0]), binarize(range(1, 20)::FLOAT[]))", "CodeLengthMismatchError",
     "different bit lengths 1 and 19"),
    ("SELECT hamming(code_bytes(binarize([1.0])), binarize(range(1, 20)::FLOAT[]))", "CodeLengthMismatchError",
     "1 bytes cannot hold a code of 19 bits"),
])
def test_bad_input(duck, sql, error, message):
    with pytest.raises(duckdb.InvalidInputException) as exc:
        duck.execute(sql).fetchall()
    assert f"{error}: {message}" in str(exc.value)
    assert duck.execute("SELECT hamming(binarize([1.0, -1.0]), binarize([-1.0, 1.0]))").fetchone()[0] == 2


def test_register_is_idempotent_and_persists_nothing(tmp_path):
    import bitpress.duckdb as bd

    path = str(tmp_path / "x.duckdb")
    con = bd.connect(path)
    bd.register(con)
    con.execute("CREATE TABLE c AS SELECT binarize([1.0, -1.0]) AS code")
    con.close()
    con = duckdb.connect(path)  # a plain connection: the table is there, our functions are not
    assert con.execute("SELECT code FROM c").fetchone()[0] == "10"  # a plain BIT
    with pytest.raises(duckdb.CatalogException):
        con.execute("SELECT binarize([1.0])")
    con.close()


def test_two_connections_to_one_file_each_read_through_their_own(tmp_path):
    """DuckDB shares UDFs between connections to one file in a process: bitpress's table-reading
    functions are per connection, so closing one connection leaves the other working."""
    import bitpress.duckdb
    from bitpress import codebooks, schema

    path = str(tmp_path / "two.duckdb")
    a = bitpress.duckdb.connect(path)
    b = bitpress.duckdb.connect(path)  # used to fail: "function already exists"
    schema.upgrade(a)
    x = np.random.default_rng(3).standard_normal((200, 8)).astype(np.float32)
    a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v FLOAT[8])")
    a.executemany("INSERT INTO t VALUES (?, ?)", [(i, v.tolist()) for i, v in enumerate(x)])
    codebooks.fit_table(a, "t", "v", "cb", "median", progress=False)
    want = codebooks.load(a, "cb").encode_reference(x[:3])
    a.close()
    got = b.execute("SELECT code_bytes(binarize(v, 'cb')), hamming(binarize(v, 'cb'), binarize(v, 'cb')) FROM t "
                    "ORDER BY id LIMIT 3").fetchall()
    assert [bytes(g[0]) for g in got] == [w.tobytes() for w in want] and [g[1] for g in got] == [0, 0, 0]
    b.close()


def test_knn_with_a_null_query_raises(duck):
    """Class 6 of the hardening issue: a NULL query is an error, never arbitrary rows."""
    duck.execute("CREATE TABLE t (id INT, v FLOAT[2], code BLOB)")
    duck.execute("INSERT INTO t VALUES (1, [1, 2], binarize([1, 2]::FLOAT[])), (2, [2, 1], binarize([-1, 2]::FLOAT[]))")
    for sql in ("SELECT * FROM bitpress_knn('t', 'code', 'v', NULL, 1)",
                "SELECT * FROM bitpress_knn_codes('t', 'code', NULL, 1)"):
        with pytest.raises(Exception, match="query must not be NULL"):
            duck.execute(sql).fetchall()
