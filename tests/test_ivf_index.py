"""bitpress_ivf, the index access method: answers checked against exact search on real data.

Every operator class is asked real MiniLM queries and its top 10 compared with numpy's exact
top 10 under the same distance; rows must come back in exact-distance order, every row must be
reachable (no cap), and inserts, deletes, VACUUM, REINDEX, NULLs and bad input behave.
"""
from __future__ import annotations

import numpy as np
import psycopg
import pytest

from pgvector import HalfVector

from bitpress import ivf
from conftest import copy_vectors, load_shared, restored_copy

N = 20_000
NQ = 60


@pytest.fixture(scope="module")
def data():
    x = load_shared("pypi-minilm", "corpus.npy")[:N].copy()
    q = load_shared("pypi-minilm", "queries.npy")[:NQ].copy()
    return x, q


def exact(x, q, metric, k=10):
    d = ivf.distance(x, q, metric)
    return np.argsort(d, kind="stable")[:k], d


OPS = {"cosine": ("bitpress_cosine_ops", "<=>"), "l2": ("bitpress_l2_ops", "<->"),
       "ip": ("bitpress_ip_ops", "<#>")}


def knn(pg, q, op, k=10, table="t", where=""):
    rows = pg.execute(f"SELECT id, v {op} %s FROM {table} {where} ORDER BY v {op} %s LIMIT {k}",
                      (q, q)).fetchall()
    return [r[0] for r in rows], [r[1] for r in rows]


def uses_index(pg, op, table="t"):
    plan = "\n".join(r[0] for r in pg.execute(
        f"EXPLAIN SELECT id FROM {table} ORDER BY v {op} %s LIMIT 10", (np.ones(384, np.float32),)))
    return "Index Scan using" in plan


def recall(pg, x, queries, metric, k=10, **kw):
    op = OPS[metric][1]
    hits = 0
    for q in queries:
        ids, dists = knn(pg, q, op, k, **kw)
        assert dists == sorted(dists), "rows not in exact-distance order"
        hits += len(set(ids) & set(exact(x, q, metric, k)[0].tolist()))
    return hits / (k * len(queries))


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_every_operator_class_finds_the_exact_neighbours(pg, data, metric):
    x, queries = data
    if metric != "cosine":
        # lengths that differ, so L2, inner product and cosine rank differently
        x = x * np.random.default_rng(5).uniform(0.5, 2.0, (len(x), 1)).astype(np.float32)
    copy_vectors(pg, "t", x)
    pg.execute(f"CREATE INDEX ON t USING bitpress_ivf (v {OPS[metric][0]}) WITH (lists = 100)")
    assert uses_index(pg, OPS[metric][1])
    pg.execute("SET bitpress.probes = 10")
    r10 = recall(pg, x, queries, metric)
    pg.execute("SET bitpress.probes = 30")
    r30 = recall(pg, x, queries, metric)
    # every list and a wide bound: the estimator's error bound must hold, so exact answers
    pg.execute("SET bitpress.probes = 100; SET bitpress.epsilon = 4")
    r_all = recall(pg, x, queries, metric)
    assert r10 >= 0.75, r10
    assert r30 >= 0.93 and r30 >= r10, (r10, r30)
    assert r_all >= 0.995, r_all


