"""Tensors stored as Tensor-Train cores, computed in SQL: PostgreSQL and DuckDB, against numpy.

The same tests run on both engines (``engine`` fixture); the cross-engine test checks that the
two give the same bits, and the error tests that a broken core is named with its SQLSTATE.
"""
import hashlib

import numpy as np
import pytest
from conftest import error_of

from bitpress import _core, tensors, tt


def _cores(rng, modes, ranks):
    return [rng.standard_normal((ranks[k], m, n, ranks[k + 1])).astype(np.float32)
            for k, (m, n) in enumerate(modes)]


@pytest.fixture(scope="module")
def weights():
    """A 384 x 1536 matrix of TT rank (1, 7, 9, 1), its decomposition, a 1-D and a 3-D tensor."""
    rng = np.random.default_rng(7)
    cores = _cores(rng, [(8, 16), (6, 12), (8, 8)], [1, 7, 9, 1])
    w = tt.reconstruct(cores)
    return {
        "ffn": (w, tt.decompose(w, eps=1e-4, modes=[(8, 16), (6, 12), (8, 8)])),
        "bias": (rng.standard_normal(384).astype(np.float32), None),
        "conv": (rng.standard_normal((4, 6, 8)).astype(np.float32), None),
    }


def _store(conn, weights):
    for name, (w, res) in weights.items():
        if res is None:  # kept dense: one core (1, rows, cols, 1)
            res = tt.decompose(w, modes=[tt.matrix_shape(w.shape)])
        tensors.write(conn, "m", name, res)


def _sql(conn, q, params=()):
    """One row of a query with %s placeholders on either engine."""
    from bitpress.tables import fetchall

    return fetchall(conn, q, params)[0]


@pytest.fixture(params=["pg", "duckdb"])
def engine(request, weights):
    conn = request.getfixturevalue("pg_books" if request.param == "pg" else "duck_books")
    _store(conn, weights)
    return conn


def _flat(a):
    return np.asarray(a, dtype=np.float32).reshape(-1)


def test_decomposed_matrix_is_stored_small_and_exact(engine, weights):
    w, res = weights["ffn"]
    assert res.format == "tt" and res.ranks == (1, 7, 9, 1)
    assert res.stored_bytes == 4 * (8 * 16 * 7 + 7 * 6 * 12 * 9 + 9 * 8 * 8)  # 98x smaller
    rows = tensors.list_tensors(engine, "m")
    ffn = next(r for r in rows if r["tensor"] == "ffn")
    assert ffn["format"] == "tt" and list(ffn["shape"]) == [384, 1536]
    assert ffn["stored_bytes"] == res.stored_bytes and ffn["rel_error"] < 1e-4
    got = _flat(_sql(engine, "SELECT tt_reconstruct('m', 'ffn')")[0])
    assert np.allclose(got, w.reshape(-1), rtol=1e-4, atol=1e-4 * np.abs(w).max())


def test_row_and_element_are_the_bits_of_the_whole_tensor(engine, weights):
    whole = _flat(_sql(engine, "SELECT tt_reconstruct('m', 'ffn')")[0]).reshape(384, 1536)
    for i, j in [(1, 1), (77, 1000), (384, 1536)]:
        row = _flat(_sql(engine, "SELECT tt_reconstruct_row('m', 'ffn', %s)", (i,))[0])
        assert np.array_equal(row, whole[i - 1])
        el = _sql(engine, "SELECT tt_element('m', 'ffn', %s, %s)", (i, j))[0]
        assert np.float32(el) == whole[i - 1, j - 1]


def test_matvec_is_x_times_w(engine, weights):
    w, _ = weights["ffn"]
    x = np.random.default_rng(1).standard_normal(384).astype(np.float32)
    cast = "FLOAT[]" if _is_duck(engine) else "real[]"
    y = _flat(_sql(engine, f"SELECT tt_matvec('m', 'ffn', %s::{cast})", (x.tolist(),))[0])
    ref = x.astype(np.float64) @ w.astype(np.float64)
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()


def _is_duck(conn):
    from bitpress.tables import kind

    return kind(conn) == "duckdb"


