"""The C core's IVF + RaBitQ arithmetic (pyext/bp_ivf.c) through bitpress.ivf, against numpy on
real MiniLM vectors: the rotation is orthogonal, k-means deterministic, the float kernel's AVX2
path gives the scalar path's bits, and the estimates are unbiased within their error bounds."""
from __future__ import annotations

import numpy as np
import pytest

from bitpress import _core, errors, ivf
from conftest import load_shared


@pytest.fixture(scope="module")
def rows():
    return load_shared("pypi-minilm", "corpus.npy")[:4000].copy()


@pytest.mark.parametrize("dim", [1, 3, 64, 100, 384, 1536])
def test_rotation_is_orthogonal_and_seeded(dim):
    x = np.random.default_rng(dim).standard_normal((50, dim)).astype(np.float32)
    r = ivf.rotate(x, 7)
    np.testing.assert_allclose(np.linalg.norm(r, axis=1), np.linalg.norm(x, axis=1), rtol=2e-6)
    np.testing.assert_allclose(r @ r.T, x @ x.T, atol=2e-4 * dim ** 0.5)
    assert np.array_equal(ivf.rotate(x, 7), r)
    if dim > 1:
        assert not np.allclose(ivf.rotate(x, 8), r)
    if dim >= 64:
        # it mixes like a random rotation: no coordinate keeps much of a basis vector's energy
        e = ivf.rotate(np.eye(dim, dtype=np.float32), 7)
        assert (e ** 2).max() < 8 * np.log(dim) / dim


def test_dot_paths_give_the_same_bits():
    rng = np.random.default_rng(1)
    for n in (1, 7, 8, 9, 383, 384, 1536):
        a = rng.standard_normal(n).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        s, v = _core.ivf_dot(a.tobytes(), b.tobytes(), False), _core.ivf_dot(a.tobytes(), b.tobytes(), True)
        assert s == v
        assert abs(s - float(a.astype(np.float64) @ b)) < 1e-4 * n ** 0.5


def test_kmeans_is_deterministic_and_spherical(rows):
    c1 = ivf.kmeans(rows, 20, seed=3, spherical=True)
    assert np.array_equal(c1, ivf.kmeans(rows, 20, seed=3, spherical=True))
    np.testing.assert_allclose(np.linalg.norm(c1, axis=1), 1, rtol=1e-5)
    # better than the random rows it starts from: the rows' mean cosine to their centroid
    start = rows[np.random.default_rng(0).choice(len(rows), 20, replace=False)]
    assert (rows @ c1.T).max(axis=1).mean() > (rows @ start.T).max(axis=1).mean() + 0.05
    with pytest.raises(ValueError):
        ivf.kmeans(rows[:5], 6)


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_estimates_are_unbiased_within_their_bounds(rows, bits, metric):
    x = rows if metric == "cosine" else rows * np.random.default_rng(2).uniform(0.5, 2, (len(rows), 1)).astype(np.float32)
    xr = ivf.rotate(x, 11)
    q = ivf.rotate(load_shared("pypi-minilm", "queries.npy")[:10], 11)
    c = ivf.kmeans(xr, 8, seed=1, spherical=metric != "l2")
    enc = ivf.encode(xr, c, bits, spherical=metric != "l2")
    err, bound = [], []
    for qr in q:
        for l in range(8):
            m = enc.lists == l
            est, b = ivf.estimate(qr, c[l], enc.codes[m], enc.factors[m], bits, metric)
            true = ivf.distance(xr[m], qr, metric)
            err.append(est - true)
            bound.append(b)
    err, bound = np.concatenate(err), np.concatenate(bound)
    scale = np.abs(ivf.distance(xr, q[0], metric)).mean()
    assert abs(err.mean()) < 0.1 * err.std() + 1e-3 * scale      # unbiased
    # the bound is the estimate's standard error: 1.9 of them cover ~97% on one side
    assert (err > 1.9 * bound).mean() < 0.05 and (err < -1.9 * bound).mean() < 0.05
    assert 0.5 < np.sqrt((err ** 2).mean()) / np.sqrt((bound ** 2).mean()) < 1.5


def test_more_bits_estimate_better(rows):
    xr = ivf.rotate(rows, 5)
    qr = ivf.rotate(load_shared("pypi-minilm", "queries.npy")[:5], 5)
    c = ivf.kmeans(xr, 4, seed=2, spherical=True)
    rmse = []
    for bits in (1, 2, 3, 4):
        enc = ivf.encode(xr, c, bits, spherical=True, lists=np.zeros(len(xr), np.int32))
        e = np.concatenate([ivf.estimate(q, c[0], enc.codes, enc.factors, bits, "cosine")[0]
                            - ivf.distance(xr, q, "cosine") for q in qr])
        rmse.append(np.sqrt((e ** 2).mean()))
    assert rmse[0] > rmse[1] > rmse[2] > rmse[3] and rmse[3] < rmse[0] / 4, rmse


def test_encode_edge_cases():
    c = np.zeros((1, 4), np.float32)
    enc = ivf.encode(np.zeros((1, 4), np.float32), c, 1)
    assert enc.codes.tobytes() == bytes(8) and enc.factors.tolist() == [[0.0] * 5]
    est, _ = ivf.estimate(np.ones(4, np.float32), c[0], enc.codes, enc.factors, 1, "l2")
    assert est[0] == pytest.approx(4.0)
    with pytest.raises(errors.BitpressError):
        ivf.encode(np.array([[1, np.nan, 0, 0]], np.float32), c, 1)
    with pytest.raises(ValueError):
        ivf.encode(np.ones((1, 4), np.float32), c, 5)
