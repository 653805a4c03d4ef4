"""The DuckDB side of the IVF + RaBitQ index (bitpress.duckdb_ivf): built by a SQL function,
searched by bitpress_ivf_search with exact distances in exact order, exact under writes, and
refusing damaged index tables with XX001."""
import numpy as np
import pyarrow as pa
import pytest
from conftest import load_shared

from bitpress import duckdb_ivf, errors, ivf, schema


def vectors_table(con, name, x, ids=None, id_col="id", vec_col="embedding", array=True):
    ids = np.arange(len(x)) if ids is None else ids
    t = pa.table({"i": pa.array(ids, pa.int64()),
                  "v": pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).ravel()), x.shape[1])})
    con.register("_load", t)
    typ = f"FLOAT[{x.shape[1]}]" if array else "FLOAT[]"
    con.execute(f"CREATE TABLE {name} AS SELECT i AS {id_col}, CAST(v AS {typ}) AS {vec_col} FROM _load ORDER BY i")
    con.unregister("_load")


def queries_table(con, q):
    t = pa.table({"qid": pa.array(np.arange(len(q)), pa.int64()),
                  "q": pa.FixedSizeListArray.from_arrays(pa.array(q.astype(np.float32).ravel()), q.shape[1])})
    con.register("_q", t)
    con.execute(f"CREATE OR REPLACE TABLE queries AS SELECT qid, CAST(q AS FLOAT[{q.shape[1]}]) AS q FROM _q")
    con.unregister("_q")


def search(con, table, qid, k, **named):
    args = "".join(f", {key} := {val!r}" for key, val in named.items())
    return con.execute(f"SELECT id, distance FROM bitpress_ivf_search('{table}', "
                       f"(SELECT q FROM queries WHERE qid = {qid}), {k}{args})").fetchall()


def exact(x, ids, q, metric, k):
    d = ivf.distance(x, q, metric)
    if metric == "l2":
        d = np.sqrt(d)
    order = np.lexsort((ids, d))[:k]
    return ids[order], d[order]


@pytest.fixture(scope="module")
def minilm50k():
    return load_shared("pypi-minilm", "corpus.npy"), load_shared("pypi-minilm", "queries.npy")


@pytest.fixture(scope="module")
def docs(minilm50k):
    import bitpress.duckdb

    x, q = minilm50k
    con = bitpress.duckdb.connect()
    schema.upgrade(con)
    vectors_table(con, "docs", x)
    queries_table(con, q[:200])
    yield con, x, q[:200]
    con.close()


@pytest.mark.parametrize("metric,probes", [("cosine", 48), ("l2", 64), ("ip", 48)])
def test_recall_at_10_against_exact_on_50k_minilm(docs, metric, probes):
    """recall@10 >= 0.95 against the exact top 10 of the real 50k MiniLM set, through SQL; every
    distance returned is the exact one (numpy, double precision) and in ascending order."""
    con, x, q = docs
    name = con.execute(f"SELECT bitpress_ivf_create('docs', 'id', 'embedding', lists := 224, bits := 1, "
                       f"metric := '{metric}', name := 'docs_{metric}')").fetchall()[0][0]
    assert name == f"docs_{metric}"
    assert con.execute("SELECT lists, n, dims, bits, source FROM bitpress.ivf_indexes WHERE name = ?",
                       [name]).fetchall() == [(224, 50000, 384, 1, '"main"."docs"')]
    ids = np.arange(len(x))
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    if metric == "l2":
        full = (x64 ** 2).sum(1)[None, :] - 2 * q64 @ x64.T
    elif metric == "ip":
        full = -(q64 @ x64.T)
    else:
        full = -(q64 @ x64.T) / np.linalg.norm(x64, axis=1)[None, :]
    hits = 0
    for i in range(len(q)):
        got = search(con, "docs", i, 10, probes=probes, index=name)
        want_ids = np.argsort(full[i], kind="stable")[:10]
        got_ids = np.array([r[0] for r in got])
        got_d = np.array([r[1] for r in got])
        assert len(got) == 10
        true_d = ivf.distance(x[got_ids], q[i], metric)
        np.testing.assert_allclose(got_d, np.sqrt(true_d) if metric == "l2" else true_d, rtol=0, atol=1e-12)
        assert (np.diff(got_d) >= 0).all()
        hits += len(set(got_ids) & set(want_ids))
    recall = hits / (10 * len(q))
    print(f"recall@10 {metric} probes {probes}: {recall:.3f}")
    assert recall >= 0.95, recall
    # DuckDB's own distance functions agree (they compute in single precision)
    fn = {"cosine": "array_cosine_distance", "l2": "array_distance", "ip": "array_negative_inner_product"}[metric]
    got = search(con, "docs", 0, 5, probes=probes, index=name)
    theirs = dict(con.execute(f"SELECT id, {fn}(embedding, (SELECT q FROM queries WHERE qid = 0)) FROM docs "
                              f"WHERE id IN ({', '.join(str(r[0]) for r in got)})").fetchall())
    for i, d in got:
        assert abs(theirs[i] - d) < 1e-5
    # every list read: the exact answer (less what epsilon misses, here nothing)
    got = search(con, "docs", 1, 10, probes=224, index=name)
    assert [r[0] for r in got] == list(exact(x, ids, q[1], metric, 10)[0])
    con.execute(f"SELECT bitpress_ivf_drop('{name}')").fetchall()


