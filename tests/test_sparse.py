"""bitpress.sparse: activation-sparse FFN reference, low-rank neuron predictor, analysis.

Synthetic checks of every formula against float64 / math references, then the real
paraphrase-MiniLM-L3-v2 FFN blocks on real PyPI summaries (captured with onnxruntime).
"""
import json
import math

import numpy as np
import pytest

from bitpress import errors, sparse
from bitpress.sparse import (ACTIVATIONS, Predictor, effective_bias, ffn, fit_predictor,
                             fit_predictors, gelu_erf, gelu_tanh, importance, neuron_offsets,
                             oracle_active, output_error, predictor_recall, relu, silu,
                             sparse_ffn, sparsity_profile, static_active)

SQRT2 = math.sqrt(2.0)


def _math_act(name):
    return {
        "gelu": lambda v: 0.5 * v * math.erfc(-v / SQRT2),
        # 0.5 v (1 + tanh(u)) = v / (1 + exp(-2u)): the same function, no cancellation
        "gelu_tanh": lambda v: _x_sigmoid(v, 2 * math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)),
        "relu": lambda v: max(v, 0.0),
        "silu": lambda v: _x_sigmoid(v, v),
    }[name]


def _x_sigmoid(v, u):
    return v / (1 + math.exp(-u)) if u >= 0 else v * math.exp(u) / (1 + math.exp(u))


@pytest.fixture(scope="module")
def block():
    """A small random FFN (d=48, h=192, e=40) and 30 inputs, GELU-like scales."""
    rng = np.random.default_rng(7)
    d, h, e = 48, 192, 40
    w1 = (rng.standard_normal((d, h)) / math.sqrt(d)).astype(np.float32)
    b1 = (rng.standard_normal(h) * 0.5 - 0.5).astype(np.float32)
    w2 = (rng.standard_normal((h, e)) / math.sqrt(h)).astype(np.float32)
    b2 = (rng.standard_normal(e) * 0.1).astype(np.float32)
    x = rng.standard_normal((30, d)).astype(np.float32)
    return x, w1, b1, w2, b2


def _ffn64(x, w1, b1, w2, b2, name, active=None, offset=None):
    """float64 reference with math.* activations, row by row, only the active neurons."""
    f = _math_act(name)
    x, w1, b1, w2, b2 = (np.asarray(a, dtype=np.float64) for a in (x, w1, b1, w2, b2))
    h = w1.shape[1]
    c = np.zeros(h) if offset is None else np.asarray(offset, dtype=np.float64)
    out = []
    for i, row in enumerate(np.atleast_2d(x)):
        idx = range(h) if active is None else active[i]
        y = b2 + c @ w2
        for j in idx:
            y = y + (f(float(row @ w1[:, j] + b1[j])) - c[j]) * w2[j]
        out.append(y)
    return np.array(out)


# ------------------------------------------------------------------------------ activations
def test_erf_and_erfc_match_math():
    xs = np.concatenate([np.linspace(-30, 30, 200001), np.geomspace(1e-300, 1e3, 20000),
                         -np.geomspace(1e-300, 1e3, 2000), [0.0, 0.46875, -0.46875, 4.0, -4.0]])
    ref = np.array([math.erf(v) for v in xs])
    got = sparse.erf(xs)
    assert got.dtype == np.float64 and got.shape == xs.shape
    assert np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-300)) < 1e-14
    refc = np.array([math.erfc(v) for v in xs])
    gotc = sparse.erfc(xs)
    tail = refc > 1e-290  # relative accuracy down to the underflow
    assert np.max(np.abs(gotc - refc)[tail] / refc[tail]) < 1e-14
    assert np.max(np.abs(gotc - refc)) < 1e-15
    assert sparse.erf(np.array([np.inf, -np.inf])).tolist() == [1.0, -1.0]
    assert sparse.erfc(np.array([np.inf, -np.inf])).tolist() == [0.0, 2.0]
    assert np.isnan(sparse.erf(np.nan)) and np.isnan(sparse.erfc(np.nan))
    assert sparse.erf(np.ones((2, 3))).shape == (2, 3)


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "relu", "silu"])
def test_activations_match_math_references(name):
    x = np.concatenate([np.linspace(-12, 12, 20002), [-30.0, -0.0, 0.0, 1e-30, -1e-30, 30.0]])
    x = x.astype(np.float32)
    got = ACTIVATIONS[name](x)
    assert got.dtype == np.float32 and got.shape == x.shape
    f = _math_act(name)
    ref = np.array([f(float(v)) for v in x])
    # float64 inside, one rounding: within half an ulp of float32 (plus the 4e-16 of erf)
    assert np.all(np.abs(got - ref) <= np.abs(ref) * 2.0 ** -24 * 1.0001 + 1e-45)
    assert np.array_equal(ACTIVATIONS[name](x.reshape(4, -1)), got.reshape(4, -1))