def test_dense_kept_tensors_round_trip_exactly(engine, weights):
    bias, _ = weights["bias"]
    conv, _ = weights["conv"]
    assert np.array_equal(_flat(_sql(engine, "SELECT tt_reconstruct('m', 'bias')")[0]), bias)
    got = _sql(engine, "SELECT tt_reconstruct('m', 'conv')")[0]
    if not _is_duck(engine):
        assert np.asarray(got).shape == (4, 6, 8)  # PostgreSQL keeps the tensor's shape
    assert np.array_equal(_flat(got), conv.reshape(-1))
    row = _sql(engine, "SELECT tt_reconstruct_row('m', 'conv', 2)")[0]
    assert np.array_equal(_flat(row), conv[1].reshape(-1))


def test_python_load_gives_the_same_bits_as_sql(engine):
    st = tensors.load(engine, "m", "ffn")
    sql_whole = _flat(_sql(engine, "SELECT tt_reconstruct('m', 'ffn')")[0])
    assert np.array_equal(st.reconstruct().reshape(-1), sql_whole)
    assert st.element(76, 999) == sql_whole[76 * 1536 + 999]


def test_both_engines_give_the_same_bits(pg_books, duck_books, weights):
    _store(pg_books, weights)
    _store(duck_books, weights)
    x = np.random.default_rng(2).standard_normal(384).astype(np.float32)
    for q, args in [("SELECT tt_reconstruct('m', 'ffn')", ()),
                    ("SELECT tt_reconstruct_row('m', 'ffn', 5)", ()),
                    ("SELECT tt_element('m', 'ffn', 5, 9)", ()),
                    ("SELECT tt_matvec('m', 'ffn', %s::real[])", (x.tolist(),))]:
        a = _flat(_sql(pg_books, q, args)[0])
        b = _flat(_sql(duck_books, q.replace("real[]", "FLOAT[]"), args)[0])
        assert a.tobytes() == b.tobytes(), q


def test_matvec_over_a_vector_column_in_postgresql(pg_books, weights):
    _store(pg_books, weights)
    w, _ = weights["ffn"]
    x = np.random.default_rng(3).standard_normal((50, 384)).astype(np.float32)
    pg_books.execute("CREATE TABLE docs (id int, v vector(384))")
    with pg_books.cursor().copy("COPY docs (id, v) FROM STDIN") as cp:
        for i, v in enumerate(x):
            cp.write_row((i, v))
    rows = pg_books.execute("SELECT id, tt_matvec('m', 'ffn', v) FROM docs ORDER BY id").fetchall()
    y = np.stack([np.asarray(r[1].to_numpy()) for r in rows])
    ref = x.astype(np.float64) @ w.astype(np.float64)
    assert y.shape == (50, 1536) and np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()
    b = pg_books.execute("SELECT tt_vector('m', 'bias')").fetchone()[0]
    assert np.array_equal(b.to_numpy(), weights["bias"][0])


def test_a_rewritten_core_is_seen_by_the_next_statement(engine, weights):
    before = _sql(engine, "SELECT tt_element('m', 'ffn', 1, 1)")[0]
    st = tensors.load(engine, "m", "ffn")
    cores = [c.copy() for c in st.cores]
    cores[0] *= 2
    data = cores[0].astype("<f4").tobytes()
    engine.execute("UPDATE bitpress.tt_cores SET data = %s, checksum = %s "
                   "WHERE model = 'm' AND tensor = 'ffn' AND idx = 0".replace(
                       "%s", "?" if _is_duck(engine) else "%s"),
                   [data, hashlib.sha256(data).hexdigest()])
    after = _sql(engine, "SELECT tt_element('m', 'ffn', 1, 1)")[0]
    assert np.isclose(after, 2 * before, rtol=1e-5)


def _break(conn, sql, params=()):
    conn.execute(sql.replace("%s", "?" if _is_duck(conn) else "%s"), list(params))


@pytest.mark.parametrize("breakage, sqlstate, words", [
    ("UPDATE bitpress.tt_cores SET checksum = 'bad' WHERE tensor = 'ffn' AND idx = 1",
     "22P03", 'tensor "ffn" of model "m": malformed TT core 1: its data does not match its stored checksum'),
    ("DELETE FROM bitpress.tt_cores WHERE tensor = 'ffn' AND idx = 1",
     "22P03", 'tensor "ffn" of model "m": malformed TT core 1: missing'),
    ("UPDATE bitpress.tt_cores SET shape = [7, 6, 12, 10] WHERE tensor = 'ffn' AND idx = 1",
     "22P03", "malformed TT core 1: its number of elements differs"),
    ("UPDATE bitpress.tt_cores SET shape = [9, 6, 12, 7] WHERE tensor = 'ffn' AND idx = 1",
     "22P03", "malformed TT core 1: its left rank differs from the right rank of the core before it"),
    ("UPDATE bitpress.tt_tensors SET shape = [1536, 384] WHERE tensor = 'ffn'",
     "22P03", "its cores make a 384 x 1536 matrix but its shape needs 1536 x 384"),
    ("DELETE FROM bitpress.tt_cores WHERE tensor = 'ffn'",
     "22P03", "malformed TT core 0: a tensor needs at least one core"),
])
def test_malformed_cores_are_named(engine, breakage, sqlstate, words):
    if not _is_duck(engine):
        breakage = breakage.replace("[", "ARRAY[")
    _break(engine, breakage)
    got, msg = error_of(engine, "SELECT tt_element('m', 'ffn', 1, 1)")
    assert got == sqlstate and words in msg, msg