@pytest.fixture
def small(minilm):
    import bitpress.duckdb

    con = bitpress.duckdb.connect()
    schema.upgrade(con)
    x = minilm[:2000].copy()
    vectors_table(con, "docs", x)
    queries_table(con, load_shared("pypi-minilm", "queries.npy")[:20])
    con.execute("SELECT bitpress_ivf_create('docs', 'id', 'embedding', lists := 40)").fetchall()
    yield con, x
    con.close()


def table_state(con, table="docs", id_col="id", vec_col="embedding"):
    rows = con.execute(f"SELECT {id_col}, {vec_col} FROM {table} WHERE {vec_col} IS NOT NULL ORDER BY 1").fetchall()
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows], np.float32)


def assert_exact_answers(con, k=10, probes=40, table="docs", **kw):
    """With every list read and a wide error bound (every lower bound below the true distance),
    the answers are exactly the exact top k of the table as it is now."""
    ids, x = table_state(con, table, **kw)
    q = np.array([r[0] for r in con.execute("SELECT q FROM queries ORDER BY qid").fetchall()], np.float32)
    for i in range(len(q)):
        got = search(con, table, i, k, probes=probes, epsilon=1000.0)
        want_ids, want_d = exact(x, ids, q[i], "cosine", k)
        assert [r[0] for r in got] == list(want_ids)
        np.testing.assert_allclose([r[1] for r in got], want_d, rtol=0, atol=1e-12)


def test_inserts_updates_deletes_after_the_build_are_searched_exactly(small):
    con, x = small
    q = np.array([r[0] for r in con.execute("SELECT q FROM queries ORDER BY qid").fetchall()], np.float32)
    assert_exact_answers(con)
    # inserted rows: a query's own vector is its nearest row (distance 0)
    con.execute("INSERT INTO docs SELECT 100000 + qid, q FROM queries WHERE qid < 5")
    for i in range(5):
        got = search(con, "docs", i, 3, probes=1)
        assert got[0][0] == 100000 + i and abs(got[0][1]) < 1e-6
    assert_exact_answers(con)
    # deleted rows never come back, even the nearest ones
    nearest = [search(con, "docs", i, 1, probes=40)[0][0] for i in range(10)]
    con.execute(f"DELETE FROM docs WHERE id IN ({', '.join(map(str, nearest))})")
    for i in range(10):
        assert not set(nearest) & {r[0] for r in search(con, "docs", i, 10, probes=40)}
    assert_exact_answers(con)
    # an updated vector is searched as it is now: moved next to query 7, and far from it
    con.execute("UPDATE docs SET embedding = (SELECT q FROM queries WHERE qid = 7) WHERE id = 1234")
    got = search(con, "docs", 7, 2, probes=1)
    assert got[0][0] == 1234 and abs(got[0][1]) < 1e-6
    far = search(con, "docs", 8, 1, probes=40)[0][0]
    con.execute(f"UPDATE docs SET embedding = (SELECT list_transform(q, lambda e: -e) FROM queries WHERE qid = 8) "
                f"WHERE id = {far}")
    assert far not in {r[0] for r in search(con, "docs", 8, 10, probes=40)}
    assert_exact_answers(con)
    # an id changed in place (the row keeps its rowid only without a key on the id column)
    con.execute("UPDATE docs SET id = 999999, embedding = embedding WHERE id = 1234")
    assert 999999 in {r[0] for r in search(con, "docs", 7, 3, probes=1)}
    # NULL vectors are never returned; the rebuilt index answers the same
    con.execute("UPDATE docs SET embedding = NULL WHERE id = 999999")
    assert 999999 not in {r[0] for r in search(con, "docs", 7, 10, probes=40)}
    assert_exact_answers(con)
    assert con.execute("SELECT bitpress_ivf_refresh('docs_embedding_ivf')").fetchall() == [("docs_embedding_ivf",)]
    assert con.execute("SELECT n FROM bitpress.ivf_indexes").fetchall() == [(2000 + 5 - 10 - 1,)]
    assert_exact_answers(con)
    assert len(q) == 20


