"""Hardening of the DuckDB side (issue #15): the same input gives the same answer or the same
error (SQLSTATE and message) in DuckDB as in PostgreSQL, and bitpress's own DuckDB tables are
checked on every read."""
import numpy as np
import pytest
from conftest import error_of

from bitpress import codebooks
from bitpress.codebook import Codebook


def bits_of(s):
    """A bit string as PostgreSQL's code bytes (MSB first, zero padding at the end)."""
    return np.packbits(np.array([int(c) for c in s], np.uint8)).tobytes()


# --- class 7: codes carry their bit length ---------------------------------------------------

# (PostgreSQL, DuckDB) spellings of one mistake: codes of 3 and 4 bits, padding bits set
SAME_ERROR = [
    ("SELECT hamming(B'101', B'1011')", "SELECT hamming('101'::BIT, '1011'::BIT)"),
    ("SELECT hamming(binarize('[1,2,3]'::vector), binarize('[1,2,3,4]'::vector))",
     "SELECT hamming(code_from_bytes(binarize([1, 2, 3]::FLOAT[]), 3), code_from_bytes(binarize([1, 2, 3, 4]::FLOAT[]), 4))"),
    ("SELECT hamming(B'1011', code_from_bytes('\\xa0'::bytea, 3))",
     "SELECT hamming('1011'::BIT, code_from_bytes('\\xa0'::BLOB, 3))"),
    ("SELECT code_from_bytes('\\xb0'::bytea, 3)", "SELECT code_from_bytes('\\xb0'::BLOB, 3)"),
    ("SELECT hamming(B'101', code_from_bytes('\\xb0'::bytea, 3))", "SELECT hamming('101'::BIT, '\\xb0'::BLOB)"),
    ("SELECT hamming(code_from_bytes('\\xb0'::bytea, 3), B'101')", "SELECT hamming('\\xb0'::BLOB, '101'::BIT)"),
    ("SELECT code_from_bytes('\\xa000'::bytea, 3)", "SELECT code_from_bytes('\\xa0\\x00'::BLOB, 3)"),
    ("SELECT code_from_bytes('\\xa0'::bytea, 0)", "SELECT code_from_bytes('\\xa0'::BLOB, 0)"),
    ("SELECT bitpress_score(B'101', '[1,2]', 'two')", "SELECT bitpress_score('101'::BIT, [1, 2], 'two')"),
    ("SELECT bitpress_score(B'1011', '[1,2,3]', 'three')", "SELECT bitpress_score('1011'::BIT, [1, 2, 3], 'three')"),
    ("SELECT bitpress_score(code_from_bytes('\\xb0'::bytea, 3), '[1,2,3]', 'three')",
     "SELECT bitpress_score('\\xb0'::BLOB, [1, 2, 3], 'three')"),
]


def books_in(conn):
    codebooks.save(conn, "two", Codebook("median", 2, src_a=[0, 1], thr_a=[0, 0], base=[0, 0], delta=[1, 1]))
    codebooks.save(conn, "three", Codebook("median", 3, src_a=[0, 1, 2], thr_a=[0, 0, 0], base=[0, 0, 0],
                                           delta=[1, 1, 1]))


@pytest.fixture
def both(pg_books, duck_books):
    books_in(pg_books)
    books_in(duck_books)
    return pg_books, duck_books


@pytest.mark.parametrize("pg_sql,duck_sql", SAME_ERROR)
def test_bit_length_and_padding_errors_are_postgresqls(both, pg_sql, duck_sql):
    pg, duck = both
    state, message = error_of(pg, pg_sql)
    assert state in ("22000", "22023")
    message = message.splitlines()[0]
    got_state, got = error_of(duck, duck_sql)
    assert (got_state, message in got) == (state, True), (got_state, got, message)