def test_a_nan_in_a_core_is_refused(engine):
    data = np.full(7 * 6 * 12 * 9, np.nan, dtype="<f4").tobytes()
    _break(engine, "UPDATE bitpress.tt_cores SET data = %s, checksum = %s WHERE tensor = 'ffn' AND idx = 1",
           [data, hashlib.sha256(data).hexdigest()])
    got, msg = error_of(engine, "SELECT tt_reconstruct('m', 'ffn')")
    assert got == "22P03" and "malformed TT core 1: NaN or infinity" in msg


def _scale_core(conn, tensor, idx, factor):
    """Rewrites core idx of a tensor with its values times factor (checksum kept right)."""
    data = (np.frombuffer(bytes(_sql(conn, "SELECT data FROM bitpress.tt_cores WHERE tensor = %s AND idx = %s",
                                     (tensor, idx))[0]), "<f4") * np.float32(factor)).astype("<f4").tobytes()
    _break(conn, "UPDATE bitpress.tt_cores SET data = %s, checksum = %s WHERE tensor = %s AND idx = %s",
           [data, hashlib.sha256(data).hexdigest(), tensor, idx])


def _ones(conn, n, value=1.0):
    return (f"list_transform(range({n}), lambda i: {value})::FLOAT[]" if _is_duck(conn)
            else f"array_fill({value}::real, ARRAY[{n}])")


@pytest.mark.parametrize("q", [
    "SELECT tt_reconstruct('m', 'ffn')", "SELECT tt_reconstruct_row('m', 'ffn', 2)",
    "SELECT tt_element('m', 'ffn', 2, 3)", "SELECT tt_matvec('m', 'ffn', X)",
])
def test_a_result_that_overflows_is_out_of_range(engine, q):
    """Finite cores of 1e30 multiply past float4: 22003, never an Infinity or NaN returned."""
    for k in (0, 1):
        _scale_core(engine, "ffn", k, 1e30)
    got, msg = error_of(engine, q.replace("X", _ones(engine, 384)))
    assert got == "22003" and "is not a finite real (the computation overflows)" in msg, msg


def test_large_values_are_returned_and_only_overflow_is_refused(engine, weights):
    w = weights["conv"][0]
    _scale_core(engine, "conv", 0, 1e30)
    got = _flat(_sql(engine, "SELECT tt_reconstruct('m', 'conv')")[0])
    assert np.array_equal(got, (w.reshape(-1) * np.float32(1e30)).astype(np.float32))
    err, msg = error_of(engine, f"SELECT tt_matvec('m', 'conv', {_ones(engine, 4, 1e10)})")
    assert err == "22003", msg


@pytest.mark.parametrize("shape", [[4, -6, -8], [0, 6, 8], [-4, 48]])
def test_a_shape_that_is_not_one_is_refused(engine, shape):
    """A stored shape whose product is right but whose entries are not sizes (before: arrays
    with negative bounds that pg_dump cannot write back)."""
    _break(engine, f"UPDATE bitpress.tt_tensors SET shape = {'' if _is_duck(engine) else 'ARRAY'}{shape} "
                   "WHERE tensor = 'conv'")
    got, msg = error_of(engine, "SELECT tt_reconstruct('m', 'conv')")
    bad = next(d for d in shape if d < 1)
    assert got == "22P03" and f"its shape has {bad} in dimension {shape.index(bad) + 1}" in msg, msg


