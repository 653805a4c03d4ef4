"""Fit a codebook (``bitpress.codebook.Codebook``) on a sample of your own vectors.

``fit(x, method, bits=None, *, seed=0, progress=None, **options)`` takes a float sample
``x`` (n x d numpy array, one vector per row) and returns a Codebook whose
``encode_reference`` (and the C core's ``kernels.encode``) gives the codes. Methods:

============  ==========  =================================================================
method        bits        what a bit tests
============  ==========  =================================================================
sign          d           ``x[i] > 0`` (pgvector's ``binary_quantize``)
mean          d           ``x[i] > mean[i]``
median        d           ``x[i] > median[i]``: every bit balanced on the sample
learned       d           ``x[i] > t[i]``, t (and the levels) trained to keep neighbour ranking
matryoshka    k < d       median thresholds on the first k dimensions only (truncation)
hybrid        d/2..d-1    one bit per leading dimension, one *pair* bit per two trailing ones
pca           k <= d      centre, project on the top k principal axes, ``z > 0``
itq           k <= d      PCA to k axes, then the ITQ rotation (Gong & Lazebnik 2011), ``z > 0``
thermometer   2d          cut points mean -/+ 0.5 sigma per dimension: levels 00, 10, 11
                          (Hamming = level gap); ``alpha=2/3`` is pgvectorscale's, ``cut='tertile'``
rabitq        d, 2d, ..   not thresholds: the index's RaBitQ code with one list (the sample
              up to 4d    mean), ``bits / d`` bit planes of the rotated residual plus five
                          float32 factors (the stored code is longer: ``Codebook.bits``);
                          for asymmetric scoring only (Hamming between these codes means
                          nothing). Option ``metric='cosine'|'ip'|'l2'``
============  ==========  =================================================================

Options (keyword arguments; ``DEFAULT_OPTIONS`` lists them with their defaults):
``pca``/``itq`` ``threshold='zero'|'median'``, ``itq`` ``iterations`` and ``max_sample`` (rows
used for the rotation), ``hybrid`` ``order='index'|'variance'`` (which dimensions get single
bits), ``thermometer`` ``cut='sigma'|'tertile'`` and ``alpha``, ``learned`` its schedule (see
``_learn_thresholds``). The defaults were chosen by recall measured with ``bitpress eval`` on
held-out queries (docs/RESULTS.md).

Every method but ``hybrid`` also fits reconstruction levels (``base``, ``delta``): the mean of
each component over the sample rows in each cell between its cut points, so
``kernels.asymmetric_scores`` can rank codes against a float query. Pair bits have no linear
reconstruction, so ``hybrid`` has none.

``Codebook.options`` records how the codebook was fitted (method, bits, seed, sample size,
the options) and a few statistics measured on the sample: ``bit_balance`` (mean fraction of
1 bits), ``bit_balance_min``/``max``, ``recon_error`` (mean squared error of the
reconstruction relative to ``||x||^2``, when there are levels), and per method ``loss``,
``iterations`` and, for ITQ and learned, ``loss_history`` (learned also ``checks``: the
held-out recall at each checkpoint, and ``best_step``). Everything is JSON.

``progress=None`` shows a tqdm bar on stderr for the iterative methods (itq, learned) only
when stderr is a terminal; ``True``/``False`` force it on/off.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from . import errors
from ._core import MAX_DIM
from .codebook import Codebook

METHODS = ("sign", "mean", "median", "learned", "matryoshka", "hybrid", "pca", "itq", "thermometer", "rabitq")
LEARNED_MIN_ROWS = 256

# options each method accepts, with their defaults
DEFAULT_OPTIONS = {
    "sign": {},
    "mean": {},
    "median": {},
    "matryoshka": {},
    "hybrid": {"order": "index"},
    "pca": {"threshold": "zero"},
    "itq": {"iterations": 50, "threshold": "zero", "max_sample": 20000},
    "thermometer": {"cut": "sigma", "alpha": 0.5},
    "rabitq": {"metric": "cosine"},
    "learned": {"steps": 200, "batch": 64, "lr": 0.005, "lr_levels": 0.01, "tau_start": 1.0,
                "tau_end": 0.1, "positives": 10, "hard": 40, "negatives": 50, "anchors": 4000,
                "check_anchors": 500, "check_every": 25, "max_sample": 20000,
                "target_temperature": 0.05, "levels": "learned"},
}


# ---------------------------------------------------------------------------------------------
# input checks
def _sample(x) -> np.ndarray:
    """The sample as a C-contiguous float32 n x d array, or the right error."""
    a = np.asarray(x)
    if a.dtype == object:
        raise errors.NullValueError("sample must not contain nulls (got an object array)")
    if a.ndim != 2:
        raise errors.InvalidParameterError(
            f"sample must be 2-D (one vector per row), got {a.ndim}-D")
    if a.dtype.kind not in "biuf":
        raise errors.InvalidParameterError(f"sample must hold real numbers, got dtype {a.dtype}")
    n, d = a.shape
    if d < 1:
        raise errors.EmptyVectorError("vector must have at least 1 dimension")
    if d > MAX_DIM:
        raise errors.VectorTooLargeError(
            f"vector cannot have more than {MAX_DIM} dimensions, got {d}")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: an error
        a = np.ascontiguousarray(a, dtype=np.float32)
    finite = np.isfinite(a).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        col = int(np.argmin(np.isfinite(a[row])))
        e = errors.NonFiniteError(
            f"NaN or infinity not allowed in sample (row {row}, element {col}; counting from 0)")
        e.row, e.element = row, col
        raise e
    return a


def _need_rows(n, need, why):
    if n < need:
        raise errors.InvalidParameterError(f"{why} needs at least {need} sample rows, got {n}")


def _check_bits(method, bits, d):
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, (int, np.integer))):
        raise errors.InvalidParameterError(f"bits must be an integer, got {bits!r}")
    bits = None if bits is None else int(bits)
    if bits is not None and bits < 1:
        raise errors.InvalidParameterError(f"bits must be at least 1, got {bits}")
    if method in ("sign", "mean", "median", "learned"):
        if bits not in (None, d):
            raise errors.InvalidParameterError(
                f"{method} gives one bit per dimension: bits must be {d} (the dimension), got {bits}")
        return d
    if method == "thermometer":
        if bits not in (None, 2 * d):
            raise errors.InvalidParameterError(
                f"thermometer gives two bits per dimension: bits must be {2 * d}, got {bits}")
        return 2 * d
    if method == "matryoshka":
        if bits is None or not bits < d:
            raise errors.InvalidParameterError(
                f"matryoshka keeps the first bits dimensions: bits must be 1..{d - 1}, got {bits}")
        return bits
    if method == "hybrid":
        lo = (d + 1) // 2
        if bits is None or not lo <= bits < d:
            raise errors.InvalidParameterError(
                f"hybrid needs d/2 <= bits < d: bits must be {lo}..{d - 1} for {d} dimensions, got {bits}")
        return bits
    if method == "rabitq":
        if bits not in (None, d, 2 * d, 3 * d, 4 * d):
            raise errors.InvalidParameterError(
                f"rabitq codes 1 to 4 bits per dimension: bits must be {d}, {2 * d}, {3 * d} or {4 * d}, got {bits}")
        return d if bits is None else bits
    if method in ("pca", "itq"):
        if bits is None:
            return d
        if bits > d:
            raise errors.InvalidParameterError(
                f"{method} projects on at most {d} axes: bits must be 1..{d}, got {bits}")
        return bits
    raise AssertionError(method)


def _options(method, options):
    allowed = DEFAULT_OPTIONS[method]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise errors.InvalidParameterError(
            f"unknown option(s) for {method}: {', '.join(unknown)}"
            + (f" (it takes: {', '.join(sorted(allowed))})" if allowed else " (it takes none)"))
    return {**allowed, **options}


_CHOICES = {("pca", "threshold"): ("zero", "median"), ("itq", "threshold"): ("zero", "median"),
            ("hybrid", "order"): ("index", "variance"), ("thermometer", "cut"): ("sigma", "tertile"),
            ("learned", "levels"): ("learned", "conditional"), ("rabitq", "metric"): ("cosine", "ip", "l2")}


def _check_option_values(method, opts):
    """Reject impossible option values before any work is done."""
    for key, value in opts.items():
        choices = _CHOICES.get((method, key))
        default = DEFAULT_OPTIONS[method][key]
        if choices is not None:
            ok = value in choices
            want = " or ".join(repr(c) for c in choices)
        elif isinstance(default, bool):
            ok, want = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= (0 if key == "iterations" else 1)
            want = "a non-negative integer" if key == "iterations" else "a positive integer"
        else:
            ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and np.isfinite(value) and value > 0
            want = "a positive number"
        if not ok:
            raise errors.InvalidParameterError(f"{method} option {key} must be {want}, got {value!r}")


def _bar(progress, **kw):
    if progress is None:
        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(file=sys.stderr, leave=False, **kw)


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    return v


def _subsample(x, m, seed):
    if x.shape[0] <= m:
        return x
    idx = np.sort(np.random.default_rng(seed).choice(x.shape[0], m, replace=False))
    return x[idx]


# ---------------------------------------------------------------------------------------------
# reconstruction levels
def _transform(x, center, projection):
    """z as the codebook computes it (float32 result, float64 projection)."""
    if center is None and projection is None:
        return x
    return Codebook("tmp", x.shape[1], np.zeros(1), np.zeros(1), center=center,
                    projection=projection).transform_reference(x)


def fit_levels(z, src, thr):
    """Reconstruction levels ``(base, delta)`` in z space for single-component bits.

    For each component, its cut points split the line into cells; a sample row falls in cell
    c when c of the component's cut points lie below its value (the number of its 1 bits,
    because a bit is ``z > t``). The level of a cell is the mean of the sample values in it
    (an empty cell takes its nearest cut point). ``base`` is the lowest cell's level,
    ``delta`` of the r-th cut point (ascending) the step from cell r to cell r + 1.
    Components without bits get ``base`` = their mean.
    """
    n, m = z.shape
    src = np.asarray(src, dtype=np.int64)
    thr = np.asarray(thr, dtype=np.float32)
    order = np.lexsort((thr, src))
    s_sorted = src[order]
    first = np.r_[True, s_sorted[1:] != s_sorted[:-1]]
    pos = np.arange(len(order))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = pos - np.maximum.accumulate(np.where(first, pos, 0))
    depth = int(rank.max()) + 1
    cell = np.zeros((n, m), dtype=np.int8)
    for r in range(depth):
        sel = np.flatnonzero(rank == r)                 # distinct components
        cell[:, src[sel]] += z[:, src[sel]] > thr[sel]
    means = np.empty((depth + 1, m))
    counts = np.empty((depth + 1, m), dtype=np.int64)
    for c in range(depth + 1):
        mask = cell == c
        counts[c] = mask.sum(axis=0)
        means[c] = np.where(mask, z, 0).sum(axis=0, dtype=np.float64) / np.maximum(counts[c], 1)
    # cut points of each component by rank (NaN where a component has fewer)
    cuts = np.full((depth, m), np.nan)
    cuts[rank, src] = thr
    has = np.zeros(m, dtype=bool)
    has[src] = True
    for c in range(depth + 1):
        empty = (counts[c] == 0) & has
        if empty.any():
            below = cuts[c - 1] if c > 0 else np.full(m, np.nan)
            above = cuts[c] if c < depth else np.full(m, np.nan)
            fill = np.where(np.isnan(above), below, np.where(np.isnan(below), above, (below + above) / 2))
            means[c] = np.where(empty & ~np.isnan(fill), fill, means[c])
    col_mean = z.mean(axis=0, dtype=np.float64)
    base = np.where(has, means[0], col_mean)
    delta = means[rank + 1, src] - means[rank, src]
    return base.astype(np.float32), delta.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# PCA and ITQ
def _principal_axes(xc, k, seed):
    """The top-k principal axes (k x d, orthonormal rows) of centred rows xc, and variances."""
    n, d = xc.shape
    x64 = xc.astype(np.float64)
    if min(n, d) <= 4096:
        if d <= n:
            w, v = np.linalg.eigh(x64.T @ x64 / n)
            idx = np.argsort(w)[::-1][:k]
            axes, var = v[:, idx].T, w[idx]
        else:  # fewer rows than dimensions: eigenvectors of the n x n Gram matrix
            w, u = np.linalg.eigh(x64 @ x64.T / n)
            idx = np.argsort(w)[::-1][:k]
            w, u = np.maximum(w[idx], 1e-300), u[:, idx]
            axes = (x64.T @ u / np.sqrt(w * n)).T
            var = w
    else:  # randomized subspace iteration (Halko et al. 2011)
        rng = np.random.default_rng(seed)
        q = np.linalg.qr(x64 @ rng.standard_normal((d, k + 16)))[0]
        for _ in range(4):
            q = np.linalg.qr(x64.T @ q)[0]
            q = np.linalg.qr(x64 @ q)[0]
        _, s, vt = np.linalg.svd(q.T @ x64, full_matrices=False)
        axes, var = vt[:k], s[:k] ** 2 / n
    # a fixed sign per axis: its largest entry positive
    flip = np.sign(axes[np.arange(axes.shape[0]), np.abs(axes).argmax(axis=1)])
    return axes * np.where(flip == 0, 1, flip)[:, None], var


def itq_rotation(v, iterations=50, seed=0, progress=None):
    """ITQ: the orthogonal R minimising ``||B - V R||_F^2`` with ``B = sign(V R)``.

    Returns R (k x k) and the quantization loss (mean per value, V scaled to unit mean
    square) before each update and after the last one: ``iterations + 1`` values,
    non-increasing.
    """
    k = v.shape[1]
    rng = np.random.default_rng(seed)
    r = np.linalg.qr(rng.standard_normal((k, k)))[0]
    # the rotation does not depend on the scale of V; scaled to unit mean square, the loss
    # reads the same on any data (0 = every value at +-1; 2 - 2 * E|v| in general)
    v = v.astype(np.float64)
    v = (v / max(float(np.sqrt((v ** 2).mean())), 1e-300)).astype(np.float32)
    history = []
    bar = _bar(progress, total=iterations, desc="itq", unit="it")
    try:
        for _ in range(iterations + 1):
            vr = v @ r.astype(np.float32)
            b = np.where(vr > 0, np.float32(1), np.float32(-1))
            history.append(float(((b - vr) ** 2).mean(dtype=np.float64)))
            if len(history) > iterations:
                break
            u, _, wt = np.linalg.svd((v.T @ b).astype(np.float64))
            r = u @ wt
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]:.4f}")
    finally:
        if bar is not None:
            bar.close()
    return r, history


# ---------------------------------------------------------------------------------------------
# hybrid: pair cut points with a balanced pair bit
def _pair_cuts(za, zb, iterations=30):
    """Cut points (ta, tb) per pair column: the same quantile p of each component, chosen so
    that the pair bit (1 when za > ta or zb > tb) is 1 on half of the sample rows."""
    n = za.shape[0]
    sa, sb = np.sort(za, axis=0), np.sort(zb, axis=0)
    cols = np.arange(za.shape[1])
    lo = np.full(za.shape[1], 0.5)
    hi = np.ones(za.shape[1])
    for _ in range(iterations):
        p = (lo + hi) / 2
        i = np.minimum((p * (n - 1)).round().astype(np.int64), n - 1)
        ta, tb = sa[i, cols], sb[i, cols]
        zero = ((za <= ta) & (zb <= tb)).mean(axis=0)   # fraction of 0 bits
        lo = np.where(zero < 0.5, p, lo)
        hi = np.where(zero < 0.5, hi, p)
    p = (lo + hi) / 2
    i = np.minimum((p * (n - 1)).round().astype(np.int64), n - 1)
    return sa[i, cols], sb[i, cols]


# ---------------------------------------------------------------------------------------------
# learned thresholds
def _top_rows(scores, k):
    """Row indices of the k highest scores per row (set only; order not needed)."""
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def _learn_thresholds(x, opts, seed, progress):
    """Per-dimension thresholds and levels trained to keep each anchor's neighbour ranking.

    Parameters, per dimension j: the threshold ``t_j = median_j + w_j * sigma_j`` and two
    reconstruction levels ``lo_j``, ``hi_j`` (the "scale": ``x_hat_j = lo_j + (hi_j - lo_j) * bit_j``),
    starting from the median and its conditional means. A bit is ``x_j > t_j``: hard in
    the forward pass, ``sigmoid((x_j - t_j) / (sigma_j * tau))`` in the backward pass
    (straight-through estimator), tau annealed geometrically from ``tau_start`` to
    ``tau_end``.

    Each anchor (a sample row) has candidates: its ``positives`` nearest sample rows by
    cosine, ``hard`` rows ranked just after them, and ``negatives`` random rows. Two
    listwise losses compare the softmax over the candidates of a code score with the
    softmax of ``cosine / target_temperature``: the symmetric score ``mean_j(s_a * s_c)``
    (``s = 2 * bit - 1``, i.e. Hamming) and the asymmetric one ``x_a . x_hat_c``, both
    times ``1 / target_temperature``. Adam. Every ``check_every`` steps the recall@10 of
    held-out anchors among all sample rows (Hamming and asymmetric, averaged) is measured,
    and the best checkpoint is kept; the median start is checkpoint 0, so the result is
    never worse than median on that held-out measure.
    """
    rng = np.random.default_rng(seed)
    xs = _subsample(x, opts["max_sample"], seed).astype(np.float32)
    n, d = xs.shape
    med = np.median(xs, axis=0)
    sigma = xs.std(axis=0)
    sigma = np.maximum(sigma, 1e-6 * max(float(sigma.mean()), 1e-30)).astype(np.float32)
    u0 = (xs - med) / sigma                                   # standardised around the median
    unit = xs / np.maximum(np.linalg.norm(xs, axis=1, keepdims=True), 1e-12)
    inv_t = np.float32(1.0 / opts["target_temperature"])

    # anchors and their candidates; the first n_val anchors are held out for the checkpoints
    na = min(opts["anchors"], n)
    anchors = rng.choice(n, na, replace=False)
    P, H, N = opts["positives"], opts["hard"], opts["negatives"]
    P, H = min(P, n - 1), min(H, max(n - 1 - P, 0))
    C = P + H + N
    cand = np.empty((na, C), dtype=np.int64)
    target = np.empty((na, C), dtype=np.float32)
    n_val = min(opts["check_anchors"], na // 4)
    val_truth = np.empty((n_val, 10), dtype=np.int64)
    for s0 in range(0, na, 512):
        a = anchors[s0:s0 + 512]
        cos = unit[a] @ unit.T
        cos[np.arange(len(a)), a] = -np.inf
        near = np.argpartition(-cos, P + H, axis=1)[:, :P + H]
        near = np.take_along_axis(near, np.argsort(-np.take_along_axis(cos, near, axis=1), axis=1), axis=1)
        c = np.concatenate([near, rng.integers(0, n, (len(a), N))], axis=1)
        cand[s0:s0 + len(a)] = c
        target[s0:s0 + len(a)] = np.take_along_axis(cos, c, axis=1)
        v = np.arange(s0, s0 + len(a))
        v = v[v < n_val]
        if len(v):
            val_truth[v] = _top_rows(cos[v - s0], 10)
    t = np.where(np.isfinite(target), target * inv_t, -1e9)
    p_true = np.exp(t - t.max(axis=1, keepdims=True))
    p_true /= p_true.sum(axis=1, keepdims=True)
    train = np.arange(n_val, na)
    val = anchors[:n_val]

    def levels_at(w):
        b = u0 > w
        cnt1 = b.sum(axis=0)
        s1 = np.where(b, xs, 0).sum(axis=0, dtype=np.float64)
        tot = xs.sum(axis=0, dtype=np.float64)
        hi = np.where(cnt1 > 0, s1 / np.maximum(cnt1, 1), med + w * sigma)
        lo = np.where(cnt1 < n, (tot - s1) / np.maximum(n - cnt1, 1), med + w * sigma)
        return lo.astype(np.float32), hi.astype(np.float32)

    def check(w, lo, hi):
        """recall@10 of the held-out anchors among all sample rows: (hamming, asymmetric)."""
        b = u0 > w
        sgn = np.where(b, np.float32(1), np.float32(-1))
        sym = sgn[val] @ sgn.T                                 # integer-valued
        sym = sym * np.float32(n + 1) - np.arange(n, dtype=np.float32)   # ties to the lower row
        xhat = lo + (hi - lo) * b
        asym = unit[val] @ xhat.T
        idx = np.arange(n_val)
        sym[idx, val] = -np.inf
        asym[idx, val] = -np.inf
        r = []
        for sc in (sym, asym):
            top = _top_rows(sc, 10)
            r.append(float(np.mean([len(np.intersect1d(top[i], val_truth[i])) / 10 for i in idx])))
        return r

    w = np.zeros(d, dtype=np.float32)
    lo, hi = levels_at(w)
    params = [w, lo, hi]
    m1 = [np.zeros(d, dtype=np.float64) for _ in params]
    m2 = [np.zeros(d, dtype=np.float64) for _ in params]
    lrs = [opts["lr"], opts["lr_levels"] * float(sigma.mean()), opts["lr_levels"] * float(sigma.mean())]
    steps, every = opts["steps"], opts["check_every"]
    r0 = check(w, lo, hi)
    history = [{"step": 0, "recall_hamming": r0[0], "recall_asym": r0[1]}]
    best_score, best = (r0[0] + r0[1]) / 2, (w.copy(), lo.copy(), hi.copy(), 0)
    losses = []
    bar = _bar(progress, total=steps, desc="learned", unit="step")
    try:
        for step in range(steps):
            tau = opts["tau_start"] * (opts["tau_end"] / opts["tau_start"]) ** (step / max(steps - 1, 1))
            rows = train[rng.integers(0, len(train), opts["batch"])]
            B = len(rows)
            ia, ic = anchors[rows], cand[rows]
            ua, uc = u0[ia] - w, u0[ic] - w                       # (B, d), (B, C, d)
            ba, bc = ua > 0, uc > 0
            sa = np.where(ba, np.float32(1), np.float32(-1))
            sc = np.where(bc, np.float32(1), np.float32(-1))
            pt = p_true[rows]
            # symmetric (Hamming) score
            sym = np.einsum("ad,acd->ac", sa, sc) * (inv_t / d)
            ps = np.exp(sym - sym.max(axis=1, keepdims=True))
            ps /= ps.sum(axis=1, keepdims=True)
            gs = (ps - pt) * (inv_t / d / B)
            # asymmetric score: the anchor's float vector against the candidates' levels
            q = unit[ia]
            xhat = lo + (hi - lo) * bc
            asy = np.einsum("ad,acd->ac", q, xhat) * inv_t
            pa = np.exp(asy - asy.max(axis=1, keepdims=True))
            pa /= pa.sum(axis=1, keepdims=True)
            ga = (pa - pt) * (inv_t / B)
            losses.append(float(-(pt * (np.log(ps + 1e-30) + np.log(pa + 1e-30))).sum(axis=1).mean()))
            # straight-through: d bit / d u = sigmoid'(u / tau) / tau
            sig_a = 1 / (1 + np.exp(-np.clip(ua / tau, -30, 30)))
            sig_c = 1 / (1 + np.exp(-np.clip(uc / tau, -30, 30)))
            da, dc = sig_a * (1 - sig_a) / tau, sig_c * (1 - sig_c) / tau
            g_sa = np.einsum("ac,acd->ad", gs, sc)                 # dL/ds_a
            g_sc = gs[:, :, None] * sa[:, None, :]                 # dL/ds_c
            g_bc = ga[:, :, None] * q[:, None, :] * (hi - lo)       # dL/dbit_c (asymmetric)
            # u = u0 - w, so dL/dw = -dL/du
            grad_w = -(2 * (g_sa * da).sum(axis=0) + ((2 * g_sc + g_bc) * dc).sum(axis=(0, 1)))
            gq = ga[:, :, None] * q[:, None, :]
            grad_hi = (gq * bc).sum(axis=(0, 1))
            grad_lo = gq.sum(axis=(0, 1)) - grad_hi
            for i, g in enumerate((grad_w, grad_lo, grad_hi)):
                m1[i] = 0.9 * m1[i] + 0.1 * g
                m2[i] = 0.999 * m2[i] + 0.001 * g * g
                upd = lrs[i] * (m1[i] / (1 - 0.9 ** (step + 1))) / (np.sqrt(m2[i] / (1 - 0.999 ** (step + 1))) + 1e-12)
                params[i] -= upd.astype(np.float32)
            if (step + 1) % every == 0 or step + 1 == steps:
                r = check(w, lo, hi)
                history.append({"step": step + 1, "recall_hamming": r[0], "recall_asym": r[1]})
                if (r[0] + r[1]) / 2 > best_score:
                    best_score, best = (r[0] + r[1]) / 2, (w.copy(), lo.copy(), hi.copy(), step + 1)
                if bar is not None:
                    bar.set_postfix(recall=f"{r[0]:.3f}/{r[1]:.3f}")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    w, lo, hi, best_step = best
    thr = (med + w * sigma).astype(np.float32)
    stats = {"loss_history": losses[::max(1, len(losses) // 50)], "loss": losses[-1] if losses else None,
             "loss_start": losses[0] if losses else None, "iterations": steps, "best_step": best_step,
             "checks": history, "check_recall_median": r0, "check_recall": [history[-1]["recall_hamming"], history[-1]["recall_asym"]],
             "threshold_shift_sigma": float(np.abs(w).mean()), "train_rows": n}
    return thr, lo, hi, stats


# ---------------------------------------------------------------------------------------------
def _fit_rabitq(x, per_dim, opts, seed, started) -> Codebook:
    """One list, the sample mean (of the normalized rows for cosine), rotated by seed."""
    from . import ivf
    metric = opts["metric"]
    rows = ivf.normalize(x) if metric == "cosine" else x
    center = rows.mean(axis=0, dtype=np.float64).astype(np.float32)[None, :]
    seed = int(seed) % 2 ** 63
    cb = Codebook("rabitq", x.shape[1], np.empty(0, np.int32), np.empty(0, np.float32),
                  center=ivf.rotate(center, seed)[0], rabitq=(per_dim, ivf.metric_id(metric), seed))
    cb.options = _jsonable({"method": "rabitq", "bits": per_dim * x.shape[1], "bits_per_dim": per_dim,
                            "code_bits": cb.bits, "dims": x.shape[1], "seed": seed,
                            "sample_rows": x.shape[0], **opts,
                            "fit_seconds": round(time.perf_counter() - started, 3)})
    return cb


def fit(x, method, /, bits=None, *, seed=0, progress=None, **options) -> Codebook:
    """Fit a codebook of ``method`` with ``bits`` bits per vector on the sample ``x`` (n x d).

    See the module docstring for the methods. ``seed`` makes ITQ's start, subsampling and
    the learned method reproducible. Raises ``NonFiniteError`` (NaN/Inf, with the row),
    ``InvalidParameterError`` (unknown method or option, impossible bits, too few rows),
    ``EmptyVectorError`` / ``VectorTooLargeError`` (0 or more than 65,536 dimensions).
    """
    if method not in METHODS:
        raise errors.InvalidParameterError(
            f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    opts = _options(method, options)
    _check_option_values(method, opts)
    x = _sample(x)
    n, d = x.shape
    bits = _check_bits(method, bits, d)
    if method in ("pca", "itq"):
        _need_rows(n, max(2, bits + 1), f"{method} with {bits} bits")
    elif method == "learned":
        _need_rows(n, LEARNED_MIN_ROWS, "learned")
    else:
        _need_rows(n, 2, method)
    started = time.perf_counter()
    if method == "rabitq":
        return _fit_rabitq(x, bits // d, opts, seed, started)
    stats = {}
    center = projection = src_b = thr_b = None
    z = x

    if method == "sign":
        src, thr = np.arange(d), np.zeros(d, dtype=np.float32)
    elif method == "mean":
        src, thr = np.arange(d), x.mean(axis=0, dtype=np.float64).astype(np.float32)
    elif method == "median":
        src, thr = np.arange(d), np.median(x, axis=0)
    elif method == "learned":
        src = np.arange(d)
        thr, lo, hi, stats = _learn_thresholds(x, opts, seed, progress)
    elif method == "matryoshka":
        src, thr = np.arange(bits), np.median(x[:, :bits], axis=0)
    elif method == "thermometer":
        if opts["cut"] == "sigma":
            mu = x.mean(axis=0, dtype=np.float64)
            sd = x.std(axis=0, dtype=np.float64)
            lo, hi = mu - opts["alpha"] * sd, mu + opts["alpha"] * sd
        else:  # tertile
            lo, hi = np.quantile(x, [1 / 3, 2 / 3], axis=0)
        src = np.repeat(np.arange(d), 2)
        thr = np.stack([lo, hi], axis=1).reshape(-1).astype(np.float32)
    elif method == "hybrid":
        lead = 2 * bits - d
        if opts["order"] == "index":
            perm = np.arange(d)
        else:  # variance
            perm = np.argsort(-x.var(axis=0), kind="stable")
        single, rest = perm[:lead], perm[lead:]
        a, b = rest[0::2], rest[1::2]
        ta, tb = _pair_cuts(x[:, a], x[:, b])
        src = np.concatenate([single, a])
        thr = np.concatenate([np.median(x[:, single], axis=0), ta]).astype(np.float32)
        src_b = np.concatenate([np.full(lead, -1), b])
        thr_b = np.concatenate([np.zeros(lead, dtype=np.float32), tb]).astype(np.float32)
        stats["single_dims"], stats["pair_bits"] = int(lead), int(len(a))
    elif method in ("pca", "itq"):
        center = x.mean(axis=0, dtype=np.float64).astype(np.float32)
        xc = (x - center).astype(np.float32)
        fit_rows = xc if method == "pca" else _subsample(xc, opts["max_sample"], seed)
        axes, var = _principal_axes(fit_rows, bits, seed)
        stats["explained_variance"] = float(var.sum() / max(float((fit_rows.astype(np.float64) ** 2).sum() / fit_rows.shape[0]), 1e-300))
        if method == "itq":
            r, history = itq_rotation(fit_rows @ axes.T.astype(np.float32), opts["iterations"], seed, progress)
            axes = r.T @ axes
            stats.update(loss=history[-1], loss_start=history[0], loss_history=history,
                         iterations=opts["iterations"], fit_rows=int(fit_rows.shape[0]))
        projection = axes.astype(np.float32)
        z = _transform(x, center, projection)
        src = np.arange(bits)
        if opts["threshold"] == "median":
            thr = np.median(z, axis=0)
        else:
            thr = np.zeros(bits, dtype=np.float32)
    else:  # pragma: no cover
        raise AssertionError(method)

    src = np.asarray(src, dtype=np.int32)
    thr = np.asarray(thr, dtype=np.float32)
    base = delta = None
    if method == "learned" and opts["levels"] == "learned":
        base, delta = lo, hi - lo
    elif src_b is None:
        base, delta = fit_levels(z, src, thr)

    # statistics on the sample
    ones = z[:, src] > thr
    if src_b is not None:
        pair = src_b >= 0
        ones |= pair & (z[:, np.where(pair, src_b, 0)] > thr_b)
    balance = ones.mean(axis=0)
    stats.update(bit_balance=float(balance.mean()), bit_balance_min=float(balance.min()),
                 bit_balance_max=float(balance.max()))
    cb = Codebook(method, d, src, thr, src_b, thr_b, center, projection, base, delta)
    if base is not None:
        rows = x[:2000]
        xhat = cb.reconstruct_reference(cb.encode_reference(rows))
        err = ((xhat - rows) ** 2).sum(axis=1)
        stats["recon_error"] = float(err.sum() / max(float((rows.astype(np.float64) ** 2).sum()), 1e-300))
    stats["fit_seconds"] = round(time.perf_counter() - started, 3)
    cb.options = _jsonable({"method": method, "bits": bits, "dims": d, "seed": seed,
                            "sample_rows": n, **opts, **stats})
    return cb
