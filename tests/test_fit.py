"""bitpress.fit: every method on real MiniLM vectors (pure numpy and the C core, no database)."""
import json

import numpy as np
import pytest

from bitpress import errors, kernels
from bitpress.codebook import Codebook
from bitpress.fit import METHODS, fit, fit_levels, itq_rotation

# every method at a size that fits a 384-d sample; learned with a short schedule
CASES = [("sign", None, {}), ("mean", None, {}), ("median", None, {}),
         ("matryoshka", 96, {}), ("hybrid", 256, {}), ("pca", 64, {}), ("itq", 64, {}),
         ("thermometer", None, {}), ("rabitq", 768, {}),
         ("learned", None, {"steps": 10, "anchors": 400, "check_anchors": 100, "check_every": 5})]


@pytest.fixture(scope="module")
def x(minilm):
    return minilm[:1000]


@pytest.fixture(scope="module")
def fitted(x):
    return {m: fit(x, m, b, progress=False, **kw) for m, b, kw in CASES}


def test_cases_cover_every_method():
    assert sorted(m for m, _, _ in CASES) == sorted(METHODS)


def test_median_thresholds_are_numpy_medians_and_bits_balanced(x, fitted):
    cb = fitted["median"]
    assert cb.projection is None and cb.center is None
    np.testing.assert_array_equal(cb.thr_a, np.median(x, axis=0))
    np.testing.assert_array_equal(cb.src_a, np.arange(384))
    ones = np.unpackbits(kernels.encode(cb, x), axis=1, count=384).mean(axis=0)
    assert np.abs(ones - 0.5).max() <= 1 / len(x)        # 1000 rows: exactly 500 above, up to ties
    assert cb.options["bit_balance"] == pytest.approx(0.5, abs=1e-3)


def test_sign_and_mean_thresholds(x, fitted):
    np.testing.assert_array_equal(fitted["sign"].thr_a, np.zeros(384, np.float32))
    np.testing.assert_allclose(fitted["mean"].thr_a, x.mean(axis=0, dtype=np.float64), rtol=0, atol=1e-7)
    # sign codes are pgvector's binary_quantize
    np.testing.assert_array_equal(kernels.encode(fitted["sign"], x), kernels.binarize(x))


def test_matryoshka_uses_only_the_leading_dimensions(x, fitted):
    cb = fitted["matryoshka"]
    assert cb.bits == 96 and cb.dims == 384
    np.testing.assert_array_equal(cb.thr_a, np.median(x[:, :96], axis=0))
    y = x.copy()
    y[:, 96:] = np.random.default_rng(0).standard_normal((len(x), 288))
    np.testing.assert_array_equal(kernels.encode(cb, y), kernels.encode(cb, x))


def test_hybrid_pair_bits(x, fitted):
    cb = fitted["hybrid"]
    lead = 2 * 256 - 384
    assert cb.bits == 256 and cb.options["single_dims"] == lead and cb.options["pair_bits"] == 128
    assert cb.base is None and not cb.asymmetric
    np.testing.assert_array_equal(cb.src_b[:lead], -1)
    a, b = cb.src_a[lead:], cb.src_b[lead:]
    assert sorted(np.r_[cb.src_a[:lead], a, b].tolist()) == list(range(384))   # every dim used once
    bits = np.unpackbits(kernels.encode(cb, x), axis=1, count=256).astype(bool)
    zero = (x[:, a] <= cb.thr_a[lead:]) & (x[:, b] <= cb.thr_b[lead:])     # 0 only when both are low
    np.testing.assert_array_equal(bits[:, lead:], ~zero)
    assert np.abs(bits[:, lead:].mean(axis=0) - 0.5).max() < 0.02           # pair cut points balanced


def test_pca_and_itq_projections(x, fitted):
    for m in ("pca", "itq"):
        cb = fitted[m]
        p = cb.projection.astype(np.float64)
        assert p.shape == (64, 384)
        np.testing.assert_allclose(p @ p.T, np.eye(64), atol=1e-5)           # orthonormal rows
        np.testing.assert_allclose(cb.center, x.mean(axis=0), atol=1e-6)
    # ITQ's projection is R^T P: the same subspace as PCA's
    pca, itq = fitted["pca"].projection.astype(np.float64), fitted["itq"].projection.astype(np.float64)
    np.testing.assert_allclose(pca.T @ pca @ itq.T, itq.T, atol=1e-4)


