"""The same vectors give byte-identical codes and equal distances in PostgreSQL (bitpress and
pgvector), DuckDB and numpy: real OpenAI and MiniLM embeddings and random odd sizes."""
import numpy as np
import pyarrow as pa
import pytest
from conftest import copy_vectors


def duck_load(duck, x):
    duck.register("_x", pa.table({"id": np.arange(len(x)),
                                  "v": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])}))
    duck.execute("CREATE TABLE x AS SELECT id, v::FLOAT[] AS v FROM _x")


def as_codes(rows):
    return np.array([np.frombuffer(bytes(r[0]), np.uint8) for r in rows])


def check_engines(pg, duck, x, sample_pairs=400):
    import bitpress

    rng = np.random.default_rng(0)
    t = np.quantile(x, 0.5, axis=0).astype(np.float32) if len(x) > 1 else np.zeros(x.shape[1], np.float32)
    ref_sign, ref_thr = np.packbits(x > 0, axis=1), np.packbits(x > t, axis=1)
    copy_vectors(pg, "x", x)
    duck_load(duck, x)
    for thresholds, ref in ((None, ref_sign), (t, ref_thr)):
        if thresholds is None:
            pg_rows = pg.execute("SELECT code_bytes(binarize(v)), binarize(v)::text FROM x ORDER BY id").fetchall()
            duck_rows = duck.execute("SELECT code_bytes(binarize(v)), binarize(v)::VARCHAR FROM x ORDER BY id").fetchall()
        else:
            pg_rows = pg.execute("SELECT code_bytes(binarize(v, %s::real[])), binarize(v, %s::real[])::text "
                                 "FROM x ORDER BY id", [t.tolist()] * 2).fetchall()
            duck_rows = duck.execute("SELECT code_bytes(binarize(v, ?::FLOAT[])), binarize(v, ?::FLOAT[])::VARCHAR "
                                     "FROM x ORDER BY id", [t.tolist()] * 2).fetchall()
        assert np.array_equal(as_codes(pg_rows), ref)
        assert np.array_equal(as_codes(duck_rows), ref)
        # the codes themselves (DuckDB BIT, PostgreSQL varbit): the same bits, the same length
        assert [r[1] for r in duck_rows] == [r[1] for r in pg_rows] and len(pg_rows[0][1]) == x.shape[1]
        assert np.array_equal(bitpress.binarize(x, thresholds), ref)
    # distances over random pairs, in all engines, with pgvector's <~> as the outside reference
    i = rng.integers(0, len(x), sample_pairs)
    j = rng.integers(0, len(x), sample_pairs)
    ref = np.bitwise_count(ref_thr[i] ^ ref_thr[j]).sum(1)
    pg_d = pg.execute(
        "SELECT hamming(binarize(a.v, %(t)s::real[]), binarize(b.v, %(t)s::real[])), "
        "binarize(a.v, %(t)s::real[]) <~> binarize(b.v, %(t)s::real[]) "
        "FROM unnest(%(i)s::int[], %(j)s::int[]) WITH ORDINALITY p(i, j, o) "
        "JOIN x a ON a.id = p.i JOIN x b ON b.id = p.j ORDER BY o",
        {"t": t.tolist(), "i": i.tolist(), "j": j.tolist()}).fetchall()
    assert [r[0] for r in pg_d] == ref.tolist()
    assert [r[1] for r in pg_d] == [float(d) for d in ref]
    duck.register("_p", pa.table({"o": np.arange(sample_pairs), "i": i, "j": j}))
    duck_d = duck.execute(
        "SELECT hamming(binarize(a.v, $t::FLOAT[]), binarize(b.v, $t::FLOAT[])) FROM _p "
        "JOIN x a ON a.id = _p.i JOIN x b ON b.id = _p.j ORDER BY o", {"t": t.tolist()}).fetchall()
    assert [r[0] for r in duck_d] == ref.tolist()
    assert np.array_equal(bitpress.hamming(ref_thr[i], ref_thr[j]), ref)


def test_openai_3_small(pg, duck, openai_small):
    check_engines(pg, duck, openai_small)


def test_openai_3_large(pg, duck, openai_large):
    check_engines(pg, duck, openai_large)


def test_minilm_pypi(pg, duck, minilm):
    check_engines(pg, duck, minilm)


@pytest.mark.parametrize("dim", [1, 77, 385, 1000])
def test_random_odd_sizes(pg, duck, dim):
    x = np.random.default_rng(dim).standard_normal((300, dim)).astype(np.float32)
    x[::7, ::3] = 0.0  # exact zeros: compared with ">" everywhere
    check_engines(pg, duck, x)


def test_codes_travel_between_engines(pg, duck, minilm):
    """A DuckDB code's bytes (code_bytes) become the same PostgreSQL bit(n) through
    code_from_bytes, and PostgreSQL's bytes the same DuckDB BIT."""
    duck_load(duck, minilm[:50])
    blobs = [r[0] for r in duck.execute("SELECT code_bytes(binarize(v)) FROM x ORDER BY id").fetchall()]
    copy_vectors(pg, "x", minilm[:50])
    same = pg.execute("SELECT bool_and(code_from_bytes(b.c, 384) = binarize(x.v)) FROM x "
                      "JOIN unnest(%s::bytea[]) WITH ORDINALITY b(c, o) ON b.o = x.id + 1", [blobs]).fetchone()[0]
    assert same is True
    back = [r[0] for r in pg.execute("SELECT code_bytes(binarize(v)) FROM x ORDER BY id").fetchall()]
    assert back == blobs
    same = duck.execute("SELECT bool_and(code_from_bytes(b.c, 384) = binarize(x.v)) FROM x "
                        "JOIN (SELECT unnest(?::BLOB[]) AS c, unnest(range(50)) AS o) b ON b.o = x.id", [back]).fetchone()[0]
    assert same is True
