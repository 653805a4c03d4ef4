"""k-NN over codes with rerank: the same rows from PostgreSQL, DuckDB, Python and a numpy
statement of the algorithm; the bounded top-k heap of the core; bad arguments."""
import numpy as np
import psycopg
import pytest

from bitpress import codebooks, errors, kernels
from bitpress.search import search
from conftest import copy_vectors
from test_codebooks import median_book

K, OVERSAMPLE = 10, 4


def reference(codes, x, qcode, q, k, oversample):
    """Hamming top k*oversample (ties by row), then exact cosine; also whether a different
    choice among rows tied at the pool's edge could change the answer."""
    d = kernels.hamming(qcode, codes)
    order = np.lexsort((np.arange(len(d)), d))
    pool = order[:k * oversample]
    edge = d[pool[-1]]
    tied = np.nonzero(d == edge)[0]
    cos = (x @ q) / np.linalg.norm(x, axis=1) / np.linalg.norm(q)

    def rerank(rows):
        rows = np.asarray(rows)
        return list(rows[np.lexsort((rows, -cos[rows]))][:k])
    best = rerank(pool)
    inner = [r for r in pool if d[r] < edge]
    # any choice among the rows tied at the edge gives `best` when they all fit in the pool,
    # or when none of them would make the top k anyway
    full = rerank(np.r_[inner, tied])
    determinate = len(inner) + len(tied) <= len(pool) or not set(full) & set(tied)
    return best, determinate


def items_in_both(pg, duck, x, cb):
    """Table items(id, v, code) in both engines, codes made in SQL with codebook 'docs'."""
    for conn in (pg, duck):
        codebooks.save(conn, "docs", cb)
    copy_vectors(pg, "items", x)
    pg.execute("ALTER TABLE items ADD COLUMN code varbit")
    pg.execute("UPDATE items SET code = binarize(v, 'docs')")
    duck.execute("CREATE TABLE items AS SELECT unnest(range(?)) AS id, unnest(?) AS v", [len(x), x.tolist()])
    duck.execute("ALTER TABLE items ADD COLUMN code BLOB")
    duck.execute("UPDATE items SET code = binarize(v, 'docs')")


def test_topk_heap_matches_a_full_sort():
    rng = np.random.default_rng(0)
    for n, k in [(1, 1), (10, 3), (1000, 10), (5000, 40), (300, 500)]:
        v = rng.integers(0, 20, n)  # many ties
        want = np.lexsort((np.arange(n), v))[:k]
        assert np.array_equal(kernels.topk_smallest(v, k), want)
        f = rng.standard_normal(n)
        assert np.array_equal(kernels.topk_smallest(f, k), np.lexsort((np.arange(n), f))[:k])
    codes = rng.integers(0, 256, (3000, 48), dtype=np.uint8)
    idx, dist = kernels.hamming_topk(codes[5], codes, 25)
    full = kernels.hamming(codes[5], codes)
    assert np.array_equal(idx, np.lexsort((np.arange(3000), full))[:25])
    assert np.array_equal(dist, full[idx]) and idx[0] == 5 and dist[0] == 0
    for bad in (0, -1, 1.5, True):
        with pytest.raises(errors.InvalidParameterError):
            kernels.topk_smallest(full, bad)


def test_knn_gives_the_same_rows_in_postgresql_duckdb_and_numpy(pg_books, duck_books, minilm):
    x = minilm
    cb = median_book(x)
    codes = kernels.encode(cb, x)
    queries = load_queries()
    items_in_both(pg_books, duck_books, x, cb)
    checked = 0
    for q in queries:
        want, determinate = reference(codes, x, kernels.encode(cb, q), q, K, OVERSAMPLE)
        got_pg = [r[0] for r in pg_books.execute(
            "SELECT id FROM bitpress_knn(NULL::items, 'code', 'v', %s, %s, %s, 'docs')", (q, K, OVERSAMPLE)).fetchall()]
        got_duck = [r[0] for r in duck_books.execute(
            "SELECT id FROM bitpress_knn('items', 'code', 'v', ?::FLOAT[], ?, oversample := ?, codebook := 'docs')",
            [q.tolist(), K, OVERSAMPLE]).fetchall()]
        got_py_pg = [r["id"] for r in search(pg_books, "items", q, K, oversample=OVERSAMPLE, vector_column="v", codebook="docs")]
        got_py_duck = [r["id"] for r in search(duck_books, "items", q, K, oversample=OVERSAMPLE, vector_column="v", codebook="docs")]
        assert got_pg == got_py_pg and got_duck == got_py_duck
        if determinate:
            checked += 1
            assert got_pg == want, (got_pg, want)
            assert got_duck == want, (got_duck, want)
        assert len(set(got_pg) & set(want)) >= K - 2  # ties at the pool's edge change at most a row or two
    assert checked >= len(queries) // 2  # 14 of these 20 on this data