def test_a_transaction_sees_its_own_changes_or_is_refused(small):
    """The index reads committed data: changes this transaction made and has not committed are
    refused with 40001, never answered from the committed state."""
    con, _ = small
    assert_exact_answers(con, probes=40)
    con.execute("BEGIN")
    con.execute("DELETE FROM docs WHERE id = 5")
    with pytest.raises(Exception, match="SerializationError: bitpress_ivf_search.*commit and retry"):
        search(con, "docs", 0, 5)
    con.execute("ROLLBACK")
    with pytest.raises(duckdb_ivf.SerializationError) as ei:
        duckdb_ivf._state(con.cursor(), duckdb_ivf._load(con, "docs_embedding_ivf",
                                                         duckdb_ivf._meta(con, "docs_embedding_ivf")), "1:2")
    assert ei.value.sqlstate == "40001"
    con.execute("BEGIN")
    con.execute("INSERT INTO docs SELECT 100000, q FROM queries WHERE qid = 0")
    with pytest.raises(Exception, match="SerializationError"):
        search(con, "docs", 0, 5)
    con.execute("COMMIT")  # an error aborts a DuckDB transaction: this rolls it back
    assert con.execute("SELECT count(*) FROM docs WHERE id = 100000").fetchall() == [(0,)]
    assert search(con, "docs", 0, 1)[0][0] != 100000
    con.execute("INSERT INTO docs SELECT 100000, q FROM queries WHERE qid = 0")  # committed
    assert search(con, "docs", 0, 1)[0][0] == 100000
    # a transaction that changed nothing searches as usual
    con.execute("BEGIN")
    assert search(con, "docs", 0, 1)[0][0] == 100000
    con.execute("COMMIT")


def test_a_checkpoint_that_renumbers_rows_keeps_answers_exact(tmp_path):
    """Deleting most rows of a table of several row groups and checkpointing makes DuckDB vacuum
    them: the surviving rows get new rowids. The index sees them as changed and searches them
    exactly (a refresh makes them indexed again)."""
    import bitpress.duckdb

    rng = np.random.default_rng(5)
    x = rng.standard_normal((260000, 8)).astype(np.float32)
    con = bitpress.duckdb.connect(str(tmp_path / "v.duckdb"))
    schema.upgrade(con)
    vectors_table(con, "docs", x)
    queries_table(con, rng.standard_normal((5, 8)).astype(np.float32))
    con.execute("SELECT bitpress_ivf_create('docs', 'id', 'embedding', lists := 64, metric := 'l2')").fetchall()
    con.execute("CHECKPOINT")
    before = con.execute("SELECT rowid FROM docs WHERE id = 200000").fetchall()[0][0]
    assert_l2(con, 3)
    con.execute("DELETE FROM docs WHERE id < 150000 AND id % 50 <> 0")
    con.execute("CHECKPOINT")
    after = con.execute("SELECT rowid FROM docs WHERE id = 200000").fetchall()[0][0]
    assert after < before  # renumbered
    assert_l2(con, 3)
    con.execute("SELECT bitpress_ivf_refresh('docs_embedding_ivf')").fetchall()
    assert_l2(con, 3)
    con.close()


def assert_l2(con, n):
    ids, x = table_state(con)
    q = np.array([r[0] for r in con.execute("SELECT q FROM queries ORDER BY qid").fetchall()], np.float32)
    for i in range(n):
        got = search(con, "docs", i, 10, probes=64, epsilon=1000.0)
        want_ids, want_d = exact(x, ids, q[i], "l2", 10)
        assert [r[0] for r in got] == list(want_ids)
        np.testing.assert_allclose([r[1] for r in got], want_d, rtol=0, atol=1e-9)


