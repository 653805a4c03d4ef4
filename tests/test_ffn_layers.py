"""Feed-forward layers in tables: ffn / sparse_ffn in PostgreSQL and DuckDB, against numpy.

A real FFN of paraphrase-MiniLM-L3-v2 (layer 0) with a predictor fitted here by truncated SVD:
the C core's dense result against a float64 numpy reference, the sparse result against the same
computation on the neurons the predictor picks, both engines and Python giving the same bits,
and every kind of bad input with its SQLSTATE.
"""
import math

import numpy as np
import pytest
from conftest import error_of

from bitpress import _core, errors, ffn, onnx_weights
from bitpress.embed import default_model_path
from bitpress.tables import fetchall, kind

RANK = 32


def _gelu64(z):
    erf = np.vectorize(math.erf)
    return 0.5 * z * (1.0 + erf(z / math.sqrt(2.0)))


@pytest.fixture(scope="module")
def layer():
    m = onnx_weights.load_model(default_model_path())
    by_name = {v: k for k, v in onnx_weights.readable_names(m).items()}
    get = lambda n: onnx_weights.tensor(m, by_name[f"model.0.auto_model.encoder.layer.0.{n}"])  # noqa: E731
    w1, b1 = get("intermediate.dense.weight"), get("intermediate.dense.bias")
    w2, b2 = get("output.dense.weight"), get("output.dense.bias")
    u, s, vt = np.linalg.svd(w1.astype(np.float64), full_matrices=False)
    p = (u[:, :RANK] * s[:RANK]).astype(np.float32)
    q = vt[:RANK].astype(np.float32)
    thr = np.full(w1.shape[1], 0.05, np.float32)
    return ffn.Layer(w1, b1, w2, b2, "gelu_erf", p, q, thr, settings={"rank": RANK})