@pytest.mark.parametrize("table, column, where", [
    ("tt_cores", "data", "tensor = 'ffn' AND idx = 1"),
    ("tt_cores", "shape", "tensor = 'ffn' AND idx = 1"),
    ("tt_cores", "checksum", "tensor = 'ffn' AND idx = 1"),
    ("tt_tensors", "shape", "tensor = 'ffn'"),
])
def test_a_null_in_the_tables_is_corrupt_data(engine, table, column, where):
    _break(engine, f"ALTER TABLE bitpress.{table} ALTER COLUMN {column} DROP NOT NULL")
    _break(engine, f"UPDATE bitpress.{table} SET {column} = NULL WHERE {where}")
    got, msg = error_of(engine, "SELECT tt_element('m', 'ffn', 1, 1)")
    row = 'tensor "ffn" of model "m"' + (", core 1" if table == "tt_cores" else "")
    assert got == "XX001" and f'bitpress.{table} ({row}): column "{column}" is NULL' in msg, msg


@pytest.mark.parametrize("q, sqlstate, words", [
    ("SELECT tt_element('m', 'nope', 1, 1)", "42704", 'tensor "nope" of model "m" does not exist'),
    ("SELECT tt_element('m', 'ffn', 0, 1)", "2202E", "index 0 is out of range for a dimension of 384"),
    ("SELECT tt_element('m', 'ffn', 1, 1537)", "2202E", "index 1537 is out of range for a dimension of 1536"),
    ("SELECT tt_reconstruct_row('m', 'ffn', 385)", "2202E", "index 385 is out of range"),
    ("SELECT tt_matvec('m', 'ffn', [1, 2]::real[])", "22000",
     "vector has 2 dimensions but the tensor has 384 rows"),
])
def test_bad_arguments(engine, q, sqlstate, words):
    if _is_duck(engine):
        q = q.replace("real[]", "FLOAT[]")
    else:
        q = q.replace("[1, 2]", "ARRAY[1, 2]")
    got, msg = error_of(engine, q)
    assert got == sqlstate and words in msg, msg


def test_nan_input_to_matvec_is_refused(pg_books, weights):
    _store(pg_books, weights)
    x = [float("nan")] + [0.0] * 383
    import psycopg

    with pytest.raises(psycopg.Error) as ei:
        pg_books.execute("SELECT tt_matvec('m', 'ffn', %s::real[])", (x,)).fetchall()
    assert ei.value.sqlstate == "22P01"


def test_without_the_tables(pg, duck):
    import psycopg

    with pytest.raises(psycopg.Error) as ei:
        pg.execute("SELECT tt_element('m', 'w', 1, 1)").fetchall()
    assert ei.value.sqlstate == "42P01" and "bitpress migrate" in str(ei.value.diag.message_hint)
    with pytest.raises(Exception, match="bitpress migrate"):
        duck.execute("SELECT tt_element('m', 'w', 1, 1)").fetchall()


def test_kernel_paths_give_the_same_bits():
    rng = np.random.default_rng(4)
    cores = _cores(rng, [(4, 8), (6, 5), (16, 12)], [1, 13, 11, 1])
    st = tensors.StoredTensor("m", "t", (384, 480), cores)
    x = rng.standard_normal((5, 384)).astype(np.float32)
    out = {}
    try:
        for path in _core.supported_impls():
            _core.set_impl(path)
            out[path] = (st.reconstruct(), st.matvec(x), st.row(100), st.element(3, 7))
    finally:
        _core.set_impl("auto")
    assert "scalar" in out and len(out) >= 2
    ref = out["scalar"]
    for path, got in out.items():
        for a, b in zip(ref, got):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), path
    # and against numpy, to float32 rounding
    w = tt.reconstruct(cores).astype(np.float64)
    assert np.allclose(ref[0], w, rtol=1e-5, atol=1e-5 * np.abs(w).max())
    assert np.allclose(ref[1], x @ w, rtol=1e-4, atol=1e-4 * np.abs(x @ w).max())


def test_matvec_takes_the_cheaper_route():
    rng = np.random.default_rng(5)
    low = tensors.StoredTensor("m", "low", (384, 1536), _cores(rng, [(8, 16), (6, 12), (8, 8)], [1, 4, 4, 1]))
    high = tensors.StoredTensor("m", "high", (384, 1536), _cores(rng, [(8, 16), (6, 12), (8, 8)], [1, 40, 40, 1]))
    assert not low.prefers_dense and low.matvec_cost < 384 * 1536
    assert high.prefers_dense and high.matvec_cost > 384 * 1536
    x = rng.standard_normal((3, 384)).astype(np.float32)
    for st in (low, high):
        w = st.reconstruct().astype(np.float64)
        assert np.allclose(st.matvec(x), x @ w, rtol=1e-4, atol=1e-4 * np.abs(x @ w).max())