CORRUPTIONS = [
    ("UPDATE bitpress.ivf_lists SET codes = codes || '\\x00'::BLOB WHERE list = 3",
     "the sizes in bitpress.ivf_lists (list 3) do not match its"),
    ("UPDATE bitpress.ivf_lists SET codes = '\\x00'::BLOB || codes[2:] WHERE list = 2",
     "bitpress.ivf_lists (list 2) does not match its checksum"),
    ("UPDATE bitpress.ivf_lists SET factors = NULL WHERE list = 1", 'bitpress.ivf_lists has a NULL "factors" (list 1)'),
    ("DELETE FROM bitpress.ivf_lists WHERE list = 39", "bitpress.ivf_lists holds 39 lists, the index has 40"),
    ("UPDATE bitpress.ivf_lists SET list = 40 WHERE list = 4", "list 4 is missing from bitpress.ivf_lists"),
    ("UPDATE bitpress.ivf_indexes SET bits = 2", "the parameters in bitpress.ivf_indexes do not match their checksum"),
    ("UPDATE bitpress.ivf_indexes SET seed = NULL", 'bitpress.ivf_indexes has a NULL "seed"'),
    ("UPDATE bitpress.ivf_indexes SET dims = 383", "the parameters in bitpress.ivf_indexes do not match their checksum"),
]


@pytest.mark.parametrize("sql,message", CORRUPTIONS)
def test_damaged_index_tables_are_xx001_naming_what_is_wrong(small, sql, message):
    import bitpress.duckdb

    con, x = small
    for col in ("factors", "seed"):
        if f"{col} = NULL" in sql:
            table = "ivf_lists" if col == "factors" else "ivf_indexes"
            con.execute(f"ALTER TABLE bitpress.{table} ALTER COLUMN {col} DROP NOT NULL")
    con.execute(sql)
    fresh = bitpress.duckdb.register(con.cursor())  # a connection that has not read the index yet
    with pytest.raises(Exception) as ei:
        search(fresh, "docs", 0, 5)
    assert f'CorruptDataError: bitpress_ivf index "docs_embedding_ivf": {message}' in str(ei.value), str(ei.value)
    assert "bitpress_ivf_refresh('docs_embedding_ivf')" in str(ei.value)
    with pytest.raises(errors.CorruptDataError) as ei:
        duckdb_ivf._load(con, "docs_embedding_ivf", duckdb_ivf._meta(con, "docs_embedding_ivf"))
    assert ei.value.sqlstate == "XX001"
    if "seed = NULL" not in sql:  # a refresh writes the index again from its table
        assert con.execute("SELECT bitpress_ivf_refresh('docs_embedding_ivf')").fetchall()
        assert_exact_answers(fresh)


def test_odd_identifiers(minilm):
    """Schema, table and column names that need quoting (a dot, a quote, spaces, mixed case)."""
    import bitpress.duckdb

    con = bitpress.duckdb.connect()
    schema.upgrade(con)
    con.execute('CREATE SCHEMA "we.ird"')
    x = minilm[:600]
    vectors_table(con, '"we.ird"."Ta""b le"', x, id_col='"My Id"', vec_col='"emb""x"', array=False)
    queries_table(con, load_shared("pypi-minilm", "queries.npy")[:5])
    name = con.execute("""SELECT bitpress_ivf_create('"we.ird"."Ta""b le"', 'My Id', 'emb"x', lists := 8)""").fetchall()
    assert name == [('Ta"b le_emb"x_ivf',)]
    assert con.execute("SELECT source, id_column, vector_column FROM bitpress.ivf_indexes").fetchall() == [
        ('"we.ird"."Ta""b le"', "My Id", 'emb"x')]
    assert_exact_answers(con, table='"we.ird"."Ta""b le"', probes=8, id_col='"My Id"', vec_col='"emb""x"')
    con.execute("""INSERT INTO "we.ird"."Ta""b le" SELECT 7777, q FROM queries WHERE qid = 2""")
    assert search(con, '"we.ird"."Ta""b le"', 2, 1, probes=1)[0][0] == 7777
    assert duckdb_ivf.split_name('"we.ird"."Ta""b le"') == ["we.ird", 'Ta"b le']
    con.close()


