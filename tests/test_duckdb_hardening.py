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
    # binarize's codes carry their length (DuckDB BIT, PostgreSQL varbit): 3 vs 4 and 9 vs 12
    # bits (one and two bytes each), in all its forms; padding bits set in a BLOB met with one
    ("SELECT hamming(binarize('[1,2,3]'::vector), binarize('[1,2,3,4]'::vector))",
     "SELECT hamming(binarize([1, 2, 3]::FLOAT[]), binarize([1, 2, 3, 4]::FLOAT[]))"),
    ("SELECT hamming(binarize('[1,-1,1,-1,-1,-1,1,1,-1]'::vector), binarize('[1,-1,1,-1,-1,-1,1,1,-1,1,1,1]'::vector))",
     "SELECT hamming(binarize([1, -1, 1, -1, -1, -1, 1, 1, -1]::FLOAT[]), binarize([1, -1, 1, -1, -1, -1, 1, 1, -1, 1, 1, 1]::FLOAT[]))"),
    ("SELECT hamming(binarize('[1,2,3]'::vector, '{0,0,0}'::real[]), binarize('[1,2,3,4]'::vector, '{0,0,0,0}'::real[]))",
     "SELECT hamming(binarize([1, 2, 3]::FLOAT[], [0, 0, 0]::FLOAT[]), binarize([1, 2, 3, 4]::FLOAT[], [0, 0, 0, 0]::FLOAT[]))"),
    ("SELECT hamming(binarize('[1,2]'::vector, 'two'), binarize('[1,2,3]'::vector, 'three'))",
     "SELECT hamming(binarize([1, 2]::FLOAT[], 'two'), binarize([1, 2, 3]::FLOAT[], 'three'))"),
    ("SELECT hamming(binarize('[1,2,3]'::vector), code_from_bytes('\\xb0'::bytea, 3))",
     "SELECT hamming(binarize([1, 2, 3]::FLOAT[]), '\\xb0'::BLOB)"),
    ("SELECT bitpress_score(binarize('[1,2,3]'::vector), '[1,2]', 'two')",
     "SELECT bitpress_score(binarize([1, 2, 3]::FLOAT[]), [1, 2], 'two')"),
    ("SELECT hamming(B'1011', code_from_bytes('\\xa0'::bytea, 3))",
     "SELECT hamming('1011'::BIT, code_from_bytes('\\xa0'::BLOB, 3))"),
    ("SELECT code_from_bytes('\\xb0'::bytea, 3)", "SELECT code_from_bytes('\\xb0'::BLOB, 3)"),
    ("SELECT hamming(B'101', code_from_bytes('\\xb0'::bytea, 3))", "SELECT hamming('101'::BIT, '\\xb0'::BLOB)"),
    ("SELECT hamming(code_from_bytes('\\xb0'::bytea, 3), B'101')", "SELECT hamming('\\xb0'::BLOB, '101'::BIT)"),
    ("SELECT code_from_bytes('\\xa000'::bytea, 3)", "SELECT code_from_bytes('\\xa0\\x00'::BLOB, 3)"),
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
        duck.execute("INSERT INTO t4 VALUES (?, ?, binarize(?::FLOAT[]))", [i, v.tolist(), v.tolist()])
    pg_state, pg_msg = error_of(pg, "SELECT * FROM bitpress_knn_codes(NULL::t4, 'code', '[1,2,3]', 3)")
    assert pg_state == "22000" and "different bit lengths" in pg_msg
    for sql in ("SELECT * FROM bitpress_knn_codes('t4', 'code', [1.0, 2, 3], 3)",
                "SELECT * FROM bitpress_knn('t4', 'code', 'v', [1.0, 2, 3], 3)"):
        state, msg = error_of(duck, sql)
        assert state == "22000" and "different bit lengths 4 and 3" in msg, msg
    q = [0.3, -1.0, 2.0, 0.1]
    want = pg.execute("SELECT id, hamming(code, binarize(%s::real[]::vector)) FROM t4 ORDER BY 2, id LIMIT 5",
                      [q]).fetchall()
    got = duck.execute("SELECT id, hamming(code, binarize(?::FLOAT[])) AS d "
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
    duck.executemany("INSERT INTO t VALUES (?, ?::FLOAT[], code_bytes(binarize(?::FLOAT[])), "
                     "code_bytes(binarize(?::FLOAT[], 'cb')))",
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


# --- stores: class 2 (the source is a qualified name), 3 (ids), 8 (what is read is checked) ----

def store_rows(duck, table, rows):
    duck.executemany(f"INSERT INTO {table} VALUES (?, ?)", [(i, bits_of(c)) for i, c in rows])


def brute(rows, q, k):
    return sorted((sum(a != b for a, b in zip(c, q)), i) for i, c in rows)[:k]


def store_knn(duck, store, q, k):
    return [(d, i) for i, d in duck.execute("SELECT id, distance FROM bitpress_store_knn(?, ?, ?)",
                                            [store, bits_of(q), k]).fetchall()]


def test_store_follows_its_schema_qualified_table(duck_books):
    """Class 2: a store records its table's schema, so a table of the same name in another
    schema (another search_path) is never read; a store whose table is gone is not served."""
    from bitpress import stores

    duck = duck_books
    duck.execute("CREATE SCHEMA a; CREATE SCHEMA b")
    duck.execute("CREATE TABLE a.t (id BIGINT PRIMARY KEY, code BLOB); CREATE TABLE b.t (id BIGINT PRIMARY KEY, code BLOB)")
    rows_a = [(i, f"{i:08b}") for i in range(1, 6)]
    rows_b = [(i, f"{255 - i:08b}") for i in range(100, 103)]
    store_rows(duck, "a.t", rows_a)
    store_rows(duck, "b.t", rows_b)
    duck.execute("SET search_path = 'a'")
    assert stores.create(duck, "sa", "t", "id", "code") == 5
    assert stores.create(duck, "sb", "b.t", "id", "code") == 3
    assert duck.execute("SELECT name, source FROM bitpress.code_stores ORDER BY name").fetchall() == \
        [("sa", "a.t"), ("sb", "b.t")]
    duck.execute("SET search_path = 'b'")  # "t" is now b.t: the stores keep their own tables
    assert stores.rebuild(duck, "sa") == 5 and stores.check(duck, "sa")
    assert store_knn(duck, "sa", "00000011", 5) == brute(rows_a, "00000011", 5)
    assert stores.knn(duck, "sb", np.frombuffer(bits_of("11111111"), np.uint8), 3) == \
        [(i, d) for d, i in brute(rows_b, "11111111", 3)]
    duck.execute("RESET search_path")
    duck.execute("ALTER TABLE a.t RENAME TO gone")
    for run in (lambda: stores.rebuild(duck, "sa"), lambda: store_knn(duck, "sa", "00000011", 5),
                lambda: stores.knn(duck, "sa", np.zeros(1, np.uint8), 1)):
        with pytest.raises(Exception, match='code store "sa": its table a.t does not exist'):
            run()
    with pytest.raises(Exception, match='relation "nope" does not exist') as ei:
        stores.create(duck, "sn", "nope", "id", "code")
    assert getattr(ei.value, "sqlstate", None) == "42P01"


def test_store_refuses_ids_it_cannot_keep_as_postgresql(both):
    """Class 3: ids that are not integers (1.4 and 1.2 both become 1), NULL ids and non-code
    columns are refused at create (and rebuild), with PostgreSQL's SQLSTATE."""
    from bitpress import errors, stores

    pg, duck = both
    pg.execute("CREATE TABLE nums (id numeric PRIMARY KEY, code varbit)")
    pg.execute("INSERT INTO nums VALUES (1.4, B'101'), (1.2, B'110')")
    pg_state, pg_msg = error_of(pg, "SELECT bitpress_store_create('x', 'nums', 'id', 'code')")
    for idtype in ("DOUBLE", "DECIMAL(4, 1)", "VARCHAR"):
        duck.execute(f"CREATE OR REPLACE TABLE nums (id {idtype}, code BLOB)")
        duck.execute("INSERT INTO nums VALUES ('1.4', '\\xa0'::BLOB), ('1.2', '\\xc0'::BLOB)")
        with pytest.raises(errors.BitpressError) as ei:
            stores.create(duck, "x", "nums", "id", "code")
        assert (ei.value.sqlstate, "needs smallint, integer or bigint ids" in str(ei.value)) == (pg_state, True)
        assert "needs smallint, integer or bigint ids" in pg_msg
    duck.execute("CREATE TABLE nulls (id INTEGER, code BLOB)")
    duck.execute("INSERT INTO nulls VALUES (1, '\\xa0'::BLOB), (NULL, '\\xc0'::BLOB), (NULL, NULL)")
    with pytest.raises(errors.BitpressError, match=r'code store "x": 1 rows have a code and a NULL id \(id\)') as ei:
        stores.create(duck, "x", "nulls", "id", "code")
    assert ei.value.sqlstate == "23502"
    duck.execute("CREATE TABLE texts (id INTEGER, code VARCHAR)")
    duck.execute("INSERT INTO texts VALUES (1, 'a')")
    with pytest.raises(errors.BitpressError, match="is not a BLOB or BIT column") as ei:
        stores.create(duck, "x", "texts", "id", "code")
    assert ei.value.sqlstate == "42804"
    assert duck.execute("SELECT count(*) FROM bitpress.code_stores").fetchall() == [(0,)]
    # a store whose table later gets a NULL id is refused at its rebuild, and keeps its segments
    duck.execute("DELETE FROM nulls WHERE id IS NULL")
    stores.create(duck, "x", "nulls", "id", "code")
    duck.execute("INSERT INTO nulls VALUES (NULL, '\\xe0'::BLOB)")
    with pytest.raises(errors.BitpressError, match="NULL id"):
        stores.rebuild(duck, "x")
    assert duck.execute("SELECT id, distance FROM bitpress_store_knn('x', '\\xa0'::BLOB, 5)").fetchall() == [(1, 0)]


@pytest.fixture
def store8(duck_books):
    """A DuckDB store of 40 codes in 4 segments, its segment columns made nullable as a
    hand-edited database could have them."""
    from bitpress import stores

    duck = duck_books
    rng = np.random.default_rng(8)
    rows = [(int(i), "".join(rng.choice(["0", "1"], 16))) for i in rng.permutation(1000)[:40]]
    duck.execute("CREATE TABLE s8 (id BIGINT, code BLOB)")
    store_rows(duck, "s8", rows)
    assert stores.create(duck, "s8", "s8", "id", "code", segment_codes=10) == 40
    for col in ("n", "ids", "codes"):
        duck.execute(f"ALTER TABLE bitpress.code_segments ALTER COLUMN {col} DROP NOT NULL")
    return duck, rows


CORRUPTIONS = [
    ("UPDATE bitpress.code_segments SET codes = ('\\xff'::BLOB || codes[2:]) WHERE segment = 2",
     "a segment's checksum does not match its bytes (bitpress.code_segments row segment = 2)"),
    ("UPDATE bitpress.code_segments SET ids = (ids[1:3] || '\\x7f'::BLOB || ids[5:]) WHERE segment = 1",
     "a segment's checksum does not match its bytes (bitpress.code_segments row segment = 1)"),
    ("UPDATE bitpress.code_segments SET checksum = NULL WHERE segment = 3",
     "a segment has no checksum (written before schema revision 0007) (bitpress.code_segments row segment = 3)"),
    ("UPDATE bitpress.code_segments SET n = NULL WHERE segment = 1",
     "bitpress.code_segments has a NULL n in row segment = 1"),
    ("UPDATE bitpress.code_segments SET ids = NULL WHERE segment = 0",
     "bitpress.code_segments has a NULL ids in row segment = 0"),
    ("UPDATE bitpress.code_segments SET codes = NULL WHERE segment = 2",
     "bitpress.code_segments has a NULL codes in row segment = 2"),
    ("UPDATE bitpress.code_segments SET n = 11 WHERE segment = 0",
     "a segment's sizes do not match its 11 codes of 16 bits"),
    ("DELETE FROM bitpress.code_segments WHERE segment = 3", "found 3 segments, its last rebuild wrote 4"),
    ("DELETE FROM bitpress.code_segments WHERE segment = 1", "segment 1 is missing (found segment 2)"),
    ("UPDATE bitpress.code_stores SET bits = NULL", "bitpress.code_stores has a NULL bits"),
    ("UPDATE bitpress.code_stores SET bits = 24", "a segment's sizes do not match its 10 codes of 24 bits"),
]


@pytest.mark.parametrize("sql,message", CORRUPTIONS)
def test_corrupt_store_tables_are_xx001_naming_what_is_wrong(store8, sql, message):
    """Class 8 (and 1): what a DuckDB store reads from its tables is checked; a flipped byte, a
    NULL, a missing segment or a bad size is XX001 naming the store, table, column and
    segment, never a wrong distance."""
    from bitpress import errors, stores

    duck, rows = store8
    if "bits = NULL" in sql:
        duck.execute("ALTER TABLE bitpress.code_stores ALTER COLUMN bits DROP NOT NULL")
    duck.execute(sql)
    stores._CACHE.clear()  # as a new process would read it
    _, msg = error_of(duck, "SELECT * FROM bitpress_store_knn('s8', '\\x0000'::BLOB, 5)")
    assert f'CorruptDataError: code store "s8": {message}' in msg, msg
    with pytest.raises(errors.BitpressError) as ei:
        stores.knn(duck, "s8", np.zeros(2, np.uint8), 5)
    assert ei.value.sqlstate == "XX001" and message in str(ei.value)
    # a rebuild writes the store again from its table
    assert stores.rebuild(duck, "s8") == 40
    assert store_knn(duck, "s8", "0000000000000000", 5) == brute(rows, "0000000000000000", 5)


def test_store_checksums_are_postgresqls_and_huge_k_is_bounded(store8, pg):
    """Each segment's checksum is the one PostgreSQL computes for the same bytes; a k far above
    the rows allocates for the rows and answers them all."""
    from bitpress import stores

    duck, rows = store8
    segs = duck.execute("SELECT ids, codes, checksum FROM bitpress.code_segments ORDER BY segment").fetchall()
    assert len(segs) == 4
    for ids, codes, checksum in segs:
        assert pg.execute("SELECT bitpress_segment_checksum(%s, %s)", [ids, codes]).fetchone()[0] == checksum
    q = "1010101010101010"
    assert store_knn(duck, "s8", q, 2**31 - 1) == brute(rows, q, 40)
    assert stores.knn(duck, "s8", np.frombuffer(bits_of(q), np.uint8), 2**62) == [(i, d) for d, i in brute(rows, q, 40)]


def test_internal_udfs_raise_bitpress_errors(both):
    """The fuzz's finding: a malformed stamp escaped bitpress_score_udf as a bare ValueError."""
    _, duck = both
    state, msg = error_of(duck, "SELECT bitpress_score_udf('\\xa0'::BLOB, [1.0, 2, 3], 'three', 'x', 0)")
    assert state == "22023" and "malformed codebook stamp 'x'" in msg, msg
    # code_from_bytes with 0 or fewer bits: PostgreSQL 0.5.0's messages (a code of 0 bits exists
    # there, B''; DuckDB has no empty BIT)
    for sql, want in (("SELECT code_from_bytes('\\xa0'::BLOB, 0)", ("22000", "1 bytes cannot hold a code of 0 bits")),
                      ("SELECT code_from_bytes('\\xa0'::BLOB, -1)", ("22023", "bit length must not be negative, got -1")),
                      ("SELECT code_from_bytes(''::BLOB, 0)", ("22023", "a DuckDB BIT holds at least 1 bit"))):
        state, msg = error_of(duck, sql)
        assert (state, want[1] in msg) == (want[0], True), msg
    # the fuzz's finding: bit lengths that are not the bytes' escaped the internal hamming UDF
    # as a bare ValueError (numpy's reshape)
    for sql, want in (("SELECT bitpress_hamming_codes('\\x8a\\x50'::BLOB, -5, '\\xc6'::BLOB, 0)",
                       ("22023", "bit length must not be negative, got -5")),
                      ("SELECT bitpress_hamming_codes('\\x8a\\x50'::BLOB, 3, '\\xc6'::BLOB, 0)",
                       ("22000", "2 bytes cannot hold a code of 3 bits"))):
        state, msg = error_of(duck, sql)
        assert (state, want[1] in msg) == (want[0], True), msg


def test_a_duckdb_store_from_before_0007_answers_after_the_upgrade(tmp_path):
    """Migration 0007 computes the checksum of each existing DuckDB segment (PostgreSQL's
    stores are rebuilt), so an old store answers exactly at once, and a flipped byte after it
    is still caught."""
    import bitpress.duckdb
    from bitpress import errors, schema, stores

    con = bitpress.duckdb.connect(str(tmp_path / "old.duckdb"))
    schema.upgrade(con, "0006_inline_segments")
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 256, (300, 8), dtype=np.uint8)
    con.execute("CREATE TABLE items (id BIGINT PRIMARY KEY, code BLOB)")
    con.executemany("INSERT INTO items VALUES (?, ?)", [[i, c.tobytes()] for i, c in enumerate(codes)])
    stores.create(con, "s", "items", "id", "code", segment_codes=100)
    schema.upgrade(con)
    assert con.execute("SELECT count(*) FROM bitpress.code_segments WHERE checksum IS NULL").fetchone()[0] == 0
    d = np.unpackbits(codes ^ codes[7], axis=1).sum(axis=1)
    want = [(int(i), int(d[i])) for i in np.lexsort((np.arange(300), d))[:5]]
    stores._CACHE.clear()
    assert stores.knn(con, "s", codes[7], 5) == want
    con.execute("UPDATE bitpress.code_segments SET codes = ? WHERE segment = 1",
                [bytes([codes[100, 0] ^ 1]) + codes[100:200].tobytes()[1:]])
    stores._CACHE.clear()
    with pytest.raises(errors.CorruptDataError, match="checksum does not match"):
        stores.knn(con, "s", codes[7], 5)
    con.close()