def test_itq_rotation_is_orthogonal_and_loss_decreases(x):
    v = (x - x.mean(axis=0)) @ np.linalg.qr(np.random.default_rng(1).standard_normal((384, 32)))[0]
    r, history = itq_rotation(v, iterations=30, seed=0, progress=False)
    np.testing.assert_allclose(r.T @ r, np.eye(32), atol=1e-9)
    assert len(history) == 31
    assert all(b <= a + 1e-9 for a, b in zip(history, history[1:]))
    assert history[-1] < history[0] - 0.01
    cb = fit(x, "itq", 32, iterations=30, progress=False)
    assert cb.options["loss"] < cb.options["loss_start"]
    assert len(cb.options["loss_history"]) == 31
    again = fit(x, "itq", 32, iterations=30, progress=False)
    np.testing.assert_array_equal(again.projection, cb.projection)           # seeded


def test_thermometer_is_monotone_and_hamming_is_the_level_gap(x, fitted):
    cb = fitted["thermometer"]
    assert cb.bits == 768
    np.testing.assert_array_equal(cb.src_a, np.repeat(np.arange(384), 2))
    lo, hi = cb.thr_a[0::2], cb.thr_a[1::2]
    assert (lo < hi).all()
    mu, sd = x.mean(axis=0, dtype=np.float64), x.std(axis=0, dtype=np.float64)
    np.testing.assert_allclose(lo, mu - 0.5 * sd, atol=1e-6)
    np.testing.assert_allclose(hi, mu + 0.5 * sd, atol=1e-6)
    codes = kernels.encode(cb, x)
    bits = np.unpackbits(codes, axis=1, count=768).reshape(len(x), 384, 2)
    assert (bits[:, :, 1] <= bits[:, :, 0]).all()                            # 11, 10 or 00
    level = bits.sum(axis=2).astype(np.int64)
    for i in (0, 7, 500):
        np.testing.assert_array_equal(kernels.hamming(codes[i], codes), np.abs(level - level[i]).sum(axis=1))
    tert = fit(x, "thermometer", cut="tertile", progress=False)
    np.testing.assert_allclose(tert.thr_a.reshape(-1, 2), np.quantile(x, [1 / 3, 2 / 3], axis=0).T, atol=1e-6)


def test_reconstruction_levels_reduce_error(x, fitted):
    for m, cb in fitted.items():
        if m in ("hybrid", "rabitq"):  # rabitq: scored by the index's estimate (test_rabitq_codebook)
            continue
        assert cb.asymmetric, m
        xhat = cb.reconstruct_reference(kernels.encode(cb, x))
        err = ((xhat - x) ** 2).sum(axis=1).mean()
        zero = (x.astype(np.float64) ** 2).sum(axis=1).mean()                   # x_hat = 0
        # a bit (or two) on every dimension: under half the error of x_hat = 0 (median: 0.32)
        assert err < (0.45 if cb.components == 384 and m != "matryoshka" else 1.0) * zero, m
        assert cb.options["recon_error"] == pytest.approx(err / zero, rel=1e-3)
        # levels are conditional means: beat the best constant (the mean) too
        assert err < ((x - x.mean(axis=0)) ** 2).sum(axis=1).mean(), m


def test_fit_levels_are_conditional_means():
    z = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]], dtype=np.float32)
    base, delta = fit_levels(z, np.array([0, 0]), np.array([2.5, 0.5], np.float32))
    # cells: z <= 0.5 -> {0}, 0.5 < z <= 2.5 -> {1, 2}, z > 2.5 -> {3, 10}
    assert base[0] == 0.0
    np.testing.assert_allclose(delta, [6.5 - 1.5, 1.5 - 0.0])   # bit order: thr 2.5, then 0.5
    # an empty cell takes its cut point; a component without bits gets its mean
    base, delta = fit_levels(np.array([[1.0, 4.0], [2.0, 6.0]], np.float32), np.array([0]), np.array([5.0], np.float32))
    np.testing.assert_allclose(base, [1.5, 5.0])
    np.testing.assert_allclose(delta, [5.0 - 1.5])


def test_asymmetric_scores_match_the_reconstruction(x, fitted):
    cb = fitted["median"]
    codes = kernels.encode(cb, x[:200])
    q = x[500]
    np.testing.assert_allclose(kernels.asymmetric_scores(cb, q, codes),
                               cb.reconstruct_reference(codes) @ q.astype(np.float64), rtol=1e-5, atol=1e-6)


def test_every_method_roundtrips_through_bytes(x, fitted):
    for m, cb in fitted.items():
        blob = cb.to_bytes()
        back = Codebook.from_bytes(blob, m, cb.options)
        assert back.to_bytes() == blob
        for name in ("src_a", "thr_a", "src_b", "thr_b", "center", "projection", "base", "delta"):
            a, b = getattr(cb, name), getattr(back, name)
            assert (a is None) == (b is None), (m, name)
            if a is not None:
                np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(kernels.encode(blob, x[:300]), cb.encode_reference(x[:300]))
        json.dumps(cb.options)                                              # JSON-able
        assert cb.options["method"] == m and cb.options["sample_rows"] == len(x)