def test_refusals(small):
    con, _ = small

    def state_of(sql):
        with pytest.raises(Exception) as ei:
            con.execute(sql).fetchall()
        return str(ei.value)

    assert "InvalidParameterError: metric must be cosine, ip or l2" in state_of(
        "SELECT bitpress_ivf_create('docs', 'id', 'embedding', metric := 'dot')")
    assert "bits must be between 1 and 4" in state_of("SELECT bitpress_ivf_create('docs', 'id', 'embedding', bits := 5)")
    assert "lists must be between 1 and 32768" in state_of(
        "SELECT bitpress_ivf_create('docs', 'id', 'embedding', lists := 0)")
    assert 'InvalidParameterError: index "docs_embedding_ivf" already exists' in state_of(
        "SELECT bitpress_ivf_create('docs', 'id', 'embedding')")
    assert "UndefinedTableError" in state_of("SELECT bitpress_ivf_create('nope', 'id', 'embedding')")
    assert "UndefinedColumnError" in state_of("SELECT bitpress_ivf_create('docs', 'id', 'nope')")
    con.execute("CREATE TABLE fl AS SELECT CAST(id AS DOUBLE) AS id, embedding FROM docs")
    assert "DatatypeMismatchError" in state_of("SELECT bitpress_ivf_create('fl', 'id', 'embedding')")
    assert "DimensionMismatchError: the query has 3 dimensions, the index 384" in state_of(
        "SELECT * FROM bitpress_ivf_search('docs', [1.0, 2.0, 3.0], 5)")
    assert "k must be" in state_of("SELECT * FROM bitpress_ivf_search('docs', (SELECT q FROM queries LIMIT 1), 0)")
    assert "probes must be at least 1" in state_of(
        "SELECT * FROM bitpress_ivf_search('docs', (SELECT q FROM queries LIMIT 1), 3, probes := 0)")
    assert "NullValueError" in state_of("SELECT * FROM bitpress_ivf_search('docs', NULL::FLOAT[], 3)")
    assert "UnknownCodebookError: no bitpress_ivf index on" in state_of(
        "SELECT * FROM bitpress_ivf_search('fl', (SELECT q FROM queries LIMIT 1), 3)")
    con.execute("CREATE TABLE dup AS SELECT 1 AS id, embedding FROM docs LIMIT 3")
    assert "is not unique" in state_of("SELECT bitpress_ivf_create('dup', 'id', 'embedding')")
    # a large k reads more lists than probes: every row can come back
    assert len(con.execute("SELECT * FROM bitpress_ivf_search('docs', (SELECT q FROM queries LIMIT 1), 2500, "
                           "probes := 1)").fetchall()) == 2000


def test_before_migration_the_tables_are_missing():
    import bitpress.duckdb

    con = bitpress.duckdb.connect()
    con.execute("CREATE TABLE docs (id INT, embedding FLOAT[3])")
    with pytest.raises(Exception, match="bitpress.ivf_indexes does not exist"):
        con.execute("SELECT bitpress_ivf_create('docs', 'id', 'embedding')").fetchall()
    assert schema.upgrade(con) == "0010_duckdb_ivf"
    assert schema.downgrade(con, "0009_params_checksums") == "0009_params_checksums"
    assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'ivf_%'").fetchall() == [(0,)]


def test_bitpress_knn_uses_the_index_when_the_table_has_one(small):
    """bitpress_knn(table, code, vector, ...) answers through the table's index on that vector
    column and metric when there is one (its rows, nearest first: those of bitpress_ivf_search),
    and through the codes otherwise (another metric, or after bitpress_ivf_drop)."""
    con, _ = small
    con.execute("ALTER TABLE docs ADD COLUMN code BIT")
    con.execute("UPDATE docs SET code = binarize(embedding)")  # new rowids: the index's delta
    q = "(SELECT q FROM queries WHERE qid = {})"
    for i in range(5):
        rows = con.execute(f"SELECT * FROM bitpress_knn('docs', 'code', 'embedding', {q.format(i)}, 7, "
                           "probes := 40)").fetchall()
        hits = search(con, "docs", i, 7, probes=40)
        assert [r[0] for r in rows] == [h[0] for h in hits]
        assert [len(r) for r in rows] == [3] * 7  # the table's rows: id, embedding, code
    assert_exact_answers(con)  # the exact top 10 (every list read)
    con.execute("INSERT INTO docs SELECT 100000, q, binarize(q) FROM queries WHERE qid = 2")
    assert con.execute(f"SELECT id FROM bitpress_knn('docs', 'code', 'embedding', {q.format(2)}, 1)").fetchall() == [
        (100000,)]
    plan = con.execute(f"EXPLAIN SELECT * FROM bitpress_knn('docs', 'code', 'embedding', {q.format(2)}, 3)").fetchall()
    assert "bitpress_binarize_sign" not in plan[0][1]  # the codes' half is pruned when planned
    # another metric: the codes answer (Hamming candidates, then the exact l2 distance)
    plan = con.execute(f"EXPLAIN SELECT * FROM bitpress_knn('docs', 'code', 'embedding', {q.format(2)}, 3, "
                       "metric := 'l2')").fetchall()
    assert "bitpress_binarize_sign" in plan[0][1]
    assert con.execute(f"SELECT id FROM bitpress_knn('docs', 'code', 'embedding', {q.format(2)}, 1, "
                       "metric := 'l2')").fetchall() == [(100000,)]
    con.execute("SELECT bitpress_ivf_drop('docs_embedding_ivf')").fetchall()
    plan = con.execute(f"EXPLAIN SELECT * FROM bitpress_knn('docs', 'code', 'embedding', {q.format(2)}, 3)").fetchall()
    assert "bitpress_binarize_sign" in plan[0][1]
    assert con.execute(f"SELECT id FROM bitpress_knn('docs', 'code', 'embedding', {q.format(2)}, 1)").fetchall() == [
        (100000,)]