def test_bits_and_epsilon(pg, data):
    x, queries = data
    copy_vectors(pg, "t", x)
    pg.execute("SET bitpress.probes = 100")
    r = {}
    for bits in (1, 2):
        pg.execute(f"CREATE INDEX t_ivf ON t USING bitpress_ivf (v) WITH (lists = 100, bits = {bits})")
        for eps in (0, 1.9):
            pg.execute(f"SET bitpress.epsilon = {eps}")
            r[bits, eps] = recall(pg, x, queries, "cosine")
        pg.execute("DROP INDEX t_ivf")
    # every list read: the bound decides; with it, near exact, without it much less
    assert r[1, 1.9] >= 0.98 and r[2, 1.9] >= 0.98, r
    assert r[1, 0] < 0.9 and r[2, 0] < 0.95, r
    # 2 bits estimate better than 1
    assert r[2, 0] > r[1, 0], r


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_halfvec_columns(pg, data, metric):
    x, queries = data
    x = x[:10000].astype(np.float16).astype(np.float32)  # what a halfvec column holds
    pg.execute("CREATE TABLE h (id int PRIMARY KEY, v halfvec(384))")
    with pg.cursor().copy("COPY h (id, v) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["int4", "halfvec"])
        for i, v in enumerate(x):
            copy.write_row([i, HalfVector(v)])
    ops = {"cosine": "bitpress_halfvec_cosine_ops", "l2": "bitpress_halfvec_l2_ops"}[metric]
    pg.execute(f"CREATE INDEX ON h USING bitpress_ivf (v {ops}) WITH (lists = 50)")
    op = OPS[metric][1]
    plan = "\n".join(r[0] for r in pg.execute(
        f"EXPLAIN SELECT id FROM h ORDER BY v {op} %s::halfvec LIMIT 10", (queries[0],)))
    assert "Index Scan using h_v_idx" in plan
    pg.execute("SET bitpress.probes = 20")
    hits = 0
    for q in queries[:30]:
        rows = pg.execute(f"SELECT id, v {op} %s::halfvec FROM h ORDER BY v {op} %s::halfvec LIMIT 10",
                          (q, q)).fetchall()
        assert [d for _, d in rows] == sorted(d for _, d in rows)
        qh = q.astype(np.float16).astype(np.float32)
        hits += len({i for i, _ in rows} & set(exact(x, qh, metric)[0].tolist()))
    assert hits / 300 >= 0.9, hits / 300


def test_no_row_cap_filters_and_large_limits(pg, data):
    x, queries = data
    copy_vectors(pg, "t", x)
    pg.execute("CREATE INDEX ON t USING bitpress_ivf (v) WITH (lists = 50)")
    pg.execute("SET bitpress.probes = 2")
    q = queries[0]
    # a LIMIT far past what the probed lists hold: every row, each once, in order within lists
    ids = [r[0] for r in pg.execute("SELECT id FROM t ORDER BY v <=> %s LIMIT 100000", (q,))]
    assert len(ids) == N and len(set(ids)) == N
    # a filter that rejects 99 rows of 100: still 20 rows (pgvector's HNSW returns at most
    # ef_search rows before the filter). With one list probed, rows of later lists nearer than
    # those returned come after them; with every list probed, the exact 20 in order.
    keep = np.arange(N) % 100 == 7
    want = np.nonzero(keep)[0][exact(x[keep], q, "cosine", 20)[0]]
    for probes in (1, 50):
        pg.execute(f"SET bitpress.probes = {probes}")
        got = pg.execute("SELECT id, v <=> %s FROM t WHERE id %% 100 = 7 ORDER BY v <=> %s LIMIT 20",
                         (q, q)).fetchall()
        assert len(got) == 20 and len({i for i, _ in got}) == 20
        assert all(i % 100 == 7 for i, _ in got)
    assert [d for _, d in got] == sorted(d for _, d in got)
    assert len({i for i, _ in got} & set(want.tolist())) >= 19


def test_nulls_and_zero_vectors_come_last_and_are_never_lost(pg, data):
    x, queries = data
    copy_vectors(pg, "t", x[:3000])
    pg.execute("INSERT INTO t VALUES (-1, NULL), (-2, %s)", (np.zeros(384, np.float32),))
    pg.execute("CREATE INDEX ON t USING bitpress_ivf (v) WITH (lists = 20)")
    pg.execute("INSERT INTO t VALUES (-3, NULL), (-4, %s)", (np.zeros(384, np.float32),))
    assert uses_index(pg, "<=>")
    ids = [r[0] for r in pg.execute("SELECT id FROM t ORDER BY v <=> %s", (queries[0],))]
    assert len(ids) == 3004 and set(ids[-4:]) == {-1, -2, -3, -4}
    # a NULL query: every row (distances are all NULL), as a sequential scan gives
    assert pg.execute("SELECT count(*) FROM (SELECT id FROM t ORDER BY v <=> NULL LIMIT 5000) s"
                      ).fetchone()[0] == 3004


def test_inserts_deletes_vacuum_and_reindex(pg, data):
    x, queries = data
    copy_vectors(pg, "t", x[:10000])
    pg.execute("CREATE INDEX t_ivf ON t USING bitpress_ivf (v) WITH (lists = 40)")
    pg.execute("SET bitpress.probes = 40")
    # rows inserted after the build are found: each is its own nearest neighbour
    with pg.cursor().copy("COPY t (id, v) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["int4", "vector"])
        for i in range(10000, 12000):
            copy.write_row([i, x[i]])
    for i in range(10000, 12000, 97):
        assert knn(pg, x[i], "<=>", 1)[0] == [i]
    # deleted rows never come back; VACUUM removes their entries and the index stays usable
    pg.execute("DELETE FROM t WHERE id % 3 = 0")
    pg.execute("VACUUM t")
    live = np.array([i for i in range(12000) if i % 3])
    assert pg.execute("SELECT count(*) FROM (SELECT id FROM t ORDER BY v <=> %s LIMIT 100000) s",
                      (queries[1],)).fetchone()[0] == len(live)
    def answers():
        got = [knn(pg, q, "<=>")[0] for q in queries[:10]]
        hits = sum(len(set(ids) & set(live[exact(x[live], q, "cosine")[0]].tolist()))
                   for q, ids in zip(queries[:10], got))
        assert hits >= 95, hits
        return got

    answers()
    # REINDEX clusters the rows anew; the build is deterministic: twice, the same answers
    pg.execute("REINDEX INDEX t_ivf")
    first = answers()
    pg.execute("REINDEX INDEX t_ivf")
    assert answers() == first


def test_an_index_built_on_an_empty_table_takes_rows(pg, data):
    x, queries = data
    pg.execute("CREATE TABLE t (id int PRIMARY KEY, v vector(384))")
    pg.execute("CREATE INDEX ON t USING bitpress_ivf (v)")
    with pg.cursor().copy("COPY t (id, v) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["int4", "vector"])
        for i in range(500):
            copy.write_row([i, x[i]])
    # the first row made one list: every row is in it, and a wide bound reranks all needed
    pg.execute("SET bitpress.epsilon = 4")
    ids, _ = knn(pg, queries[0], "<=>")
    assert ids == exact(x[:500], queries[0], "cosine")[0].tolist()


def test_refusals_have_sqlstates(pg, data):
    x, _ = data
    copy_vectors(pg, "t", x[:1000])
    pg.execute("CREATE INDEX ON t USING bitpress_ivf (v) WITH (lists = 10)")
    with pytest.raises(psycopg.errors.DataException, match="expected 384 dimensions, not 3"):
        pg.execute("SELECT id FROM t ORDER BY v <=> '[1,2,3]' LIMIT 1").fetchall()
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="indexes a column"):
        pg.execute("CREATE INDEX ON t USING bitpress_ivf ((v + v))")
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        pg.execute("CREATE INDEX ON t USING bitpress_ivf (v) WITH (bits = 5)")
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        pg.execute("CREATE INDEX ON t USING bitpress_ivf (v) WITH (lists = 0)")
    with pytest.raises(psycopg.errors.DataException, match="expected 384 dimensions"):
        pg.execute("INSERT INTO t VALUES (5000, '[1,2]')")
    # no ORDER BY: the index is never chosen
    pg.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in pg.execute("EXPLAIN SELECT * FROM t WHERE id > 5"))
    assert "bitpress_ivf" not in plan and "t_v_idx" not in plan


def test_progress_phases_and_catalog(pg):
    assert pg.execute("SELECT amname FROM pg_am WHERE amname = 'bitpress_ivf'").fetchone()
    classes = {r[0] for r in pg.execute(
        "SELECT opcname FROM pg_opclass c JOIN pg_am a ON a.oid = c.opcmethod "
        "WHERE amname = 'bitpress_ivf'")}
    assert classes == {"bitpress_cosine_ops", "bitpress_l2_ops", "bitpress_ip_ops",
                       "bitpress_halfvec_cosine_ops", "bitpress_halfvec_l2_ops", "bitpress_halfvec_ip_ops"}
    pg.execute("SELECT bitpress_simd()")  # the settings exist once the library is loaded
    assert pg.execute("SHOW bitpress.probes").fetchone()[0] == "10"
    assert float(pg.execute("SHOW bitpress.epsilon").fetchone()[0]) == 1.9


def test_concurrent_readers_and_writers(pg, data, postgresql_proc):
    """Four sessions at once: two insert rows in small transactions (one aborts some), two search
    all the while. No error, every committed row is in the index and no aborted one is, and
    each reader's answers are in exact order with no duplicate."""
    import threading

    x, queries = data
    copy_vectors(pg, "t", x[:6000])
    pg.execute("CREATE INDEX t_ivf ON t USING bitpress_ivf (v) WITH (lists = 40)")
    p = postgresql_proc
    dsn = dict(host=p.host, port=p.port, user=p.user, dbname=pg.info.dbname)
    errors, committed = [], set()

    def writer(start, stop, abort_every):
        from pgvector.psycopg import register_vector
        try:
            with psycopg.connect(**dsn) as c:
                register_vector(c)
                for lo in range(start, stop, 50):
                    with c.transaction(force_rollback=(lo // 50) % abort_every == 0):
                        for i in range(lo, min(lo + 50, stop)):
                            c.execute("INSERT INTO t (id, v) VALUES (%s, %s)", (i, x[i]))
                    if (lo // 50) % abort_every:
                        committed.update(range(lo, min(lo + 50, stop)))
        except Exception as e:  # reported below
            errors.append(repr(e))

    stop_reading = threading.Event()
    answers = []

    def reader(seed):
        from pgvector.psycopg import register_vector
        try:
            with psycopg.connect(**dsn, autocommit=True) as c:
                register_vector(c)
                c.execute("SET bitpress.probes = 10")
                i = seed
                while not stop_reading.is_set():
                    q = queries[i % len(queries)]
                    rows = c.execute("SELECT id, v <=> %s FROM t ORDER BY v <=> %s LIMIT 50", (q, q)).fetchall()
                    answers.append(rows)
                    i += 1
        except Exception as e:
            errors.append(repr(e))

    writers = [threading.Thread(target=writer, args=(6000, 9000, 4)), threading.Thread(target=writer, args=(9000, 12000, 5))]
    readers = [threading.Thread(target=reader, args=(s,)) for s in (0, 7)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop_reading.set()
    for t in readers:
        t.join()
    assert not errors, errors
    assert len(answers) > 20
    for rows in answers:
        d = [r[1] for r in rows]
        assert len(rows) == 50 and d == sorted(d) and len({r[0] for r in rows}) == 50
    # every committed row, and no aborted one, is reachable through the index
    want = set(range(6000)) | committed
    assert pg.execute("SELECT count(*) FROM t").fetchone()[0] == len(want)
    assert uses_index(pg, "<=>")
    got = {r[0] for r in pg.execute("SELECT id FROM t ORDER BY v <=> %s LIMIT 100000", (queries[0],))}
    assert got == want
    for i in sorted(committed)[::97]:
        assert knn(pg, x[i], "<=>", 1)[0] == [i]


def test_dump_and_restore_keep_the_index(pg, data, postgresql_proc, tmp_path):
    """pg_dump / pg_restore: the index comes back with its operator class and options, and,
    the build being seeded, gives exactly the answers it gave before the dump."""
    x, queries = data
    copy_vectors(pg, "t", x[:8000])
    pg.execute("CREATE INDEX t_ivf ON t USING bitpress_ivf (v bitpress_l2_ops) WITH (lists = 50, bits = 2)")
    pg.execute("SET bitpress.probes = 12")
    before = [knn(pg, q, "<->")[0] for q in queries[:20]]
    with restored_copy(pg, postgresql_proc, tmp_path, "restored_ivf") as r:
        assert r.execute("SELECT pg_get_indexdef('t_ivf'::regclass)").fetchone()[0] == \
            "CREATE INDEX t_ivf ON public.t USING bitpress_ivf (v bitpress_l2_ops) WITH (lists='50', bits='2')"
        r.execute("SET bitpress.probes = 12")
        assert uses_index(r, "<->")
        assert [knn(r, q, "<->")[0] for q in queries[:20]] == before