@pytest.fixture(scope="module")
def inputs():
    """Real inputs of layer 0's FFN: 40 tokens' hidden states from real PyPI summaries."""
    from bitpress.bert import Bert
    from bitpress.sparse import load_texts

    x = Bert().capture_ffn_inputs(load_texts(0, 12))[0]
    return np.ascontiguousarray(x[::max(1, len(x) // 40)][:40], dtype=np.float32)


@pytest.fixture(params=["pg", "duckdb"])
def engine(request, layer):
    conn = request.getfixturevalue("pg_books" if request.param == "pg" else "duck_books")
    ffn.save(conn, "l0", layer, source="paraphrase-MiniLM-L3-v2 layer 0")
    ffn.save(conn, "l0_int8", layer, int8=True)
    return conn


def _cast(conn):
    return "FLOAT[]" if kind(conn) == "duckdb" else "real[]"


def _sql_rows(conn, q, x):
    return np.array([fetchall(conn, q.replace("CAST", _cast(conn)), (v.tolist(),))[0][0] for v in x],
                    dtype=np.float32)


def test_dense_layer_is_the_model_s_ffn(layer, inputs):
    blob = layer.to_bytes()
    y, n = ffn.run(blob, inputs)
    ref = _gelu64(inputs.astype(np.float64) @ layer.w1 + layer.b1) @ layer.w2 + layer.b2
    assert n == 1536
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()


def test_sparse_layer_computes_exactly_the_chosen_neurons(layer, inputs):
    blob = layer.to_bytes()
    z_hat = inputs.astype(np.float64) @ layer.p @ layer.q + layer.b1
    score = np.abs(z_hat / (1 + np.exp(-1.702 * z_hat)))  # the core's ranking score
    for k in (154, 460, 768):
        y, n = ffn.run(blob, inputs, k=k)
        assert n == k
        for i in range(0, len(inputs), 7):
            sel = np.sort(np.argsort(-score[i], kind="stable")[:k])
            ref = _gelu64(inputs[i].astype(np.float64) @ layer.w1[:, sel] + layer.b1[sel]) @ layer.w2[sel] + layer.b2
            assert np.abs(y[i] - ref).max() <= 1e-5 * np.abs(ref).max(), (k, i)
    # every neuron: the same bits as the dense layer
    assert np.array_equal(ffn.run(blob, inputs, k=1536)[0], ffn.run(blob, inputs)[0])
    # more neurons, closer to dense
    dense = ffn.run(blob, inputs)[0]
    errs = [np.linalg.norm(ffn.run(blob, inputs, k=k)[0] - dense) for k in (154, 460, 1152)]
    assert errs[0] > errs[1] > errs[2] > 0


def test_thresholds_pick_the_neurons_above_them(layer, inputs):
    blob = layer.to_bytes()
    _, n = ffn.run(blob, inputs, thresholds=True)
    z_hat = inputs.astype(np.float64) @ layer.p @ layer.q + layer.b1
    score = np.abs(z_hat / (1 + np.exp(-1.702 * z_hat)))
    assert abs(n - (score > 0.05).sum(1).mean()) < 0.5  # float32 vs float64 scores may differ by a hair


def test_int8_weights_stay_close(layer, inputs):
    y, _ = ffn.run(layer.to_bytes(), inputs)
    y8, _ = ffn.run(layer.to_bytes(int8=True), inputs)
    rel = np.linalg.norm(y8 - y, axis=1) / np.linalg.norm(y - layer.b2, axis=1)
    assert rel.mean() < 0.02 and rel.max() < 0.05  # int8 rows: about 1-2 % of the output
    assert len(layer.to_bytes(int8=True)) < len(layer.to_bytes()) / 3


def test_sql_gives_the_bits_of_python(engine, layer, inputs):
    blob = layer.to_bytes()
    x = inputs[:6]
    assert np.array_equal(_sql_rows(engine, "SELECT ffn(%s::CAST, 'l0')", x), ffn.run(blob, x)[0])
    assert np.array_equal(_sql_rows(engine, "SELECT sparse_ffn(%s::CAST, 'l0', 460)", x),
                          ffn.run(blob, x, k=460)[0])
    assert np.array_equal(_sql_rows(engine, "SELECT sparse_ffn(%s::CAST, 'l0')", x),
                          ffn.run(blob, x, thresholds=True)[0])
    assert np.array_equal(_sql_rows(engine, "SELECT ffn(%s::CAST, 'l0_int8')", x),
                          ffn.run(layer.to_bytes(int8=True), x)[0])


def test_postgresql_vector_column(pg_books, layer, inputs):
    ffn.save(pg_books, "l0", layer)
    pg_books.execute("CREATE TABLE h (id int, x vector(384))")
    with pg_books.cursor().copy("COPY h (id, x) FROM STDIN") as cp:
        for i, v in enumerate(inputs):
            cp.write_row((i, v))
    rows = pg_books.execute("SELECT ffn(x, 'l0'), sparse_ffn(x, 'l0', 460) FROM h ORDER BY id").fetchall()
    blob = layer.to_bytes()
    assert np.array_equal(np.stack([r[0].to_numpy() for r in rows]), ffn.run(blob, inputs)[0])
    assert np.array_equal(np.stack([r[1].to_numpy() for r in rows]), ffn.run(blob, inputs, k=460)[0])


def test_kernel_paths_give_the_same_bits(layer, inputs):
    blobs = [layer.to_bytes(), layer.to_bytes(int8=True)]
    out = {}
    try:
        for path in _core.supported_impls():
            _core.set_impl(path)
            out[path] = [ffn.run(b, inputs, k=k)[0] for b in blobs for k in (None, 300)]
    finally:
        _core.set_impl("auto")
    assert len(out) >= 2
    for path, got in out.items():
        assert all(np.array_equal(a, b) for a, b in zip(out["scalar"], got)), path


def _error(conn, q):
    cast = "FLOAT[]" if kind(conn) == "duckdb" else "real[]"
    return error_of(conn, q.replace("CAST", cast), {"k must be at least 1": "22023"})


@pytest.mark.parametrize("q, sqlstate, words", [
    ("SELECT ffn(array_fill(0.5::real, ARRAY[384])::CAST, 'nope')", "42704", 'layer "nope" does not exist'),
    ("SELECT ffn(array_fill(0.5::real, ARRAY[3])::CAST, 'l0')", "22000",
     "vector has 3 dimensions but the layer expects 384"),
    ("SELECT sparse_ffn(array_fill(0.5::real, ARRAY[384])::CAST, 'l0', 0)", "22023", "k must be"),
    ("SELECT sparse_ffn(array_fill(0.5::real, ARRAY[384])::CAST, 'l0', 1537)", "22023",
     "k must be between 1 and the layer's 1536 neurons, got 1537"),
])
def test_bad_arguments(engine, q, sqlstate, words):
    if kind(engine) == "duckdb":
        q = q.replace("array_fill(0.5::real, ARRAY[384])", "list_transform(range(384), lambda i: 0.5)") \
             .replace("array_fill(0.5::real, ARRAY[3])", "[0.5, 0.5, 0.5]")
    got, msg = _error(engine, q)
    assert got == sqlstate and words in msg, msg


def test_nan_input_and_broken_params(engine, layer):
    x = [float("nan")] + [0.0] * 383
    cast = _cast(engine)
    got, msg = _error(engine, f"SELECT ffn({'ARRAY' if cast == 'real[]' else ''}{x}::CAST, 'l0')".replace(
        "nan", "'NaN'" if cast == "real[]" else "'nan'::FLOAT"))
    assert got == "22P01" and "NaN or infinity" in msg
    blob = bytearray(layer.to_bytes())
    blob[100:104] = np.array([np.inf], np.float32).tobytes()
    from bitpress.tables import params_checksum

    q = "UPDATE bitpress.ffn_layers SET params = %s WHERE name = 'l0'"
    fix = "UPDATE bitpress.ffn_layers SET checksum = %s WHERE name = 'l0'"
    for sql, arg, words in [(q, bytes(blob), 'layer "l0": its parameters do not match their stored checksum'),
                            (fix, params_checksum(blob), "malformed layer: NaN or infinity in its parameters")]:
        engine.execute(sql.replace("%s", "?") if kind(engine) == "duckdb" else sql, [arg])
        got, msg = _error(engine, f"SELECT ffn({_x384(engine)}, 'l0')")
        assert got == "22P03" and words in msg, msg


def _x384(conn):
    return ("list_transform(range(384), lambda i: 0.5)::FLOAT[]" if kind(conn) == "duckdb"
            else "array_fill(0.5::real, ARRAY[384])")


@pytest.mark.parametrize("q", ["SELECT ffn(X, 'big')", "SELECT sparse_ffn(X, 'big', 8)",
                               "SELECT sparse_ffn(X, 'big')", "SELECT sparse_ffn(X, 'big', 8, 'exact')"])
def test_a_result_that_overflows_is_out_of_range(engine, layer, q):
    """Finite weights of 1e20 make outputs past float4: 22003 in both engines, not Infinity."""
    big = ffn.Layer(layer.w1 * np.float32(1e20), layer.b1, layer.w2 * np.float32(1e20), layer.b2,
                    "gelu_erf", layer.p, layer.q, np.zeros_like(layer.thresholds))
    ffn.save(engine, "big", big)
    got, msg = error_of(engine, q.replace("X", _x384(engine)))
    assert got == "22003" and "is not a finite real (the computation overflows)" in msg, msg
    with pytest.raises(errors.ResultOutOfRangeError):
        ffn.run(ffn.load(engine, "big"), np.full(384, 0.5, np.float32))


def test_a_null_in_the_layer_table_is_corrupt_data(engine):
    engine.execute("ALTER TABLE bitpress.ffn_layers ALTER COLUMN params DROP NOT NULL")
    engine.execute("UPDATE bitpress.ffn_layers SET params = NULL WHERE name = 'l0'")
    got, msg = error_of(engine, f"SELECT ffn({_x384(engine)}, 'l0')")
    assert got == "XX001" and 'bitpress.ffn_layers (layer "l0"): column "params" is NULL' in msg, msg


def test_a_layer_without_predictor_refuses_sparse(layer, inputs):
    plain = ffn.Layer(layer.w1, layer.b1, layer.w2, layer.b2, "gelu_erf")
    with pytest.raises(errors.InvalidParameterError, match="no predictor"):
        ffn.run(plain.to_bytes(), inputs, k=10)
    with pytest.raises(errors.InvalidParameterError, match="activation must be one of"):
        ffn.Layer(layer.w1, layer.b1, layer.w2, layer.b2, "gelu_fast").to_bytes()
    with pytest.raises(errors.MalformedLayerError):
        ffn.run(layer.to_bytes()[:-4], inputs)


def test_off_values_and_the_exact_selector_match_the_numpy_reference(layer, inputs):
    from bitpress import sparse

    c = sparse.neuron_offsets(inputs, layer.w1, layer.b1, "gelu")
    with_c = ffn.Layer(layer.w1, layer.b1, layer.w2, layer.b2, "gelu_erf", layer.p, layer.q,
                       offsets=c)
    blob = with_c.to_bytes()
    assert ffn.shape(blob)["offsets"]
    dense, _ = ffn.run(blob, inputs)
    # every neuron, off values or not: the dense layer (up to the order of two sums)
    every, _ = ffn.run(blob, inputs, k=1536, selector="exact")
    assert np.abs(every - dense).max() <= 1e-5 * np.abs(dense).max()
    # the exact selector: the top-k of |act(z) - c|, as the numpy reference computes it
    z = inputs.astype(np.float64) @ layer.w1 + layer.b1
    a = _gelu64(z)
    for k in (154, 460):
        y, n = ffn.run(blob, inputs, k=k, selector="exact")
        assert n == k
        sel = np.sort(np.argsort(-np.abs(a - c), axis=1, kind="stable")[:, :k], axis=1)
        ref = sparse.sparse_ffn(inputs, layer.w1, layer.b1, layer.w2, layer.b2, "gelu", sel, offset=c)
        assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()
    # off values make a sparse layer closer to the dense one
    plain = ffn.Layer(layer.w1, layer.b1, layer.w2, layer.b2, "gelu_erf", layer.p, layer.q).to_bytes()
    err = lambda y: np.linalg.norm(y - dense, axis=1).mean()  # noqa: E731
    assert err(ffn.run(blob, inputs, k=460, selector="exact")[0]) < \
        err(ffn.run(plain, inputs, k=460, selector="exact")[0])
    with pytest.raises(errors.InvalidParameterError, match="selector"):
        ffn.run(blob, inputs, k=10, selector="oracle")


def test_exact_selector_in_sql(engine, layer, inputs):
    blob = layer.to_bytes()
    x = inputs[:4]
    assert np.array_equal(_sql_rows(engine, "SELECT sparse_ffn(%s::CAST, 'l0', 460, 'exact')", x),
                          ffn.run(blob, x, k=460, selector="exact")[0])
    got, msg = _error(engine, "SELECT sparse_ffn(array_fill(0.5::real, ARRAY[384])::CAST, 'l0', 5, 'oracle')"
                      .replace("array_fill(0.5::real, ARRAY[384])", "list_transform(range(384), lambda i: 0.5)"
                               if kind(engine) == "duckdb" else "array_fill(0.5::real, ARRAY[384])"))
    assert got == "22023" and "selector must be predictor or exact" in msg, msg


def test_sparse_fit_command_stores_every_layer(tmp_path, capsys):
    from bitpress import cli

    db = str(tmp_path / "s.duckdb")
    assert cli.main(["sparse", "fit", "--duckdb", db, "--name", "l3", "--rank", "32",
                     "--calibration", "60", "--held-out", "20", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "l3.layer0" in out and "l3.layer2" in out
    import duckdb

    con = duckdb.connect(db)
    rows = con.execute("SELECT name, rank, settings FROM bitpress.ffn_layers ORDER BY name").fetchall()
    con.close()
    assert [r[0] for r in rows] == ["l3.layer0", "l3.layer1", "l3.layer2"] and {r[1] for r in rows} == {32}
    import json

    for _, _, settings in rows:
        s = json.loads(settings)
        # better than chance (0.30), and the exact selector closer to dense than the predictor
        assert 0.35 < s["recall_at_k"] <= 1.0
        assert s["output_rel_error_at_k_exact"] < s["output_rel_error_at_k"]


@pytest.mark.parametrize("kind_, name", [(1, "gelu_tanh"), (2, "relu"), (3, "silu"), (0, "gelu_erf")])
def test_core_activations_against_math(kind_, name):
    assert ffn.ACTIVATIONS[name] == kind_
    x = np.linspace(-12, 12, 20001, dtype=np.float32)
    out = np.empty_like(x)
    _core.activation_into(kind_, x, out)
    xd = x.astype(np.float64)
    ref = {"gelu_erf": 0.5 * xd * (1 + np.vectorize(math.erf)(xd / math.sqrt(2))),
           "gelu_tanh": 0.5 * xd * (1 + np.tanh(math.sqrt(2 / math.pi) * (xd + 0.044715 * xd ** 3))),
           "relu": np.maximum(xd, 0), "silu": xd / (1 + np.exp(-xd))}[name]
    assert np.abs(out - ref).max() <= 2e-6 * max(1.0, np.abs(ref).max())


def test_weights_from_a_tensor_train_model(duck_books):
    """sparse fit can take a layer's weights from a model stored as TT cores."""
    from bitpress import sparsefit, ttmodels

    ttmodels.compress(duck_books, default_model_path(), "l3tt", eps=0.3, include=r"layer\.0\.intermediate",
                      progress_bar=False)
    rows = sparsefit.fit_model(duck_books, "fromtt", rank=16, calibration=30, held_out=10,
                               tt_model="l3tt", progress_bar=False)
    assert len(rows) == 3 and rows[0]["weights_from_tt_model"] == "l3tt"
    blob = ffn.load(duck_books, "fromtt.layer0")
    from bitpress import tensors

    w1 = tensors.load(duck_books, "l3tt", "model.0.auto_model.encoder.layer.0.intermediate.dense.weight").reconstruct()
    m = onnx_weights.load_model(default_model_path())
    orig = onnx_weights.tensor(m, "onnx::MatMul_481")
    assert 0.25 < np.linalg.norm(w1 - orig) / np.linalg.norm(orig) <= 0.3 + 1e-6  # the TT weights, not the originals
    x = np.random.default_rng(0).standard_normal((3, 384)).astype(np.float32)
    y, _ = ffn.run(blob, x)
    b1 = tensors.load(duck_books, "l3tt", "model.0.auto_model.encoder.layer.0.intermediate.dense.bias").reconstruct()
    w2 = tensors.load(duck_books, "l3tt", "model.0.auto_model.encoder.layer.0.output.dense.weight").reconstruct()
    b2 = tensors.load(duck_books, "l3tt", "model.0.auto_model.encoder.layer.0.output.dense.bias").reconstruct()
    ref = _gelu64(x.astype(np.float64) @ w1 + b1) @ w2 + b2
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