def test_index_md_duckdb_example_runs_as_written(minilm):
    """The Python block of docs/INDEX.md's "In DuckDB" section, run as written on 2,000 MiniLM rows."""
    import re

    from conftest import ROOT

    section = (ROOT / "docs" / "INDEX.md").read_text().split("\n## In DuckDB\n", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    before, after = code.split("# ... load the rows, then:\n")
    env = {}
    exec(before, env)
    con = env["con"]
    t = pa.table({"id": pa.array(np.arange(len(minilm)), pa.int64()),
                  "e": pa.FixedSizeListArray.from_arrays(pa.array(minilm.ravel()), 384)})
    con.register("_rows", t)
    con.execute("INSERT INTO docs SELECT id, e FROM _rows")
    exec(after, env)
    ids = [r[0] for r in env["rows"]]
    want = np.argsort(-(minilm @ minilm[1]), kind="stable")[:10]
    assert ids[0] == 1 and len(set(ids) & set(want.tolist())) >= 9
    assert env["n"] == [(len(minilm),)]
    con.close()


def test_a_table_dropped_and_created_again_is_read_again(small):
    """The same name, ids and rowids, other vectors: the fingerprint carries the table's OID, so
    nothing read from the old table is reused (the codes are stale: a refresh re-codes them)."""
    con, x = small
    assert_exact_answers(con)
    con.execute("DROP TABLE docs")
    vectors_table(con, "docs", x[::-1].copy())
    assert_exact_answers(con)
    con.execute("SELECT bitpress_ivf_refresh('docs_embedding_ivf')").fetchall()
    assert_exact_answers(con)


def test_python_search_is_the_sql_search(small):
    con, x = small
    q = np.array(con.execute("SELECT q FROM queries WHERE qid = 4").fetchall()[0][0], np.float32)
    assert duckdb_ivf.search(con, "docs", q, 8, probes=12) == search(con, "docs", 4, 8, probes=12)
    assert duckdb_ivf.search(con, "docs", q, 3, index="docs_embedding_ivf", epsilon=0.0) == search(
        con, "docs", 4, 3, index="docs_embedding_ivf", epsilon=0.0)


def test_views_and_temp_tables_keep_the_codes_path(small):
    """Only base tables can be indexed (the index reads through a connection of its own); a view
    or TEMP table over an indexed table is answered by bitpress_knn's codes, as before."""
    con, _ = small
    con.execute("ALTER TABLE docs ADD COLUMN code BIT")
    con.execute("UPDATE docs SET code = binarize(embedding)")
    con.execute("CREATE VIEW vw AS SELECT * FROM docs")
    con.execute("CREATE TEMP TABLE tmp AS SELECT * FROM docs")
    for name in ("vw", "tmp"):
        with pytest.raises(Exception, match="UndefinedTableError: .*TEMP tables and views cannot be indexed"):
            con.execute(f"SELECT bitpress_ivf_create('{name}', 'id', 'embedding')").fetchall()
        got = con.execute(f"SELECT id FROM bitpress_knn('{name}', 'code', 'embedding', "
                          "(SELECT q FROM queries WHERE qid = 1), 5, oversample := 500)").fetchall()
        ids, x = table_state(con)
        q = np.array(con.execute("SELECT q FROM queries WHERE qid = 1").fetchall()[0][0], np.float32)
        assert [r[0] for r in got] == list(exact(x, ids, q, "cosine", 5)[0])  # a pool of every row: exact
