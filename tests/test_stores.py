"""Packed code stores in PostgreSQL: exact k-NN against brute force through inserts, updates,
deletes, rebuilds, concurrent writers and a backend killed in the middle of a rebuild."""
import os
import re
import signal
import time

import numpy as np
import psycopg
import pytest

from bitpress import errors, kernels, schema

BITS = 64  # short codes: many ties, so the (distance, id) order is exercised


def bitstrings(codes, bits=BITS):
    return ["".join(format(b, "08b") for b in c)[:bits] for c in codes]


def make_items(pg, rng, n, first_id=0):
    codes = rng.integers(0, 256, (n, BITS // 8), dtype=np.uint8)
    ids = np.arange(first_id, first_id + n) * 3 - 7  # negative and gapped ids
    with pg.cursor() as cur:
        cur.executemany("INSERT INTO items (id, code) VALUES (%s, %s::varbit)",
                        list(zip(ids.tolist(), bitstrings(codes))))
    return dict(zip(ids.tolist(), codes))


def brute(rows, q, k):
    ids = np.array(sorted(rows))
    codes = np.stack([rows[i] for i in ids])
    d = kernels.hamming(q, codes)
    order = np.lexsort((ids, d))[:k]
    return [(int(ids[i]), int(d[i])) for i in order]


def store_knn(pg, q, k, store="s"):
    """bitpress_store_knn, after checking that the parallel form gives the same rows."""
    args = (store, bitstrings([q])[0], k)
    got = [tuple(r) for r in pg.execute("SELECT id, distance FROM bitpress_store_knn(%s, %s::varbit, %s)", args).fetchall()]
    par = [tuple(r) for r in pg.execute("SELECT id, distance FROM bitpress_store_knn_parallel(%s, %s::varbit, %s)", args).fetchall()]
    assert par == got
    return got


@pytest.fixture
def items(pg):
    schema.upgrade(pg)
    pg.execute(f"CREATE TABLE items (id bigint PRIMARY KEY, code bit({BITS}))")
    return pg


def test_store_matches_brute_force_through_changes(items):
    pg, rng = items, np.random.default_rng(1)
    rows = make_items(pg, rng, 3000)
    assert pg.execute("SELECT bitpress_store_create('s', 'items', 'id', 'code', 700)").fetchone()[0] == 3000
    assert pg.execute("SELECT count(*), sum(n) FROM bitpress.code_segments WHERE store = 's'").fetchone() == (5, 3000)
    queries = rng.integers(0, 256, (20, BITS // 8), dtype=np.uint8)
    for q in queries[:5]:
        for k in (1, 10, 50):
            assert store_knn(pg, q, k) == brute(rows, q, k)
    # inserts, updates (code and id), deletes: tracked in the delta, exact at once; ids beyond
    # int4 make the rebuilt last segment store 8-byte ids
    rows.update(make_items(pg, rng, 300, first_id=5000))
    rows.update(make_items(pg, rng, 40, first_id=2_000_000_000))
    upd = rng.choice(sorted(rows), 200, replace=False)
    new_codes = rng.integers(0, 256, (200, BITS // 8), dtype=np.uint8)
    with pg.cursor() as cur:
        cur.executemany("UPDATE items SET code = %s::varbit WHERE id = %s",
                        list(zip(bitstrings(new_codes), upd.tolist())))
    rows.update(dict(zip(upd.tolist(), new_codes)))
    gone = rng.choice(sorted(rows), 250, replace=False).tolist()
    pg.execute("DELETE FROM items WHERE id = ANY(%s)", (gone,))
    for i in gone:
        del rows[i]
    moved = sorted(rows)[:5]
    pg.execute("UPDATE items SET id = id + 1000000 WHERE id = ANY(%s)", (moved,))
    for i in moved:
        rows[i + 1000000] = rows.pop(i)
    pg.execute("UPDATE items SET code = NULL WHERE id = %s", (sorted(rows)[10],))
    del rows[sorted(rows)[10]]
    assert pg.execute("SELECT count(*) FROM bitpress.code_delta").fetchone()[0] > 0
    for q in queries[5:15]:
        assert store_knn(pg, q, 25) == brute(rows, q, 25)
    # a rebuild folds the delta in and gives the same answers
    assert pg.execute("SELECT bitpress_store_rebuild('s')").fetchone()[0] == len(rows)
    assert pg.execute("SELECT count(*) FROM bitpress.code_delta").fetchone()[0] == 0
    widths = pg.execute("SELECT DISTINCT length(ids) / n FROM bitpress.code_segments").fetchall()
    assert sorted(w for w, in widths) == [4, 8]
    for q in queries[15:]:
        assert store_knn(pg, q, 25) == brute(rows, q, 25)


def test_store_sees_what_the_snapshot_sees(items, postgresql_proc):
    pg, rng = items, np.random.default_rng(2)
    rows = make_items(pg, rng, 500)
    pg.execute("SELECT bitpress_store_create('s', 'items', 'id', 'code', 128)")
    p = postgresql_proc
    q = rng.integers(0, 256, BITS // 8, dtype=np.uint8)
    with psycopg.connect(host=p.host, port=p.port, user=p.user, dbname=pg.info.dbname) as writer:
        # uncommitted writes are invisible; committed ones appear in the next statement
        near = q.copy()
        writer.execute("INSERT INTO items VALUES (999999, %s::varbit)", bitstrings([near]))
        writer.execute("DELETE FROM items WHERE id = %s", (brute(rows, q, 1)[0][0],))
        assert store_knn(pg, q, 5) == brute(rows, q, 5)
        # a REPEATABLE READ reader keeps its snapshot while the writer commits
        reader = psycopg.connect(host=p.host, port=p.port, user=p.user, dbname=pg.info.dbname)
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        before = store_knn(reader, q, 5)
        writer.commit()
        assert store_knn(reader, q, 5) == before == brute(rows, q, 5)
        reader.rollback()
        reader.close()
    del rows[brute(rows, q, 1)[0][0]]
    rows[999999] = near
    got = store_knn(pg, q, 5)
    assert got == brute(rows, q, 5) and got[0] == (999999, 0)


def test_killed_rebuild_leaves_the_store_exact(items, postgresql_proc):
    pg, rng = items, np.random.default_rng(3)
    rows = make_items(pg, rng, 2000)
    pg.execute("SELECT bitpress_store_create('s', 'items', 'id', 'code', 300)")
    gone = sorted(rows)[:100]
    pg.execute("DELETE FROM items WHERE id = ANY(%s)", (gone,))
    for i in gone:
        del rows[i]
    p = postgresql_proc
    victim = psycopg.connect(host=p.host, port=p.port, user=p.user, dbname=pg.info.dbname)
    pid = victim.info.backend_pid
    victim.execute("BEGIN")
    victim.execute("SELECT bitpress_store_rebuild('s')")  # segments rewritten, not committed
    os.kill(pid, signal.SIGKILL)  # the postmaster restarts every backend and recovers
    with pytest.raises(psycopg.OperationalError):
        victim.execute("COMMIT")
    deadline = time.time() + 30
    while True:
        try:
            conn = psycopg.connect(host=p.host, port=p.port, user=p.user, dbname=pg.info.dbname, autocommit=True)
            break
        except psycopg.OperationalError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    with conn:
        assert conn.execute("SELECT count(*) FROM bitpress.code_delta").fetchone()[0] == 100  # not folded in
        for q in rng.integers(0, 256, (5, BITS // 8), dtype=np.uint8):
            assert store_knn(conn, q, 20) == brute(rows, q, 20)


def test_segments_are_inline_pages_read_in_place(pg):
    """Schema 0006: each segment fills at most one heap page, stored inline (never toasted), and
    the store records what its rebuild wrote."""
    schema.upgrade(pg)
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, (2000, 48), dtype=np.uint8)
    pg.execute("CREATE TABLE wide (id integer PRIMARY KEY, code bit(384))")
    with pg.cursor() as cur:
        cur.executemany("INSERT INTO wide VALUES (%s, %s::varbit)", list(enumerate(bitstrings(codes, 384))))
    assert pg.execute("SELECT bitpress_store_create('wide_s', 'wide', 'id', 'code')").fetchone()[0] == 2000
    storage = pg.execute("SELECT attname, attstorage FROM pg_attribute WHERE attrelid = "
                         "'bitpress.code_segments'::regclass AND attname IN ('ids', 'codes')").fetchall()
    assert sorted(storage) == [("codes", "p"), ("ids", "p")]
    per = (8100 - len("wide_s")) // (48 + 4)  # 4-byte ids: every id fits in int4
    sizes = pg.execute("SELECT n, length(codes), pg_column_size(codes) FROM bitpress.code_segments "
                       "WHERE store = 'wide_s' ORDER BY segment").fetchall()
    assert [n for n, _, _ in sizes] == [per] * (2000 // per) + [2000 % per]
    assert all(size == n * 48 and col == size + 4 for n, size, col in sizes)  # inline, uncompressed
    toast = pg.execute("SELECT reltoastrelid::regclass::text FROM pg_class "
                       "WHERE oid = 'bitpress.code_segments'::regclass").fetchone()[0]
    assert pg.execute(f"SELECT count(*) FROM {toast}").fetchone()[0] == 0
    segments, first, last = pg.execute("SELECT segments, first_block, last_block FROM bitpress.code_stores "
                                       "WHERE name = 'wide_s'").fetchone()
    assert segments == len(sizes) and 0 <= first <= last
    blocks = pg.execute("SELECT min((ctid::text::point)[0]), max((ctid::text::point)[0]) "
                        "FROM bitpress.code_segments WHERE store = 'wide_s'").fetchone()
    assert (first, last) == blocks
    q = rng.integers(0, 256, 48, dtype=np.uint8)
    got = pg.execute("SELECT id, distance FROM bitpress_store_knn('wide_s', %s::varbit, 10)",
                     bitstrings([q], 384)).fetchall()
    assert [tuple(r) for r in got] == brute(dict(enumerate(codes)), q, 10)


def test_store_stays_exact_when_segments_move(items):
    """bitpress_store_knn reads the blocks the last rebuild recorded; when VACUUM FULL moves the
    rows it must notice (segment count) and scan the whole table."""
    pg, rng = items, np.random.default_rng(6)
    rows = make_items(pg, rng, 3000)
    pg.execute("SELECT bitpress_store_create('first', 'items', 'id', 'code', 50)")
    pg.execute("SELECT bitpress_store_create('s', 'items', 'id', 'code', 50)")
    recorded = pg.execute("SELECT first_block, last_block FROM bitpress.code_stores WHERE name = 's'").fetchone()
    queries = rng.integers(0, 256, (6, BITS // 8), dtype=np.uint8)
    for q in queries[:2]:
        assert store_knn(pg, q, 15) == brute(rows, q, 15)
    pg.execute("SELECT bitpress_store_drop('first')")
    pg.execute("VACUUM FULL bitpress.code_segments")  # 's' moves to the start, the table shrinks
    assert pg.execute("SELECT pg_relation_size('bitpress.code_segments') / 8192").fetchone()[0] <= recorded[0]
    for q in queries[2:4]:
        assert store_knn(pg, q, 15) == brute(rows, q, 15)
    # a new store fills the recorded blocks again: in range, but none of them holds 's'
    pg.execute("SELECT bitpress_store_create('other', 'items', 'id', 'code', 50)")
    assert pg.execute("SELECT count(*) FROM bitpress.code_segments WHERE store = 's' AND "
                      "(ctid::text::point)[0] BETWEEN %s AND %s", recorded).fetchone()[0] == 0
    for q in queries[4:]:
        assert store_knn(pg, q, 15) == brute(rows, q, 15)
    # a segment lost behind bitpress's back is an error, not a silently partial answer
    pg.execute("DELETE FROM bitpress.code_segments WHERE store = 's' AND segment = 3")
    with pytest.raises(psycopg.errors.DataCorrupted, match="found 59 segments, its last rebuild wrote 60"):
        store_knn(pg, queries[0], 5)


def test_parallel_store_scan_runs_in_workers(items):
    """bitpress_store_knn_parallel is a parallel aggregate: workers score their share of the
    segments and the leader merges the partial top-k states; the rows are the same."""
    pg, rng = items, np.random.default_rng(7)
    rows = make_items(pg, rng, 4000)
    pg.execute("SELECT bitpress_store_create('s', 'items', 'id', 'code', 40)")
    more = make_items(pg, rng, 50, first_id=9000)  # in the delta, merged with the workers' rows
    rows.update(more)
    for setting in ("max_parallel_workers_per_gather = 2", "min_parallel_table_scan_size = 0",
                    "parallel_setup_cost = 0", "parallel_tuple_cost = 0"):
        pg.execute(f"SET {setting}")
    pg.execute("LOAD 'auto_explain'")
    for setting in ("auto_explain.log_min_duration = 0", "auto_explain.log_analyze = on",
                    "auto_explain.log_nested_statements = on", "auto_explain.log_level = notice"):
        pg.execute(f"SET {setting}")
    plans = []
    pg.add_notice_handler(lambda d: plans.append(d.message_primary))
    q = rng.integers(0, 256, BITS // 8, dtype=np.uint8)
    got = pg.execute("SELECT id, distance FROM bitpress_store_knn_parallel('s', %s::varbit, 20)",
                     bitstrings([q])).fetchall()
    pg.execute("RESET auto_explain.log_min_duration")
    assert [tuple(r) for r in got] == brute(rows, q, 20)
    plan = next(p for p in plans if "bitpress_segments_knn" in p or "Partial Aggregate" in p)
    assert "Partial Aggregate" in plan and "Finalize Aggregate" in plan
    assert any("Parallel" in line and "Scan on code_segments" in line for line in plan.splitlines())
    launched = [int(line.split(":")[1]) for line in plan.splitlines() if "Workers Launched" in line]
    assert launched and launched[0] >= 1


def test_segments_knn_aggregate_bad_input(items):
    pg = items
    q = "1" * BITS
    for sql, args, err in [
        ("SELECT bitpress_segments_knn(1, '\\x00000001'::bytea, '\\x00'::bytea, %s::varbit, 1, '{}')",
         [q], psycopg.errors.DataCorrupted),  # 1 code of 1 byte against 64-bit queries
        ("SELECT bitpress_segments_knn(1, '\\x00000001'::bytea, '\\x0000000000000000'::bytea, %s::varbit, 0, '{}')",
         [q], psycopg.errors.InvalidParameterValue),
        ("SELECT bitpress_segments_knn(1, '\\x00000001'::bytea, '\\x0000000000000000'::bytea, %s::varbit, 1, '{3,2}')",
         [q], psycopg.errors.InvalidParameterValue),
        ("SELECT bitpress_segments_knn(1, '\\x00000001'::bytea, '\\x0000000000000000'::bytea, "
         "CASE WHEN g = 1 THEN %s::varbit ELSE %s::varbit END, 1, '{}') FROM generate_series(1, 2) g",
         [q, "0" * BITS], psycopg.errors.InvalidParameterValue),
    ]:
        with pytest.raises(err):
            pg.execute(sql, args)
    # an empty input gives NULL; a segment row with a NULL is corrupt data, never left out
    assert pg.execute("SELECT bitpress_segments_knn(n, ids, codes, %s::varbit, 3, '{}') "
                      "FROM bitpress.code_segments WHERE false", [q]).fetchone()[0] is None
    got = pg.execute("SELECT bitpress_segments_knn(n, '\\x0000000500000002'::bytea, c, %s::varbit, 3, '{5}') "
                     "FROM (VALUES (2, '\\xffffffffffffffff0000000000000000'::bytea)) v(n, c)",
                     [q]).fetchone()[0]
    assert got == [[2, 64]]
    with pytest.raises(psycopg.errors.DataCorrupted, match="a code segment has a NULL n"):
        pg.execute("SELECT bitpress_segments_knn(n, '\\x0000000500000002'::bytea, c, %s::varbit, 3, '{5}') "
                   "FROM (VALUES (2, '\\xffffffffffffffff0000000000000000'::bytea), (NULL, NULL)) v(n, c)", [q])
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="query must not be NULL"):
        pg.execute("SELECT bitpress_segments_knn(1, '\\x00000001'::bytea, '\\x0000000000000000'::bytea, NULL, 1, '{}')")


def test_schema_0006_needs_extension_0_4_and_rebuilds_stores_inline(pg):
    """From schema 0005 and extension 0.3.0 (out-of-line segments of 16384 codes): the new
    library still answers exactly; the migration refuses an old extension, then rewrites the
    stores inline; a downgrade leaves them exact."""
    pg.execute("DROP EXTENSION bitpress")
    pg.execute("CREATE EXTENSION bitpress VERSION '0.3.0'")
    schema.upgrade(pg, "0005_code_columns")
    pg.execute(f"CREATE TABLE items (id bigint PRIMARY KEY, code bit({BITS}))")
    rng = np.random.default_rng(8)
    rows = make_items(pg, rng, 3000)
    pg.execute("SELECT bitpress_store_create('s', 'items', 'id', 'code')")
    toast = pg.execute("SELECT reltoastrelid::regclass::text FROM pg_class "
                       "WHERE oid = 'bitpress.code_segments'::regclass").fetchone()[0]
    assert pg.execute("SELECT count(*), max(n) FROM bitpress.code_segments").fetchone() == (1, 3000)
    assert pg.execute(f"SELECT count(DISTINCT chunk_id) FROM {toast}").fetchone()[0] == 2  # ids, codes
    queries = rng.integers(0, 256, (6, BITS // 8), dtype=np.uint8)
    assert store_knn(pg, queries[0], 10) == brute(rows, queries[0], 10)
    with pytest.raises(RuntimeError, match="ALTER EXTENSION bitpress UPDATE first"):
        schema.upgrade(pg)
    assert schema.current(pg) == "0005_code_columns"
    pg.execute("ALTER EXTENSION bitpress UPDATE")
    assert schema.upgrade(pg) == "0010_duckdb_ivf"
    per = (8100 - 1 - 16) // (BITS // 8 + 4)  # a page, less the row's checksum (revision 0007)
    assert pg.execute("SELECT count(*), max(n), sum(n) FROM bitpress.code_segments").fetchone() == (
        -(-3000 // per), per, 3000)
    assert pg.execute(f"SELECT count(*) FROM {toast}").fetchone()[0] == 0
    assert pg.execute("SELECT segments FROM bitpress.code_stores").fetchone()[0] == -(-3000 // per)
    for q in queries[1:3]:
        assert store_knn(pg, q, 10) == brute(rows, q, 10)
    schema.downgrade(pg, "0005_code_columns")
    for q in queries[3:5]:
        assert store_knn(pg, q, 10) == brute(rows, q, 10)
    pg.execute("SELECT bitpress_store_rebuild('s')")  # out of line again, as 0005 stores them
    assert pg.execute("SELECT count(*) FROM bitpress.code_segments").fetchone()[0] == 1
    assert store_knn(pg, queries[5], 10) == brute(rows, queries[5], 10)


def test_store_bad_input(items):
    pg = items
    make_items(pg, np.random.default_rng(4), 50)
    pg.execute("SELECT bitpress_store_create('s', 'items', 'id', 'code')")
    for sql, state, message in [
        ("SELECT * FROM bitpress_store_knn('nope', B'1', 3)", "42704", 'code store "nope" does not exist'),
        ("SELECT * FROM bitpress_store_knn('s', B'101', 3)", "22000", "different bit lengths 3 and 64"),
        (f"SELECT * FROM bitpress_store_knn('s', repeat('1', {BITS})::varbit, 0)", "22023", "k must be at least 1, got 0"),
        ("SELECT bitpress_store_create('t', 'items', 'id', 'code', 0)", "22023", "segment_codes must be at least 1"),
        ("SELECT bitpress_store_create('s', 'items', 'id', 'code')", "23505", "duplicate key"),
        ("SELECT bitpress_store_rebuild('nope')", "42704", 'code store "nope" does not exist'),
    ]:
        with pytest.raises(psycopg.Error) as e:
            pg.execute(sql)
        assert e.value.sqlstate == state and message in str(e.value), (sql, e.value)
    pg.execute("CREATE TABLE mixed (id int PRIMARY KEY, code varbit)")
    pg.execute("INSERT INTO mixed VALUES (1, B'101'), (2, B'1010')")
    with pytest.raises(psycopg.errors.DataException, match="codes of 2 different lengths"):
        pg.execute("SELECT bitpress_store_create('m', 'mixed', 'id', 'code')")
    pg.execute("SELECT bitpress_store_drop('s')")
    assert pg.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'bitpress_store_%'").fetchone()[0] == 0
    assert pg.execute("SELECT count(*) FROM bitpress.code_segments").fetchone()[0] == 0


def test_knn_uses_a_store_and_returns_the_same_rows(pg_books, duck_books, minilm):
    from test_search import items_in_both, load_queries
    from test_codebooks import median_book

    pg = pg_books
    cb = median_book(minilm)
    items_in_both(pg, duck_books, minilm, cb)
    queries = load_queries()[:8]
    sql = "SELECT id FROM bitpress_knn(NULL::items, 'code', 'v', %s, 10, 4, 'docs')"
    without = [[r[0] for r in pg.execute(sql, (q,)).fetchall()] for q in queries]
    pg.execute("SELECT bitpress_store_create('items_code', 'items', 'id', 'code', 512)")
    assert pg.execute("SELECT name FROM bitpress_store_for('items', 'code')").fetchone()[0] == "items_code"
    with_store = [[r[0] for r in pg.execute(sql, (q,)).fetchall()] for q in queries]
    agree = sum(a == b for a, b in zip(without, with_store))
    assert agree >= 6  # the rest differ only by rows tied at the pool's edge (see test_search)
    # DuckDB: a store passed to search() gives the PostgreSQL store's rows
    from bitpress import stores
    from bitpress.search import search
    stores.create(duck_books, "items_code", "items", "id", "code", 512)
    for q, want in zip(queries, with_store):
        got = [r["id"] for r in search(duck_books, "items", q, 10, vector_column="v", codebook="docs", store="items_code")]
        assert got == want
        got = [r[0] for r in duck_books.execute(
            "SELECT id FROM bitpress_knn_store('items', 'items_code', 'id', 'v', ?::FLOAT[], 10, codebook := 'docs')",
            [q.tolist()]).fetchall()]
        assert got == want
    # the store's answer is exact: its pool equals brute-force Hamming under (distance, id)
    codes = kernels.encode(cb, minilm)
    for q in queries:
        qc = kernels.encode(cb, q)
        d = kernels.hamming(qc, codes)
        want = list(np.lexsort((np.arange(len(d)), d))[:40])
        got = [r[0] for r in pg.execute("SELECT id FROM bitpress_store_knn('items_code', binarize(%s, 'docs'), 40)", (q,)).fetchall()]
        assert got == want


def duck_items(duck, rng, n, first_id=0):
    import pyarrow as pa

    codes = rng.integers(0, 256, (n, BITS // 8), dtype=np.uint8)
    ids = np.arange(first_id, first_id + n) * 3 - 7
    tbl = pa.table({"id": pa.array(ids, pa.int64()),
                    "code": pa.array([c.tobytes() for c in codes], pa.binary())})
    duck.register("tmp_in", tbl)
    duck.execute("INSERT INTO items SELECT * FROM tmp_in")
    duck.unregister("tmp_in")
    return dict(zip(ids.tolist(), codes))


def test_duckdb_store_is_exact_as_of_its_last_rebuild(duck_books):
    import duckdb

    from bitpress import stores

    duck, rng = duck_books, np.random.default_rng(5)
    duck.execute("CREATE TABLE items (id BIGINT, code BLOB)")
    rows = duck_items(duck, rng, 3000)
    assert stores.create(duck, "s", "items", "id", "code", 700) == 3000
    assert duck.execute("SELECT count(*), sum(n) FROM bitpress.code_segments").fetchall() == [(5, 3000)]
    for q in rng.integers(0, 256, (5, BITS // 8), dtype=np.uint8):
        want = brute(rows, q, 30)
        assert stores.knn(duck, "s", q, 30) == want
        assert duck.execute("SELECT id, distance FROM bitpress_store_knn('s', ?, 30)", [q.tobytes()]).fetchall() == want
    # no triggers in DuckDB: changes are seen after a rebuild, not before; check() notices them
    assert stores.check(duck, "s")
    new = duck_items(duck, rng, 100, first_id=2_000_000_000)
    q = list(new.values())[1]  # (the first new row is zeroed below)
    assert not stores.check(duck, "s")
    assert stores.knn(duck, "s", q, 5) == brute(rows, q, 5)
    rows.update(new)
    assert stores.knn(duck, "s", q, 5, refresh=True) == brute(rows, q, 5)  # rebuilt first
    assert stores.check(duck, "s")
    duck.execute("UPDATE items SET code = ? WHERE id = ?", [bytes(BITS // 8), next(iter(new))])
    assert not stores.check(duck, "s")
    rows[next(iter(new))] = np.zeros(BITS // 8, np.uint8)
    assert stores.rebuild(duck, "s") == 3100
    assert stores.knn(duck, "s", q, 5) == brute(rows, q, 5)
    assert stores.knn(duck, "s", q, 1)[0][1] == 0
    for sql, args, message in [
        ("SELECT * FROM bitpress_store_knn('nope', ?, 3)", [q.tobytes()], 'code store "nope" does not exist'),
        ("SELECT * FROM bitpress_store_knn('s', ?, 3)", [b"\x01"], "different bit lengths 8 and 64"),
        ("SELECT * FROM bitpress_store_knn('s', ?, 0)", [q.tobytes()], "k must be at least 1, got 0"),
    ]:
        with pytest.raises(duckdb.Error, match=message):
            duck.execute(sql, args).fetchall()
    duck.execute("CREATE TABLE mixed AS SELECT * FROM (VALUES (1, '\\x01'::BLOB), (2, '\\x0102'::BLOB)) t(id, code)")
    with pytest.raises(errors.CodeLengthMismatchError):
        stores.create(duck, "m", "mixed", "id", "code")
    assert duck.execute("SELECT count(*) FROM bitpress.code_stores WHERE name = 'm'").fetchall() == [(0,)]
    stores.drop(duck, "s")
    assert duck.execute("SELECT count(*) FROM bitpress.code_segments").fetchall() == [(0,)]


def test_same_store_answers_in_both_engines(items, duck_books):
    from bitpress import stores

    pg, duck, rng = items, duck_books, np.random.default_rng(6)
    rows = make_items(pg, rng, 2000)
    duck.execute("CREATE TABLE items (id BIGINT, code BLOB)")
    import pyarrow as pa
    ids = sorted(rows)
    duck.register("tmp_in", pa.table({"id": pa.array(ids, pa.int64()),
                                      "code": pa.array([rows[i].tobytes() for i in ids], pa.binary())}))
    duck.execute("INSERT INTO items SELECT * FROM tmp_in")
    stores.create(pg, "s", "items", "id", "code", 256)
    stores.create(duck, "s", "items", "id", "code", 256)
    for q in rng.integers(0, 256, (5, BITS // 8), dtype=np.uint8):
        assert stores.knn(pg, "s", q, 40) == stores.knn(duck, "s", q, 40) == brute(rows, q, 40)


def test_store_refuses_ids_and_codes_it_cannot_keep(items):
    """Class 3 of the hardening issue: ids that are not unique NOT NULL integers, and codes of
    another length, are refused at create time and by the triggers on every write."""
    pg = items
    pg.execute("CREATE TABLE nums (id numeric PRIMARY KEY, code varbit)")
    pg.execute("INSERT INTO nums VALUES (1.4, B'101'), (1.2, B'110')")  # both become bigint 1
    pg.execute("CREATE TABLE nokey (id int NOT NULL, code varbit)")
    pg.execute("CREATE TABLE nullable (id int UNIQUE, code varbit)")
    pg.execute("CREATE TABLE partial (id int NOT NULL, code varbit)")
    pg.execute("CREATE UNIQUE INDEX ON partial (id) WHERE id > 0")
    pg.execute("CREATE TABLE texts (id int PRIMARY KEY, code text)")
    for table, state, message in [
        ("nums", "42804", "needs smallint, integer or bigint ids"),
        ("nokey", "42P16", "needs a PRIMARY KEY or UNIQUE constraint"),
        ("nullable", "23502", "must be NOT NULL for a code store"),
        ("partial", "42P16", "needs a PRIMARY KEY or UNIQUE constraint"),
        ("texts", "42804", "is not a bit(n) or bit varying column"),
    ]:
        with pytest.raises(psycopg.Error) as e:
            pg.execute("SELECT bitpress_store_create('x', %s, 'id', 'code')", (table,))
        assert (e.value.sqlstate, message in str(e.value)) == (state, True), (table, e.value)
    assert pg.execute("SELECT count(*) FROM bitpress.code_stores").fetchone()[0] == 0
    assert pg.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'bitpress_store_%'").fetchone()[0] == 0

    pg.execute("CREATE TABLE v (id int PRIMARY KEY, code varbit)")
    pg.execute("INSERT INTO v VALUES (1, B'1010'), (2, B'0110')")
    pg.execute("SELECT bitpress_store_create('v', 'v', 'id', 'code')")
    for sql in ("INSERT INTO v VALUES (3, B'101')", "UPDATE v SET code = B'10101' WHERE id = 1"):
        with pytest.raises(psycopg.errors.DataException, match='code store "v" holds codes of 4 bits, got one of'):
            pg.execute(sql)
    # the refused statements changed nothing: the store answers as before
    assert [tuple(r) for r in pg.execute("SELECT * FROM bitpress_store_knn('v', B'1010', 5)")] == [(1, 0), (2, 2)]
    pg.execute("INSERT INTO v VALUES (3, NULL)")  # a row without a code is simply not in the store
    assert [tuple(r) for r in pg.execute("SELECT * FROM bitpress_store_knn('v', B'1010', 5)")] == [(1, 0), (2, 2)]


def test_store_huge_k_and_bad_block_range(items):
    """Class 8: a huge k returns every row (its allocation is bounded by the data), and a block
    range recorded by hand never makes a query read (or extend) blocks the relation lacks."""
    pg, rng = items, np.random.default_rng(8)
    rows = make_items(pg, rng, 500)
    pg.execute("SELECT bitpress_store_create('s', 'items', 'id', 'code', 100)")
    q = rng.integers(0, 256, BITS // 8, dtype=np.uint8)
    assert store_knn(pg, q, 2**31 - 1) == brute(rows, q, 500)
    rel_blocks = "SELECT pg_relation_size('bitpress.code_segments') / 8192"
    before = pg.execute(rel_blocks).fetchone()[0]
    for lo, hi in ((4294967295, 4294967296), (-5, 3), (3, 1), (0, 2**40), (before, before + 1)):
        pg.execute("UPDATE bitpress.code_stores SET first_block = %s, last_block = %s", (lo, hi))
        assert store_knn(pg, q, 10) == brute(rows, q, 10), (lo, hi)
    assert pg.execute(rel_blocks).fetchone()[0] == before


def test_store_null_in_its_tables_is_corrupt_data(items):
    """Class 1: a NULL in bitpress's own store tables (a NOT NULL dropped by hand) is reported
    as XX001 naming the table and the column; the backend survives."""
    pg, rng = items, np.random.default_rng(9)
    make_items(pg, rng, 300)
    pg.execute("SELECT bitpress_store_create('s', 'items', 'id', 'code', 100)")
    q = bitstrings([rng.integers(0, 256, BITS // 8, dtype=np.uint8)])[0]
    for table, column, where in (("code_segments", "n", "segment = 1"), ("code_segments", "ids", "segment = 1"),
                                 ("code_segments", "codes", "segment = 0"), ("code_stores", "bits", "true")):
        pg.execute(f"ALTER TABLE bitpress.{table} ALTER COLUMN {column} DROP NOT NULL")
        with pg.transaction():
            pg.execute(f"UPDATE bitpress.{table} SET {column} = NULL WHERE {where}")
            with pytest.raises(psycopg.errors.DataCorrupted,
                               match=f'code store "s": bitpress.{table} has a NULL {column}'):
                with pg.transaction():
                    pg.execute("SELECT * FROM bitpress_store_knn('s', %s::varbit, 5)", (q,))
            if table == "code_segments":  # the parallel path: the same error, not a row left out
                with pytest.raises(psycopg.errors.DataCorrupted, match=f"a code segment has a NULL {column}"):
                    with pg.transaction():
                        pg.execute("SELECT * FROM bitpress_store_knn_parallel('s', %s::varbit, 5)", (q,))
            raise psycopg.Rollback
    pg.execute("ALTER TABLE bitpress.code_delta ALTER COLUMN id DROP NOT NULL")
    pg.execute("INSERT INTO bitpress.code_delta (store, id, code) VALUES ('s', NULL, NULL)")
    with pytest.raises(psycopg.errors.DataCorrupted, match='bitpress.code_delta has a NULL id'):
        pg.execute("SELECT * FROM bitpress_store_knn('s', %s::varbit, 5)", (q,))
    assert pg.execute("SELECT 1").fetchone() == (1,)


def test_store_reads_check_checksums_and_counts_in_both_paths(items):
    """Classes 4 and 8: a flipped byte inside a segment, a segment lost or a missing checksum are
    XX001 from the serial and the parallel path alike, never wrong distances or a partial top-k."""
    pg, rng = items, np.random.default_rng(11)
    rows = make_items(pg, rng, 400)
    pg.execute("SELECT bitpress_store_create('s', 'items', 'id', 'code', 100)")
    q = rng.integers(0, 256, BITS // 8, dtype=np.uint8)
    assert store_knn(pg, q, 10) == brute(rows, q, 10)
    ids, codes, sum_ = pg.execute("SELECT ids, codes, checksum FROM bitpress.code_segments "
                                  "WHERE segment = 2").fetchone()
    from bitpress import _core
    assert sum_ == _core.segment_checksum(ids, codes)  # the same value the DuckDB stores write
    qs = bitstrings([q])[0]
    cases = [
        ("UPDATE bitpress.code_segments SET codes = set_byte(codes, 17, get_byte(codes, 17) # 16) "
         "WHERE segment = 2", "a segment's checksum does not match its bytes"),
        ("UPDATE bitpress.code_segments SET ids = set_byte(ids, 3, get_byte(ids, 3) # 1) "
         "WHERE segment = 1", "a segment's checksum does not match its bytes"),
        ("UPDATE bitpress.code_segments SET checksum = NULL WHERE segment = 0",
         "a segment has no checksum (written before schema revision 0007)"),
        ("DELETE FROM bitpress.code_segments WHERE segment = 3", "found 3 segments, its last rebuild wrote 4"),
    ]
    for change, message in cases:
        for fn in ("bitpress_store_knn", "bitpress_store_knn_parallel"):
            with pg.transaction():
                pg.execute(change)
                with pytest.raises(psycopg.errors.DataCorrupted, match=re.escape(message)):
                    with pg.transaction():
                        pg.execute(f"SELECT * FROM {fn}('s', %s::varbit, 10)", (qs,))
                raise psycopg.Rollback
    assert store_knn(pg, q, 10) == brute(rows, q, 10)  # all rolled back: exact again
    pg.execute("UPDATE bitpress.code_segments SET checksum = checksum + 1 WHERE segment = 0")
    assert pg.execute("SELECT bitpress_store_rebuild('s')").fetchone()[0] == 400  # a rebuild repairs it
    assert store_knn(pg, q, 10) == brute(rows, q, 10)