def test_activation_functions_and_names():
    assert ACTIVATIONS["gelu"] is gelu_erf and ACTIVATIONS["gelu_erf"] is gelu_erf
    assert ACTIVATIONS["gelu_tanh"] is gelu_tanh and ACTIVATIONS["relu"] is relu
    assert ACTIVATIONS["silu"] is silu
    # the far negative tails keep their relative accuracy (erfc, not 1 + erf; no 1 + tanh)
    ref = 0.5 * -8.0 * math.erfc(8.0 / SQRT2)
    assert gelu_erf(np.float32(-8.0)) == pytest.approx(ref, rel=1e-6)
    assert ref < -1e-15
    u = math.sqrt(2 / math.pi) * (-8.0 - 0.044715 * 512)
    assert gelu_tanh(np.float32(-8.0)) == pytest.approx(-8.0 * math.exp(2 * u), rel=1e-6)
    assert silu(np.float32(-60.0)) == pytest.approx(-60.0 * math.exp(-60.0), rel=1e-6)
    # tanh GELU differs from the exact one (by < 1e-3), so the two cannot be mixed up
    x = np.linspace(-4, 4, 801, dtype=np.float32)
    assert 1e-4 < np.max(np.abs(gelu_tanh(x) - gelu_erf(x))) < 1e-3
    with pytest.raises(errors.InvalidParameterError):
        ffn(np.zeros(2), np.zeros((2, 3)), np.zeros(3), np.zeros((3, 2)), np.zeros(2), "gelu2")


# ------------------------------------------------------------------------- dense and sparse
@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "relu", "silu"])
def test_ffn_matches_float64_reference(block, name):
    x, w1, b1, w2, b2 = block
    y = ffn(x, w1, b1, w2, b2, name)
    ref = _ffn64(x, w1, b1, w2, b2, name)
    assert y.dtype == np.float32 and y.shape == (30, 40)
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 1e-6
    one = ffn(x[3], w1, b1, w2, b2, name)
    assert one.shape == (40,) and np.allclose(one, y[3], rtol=1e-5, atol=1e-6)
    # a callable works as the activation too
    assert np.array_equal(ffn(x, w1, b1, w2, b2, ACTIVATIONS[name]), y)