def test_bit_codes_give_postgresqls_answers(both):
    """Random codes of odd lengths as BIT in DuckDB and bit(n) in PostgreSQL: the same distances,
    the same bytes through code_bytes / code_from_bytes, and the exact scores."""
    pg, duck = both
    rng = np.random.default_rng(7)
    for n in (1, 3, 7, 8, 9, 63, 65, 385):
        a = ["".join(rng.choice(["0", "1"], n)) for _ in range(20)]
        b = ["".join(rng.choice(["0", "1"], n)) for _ in range(20)]
        want = [sum(x != y for x, y in zip(s, t)) for s, t in zip(a, b)]
        got_pg = [r[0] for r in pg.execute("SELECT hamming(x::varbit, y::varbit) FROM unnest(%s::text[], %s::text[]) "
                                           "WITH ORDINALITY u(x, y, o) ORDER BY o", [a, b]).fetchall()]
        duck.execute("CREATE OR REPLACE TABLE p AS SELECT unnest(?::VARCHAR[]) AS x, unnest(?::VARCHAR[]) AS y, "
                     "unnest(range(20)) AS o", [a, b])
        got = duck.execute("SELECT hamming(x::BIT, y::BIT), hamming(x::BIT, code_bytes(y::BIT)), code_bytes(x::BIT), "
                           "code_from_bytes(code_bytes(x::BIT), ?)::VARCHAR FROM p ORDER BY o", [n]).fetchall()
        assert got_pg == want and [g[0] for g in got] == want and [g[1] for g in got] == want
        assert [bytes(g[2]) for g in got] == [bits_of(s) for s in a]
        assert [g[3] for g in got] == a
    # a BLOB met with a BIT is read at the BIT's length, as code_from_bytes(blob, n) would
    assert pg.execute("SELECT hamming(B'1011', code_from_bytes('\\xa0'::bytea, 4))").fetchone() == \
        duck.execute("SELECT hamming('1011'::BIT, '\\xa0'::BLOB)").fetchone() == (1,)
    # "three" reconstructs bit j as 0 or 1: the score is the sum of the query's set elements
    q = [0.5, -1.0, 2.0]
    want = [2.5, 1.0, 2.5]
    got_pg = [r[0] for r in pg.execute("SELECT bitpress_score(c::varbit, %s::real[]::vector, 'three') "
                                       "FROM unnest(ARRAY['101', '011', '101']) WITH ORDINALITY u(c, o) ORDER BY o",
                                       [q]).fetchall()]
    got = duck.execute("SELECT bitpress_score(c::BIT, ?::FLOAT[], 'three'), bitpress_score(code_bytes(c::BIT), "
                       "?::FLOAT[], 'three', 1) FROM unnest(['101', '011', '101']) WITH ORDINALITY t(c, o) ORDER BY o",
                       [q, q]).fetchall()
    assert got_pg == want and [g[0] for g in got] == want and [g[1] for g in got] == want


def test_knn_over_bit_codes_refuses_another_length_as_postgresql(both):
    """A column of 4-bit codes searched with a 3-dimension query: PostgreSQL raises 22000; so
    does DuckDB over a BIT column; a BIT column of the right length gives the exact top-k."""
    pg, duck = both
    pg.execute("CREATE TABLE t4 (id int PRIMARY KEY, v vector(4), code bit(4))")
    duck.execute("CREATE TABLE t4 (id INTEGER PRIMARY KEY, v FLOAT[4], code BIT)")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    for i, v in enumerate(x):
        pg.execute("INSERT INTO t4 VALUES (%s, %s::real[]::vector, binarize(%s::real[]::vector))", [i, v.tolist(), v.tolist()])
        duck.execute("INSERT INTO t4 VALUES (?, ?, code_from_bytes(binarize(?::FLOAT[]), 4))", [i, v.tolist(), v.tolist()])
    pg_state, pg_msg = error_of(pg, "SELECT * FROM bitpress_knn_codes(NULL::t4, 'code', '[1,2,3]', 3)")
    assert pg_state == "22000" and "different bit lengths" in pg_msg
    for sql in ("SELECT * FROM bitpress_knn_codes('t4', 'code', [1.0, 2, 3], 3)",
                "SELECT * FROM bitpress_knn('t4', 'code', 'v', [1.0, 2, 3], 3)"):
        state, msg = error_of(duck, sql)
        assert state == "22000" and "different bit lengths 4 and 3" in msg, msg
    q = [0.3, -1.0, 2.0, 0.1]
    want = pg.execute("SELECT id, hamming(code, binarize(%s::real[]::vector)) FROM t4 ORDER BY 2, id LIMIT 5",
                      [q]).fetchall()
    got = duck.execute("SELECT id, hamming(code, code_from_bytes(binarize(?::FLOAT[]), 4)) AS d "
                       "FROM bitpress_knn_codes('t4', 'code', ?::FLOAT[], 5) ORDER BY d, id", [q, q]).fetchall()
    assert [d for _, d in got] == [d for _, d in want]