def test_codes_alone_use_the_asymmetric_score(pg_books, duck_books, minilm):
    x = minilm
    cb = median_book(x)
    codes = kernels.encode(cb, x)
    q = load_queries()[0]
    items_in_both(pg_books, duck_books, x, cb)
    # numpy: Hamming pool of 40, then by asymmetric score
    idx, _ = kernels.hamming_topk(kernels.encode(cb, q), codes, K * OVERSAMPLE)
    s = kernels.asymmetric_scores(cb, q, codes[idx])
    want = list(idx[np.argsort(-s, kind="stable")][:K])
    got_pg = [r["id"] for r in search(pg_books, "items", q, K, vector_column=None, codebook="docs")]
    got_duck = [r["id"] for r in search(duck_books, "items", q, K, vector_column=None, codebook="docs")]
    assert len(set(got_pg) & set(want)) >= K - 1 and len(set(got_duck) & set(want)) >= K - 1
    # scoring => 'asymmetric': every code scored against the float query (codes alone), or the
    # top k*oversample by score reranked exactly on the vectors; the same rows in both engines
    s_all = kernels.asymmetric_scores(cb, q, codes)
    order = np.lexsort((np.arange(len(s_all)), -s_all))
    want_codes = list(order[:K])
    pool = order[:K * OVERSAMPLE]
    cos = x[pool] @ q / np.linalg.norm(x[pool], axis=1)
    want_knn = list(pool[np.argsort(-cos, kind="stable")][:K])
    for conn in (pg_books, duck_books):
        got = [r["id"] for r in search(conn, "items", q, K, vector_column=None, codebook="docs", scoring="asymmetric")]
        assert got == want_codes
        got = [r["id"] for r in search(conn, "items", q, K, vector_column="v", codebook="docs", scoring="asymmetric")]
        assert got == want_knn
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="needs a codebook"):
        pg_books.execute("SELECT * FROM bitpress_knn(NULL::items, 'code', 'v', %s, 5, scoring => 'asymmetric')", (q,))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="scoring must be hamming or asymmetric"):
        pg_books.execute("SELECT * FROM bitpress_knn_codes(NULL::items, 'code', %s, 5, scoring => 'cosine')", (q,))
    import duckdb
    with pytest.raises(duckdb.Error, match="scoring must be hamming or asymmetric"):
        duck_books.execute("SELECT * FROM bitpress_knn('items', 'code', 'v', ?::FLOAT[], 5, scoring := 'x')", [q.tolist()]).fetchall()
    # and without a codebook: plain Hamming order of sign codes
    pg_books.execute("UPDATE items SET code = binarize(v)")
    got = [r["id"] for r in search(pg_books, "items", q, 5, vector_column=None)]
    d = kernels.hamming(kernels.binarize(q), kernels.binarize(x))
    assert sorted(d[got]) == sorted(np.sort(d)[:5])


@pytest.mark.parametrize("args,message", [
    ((0, 4), "k must be at least 1, got 0"),
    ((10, 0), "oversample must be at least 1, got 0"),
])
def test_bad_knn_arguments(pg, duck, args, message):
    pg.execute("CREATE TABLE items (id int, v vector(2), code varbit)")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        pg.execute("SELECT * FROM bitpress_knn(NULL::items, 'code', 'v', '[1,2]', %s, %s)", args).fetchall()
    duck.execute("CREATE TABLE items (id INT, v FLOAT[], code BLOB)")  # empty: checked all the same
    import duckdb
    with pytest.raises(duckdb.Error, match=message):
        duck.execute("SELECT * FROM bitpress_knn('items', 'code', 'v', [1.0, 2], ?, oversample := ?)", list(args)).fetchall()
    with pytest.raises(errors.InvalidParameterError, match=message.split(",")[0]):
        search(duck, "items", [1.0, 2.0], args[0], oversample=args[1], vector_column="v")


def test_knn_needs_a_table_row_type_and_a_known_metric(pg):
    pg.execute("CREATE TABLE items (id int, v vector(2), code varbit)")
    with pytest.raises(psycopg.errors.DatatypeMismatch, match="row type"):
        pg.execute("SELECT bitpress_knn(1, 'code', 'v', '[1,2]', 3)").fetchall()
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="metric must be cosine, ip or l2"):
        pg.execute("SELECT * FROM bitpress_knn(NULL::items, 'code', 'v', '[1,2]', 3, 4, NULL, 'hamming')").fetchall()
    # identifiers are quoted, never spliced: a hostile column name is just a missing column
    with pytest.raises(psycopg.errors.UndefinedColumn):
        pg.execute("SELECT * FROM bitpress_knn(NULL::items, 'code) FROM items; DROP TABLE items; --', 'v', '[1,2]', 3)").fetchall()
    assert pg.execute("SELECT count(*) FROM items").fetchone()[0] == 0


def load_queries():
    from conftest import load_shared

    return load_shared("pypi-minilm", "queries.npy")[:20]
