"""bitpress.tt: TT-SVD, evaluation from the cores, layouts and decompose() (pure numpy)."""
import math

import numpy as np
import pytest

from bitpress import errors, tt

EPSES = (0.01, 0.1, 0.3, 0.5)
LAYOUT = [(4, 5), (6, 7), (8, 3)]          # 192 x 105
RANKS = (1, 3, 4, 1)


def random_cores(layout, ranks, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((ranks[k], m, n, ranks[k + 1])).astype(np.float32)
            for k, (m, n) in enumerate(layout)]


def decaying(rows, cols, seed, tau):
    """A float32 matrix with singular values exp(-i / tau) plus a little noise."""
    rng = np.random.default_rng(seed)
    k = min(rows, cols)
    u, _ = np.linalg.qr(rng.standard_normal((rows, k)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, k)))
    a = (u * np.exp(-np.arange(k) / tau)) @ v.T
    a += 1e-3 * rng.standard_normal((rows, cols)) / math.sqrt(rows * cols) * np.linalg.norm(a)
    return a.astype(np.float32)


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    return float(np.linalg.norm(a - np.asarray(b, dtype=np.float64)) / np.linalg.norm(a))


def stored(cores):
    return 4 * sum(g.size for g in cores)


@pytest.fixture(scope="module")
def matrices():
    return {"96x128": decaying(96, 128, 1, 12.0), "384x1536": decaying(384, 1536, 2, 40.0)}


@pytest.fixture(scope="module")
def sweeps(matrices):
    """(name, layout index, eps) -> cores, for every layout of factorizations()."""
    out = {}
    for name, a in matrices.items():
        for li, layout in enumerate(tt.factorizations(*a.shape)):
            for eps in EPSES:
                out[name, li, eps] = tt.tt_svd(a, layout, eps=eps)
    return out


# ---------------------------------------------------------------------------------------------
# exact recovery and the layout formula
def test_reconstruct_matches_the_layout_formula():
    cores = random_cores(LAYOUT, RANKS)
    w = tt.reconstruct(cores)
    assert w.shape == (192, 105) and w.dtype == np.float32
    ms, ns = [m for m, _ in LAYOUT], [n for _, n in LAYOUT]
    rng = np.random.default_rng(5)
    for i, j in zip(rng.integers(0, 192, 40), rng.integers(0, 105, 40)):
        (i1, i2, i3), (j1, j2, j3) = np.unravel_index(i, ms), np.unravel_index(j, ns)
        want = (cores[0][0, i1, j1, :].astype(np.float64) @ cores[1][:, i2, j2, :]
                @ cores[2][:, i3, j3, 0])
        assert w[i, j] == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_exact_recovery_of_known_ranks():
    w = tt.reconstruct(random_cores(LAYOUT, RANKS, seed=3))
    cores = tt.tt_svd(w, LAYOUT, eps=1e-6)
    assert tt.core_ranks(cores) == RANKS
    assert tt.core_modes(cores) == LAYOUT
    assert [g.shape for g in cores] == [(1, 4, 5, 3), (3, 6, 7, 4), (4, 8, 3, 1)]
    assert all(g.dtype == np.float32 and g.flags.c_contiguous for g in cores)
    assert rel_err(w, tt.reconstruct(cores)) < 1e-5
    # eps=None (numerical rank) is exact too, and decompose with these modes keeps them
    assert rel_err(w, tt.reconstruct(tt.tt_svd(w, LAYOUT))) < 1e-6
    res = tt.decompose(w, eps=1e-6, modes=LAYOUT)
    assert res.modes == LAYOUT and res.ranks == RANKS and res.format == "tt"
    assert res.rel_error < 1e-5 and res.bound_holds is True
    assert res.stored_bytes == 4 * (60 + 504 + 96) and res.dense_bytes == 4 * 192 * 105