def test_store_over_bit_codes_keeps_their_length(duck_books):
    from bitpress import stores

    duck = duck_books
    duck.execute("CREATE TABLE s3 (id BIGINT PRIMARY KEY, code BIT)")
    codes = ["101", "011", "111", "000", "100"]
    duck.executemany("INSERT INTO s3 VALUES (?, ?::BIT)", list(enumerate(codes)))
    assert stores.create(duck, "s3", "s3", "id", "code") == 5
    assert duck.execute("SELECT bits FROM bitpress.code_stores WHERE name = 's3'").fetchall() == [(3,)]
    want = sorted((sum(a != b for a, b in zip(c, "110")), i) for i, c in enumerate(codes))[:3]
    assert duck.execute("SELECT distance, id FROM bitpress_store_knn('s3', '110'::BIT, 3)").fetchall() == want
    assert duck.execute("SELECT distance, id FROM bitpress_store_knn('s3', ?::BLOB, 3)", [bits_of("110")]).fetchall() == want
    for query, message in (("'1100'::BIT", "different bit lengths 4 and 3"),
                           ("'\\xd0'::BLOB", "padding bits after bit 3 are not zero")):
        state, msg = error_of(duck, f"SELECT * FROM bitpress_store_knn('s3', {query}, 3)")
        assert state == "22000" and message in msg, msg


# --- lesser: bitpress_score's version given positionally -------------------------------------

def test_score_takes_its_version_positionally_as_in_postgresql(both):
    pg, duck = both
    codebooks.save(pg, "three", Codebook("median", 3, src_a=[0, 1, 2], thr_a=[0, 0, 0], base=[0, 0, 0],
                                         delta=[2, 2, 2]))  # version 2: levels doubled
    codebooks.save(duck, "three", Codebook("median", 3, src_a=[0, 1, 2], thr_a=[0, 0, 0], base=[0, 0, 0],
                                           delta=[2, 2, 2]))
    q = [0.5, -1.0, 2.0]
    want = [(2.5, 5.0, 5.0, 2.5)]
    assert pg.execute("SELECT bitpress_score(B'101', %(q)s::real[]::vector, 'three', 1), "
                      "bitpress_score(B'101', %(q)s::real[]::vector, 'three', 2), "
                      "bitpress_score(B'101', %(q)s::real[]::vector, 'three'), "
                      "bitpress_score(B'101', %(q)s::real[]::vector, 'three', 1)", {"q": q}).fetchall() == want
    assert duck.execute("SELECT bitpress_score('101'::BIT, $q::FLOAT[], 'three', 1), "
                        "bitpress_score('\\xa0'::BLOB, $q::FLOAT[], 'three', 2), "
                        "bitpress_score('101'::BIT, $q::FLOAT[], 'three'), "
                        "bitpress_score('101'::BIT, $q::FLOAT[], 'three', version := 1)", {"q": q}).fetchall() == want
    state, msg = error_of(duck, "SELECT bitpress_score('101'::BIT, [1, 2, 3], 'three', 3)", {"does not exist": "42704"})
    assert state == "42704" and 'codebook "three" version 3 does not exist' in msg, msg