@pytest.mark.parametrize("method", ["auto", "gather", "masked"])
def test_sparse_ffn_all_active_equals_ffn(block, method):
    x, w1, b1, w2, b2 = block
    n, h = x.shape[0], w1.shape[1]
    dense = ffn(x, w1, b1, w2, b2)
    c = neuron_offsets(x, w1, b1)
    for active in (None, np.arange(h), np.ones(h, bool), np.tile(np.arange(h), (n, 1)),
                   np.ones((n, h), bool), [np.arange(h)[::-1].copy() for _ in range(n)]):
        for offset in (None, c):
            y = sparse_ffn(x, w1, b1, w2, b2, "gelu", active, offset=offset, method=method)
            assert y.shape == dense.shape and y.dtype == np.float32
            np.testing.assert_allclose(y, dense, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("method", ["auto", "gather", "masked"])
@pytest.mark.parametrize("name", ["gelu", "relu"])
def test_sparse_ffn_subset_equals_manual(block, method, name):
    x, w1, b1, w2, b2 = block
    n, h = x.shape[0], w1.shape[1]
    rng = np.random.default_rng(3)
    ragged = [np.sort(rng.choice(h, rng.integers(0, h // 2), replace=False)) for _ in range(n)]
    ragged[0] = np.array([], dtype=np.int64)  # an empty set: only the bias
    mask = np.zeros((n, h), bool)
    for i, r in enumerate(ragged):
        mask[i, r] = True
    fixed = np.stack([rng.permutation(h)[:40] for _ in range(n)])  # (n, k), unsorted
    shared = rng.permutation(h)[:50]
    c = (rng.standard_normal(h) * 0.05).astype(np.float32)
    for active, rows in ((ragged, ragged), (mask, ragged), (fixed, list(fixed)),
                         (shared, [shared] * n)):
        for offset in (None, c):
            y = sparse_ffn(x, w1, b1, w2, b2, name, active, offset=offset, method=method)
            ref = _ffn64(x, w1, b1, w2, b2, name, rows, offset)
            np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    # only the active neurons count: changing an inactive neuron's weights changes nothing
    w1b, w2b = w1.copy(), w2.copy()
    off = np.setdiff1d(np.arange(h), shared)
    w1b[:, off] += 1.0
    w2b[off] -= 1.0
    assert np.array_equal(sparse_ffn(x, w1b, b1, w2b, b2, name, shared),
                          sparse_ffn(x, w1, b1, w2, b2, name, shared))
    # the empty set gives b2 (or the effective bias with offsets)
    assert np.array_equal(sparse_ffn(x[0], w1, b1, w2, b2, name, ragged[:1][0], method=method), b2)
    eb = effective_bias(w2, b2, c)
    np.testing.assert_allclose(eb, b2 + c.astype(np.float64) @ w2.astype(np.float64), rtol=1e-6, atol=1e-7)
    assert np.array_equal(
        sparse_ffn(x[:2], w1, b1, w2, b2, name, np.zeros((2, 0), np.int64), offset=c, method=method),
        np.tile(eb, (2, 1)))


def test_sparse_ffn_rejects_bad_active(block):
    x, w1, b1, w2, b2 = block
    n, h = x.shape[0], w1.shape[1]
    bad = [
        (np.array([0, h]), errors.IndexOutOfRangeError),
        (np.array([-1, 2]), errors.IndexOutOfRangeError),
        (np.array([3, 5, 3]), errors.InvalidParameterError),
        (np.tile([1, 1], (n, 1)), errors.InvalidParameterError),
        (np.zeros((n + 1, 3), np.int64), errors.DimensionMismatchError),
        (np.ones((n, h + 1), bool), errors.DimensionMismatchError),
        ([np.array([1])] * (n - 1), errors.DimensionMismatchError),
        (np.array([0.5, 1.5]), errors.InvalidParameterError),
        (np.zeros((2, 2, 2), np.int64), errors.InvalidParameterError),
    ]
    for active, exc in bad:
        with pytest.raises(exc):
            sparse_ffn(x, w1, b1, w2, b2, "gelu", active)
    with pytest.raises(errors.InvalidParameterError):
        sparse_ffn(x, w1, b1, w2, b2, "gelu", None, method="dense")
    with pytest.raises(errors.DimensionMismatchError):
        ffn(x[:, :10], w1, b1, w2, b2)
    with pytest.raises(errors.DimensionMismatchError):
        ffn(x, w1, b1[:5], w2, b2)


def test_neuron_offsets(block):
    x, w1, b1, w2, b2 = block
    a = gelu_erf(x @ w1 + b1)
    c = neuron_offsets(x, w1, b1)
    np.testing.assert_allclose(c, np.median(a, axis=0), rtol=1e-6, atol=1e-7)
    # fraction f: the mean activation over the rows where the neuron is not in the top-k
    cf = neuron_offsets(x, w1, b1, fraction=0.25, iterations=1)
    k = round(0.25 * w1.shape[1])
    dev = np.abs(a - c)
    off = np.ones(a.shape, bool)
    off[np.arange(len(a))[:, None], np.argsort(-dev, axis=1)[:, :k]] = False
    want = np.where(off.any(0), (a * off).sum(0) / np.maximum(off.sum(0), 1), c)
    np.testing.assert_allclose(cf, want, rtol=1e-5, atol=1e-6)
    # on a block where quiet neurons sit in GELU's negative lobe, offsets cut the error
    orc0 = output_error(x, w1, b1, w2, b2, "gelu", oracle_active(x, w1, b1, "gelu", 48))
    orc1 = output_error(x, w1, b1, w2, b2, "gelu", oracle_active(x, w1, b1, "gelu", 48, c),
                        offset=c)
    assert orc1 < orc0


# ------------------------------------------------------------------------------- predictor
def _low_rank(d=64, h=256, r=8, n=500, seed=1):
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((d, r)) @ rng.standard_normal((r, h)) / math.sqrt(d * r)).astype(np.float32)
    b1 = (rng.standard_normal(h) * 0.3).astype(np.float32)
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x, w1, b1


@pytest.mark.parametrize("refine", [False, True])
def test_predictor_exact_on_low_rank_weights(refine):
    x, w1, b1 = _low_rank()
    p = fit_predictor(w1, b1, x[:300], 8, refine=refine)
    assert (p.rank, p.dim, p.hidden) == (8, 64, 256) and p.refined is refine
    assert p.p.dtype == np.float32 and p.q.dtype == np.float32
    assert p.calib_error_svd < 1e-6 and p.calib_error < 1e-6
    z = x[300:] @ w1 + b1
    assert np.max(np.abs(p.predict(x[300:]) - z)) < 1e-4 * np.max(np.abs(z))
    for k in (10, 77, 128):
        assert predictor_recall(p, x[300:], w1, b1, "gelu", k) == 1.0
    # one rank short: no longer exact
    p7 = fit_predictor(w1, b1, x[:300], 7, refine=refine)
    assert p7.calib_error > 1e-3
    assert predictor_recall(p7, x[300:], w1, b1, "gelu", 77) < 1.0


def _als(w, g, p, q, iterations):
    """Alternating least squares on ||X (W - P Q)||^2 + lam ||W - P Q||^2 (g = X^T X + lam I)."""
    for _ in range(iterations):
        p = w @ q.T @ np.linalg.inv(q @ q.T)
        q = np.linalg.solve(p.T @ g @ p, p.T @ g @ w)
    return p, q


def test_refinement_never_increases_calibration_error():
    rng = np.random.default_rng(5)
    d, h, n = 40, 160, 400
    w1 = (rng.standard_normal((d, h)) / math.sqrt(d)).astype(np.float32)
    b1 = (rng.standard_normal(h) * 0.2).astype(np.float32)
    scales = np.geomspace(5.0, 0.05, d)  # strongly anisotropic inputs, like LayerNorm outputs
    x = (rng.standard_normal((n, d)) * scales + 0.3).astype(np.float32)
    xx = x.astype(np.float64)
    z = xx @ w1 + b1
    for ridge in (0.0, 1e-3, 1.0):
        preds = fit_predictors(w1, b1, x, [1, 4, 10, 20, 40], ridge=ridge)
        for r, p in preds.items():
            assert p.calib_error <= p.calib_error_svd + 1e-7, (ridge, r)
            # the reported error is the real one
            e = np.linalg.norm(xx @ p.p @ p.q + b1 - z) / np.linalg.norm(z)
            assert e == pytest.approx(p.calib_error, rel=1e-4, abs=1e-6)
            if r < 40:
                assert p.calib_error < 0.95 * p.calib_error_svd, (ridge, r)
            if 4 <= r <= 20 and ridge <= 1e-3:
                assert p.calib_error < 0.7 * p.calib_error_svd, (ridge, r)
        assert preds[40].calib_error < 1e-5  # full rank
    # the closed form is the optimum alternating least squares converges to
    w = w1.astype(np.float64)
    lam = 1e-3 * np.trace(xx.T @ xx) / d
    g = xx.T @ xx + lam * np.eye(d)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    r = 6
    p0, q0 = u[:, :r] * s[:r], vt[:r]
    p1, _ = _als(w, g, p0, q0, 0)
    p_step = w @ q0.T @ np.linalg.inv(q0 @ q0.T)  # the P step alone gives back U S
    np.testing.assert_allclose(p_step, p0, atol=1e-10)
    pa, qa = _als(w, g, p0, q0, 50)
    fitted = fit_predictor(w1, b1, x, r)

    def obj(p, q):
        e = w - p @ q
        return np.trace(e.T @ g @ e)

    closed = obj(fitted.p.astype(np.float64), fitted.q.astype(np.float64))
    assert closed <= obj(pa, qa) * (1 + 1e-5)
    assert obj(pa, qa) <= obj(p0, q0)
    assert closed < 0.9 * obj(p0, q0)


def test_predictor_select_threshold_and_json(block):
    x, w1, b1, w2, b2 = block
    h = w1.shape[1]
    p = fit_predictor(w1, b1, x, 6)
    assert p.cost == 48 * 6 + 6 * h
    idx = p.select(x, k=20)
    assert idx.shape == (30, 20) and np.all(np.diff(idx, axis=1) > 0)
    assert np.array_equal(idx, p.select(x, fraction=20 / h))
    s = p.scores(x)
    np.testing.assert_allclose(s, importance(p.predict(x), "gelu"))
    # the chosen ones are the best-scored ones
    assert np.all(np.take_along_axis(s, idx, 1).min(1) >= np.sort(s, 1)[:, -20])
    assert p.select(x[0], k=5).shape == (5,)
    # a global threshold: on the calibration rows a fraction f is above it
    for f in (0.1, 0.3, 0.7):
        m = p.select(x, threshold=p.threshold_for(f))
        assert m.shape == (30, h) and m.dtype == bool
        assert abs(m.mean() - f) < 0.01
    assert p.threshold_for(0.1) > p.threshold_for(0.7)
    for kw in ({}, {"k": 3, "fraction": 0.1}, {"k": h + 1}, {"fraction": 1.5}):
        with pytest.raises(errors.InvalidParameterError):
            p.select(x, **kw)
    # offsets change the score to |act - c|
    c = neuron_offsets(x, w1, b1)
    po = p.with_offset(c, x)
    np.testing.assert_allclose(po.scores(x), np.abs(gelu_erf(p.predict(x)) - c), rtol=1e-6)
    assert p.offset is None and po.offset is not None
    # JSON round trip
    for q in (p, po):
        back = Predictor.from_dict(json.dumps(q.to_dict()))
        assert np.array_equal(back.p, q.p) and np.array_equal(back.q, q.q)
        assert np.array_equal(back.quantiles, q.quantiles)
        assert np.array_equal(back.select(x, k=20), q.select(x, k=20))
        assert back.calib_error == q.calib_error and back.activation == "gelu"
    for bad in (0, 49, 2.5, True):
        with pytest.raises(errors.InvalidParameterError):
            fit_predictor(w1, b1, x, bad)
    with pytest.raises(errors.NonFiniteError):
        fit_predictor(w1, b1, np.full((3, 48), np.nan), 2)


def test_relu_scores_by_pre_activation():
    z = np.array([[-3.0, -1.0, 0.5, 2.0]], np.float32)
    assert importance(z, "relu").tolist() == z.tolist()
    assert importance(z, "gelu").tolist() == np.abs(gelu_erf(z)).tolist()
    x = np.eye(4, dtype=np.float32)
    assert oracle_active(z, x, np.zeros(4), "relu", 2).tolist() == [[2, 3]]
    # GELU: -3 gives |gelu| 0.004, -1 gives 0.159: the negative lobe counts
    assert oracle_active(z, x, np.zeros(4), "gelu", 2).tolist() == [[2, 3]]
    assert oracle_active(z, x, np.zeros(4), "gelu", 3).tolist() == [[1, 2, 3]]


# -------------------------------------------------------------------------------- analysis
def test_sparsity_profile_counts():
    # relu(I x): each row has exactly m equal non-zero activations
    h, m = 100, 10
    x = np.zeros((3, h), np.float32)
    x[0, :m] = 1
    x[1, 50:50 + m] = 2
    x[2, ::10] = 3
    prof = sparsity_profile(x, np.eye(h), np.zeros(h), "relu", fractions=(0.05, 0.1, 0.3))
    assert prof["rows"] == 3 and prof["h"] == h
    assert prof["mass"]["90%"] == {"mean": 9.0, "median": 9.0, "mean_fraction": 0.09}
    assert prof["mass"]["99%"]["mean"] == 10.0
    assert prof["kept_mass"] == {"5%": 0.5, "10%": 1.0, "30%": 1.0}
    # unequal masses: 50, 30, 20 -> 90 % needs all three, 50 % one
    x2 = np.zeros((1, h), np.float32)
    x2[0, :3] = [20, 50, 30]
    prof2 = sparsity_profile(x2, np.eye(h), np.zeros(h), "relu", levels=(0.5, 0.8, 0.9), fractions=())
    assert [prof2["mass"][k]["mean"] for k in ("50%", "80%", "90%")] == [1.0, 2.0, 3.0]


def test_output_error_and_static_set(block):
    x, w1, b1, w2, b2 = block
    h = w1.shape[1]
    assert output_error(x, w1, b1, w2, b2, "gelu", np.arange(h)) < 1e-6
    y = ffn(x, w1, b1, w2, b2).astype(np.float64)
    want = np.mean(np.linalg.norm(b2 - y, axis=1) / np.linalg.norm(y, axis=1))
    assert output_error(x, w1, b1, w2, b2, "gelu", np.zeros((30, 0), np.int64)) == pytest.approx(want, rel=1e-5)
    # error falls as more neurons are computed; the oracle beats a fixed set
    errs = [output_error(x, w1, b1, w2, b2, "gelu", oracle_active(x, w1, b1, "gelu", k))
            for k in (20, 60, 120, 192)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-6
    st = static_active(x, w1, b1, "gelu", 60)
    a = np.abs(gelu_erf(x @ w1 + b1)).mean(0)
    assert set(st.tolist()) == set(np.argsort(-a)[:60].tolist())
    assert output_error(x, w1, b1, w2, b2, "gelu", st) > errs[1]


# ------------------------------------------------------------------------------ real model
@pytest.fixture(scope="module")
def real():
    """FFN inputs/outputs of every layer for 200 training and 100 held-out PyPI summaries."""
    texts = sparse.load_texts(0, 300)
    train, weights = sparse.capture_ffn_io(texts[:200], threads=2, return_weights=True)
    test = sparse.capture_ffn_io(texts[200:], threads=2)
    return train, test, weights, texts


def test_capture_reproduces_the_model(real):
    import onnx

    from bitpress.embed import Embedder, default_model_path

    train, test, weights, texts = real
    assert sorted(weights) == [0, 1, 2]
    ops = {n.op_type for n in onnx.load(str(default_model_path())).graph.node}
    assert "Erf" in ops  # the model's GELU is the exact erf form
    tok = Embedder(threads=1).tokenizer
    n_train = sum(len(e.ids) for e in tok.encode_batch(texts[:200]))
    n_test = sum(len(e.ids) for e in tok.encode_batch(texts[200:]))
    for layer, w in weights.items():
        assert w.activation == "gelu"
        assert w.w1.shape == (384, 1536) and w.b1.shape == (1536,)
        assert w.w2.shape == (1536, 384) and w.b2.shape == (384,)
        for (x, y), n in ((train[layer], n_train), (test[layer], n_test)):
            assert x.shape == (n, 384) and y.shape == (n, 384)  # one row per real token
            yd = ffn(x, *w)
            assert np.linalg.norm(yd - y) / np.linalg.norm(y) < 1e-5
            rows = np.linalg.norm(yd - y, axis=1) / np.linalg.norm(y, axis=1)
            assert rows.max() < 1e-5
    # order: the first text's tokens come first, and a single text gives the same rows
    one = sparse.capture_ffn_io(texts[:1], threads=1)
    for layer in weights:
        k = one[layer][0].shape[0]
        np.testing.assert_allclose(one[layer][0], train[layer][0][:k], rtol=1e-5, atol=1e-5)
    # the layers differ (not the same tensor captured three times)
    assert not np.allclose(train[0][0], train[1][0])


def test_real_model_sparsity_and_predictor(real):
    train, test, weights, _ = real
    h = 1536
    k = round(0.3 * h)
    lines = []
    for layer, w in weights.items():
        xtr, xte = train[layer][0], test[layer][0]
        rep = sparse.analyze_layer(*w, xtr, xte, ranks=(16, 32, 64), fractions=(0.3,),
                                   error_ranks=(32, 64))
        prof = rep["profile"]
        n90, n99 = prof["mass"]["90%"], prof["mass"]["99%"]
        pr = rep["predictors"]
        oe = rep["output_error"]["30%"]
        lines.append(
            f"layer {layer}: 90% of |act| mass in {n90['mean']:.0f} (median {n90['median']:.0f}) "
            f"neurons, 99% in {n99['mean']:.0f} (median {n99['median']:.0f}); top 30% keep "
            f"{prof['kept_mass']['30%']:.3f} of it\n"
            f"  recall@30% (random {rep['recall_random']:.3f}, static {rep['recall_static']:.3f}): "
            + ", ".join(f"r{r} {pr[r]['recall']:.3f} (svd {pr[r]['recall_svd']:.3f})" for r in (16, 32, 64))
            + "\n  output error @30%: "
            + ", ".join(f"{key} {oe[key]:.3f}" for key in (
                "oracle", "oracle_median", "static", "rank32", "rank64", "rank64_median",
                "rank64_median_threshold")))
        # sparsity: GELU is far from sparse in this small model, but not flat either
        assert 0.3 * h < n90["mean"] < 0.9 * h and n90["mean"] < n99["mean"] <= h
        assert 0.4 < prof["kept_mass"]["30%"] < 0.95
        # the predictor: better with rank, clearly better than random, refined > plain SVD
        r16, r32, r64 = (pr[r]["recall"] for r in (16, 32, 64))
        assert r16 < r32 < r64
        assert r64 > r16 + 0.05
        assert r64 > rep["recall_random"] + 0.2
        assert r64 > rep["recall_static"]
        for r in (16, 32, 64):
            assert pr[r]["recall"] > pr[r]["recall_svd"]
            assert pr[r]["calib_error"] < pr[r]["calib_error_svd"]
            assert pr[r]["test_error"] < pr[r]["calib_error_svd"]
        assert pr[64]["cost_fraction"] == pytest.approx((384 * 64 + 64 * h) / (2 * 384 * h))
        # output error at 30 % active: oracle < rank-64 predictor < rank-32 predictor < 1
        assert oe["oracle"] < oe["rank64"] < oe["rank32"] < 1.0
        # off values never hurt the oracle and help the predictor
        assert oe["oracle_median"] <= oe["oracle"] + 0.01
        assert oe["rank64_median"] <= oe["rank64"] + 0.01
        assert abs(oe["rank64_median_threshold_fraction"] - 0.3) < 0.05
        if layer in (0, 1):  # many neurons in GELU's negative lobe: offsets matter a lot
            assert oe["oracle_median"] < 0.6 * oe["oracle"]
    print("\n" + "\n".join(lines))

    # analyze_layer's cached arithmetic (rep: layer 2, the last) agrees with the public functions
    w = weights[2]
    xtr, xte = train[2][0], test[2][0]
    p64 = fit_predictor(w.w1, w.b1, xtr, 64)
    rec = predictor_recall(p64, xte, w.w1, w.b1, k=k)
    assert rec == pytest.approx(rep["predictors"][64]["recall"], abs=2e-3)
    e_orc = output_error(xte, *w, active=oracle_active(xte, w.w1, w.b1, "gelu", k), method="gather")
    assert e_orc == pytest.approx(rep["output_error"]["30%"]["oracle"], rel=1e-3)
    e_64 = output_error(xte, *w, active=p64.select(xte, k=k))
    assert e_64 == pytest.approx(rep["output_error"]["30%"]["rank64"], rel=1e-2)