def test_learned_is_never_worse_than_median_on_its_check(fitted):
    o = fitted["learned"].options
    start = o["checks"][0]
    best = o["checks"][[c["step"] for c in o["checks"]].index(o["best_step"])]
    assert (best["recall_hamming"] + best["recall_asym"]) >= (start["recall_hamming"] + start["recall_asym"])
    assert o["check_recall_median"] == [start["recall_hamming"], start["recall_asym"]]


def test_one_dimension_and_float64_input():
    x = np.random.default_rng(0).standard_normal((50, 1))
    cb = fit(x, "median", progress=False)
    assert cb.dims == 1 and cb.bits == 1
    assert fit(x, "thermometer", progress=False).bits == 2


@pytest.mark.parametrize("args, kwargs, error, message", [
    (("median",), {"bits": 100}, errors.InvalidParameterError, "bits must be 384"),
    (("thermometer",), {"bits": 384}, errors.InvalidParameterError, "bits must be 768"),
    (("matryoshka",), {"bits": 384}, errors.InvalidParameterError, "1..383"),
    (("matryoshka",), {}, errors.InvalidParameterError, "1..383"),
    (("hybrid",), {"bits": 191}, errors.InvalidParameterError, "192..383"),
    (("pca",), {"bits": 385}, errors.InvalidParameterError, "1..384"),
    (("itq",), {"bits": 0}, errors.InvalidParameterError, "at least 1"),
    (("pca",), {"bits": 2.5}, errors.InvalidParameterError, "integer"),
    (("nope",), {}, errors.InvalidParameterError, "unknown method 'nope'"),
    (("median",), {"alpha": 1}, errors.InvalidParameterError, "unknown option(s) for median: alpha"),
    (("thermometer",), {"cut": "x"}, errors.InvalidParameterError, "thermometer option cut must be 'sigma' or 'tertile'"),
    (("thermometer",), {"alpha": -1}, errors.InvalidParameterError, "alpha must be a positive number"),
    (("itq",), {"bits": 8, "iterations": 2.5}, errors.InvalidParameterError, "iterations must be a non-negative integer"),
    (("learned",), {"levels": "x"}, errors.InvalidParameterError, "levels must be 'learned' or 'conditional'"),
    (("hybrid",), {"bits": 200, "order": "x"}, errors.InvalidParameterError, "order must be"),
])
def test_bad_parameters(x, args, kwargs, error, message):
    with pytest.raises(error) as e:
        fit(x[:300], *args, progress=False, **kwargs)
    assert message in str(e.value)


def test_bad_samples(x):
    bad = x[:10].copy()
    bad[7, 3] = np.nan
    with pytest.raises(errors.NonFiniteError, match=r"row 7, element 3") as e:
        fit(bad, "median")
    assert e.value.row == 7 and e.value.sqlstate == "22P01"
    bad[7, 3] = np.inf
    with pytest.raises(errors.NonFiniteError, match="row 7"):
        fit(bad, "sign")
    with pytest.raises(errors.NonFiniteError, match="row 0"):               # beyond float32's range
        fit(np.array([[1e300, 0.0], [0.0, 0.0]]), "sign")
    with pytest.raises(errors.InvalidParameterError, match="2-D"):
        fit(x[0], "median")
    with pytest.raises(errors.InvalidParameterError, match="needs at least 2 sample rows, got 1"):
        fit(x[:1], "median")
    with pytest.raises(errors.InvalidParameterError, match="pca with 64 bits needs at least 65 sample rows, got 64"):
        fit(x[:64], "pca", 64)
    with pytest.raises(errors.InvalidParameterError, match="learned needs at least 256 sample rows, got 100"):
        fit(x[:100], "learned")
    with pytest.raises(errors.EmptyVectorError):
        fit(np.zeros((5, 0)), "sign")
    with pytest.raises(errors.VectorTooLargeError, match="65537"):
        fit(np.zeros((2, 65537), np.float32), "sign")
    with pytest.raises(errors.NullValueError):
        fit(np.array([[1.0, None], [0.0, 1.0]], dtype=object), "sign")
    with pytest.raises(errors.InvalidParameterError, match="real numbers"):
        fit(np.array([["a", "b"], ["c", "d"]]), "sign")
    assert issubclass(errors.InvalidParameterError, ValueError)


def test_openai_large_dimensions(openai_small):
    cb = fit(openai_small, "itq", 32, progress=False)
    assert cb.dims == 1536 and cb.bits == 32
    np.testing.assert_array_equal(kernels.encode(cb, openai_small), cb.encode_reference(openai_small))
    cb = fit(openai_small, "median", progress=False)
    assert abs(cb.options["bit_balance"] - 0.5) < 0.01