# --- class 6: a NULL query raises in every k-NN entry point ----------------------------------

NULL_QUERIES = [
    "SELECT * FROM bitpress_knn('t', 'code', 'v', {q}, 3)",
    "SELECT * FROM bitpress_knn('t', 'code', 'v', {q}, 3, oversample := 2, metric := 'l2')",
    "SELECT * FROM bitpress_knn('t', 'cb_code', 'v', {q}, 3, codebook := 'cb')",
    "SELECT * FROM bitpress_knn('t', 'cb_code', 'v', {q}, 3, codebook := 'cb', scoring := 'asymmetric')",
    "SELECT * FROM bitpress_knn_codes('t', 'code', {q}, 3)",
    "SELECT * FROM bitpress_knn_codes('t', 'cb_code', {q}, 3, codebook := 'cb')",
    "SELECT * FROM bitpress_knn_codes('t', 'cb_code', {q}, 3, codebook := 'cb', scoring := 'asymmetric')",
    "SELECT * FROM bitpress_knn_store('t', 's', 'id', 'v', {q}, 3)",
    "SELECT * FROM bitpress_store_knn('s', {q}, 3)",
]


@pytest.mark.parametrize("null", ["NULL", "NULL::FLOAT[]", "CAST(NULL AS BLOB)"])
@pytest.mark.parametrize("sql", NULL_QUERIES)
def test_a_null_query_raises_in_every_knn_entry_point(duck_books, sql, null):
    from bitpress import stores

    duck = duck_books
    codebooks.save(duck, "cb", Codebook("median", 3, src_a=[0, 1, 2], thr_a=[0, 0, 0], base=[0, 0, 0], delta=[1, 1, 1]))
    rng = np.random.default_rng(1)
    duck.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, v FLOAT[3], code BLOB, cb_code BLOB)")
    duck.executemany("INSERT INTO t VALUES (?, ?::FLOAT[], binarize(?::FLOAT[]), binarize(?::FLOAT[], 'cb'))",
                     [(i, v, v, v) for i, v in enumerate(rng.standard_normal((20, 3)).tolist())])
    stores.create(duck, "s", "t", "id", "code")
    if "BLOB" in null and "store_knn" not in sql:
        null = "NULL::FLOAT[]"  # a vector query
    with pytest.raises(Exception, match="query must not be NULL"):
        duck.execute(sql.format(q=null)).fetchall()
    # the same with a query is answered
    q = "'\\xa0'::BLOB" if "store_knn(" in sql else "[1.0, -2.0, 0.5]"
    assert len(duck.execute(sql.format(q=q)).fetchall()) == 3


def test_store_over_blob_codes_reads_them_at_the_querys_length(duck_books):
    """A store over a BLOB column is 8 bits a byte; a 3-bit query reads its codes at 3 bits, as
    hamming(BIT, BLOB) does: codes with padding bits set are refused, not counted."""
    from bitpress import stores

    duck = duck_books
    duck.execute("CREATE TABLE b3 (id BIGINT PRIMARY KEY, code BLOB)")
    duck.executemany("INSERT INTO b3 VALUES (?, ?)", [(0, bits_of("101")), (1, bits_of("011"))])
    stores.create(duck, "b3", "b3", "id", "code")
    assert duck.execute("SELECT id, distance FROM bitpress_store_knn('b3', '111'::BIT, 2)").fetchall() == [(0, 1), (1, 1)]
    duck.execute("INSERT INTO b3 VALUES (2, ?)", [bits_of("0111")])
    stores.rebuild(duck, "b3")
    assert duck.execute("SELECT id, distance FROM bitpress_store_knn('b3', ?, 1)", [bits_of("0111")]).fetchall() == [(2, 0)]
    state, msg = error_of(duck, "SELECT * FROM bitpress_store_knn('b3', '111'::BIT, 2)")
    assert state == "22000" and "padding bits after bit 3 are not zero" in msg, msg