def test_svd_layout_is_u_s_vt():
    a = decaying(40, 30, 7, 3.0)
    cores = tt.tt_svd(a, [(40, 1), (1, 30)], max_rank=5)
    assert [g.shape for g in cores] == [(1, 40, 1, 5), (5, 1, 30, 1)]
    u, s, vt = np.linalg.svd(a.astype(np.float64))
    best = (u[:, :5] * s[:5]) @ vt[:5]
    np.testing.assert_allclose(tt.reconstruct(cores), best, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# the eps bound
@pytest.mark.parametrize("name", ["96x128", "384x1536"])
def test_eps_bound_holds_on_every_layout(matrices, sweeps, name):
    a = matrices[name]
    layouts = tt.factorizations(*a.shape)
    assert len(layouts) == 5
    for li, layout in enumerate(layouts):
        for eps in EPSES:
            cores = sweeps[name, li, eps]
            assert tt.core_modes(cores) == layout
            err = rel_err(a, tt.reconstruct(cores))
            assert err <= eps, (layout, eps, err)
            if li == 1:   # SVD layout: the truncation goes close to the bound, not far below
                assert err > eps / 2, (layout, eps, err)


@pytest.mark.parametrize("name", ["96x128", "384x1536"])
def test_larger_eps_never_stores_more(matrices, sweeps, name):
    layouts = tt.factorizations(*matrices[name].shape)
    for li in range(len(layouts)):
        sizes = [stored(sweeps[name, li, eps]) for eps in EPSES]
        assert sizes == sorted(sizes, reverse=True), (layouts[li], sizes)
    svd = [stored(sweeps[name, 1, eps]) for eps in EPSES]
    assert svd[0] > svd[-1]   # strictly, on the SVD layout


@pytest.mark.parametrize("name,epses", [("96x128", EPSES), ("384x1536", (0.1, 0.5))])
def test_decompose_keeps_the_smallest_layout_and_reports_honestly(matrices, sweeps, name, epses):
    a = matrices[name]
    rows, cols = a.shape
    prev = None
    for eps in epses:
        res = tt.decompose(a, eps=eps)
        best = min(stored(sweeps[name, li, eps]) for li in range(1, 5))
        assert res.dense_bytes == 4 * rows * cols
        if best >= res.dense_bytes:   # 96x128 at eps=0.01: no layout is smaller
            assert (name, eps) == ("96x128", 0.01)
            assert res.format == "dense" and res.stored_bytes == res.dense_bytes
        else:
            assert res.format == "tt" and res.stored_bytes == best == stored(res.cores)
            assert res.ratio == pytest.approx(res.dense_bytes / res.stored_bytes)
            assert res.ratio > 1
        assert res.rel_error == pytest.approx(rel_err(a, tt.reconstruct(res.cores)), rel=1e-6)
        assert res.rel_error <= eps and res.bound_holds is True
        assert res.eps == eps and res.max_rank is None and res.shape == (rows, cols)
        assert res.ranks == tt.core_ranks(res.cores) and res.modes == tt.core_modes(res.cores)
        assert prev is None or res.stored_bytes <= prev
        prev = res.stored_bytes


# ---------------------------------------------------------------------------------------------
# max_rank and Eckart-Young
def test_max_rank_caps_every_rank_and_is_reported(matrices):
    a = matrices["96x128"]
    for layout in tt.factorizations(96, 128)[1:]:
        cores = tt.tt_svd(a, layout, eps=0.01, max_rank=3)
        assert max(tt.core_ranks(cores)) <= 3
    res = tt.decompose(a, eps=0.01, max_rank=3)
    assert max(res.ranks) <= 3 and res.max_rank == 3
    assert res.rel_error > 0.01 and res.bound_holds is False
    # a cap that does not bind keeps the bound
    loose = tt.decompose(a, eps=0.3, max_rank=90, modes=[(96, 1), (1, 128)])
    assert loose.ranks[1] < 90 and loose.bound_holds is True and loose.rel_error <= 0.3


@pytest.mark.parametrize("r", [1, 4, 10, 30])
def test_svd_layout_with_max_rank_is_eckart_young(matrices, r):
    a = matrices["96x128"]
    s = np.linalg.svd(a.astype(np.float64), compute_uv=False)
    best = math.sqrt(float(np.sum(s[r:] ** 2))) / math.sqrt(float(np.sum(s ** 2)))
    res = tt.decompose(a, max_rank=r, modes=[(96, 1), (1, 128)])
    assert res.ranks == (1, r, 1)
    assert res.rel_error == pytest.approx(best, abs=1e-4)
    assert res.bound_holds is None


# ---------------------------------------------------------------------------------------------
# evaluation from the cores
EVAL_LAYOUTS = [
    (LAYOUT, RANKS),
    ([(192, 1), (1, 105)], (1, 6, 1)),                     # SVD
    ([(192, 105)], (1, 1)),                                 # dense
    ([(2, 1), (1, 3), (96, 5), (1, 7)], (1, 2, 5, 3, 1)),  # modes of 1 mixed in
]


@pytest.mark.parametrize("layout,ranks", EVAL_LAYOUTS)
def test_row_element_matvec_agree_with_reconstruct(layout, ranks):
    cores = random_cores(layout, ranks, seed=11)
    w = tt.reconstruct(cores).astype(np.float64)
    scale = np.abs(w).max()
    rng = np.random.default_rng(12)
    for i in (0, 1, 77, 191):
        row = tt.reconstruct_row(cores, i)
        assert row.shape == (105,) and row.dtype == np.float32
        np.testing.assert_allclose(row, w[i], rtol=1e-4, atol=1e-5 * scale)
    for i, j in [(0, 0), (191, 104), (5, 99), (100, 3)]:
        assert tt.element(cores, i, j) == pytest.approx(w[i, j], rel=1e-4, abs=1e-5 * scale)
    x = rng.standard_normal(192)
    y = tt.matvec(cores, x)
    assert y.shape == (105,) and y.dtype == np.float32
    np.testing.assert_allclose(y, x @ w, rtol=1e-4, atol=1e-4 * np.abs(x @ w).max())
    xb = rng.standard_normal((7, 192)).astype(np.float32)
    yb = tt.matvec(cores, xb)
    assert yb.shape == (7, 105)
    np.testing.assert_allclose(yb, xb @ w, rtol=1e-4, atol=1e-4 * np.abs(xb @ w).max())
    np.testing.assert_allclose(yb[3], tt.matvec(cores, xb[3]), rtol=1e-6)


def test_matvec_and_rows_never_form_w(monkeypatch):
    cores = random_cores(LAYOUT, RANKS, seed=2)
    w = tt.reconstruct(cores)
    x = np.random.default_rng(0).standard_normal((3, 192))

    def boom(*_):
        raise AssertionError("W was formed")

    monkeypatch.setattr(tt, "_full", boom)
    monkeypatch.setattr(tt, "reconstruct", boom)
    np.testing.assert_allclose(tt.matvec(cores, x), x @ w, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(tt.reconstruct_row(cores, 50), w[50], rtol=1e-5, atol=1e-5)
    assert tt.element(cores, 50, 60) == pytest.approx(float(w[50, 60]), rel=1e-5, abs=1e-5)


def test_evaluation_rejects_bad_cores_and_arguments():
    cores = random_cores(LAYOUT, RANKS)
    with pytest.raises(ValueError, match="left rank"):
        tt.reconstruct([cores[0], cores[2]])
    with pytest.raises(ValueError, match="right rank 1"):
        tt.reconstruct(cores[:2])
    with pytest.raises(ValueError, match="4-D"):
        tt.reconstruct([np.zeros((3, 4))])
    with pytest.raises(ValueError, match="non-empty"):
        tt.reconstruct([])
    with pytest.raises(ValueError, match=r"\(192,\)"):
        tt.matvec(cores, np.zeros(105))
    with pytest.raises(IndexError, match="row index 192"):
        tt.reconstruct_row(cores, 192)
    with pytest.raises(IndexError, match="column index -1"):
        tt.element(cores, 0, -1)


# ---------------------------------------------------------------------------------------------
# layouts
def test_factorizations_384_1536():
    layouts = tt.factorizations(384, 1536)
    assert layouts == [
        [(384, 1536)],
        [(384, 1), (1, 1536)],
        [(24, 48), (16, 32)],
        [(8, 16), (8, 12), (6, 8)],
        [(6, 8), (4, 8), (4, 6), (4, 4)],
    ]
    assert tt.factorizations(384, 1536) == layouts   # deterministic
    for layout in layouts:
        assert math.prod(m for m, _ in layout) == 384
        assert math.prod(n for _, n in layout) == 1536
    assert [len(x) for x in tt.factorizations(1536, 384, max_d=4)] == [1, 2, 2, 3, 4]
    assert tt.factorizations(384, 1536, max_d=2) == layouts[:3]
    assert tt.factorizations(384, 1536, max_d=1) == layouts[:2]


def test_balanced_split():
    assert tt.balanced_split(384, 3) == (8, 8, 6)
    assert tt.balanced_split(1536, 3) == (16, 12, 8)
    assert tt.balanced_split(1536, 2) == (48, 32)
    assert tt.balanced_split(1536, 4) == (8, 8, 6, 4)
    assert tt.balanced_split(64, 3) == (4, 4, 4)
    assert tt.balanced_split(1, 3) == (1, 1, 1)
    assert tt.balanced_split(7, 2) is None
    assert tt.balanced_split(12, 4) is None      # 2 * 2 * 3: only three prime factors
    for n in (2, 30, 97, 360, 1000, 4096):
        for d in (1, 2, 3, 4):
            s = tt.balanced_split(n, d)
            assert s is None or (math.prod(s) == n and len(s) == d and list(s) == sorted(s)[::-1])


def test_factorizations_skip_unsplittable_dimensions():
    assert tt.factorizations(7, 12) == [[(7, 12)], [(7, 1), (1, 12)]]
    assert tt.factorizations(12, 8) == [[(12, 8)], [(12, 1), (1, 8)], [(4, 4), (3, 2)],
                                        [(3, 2), (2, 2), (2, 2)]]
    # a row vector is a TT over its columns alone
    assert tt.factorizations(1, 384)[2:] == [[(1, 24), (1, 16)], [(1, 8), (1, 8), (1, 6)],
                                            [(1, 6), (1, 4), (1, 4), (1, 4)]]
    assert tt.factorizations(1, 1) == [[(1, 1)], [(1, 1), (1, 1)]]
    with pytest.raises(ValueError, match="rows"):
        tt.factorizations(0, 5)
    with pytest.raises(ValueError, match="max_d"):
        tt.factorizations(4, 5, max_d=0)


# ---------------------------------------------------------------------------------------------
# decompose: dense fallback, modes, any ndim
def test_decompose_keeps_dense_when_tt_is_larger():
    a = np.random.default_rng(4).standard_normal((64, 64)).astype(np.float32)
    res = tt.decompose(a, eps=0.01)
    assert res.format == "dense" and res.modes == [(64, 64)] and res.ranks == (1, 1)
    assert len(res.cores) == 1 and res.cores[0].shape == (1, 64, 64, 1)
    assert res.cores[0].dtype == np.float32
    assert res.stored_bytes == res.dense_bytes == 4 * 64 * 64 and res.ratio == 1.0
    assert res.rel_error == 0.0 and res.bound_holds is True
    np.testing.assert_array_equal(res.to_dense(), a)
    forced = tt.decompose(a, eps=0.01, keep_dense_if_larger=False)
    assert forced.format == "tt" and forced.stored_bytes >= forced.dense_bytes
    assert forced.ratio <= 1.0 and forced.rel_error <= 0.01 and forced.bound_holds is True


def test_decompose_respects_modes():
    a = decaying(96, 128, 9, 6.0)
    layout = [(6, 8), (4, 4), (4, 4)]
    res = tt.decompose(a, eps=0.1, modes=layout)
    assert res.modes == layout and len(res.cores) == 3 and res.format == "tt"
    assert res.rel_error <= 0.1 and res.bound_holds is True
    dense = tt.decompose(a, eps=0.1, modes=[(96, 128)])
    assert dense.format == "dense" and dense.rel_error == 0.0
    auto = tt.decompose(a, eps=0.1)
    assert auto.modes == [(96, 1), (1, 128)]      # low rank: the SVD layout is the smallest


def test_non_2d_inputs_keep_their_shape():
    rng = np.random.default_rng(8)
    # 1-D: a sampled sine has TT ranks 2 (sin(a + b) = sin a cos b + cos a sin b)
    v = np.sin(0.05 * np.arange(384)).astype(np.float32)
    res = tt.decompose(v, eps=1e-4)
    assert res.shape == (384,) and res.format == "tt" and res.ratio > 1.5
    assert all(m == 1 for m, _ in res.modes) and max(res.ranks) == 2
    back = res.to_dense()
    assert back.shape == (384,) and rel_err(v, back) <= 1e-4
    # 3-D through its (4, 48) view
    t3 = rng.standard_normal((4, 6, 8)).astype(np.float32)
    res3 = tt.decompose(t3, eps=None, keep_dense_if_larger=False)
    assert res3.shape == (4, 6, 8) and math.prod(m for m, _ in res3.modes) == 4
    np.testing.assert_allclose(tt.reconstruct(res3.cores).reshape(res3.shape), t3, atol=1e-5)
    assert res3.to_dense().shape == (4, 6, 8) and res3.rel_error < 1e-6
    dense3 = tt.decompose(t3, eps=0.01)
    assert dense3.format == "dense" and dense3.cores[0].shape == (1, 4, 48, 1)
    np.testing.assert_array_equal(dense3.to_dense(), t3)
    # 0-D
    res0 = tt.decompose(np.float32(2.5))
    assert res0.shape == () and res0.format == "dense" and float(res0.to_dense()) == 2.5


def test_float64_input_is_stored_as_float32():
    a = decaying(32, 48, 3, 4.0).astype(np.float64) + 1e-9
    res = tt.decompose(a, eps=0.05)
    assert all(g.dtype == np.float32 for g in res.cores)
    assert res.rel_error <= 0.05


def test_zero_tensor():
    res = tt.decompose(np.zeros((16, 24), np.float32), eps=0.1, keep_dense_if_larger=False)
    assert max(res.ranks) == 1 and res.rel_error == 0.0 and res.bound_holds is True
    assert not res.to_dense().any()


# ---------------------------------------------------------------------------------------------
# bad input
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_rejected(bad):
    a = np.ones((8, 8), np.float32)
    a[3, 5] = bad
    with pytest.raises(errors.NonFiniteError, match="row 3, column 5"):
        tt.decompose(a, eps=0.1)
    with pytest.raises(ValueError, match="NaN or infinity"):
        tt.tt_svd(a, [(8, 1), (1, 8)], eps=0.1)


@pytest.mark.parametrize("kw,msg", [
    ({"eps": -0.1}, "eps must be finite and >= 0"),
    ({"eps": float("nan")}, "eps must be finite"),
    ({"eps": float("inf")}, "eps must be finite"),
    ({"eps": "0.1"}, "eps must be a number"),
    ({"max_rank": 0}, "max_rank must be an integer >= 1"),
    ({"max_rank": 2.5}, "max_rank must be an integer"),
    ({"max_rank": True}, "max_rank must be an integer"),
    ({"modes": [(4, 2), (2, 3)]}, r"multiply to 8 x 6, but the matrix is 8 x 8"),
    ({"modes": [(8, 8, 1)]}, r"modes\[0\] must be a pair"),
    ({"modes": [(0, 8), (8, 1)]}, r"modes\[0\] must be a pair of integers >= 1"),
    ({"modes": []}, "at least one"),
    ({"modes": 5}, "list of"),
])
def test_bad_arguments_raise_value_error(kw, msg):
    a = np.ones((8, 8), np.float32)
    with pytest.raises(ValueError, match=msg):
        tt.decompose(a, **kw)
    if "modes" not in kw:
        with pytest.raises(ValueError, match=msg):
            tt.tt_svd(a, [(8, 1), (1, 8)], **kw)


def test_bad_tensors_raise_value_error():
    with pytest.raises(ValueError, match="empty"):
        tt.decompose(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match="real numbers"):
        tt.decompose(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="object"):
        tt.decompose(np.array([1.0, None], dtype=object))
    with pytest.raises(ValueError, match="multiply to"):
        tt.tt_svd(np.ones((6, 6)), [(2, 3), (2, 3), (2, 1)])


def test_layout_restricts_the_layouts_tried():
    rng = np.random.default_rng(11)
    a = (rng.standard_normal((96, 8)) @ rng.standard_normal((8, 128))).astype(np.float32)
    svd = tt.decompose(a, eps=1e-4, layout="svd")
    assert svd.modes == [(96, 1), (1, 128)] and svd.ranks == (1, 8, 1)
    ttm = tt.decompose(a, eps=1e-4, layout="ttm", keep_dense_if_larger=False)
    assert len(ttm.modes) >= 2 and all(m > 1 and n > 1 for m, n in ttm.modes)
    assert ttm.rel_error < 1e-4 and ttm.stored_bytes > ttm.dense_bytes  # low rank, not low TT rank
    assert tt.decompose(a, eps=1e-4, layout="ttm").format == "dense"  # so it is kept dense
    auto = tt.decompose(a, eps=1e-4)
    assert auto.stored_bytes == svd.stored_bytes < ttm.stored_bytes
    with pytest.raises(ValueError, match="layout must be one of"):
        tt.decompose(a, eps=0.1, layout="cp")
    # a prime dimension has no TT-matrix layout: kept dense
    assert tt.decompose(np.ones((7, 5), np.float32), eps=0.1, layout="ttm").format == "dense"
