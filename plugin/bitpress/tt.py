"""Tensor-train (TT) decomposition of stored weight tensors, in pure numpy.

The layout
----------
A stored tensor ``W`` is always seen as a 2-D matrix ``(rows, cols)``: a 2-D array as is, an
N-D array (N > 2) as ``(shape[0], prod(shape[1:]))``, a 1-D array of n elements as ``(1, n)``
and a 0-D scalar as ``(1, 1)``. It is stored as ``d >= 1`` cores ``G_1 .. G_d``, each a
C-contiguous float32 array of shape ``(r_{k-1}, m_k, n_k, r_k)`` with ``r_0 = r_d = 1``,
``prod(m_k) = rows`` and ``prod(n_k) = cols`` (any ``m_k`` or ``n_k`` may be 1). The list of
pairs ``modes = [(m_1, n_1), ..., (m_d, n_d)]`` is the *mode layout*. With
``i = (i_1, .., i_d)`` the row-major multi-index of the row over ``(m_1, .., m_d)`` (``i_1``
most significant) and ``j = (j_1, .., j_d)`` that of the column over ``(n_1, .., n_d)``::

    W[i, j] = G_1[0, i_1, j_1, :] @ G_2[:, i_2, j_2, :] @ ... @ G_d[:, i_d, j_d, 0]

Special cases (the C kernel relies on this layout exactly):

* dense, ``d = 1``: one core ``(1, rows, cols, 1)``, i.e. ``W`` itself;
* plain low-rank SVD ``W = U S V^T`` of rank r, ``d = 2`` with modes ``[(rows, 1), (1, cols)]``:
  cores ``(1, rows, 1, r)`` (``U S``) and ``(r, 1, cols, 1)`` (``V^T``);
* a TT-matrix (Oseledets), modes ``[(m_1, n_1), ..., (m_d, n_d)]`` with several nontrivial
  ``m_k`` and ``n_k``.

What is here
------------
``tt_svd(a, modes, eps, max_rank)`` is TT-SVD (Oseledets 2011, Algorithm 1): ``a`` is
reshaped to ``(m_1..m_d, n_1..n_d)``, transposed to ``(m_1, n_1, m_2, n_2, ..)``, reshaped to
the d-way tensor ``(m_1 n_1, .., m_d n_d)`` and split by d - 1 sequential truncated SVDs (in
float64; the cores are returned as float32). At each unfolding the rank kept is the smallest
r with ``sqrt(sum of the discarded sigma^2) <= delta``, ``delta = eps / sqrt(d - 1) * ||A||_F``,
which guarantees ``||A - B||_F <= eps ||A||_F`` (Oseledets 2011, Theorem 2.2). ``max_rank``
caps every rank on top of that (the bound may then fail: ``decompose`` reports it in
``bound_holds``). ``eps=None`` is "exact": each unfolding keeps its numerical rank, the
singular values above ``sigma_max * max(unfolding shape) * float64 eps`` (the tolerance of
``numpy.linalg.matrix_rank``), so the only loss is float64 round-off plus the float32 cores.

``reconstruct(cores)`` is the reference reconstruction of ``W`` (rows, cols); ``reconstruct_row``,
``element`` and ``matvec`` (``x @ W``, ONNX MatMul convention ``Y = X W``) work from the cores
without ever forming ``W``. ``factorizations(rows, cols)`` lists candidate layouts and
``decompose(a, eps, max_rank)`` tries them and keeps the smallest, or the dense tensor when no
TT is smaller (honest size accounting), returning a ``TTResult`` with the *measured* error.

Reference: I. V. Oseledets, "Tensor-Train Decomposition", SIAM J. Sci. Comput. 33(5),
2295-2317 (2011).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from . import errors

# decompose() records bound_holds = rel_error <= eps * (1 + BOUND_RTOL) + BOUND_ATOL: the
# slack covers the rounding of the float32 cores (the TT-SVD bound itself is exact in float64)
BOUND_RTOL = 1e-5
BOUND_ATOL = 1e-6

Modes = list[tuple[int, int]]


# ---------------------------------------------------------------------------------------------
# input checks
def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """The 2-D view ``(rows, cols)`` of a tensor of this shape (see the module docstring)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], math.prod(shape[1:])


def _as_matrix(a, dtype) -> np.ndarray:
    """``a`` as its C-contiguous 2-D view in ``dtype``, or the right error."""
    arr = np.asarray(a)
    if arr.dtype == object:
        raise errors.NullValueError("tensor must hold numbers, got an object array")
    if arr.dtype.kind not in "biuf":
        raise errors.InvalidParameterError(f"tensor must hold real numbers, got dtype {arr.dtype}")
    if arr.size == 0:
        raise errors.EmptyVectorError(f"tensor must not be empty, got shape {arr.shape}")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: an error
        mat = np.ascontiguousarray(arr, dtype=dtype).reshape(matrix_shape(arr.shape))
    if not np.isfinite(mat).all():
        row, col = (int(v[0]) for v in np.nonzero(~np.isfinite(mat)))
        raise errors.NonFiniteError(
            f"NaN or infinity not allowed in the tensor (2-D view row {row}, column {col}; "
            "counting from 0)")
    return mat


def _check_eps(eps) -> float | None:
    if eps is None:
        return None
    real = isinstance(eps, (int, float, np.integer, np.floating))
    if isinstance(eps, (bool, np.bool_)) or not real:
        raise errors.InvalidParameterError(f"eps must be a number or None, got {eps!r}")
    if not math.isfinite(eps) or eps < 0:
        raise errors.InvalidParameterError(f"eps must be finite and >= 0, got {eps!r}")
    return float(eps)


def _check_max_rank(max_rank) -> int | None:
    if max_rank is None:
        return None
    if not _is_int(max_rank) or max_rank < 1:
        raise errors.InvalidParameterError(
            f"max_rank must be an integer >= 1 or None, got {max_rank!r}")
    return int(max_rank)


def _check_modes(modes, rows: int, cols: int) -> Modes:
    """``modes`` as a list of ``(m_k, n_k)`` int pairs multiplying to ``(rows, cols)``."""
    try:
        pairs = [tuple(p) for p in modes]
    except TypeError:
        raise errors.InvalidParameterError(
            f"modes must be a list of (m_k, n_k) pairs, got {modes!r}") from None
    if not pairs:
        raise errors.InvalidParameterError("modes must hold at least one (m_k, n_k) pair")
    for k, p in enumerate(pairs):
        if len(p) != 2 or not all(_is_int(v) and v >= 1 for v in p):
            raise errors.InvalidParameterError(
                f"modes[{k}] must be a pair of integers >= 1, got {p!r}")
    out = [(int(m), int(n)) for m, n in pairs]
    pm, pn = math.prod(m for m, _ in out), math.prod(n for _, n in out)
    if (pm, pn) != (rows, cols):
        raise errors.InvalidParameterError(
            f"modes {out} multiply to {pm} x {pn}, but the matrix is {rows} x {cols}")
    return out


def _check_cores(cores) -> list[np.ndarray]:
    """The cores as float64 arrays, checked against the layout (ranks chain, r_0 = r_d = 1)."""
    if isinstance(cores, np.ndarray) or not isinstance(cores, Sequence) or len(cores) == 0:
        raise errors.InvalidParameterError("cores must be a non-empty list of 4-D arrays")
    out = [np.asarray(g, dtype=np.float64) for g in cores]
    prev = 1
    for k, g in enumerate(out):
        if g.ndim != 4:
            raise errors.InvalidParameterError(
                f"core {k} must be 4-D (r_prev, m, n, r_next), got shape {g.shape}")
        if g.shape[0] != prev:
            raise errors.InvalidParameterError(
                f"core {k} has left rank {g.shape[0]}, but the rank before it is {prev}")
        if 0 in g.shape:
            raise errors.InvalidParameterError(f"core {k} is empty (shape {g.shape})")
        prev = g.shape[3]
    if prev != 1:
        raise errors.InvalidParameterError(f"the last core must have right rank 1, got {prev}")
    return out


def core_modes(cores) -> Modes:
    """The mode layout ``[(m_k, n_k)]`` of a list of cores."""
    return [(int(g.shape[1]), int(g.shape[2])) for g in cores]


def core_ranks(cores) -> tuple[int, ...]:
    """The TT ranks ``(r_0, .., r_d)`` of a list of cores."""
    return (1,) + tuple(int(g.shape[3]) for g in cores)


# ---------------------------------------------------------------------------------------------
# TT-SVD
def _keep_rank(s: np.ndarray, shape: tuple[int, int], delta: float | None,
               max_rank: int | None) -> int:
    """How many singular values (descending ``s``) an unfolding of this shape keeps.

    ``delta`` given: the smallest r >= 1 with ``sqrt(sum(s[r:]**2)) <= delta``. ``delta`` None
    (exact): the numerical rank, ``s > s[0] * max(shape) * float64 eps``. Then capped by
    ``max_rank``.
    """
    if delta is None:
        tol = s[0] * max(shape) * np.finfo(np.float64).eps
        r = int(np.count_nonzero(s > tol))
    else:
        # tail[r] = sqrt(sum(s[r:]**2)) for r = 0..len(s), summed from the smallest up
        tail = np.sqrt(np.concatenate([np.cumsum((s ** 2)[::-1])[::-1], [0.0]]))
        r = int(np.flatnonzero(tail[1:] <= delta)[0]) + 1  # tail[len(s)] = 0: always found
    r = max(r, 1)
    return r if max_rank is None else min(r, max_rank)


def tt_svd(a: np.ndarray, modes, eps: float | None = None,
           max_rank: int | None = None) -> list[np.ndarray]:
    """TT-SVD (Oseledets 2011, Algorithm 1) of ``a`` in the mode layout ``modes``.

    ``a`` is a matrix (rows, cols) (any other ndim is taken through its 2-D view), ``modes``
    a list of ``(m_k, n_k)`` with ``prod(m_k) = rows``, ``prod(n_k) = cols``. Returns the d
    float32 cores ``(r_{k-1}, m_k, n_k, r_k)``. With ``eps`` the result ``B`` satisfies
    ``||a - B||_F <= eps ||a||_F`` in exact arithmetic (unless ``max_rank`` cuts a rank
    below what eps needs); ``eps=None`` keeps each unfolding's numerical rank (exact).
    Computed in float64. Raises ``ValueError`` (a ``bitpress.errors`` subclass) on a bad
    argument or NaN/infinity in ``a``.
    """
    eps = _check_eps(eps)
    max_rank = _check_max_rank(max_rank)
    mat = _as_matrix(a, np.float64)
    modes = _check_modes(modes, *mat.shape)
    d = len(modes)
    ms = [m for m, _ in modes]
    ns = [n for _, n in modes]
    if d == 1:
        return [np.ascontiguousarray(mat.reshape(1, ms[0], ns[0], 1), dtype=np.float32)]
    # (m_1..m_d, n_1..n_d) -> (m_1, n_1, m_2, n_2, ..) -> (m_1 n_1, .., m_d n_d)
    t = mat.reshape(ms + ns).transpose([p for k in range(d) for p in (k, d + k)])
    sizes = [m * n for m, n in modes]
    delta = None if eps is None else eps / math.sqrt(d - 1) * float(np.linalg.norm(mat))
    cores = []
    c = t.reshape(sizes[0], -1)
    r_prev = 1
    for k in range(d - 1):
        u, s, vt = np.linalg.svd(c, full_matrices=False)
        r = _keep_rank(s, c.shape, delta, max_rank)
        cores.append(u[:, :r].reshape(r_prev, ms[k], ns[k], r))
        c = (s[:r, None] * vt[:r]).reshape(r * sizes[k + 1], -1)
        r_prev = r
    cores.append(c.reshape(r_prev, ms[-1], ns[-1], 1))
    return [np.ascontiguousarray(g, dtype=np.float32) for g in cores]


# ---------------------------------------------------------------------------------------------
# evaluation from the cores
def _full(cores: list[np.ndarray]) -> np.ndarray:
    """W (rows, cols) from checked float64 cores, in float64."""
    res = cores[0][0]                                         # (m_1, n_1, r_1)
    for g in cores[1:]:
        rows, cols, _ = res.shape
        _, m, n, r = g.shape
        res = np.tensordot(res, g, axes=(2, 0))               # (M, N, m, n, r)
        res = res.transpose(0, 2, 1, 3, 4).reshape(rows * m, cols * n, r)
    return res[:, :, 0]


def reconstruct(cores) -> np.ndarray:
    """The matrix ``W`` (rows, cols) the cores represent, as float32 (computed in float64).

    The reference implementation of the layout formula (numpy tensordot, core by core).
    """
    return _full(_check_cores(cores)).astype(np.float32)


def _unravel(index, dims: list[int], what: str) -> tuple[int, ...]:
    total = math.prod(dims)
    if not _is_int(index):
        raise errors.InvalidParameterError(f"{what} index must be an integer, got {index!r}")
    index = int(index)
    if not 0 <= index < total:
        raise IndexError(f"{what} index {index} out of range 0..{total - 1}")
    return tuple(int(v) for v in np.unravel_index(index, dims))


def reconstruct_row(cores, i: int) -> np.ndarray:
    """Row ``i`` of ``W`` (cols,) as float32, contracted from the cores without forming W."""
    cores = _check_cores(cores)
    idx = _unravel(i, [g.shape[1] for g in cores], "row")
    v = cores[0][0, idx[0]]                                   # (n_1, r_1)
    for g, ik in zip(cores[1:], idx[1:]):
        v = np.tensordot(v, g[:, ik], axes=(1, 0))            # (N, n_k, r_k)
        v = v.reshape(-1, v.shape[-1])
    return v[:, 0].astype(np.float32)


def element(cores, i: int, j: int) -> float:
    """``W[i, j]``: the product of the d matrices ``G_k[:, i_k, j_k, :]`` (float64 sum)."""
    cores = _check_cores(cores)
    ii = _unravel(i, [g.shape[1] for g in cores], "row")
    jj = _unravel(j, [g.shape[2] for g in cores], "column")
    v = np.ones((1,))
    for g, ik, jk in zip(cores, ii, jj):
        v = v @ g[:, ik, jk, :]
    return float(v[0])


def matvec(cores, x) -> np.ndarray:
    """``x @ W`` (ONNX MatMul ``Y = X W``) from the cores, without forming W.

    ``x`` has shape (rows,) or (batch, rows); the result (cols,) or (batch, cols), float32
    (computed in float64). The row modes of x are contracted away core by core while the
    column modes are built up: after core k the work array is
    ``(batch, m_{k+1}..m_d, n_1..n_k, r_k)``.
    """
    cores = _check_cores(cores)
    rows = math.prod(g.shape[1] for g in cores)
    xa = np.asarray(x)
    if xa.dtype.kind not in "biuf" or xa.ndim not in (1, 2) or xa.shape[-1] != rows:
        raise errors.DimensionMismatchError(
            f"x must be a real array of shape ({rows},) or (batch, {rows}), got shape "
            f"{xa.shape} dtype {xa.dtype}")
    z = xa.astype(np.float64).reshape(-1, rows, 1, 1)       # (B, M_rest, N_done, r)
    for g in cores:
        b, mrest, ndone, _ = z.shape
        _, m, n, r = g.shape
        z = z.reshape(b, m, mrest // m, ndone, z.shape[3])
        z = np.tensordot(z, g, axes=([1, 4], [1, 0]))        # (B, M_rest/m, N_done, n, r)
        z = z.reshape(b, mrest // m, ndone * n, r)
    y = z[:, 0, :, 0].astype(np.float32)
    return y[0] if xa.ndim == 1 else y


# ---------------------------------------------------------------------------------------------
# layouts
def _splits(n: int, parts: int, lo: int):
    """Every nondecreasing tuple of ``parts`` integers >= ``lo`` (>= 2) whose product is n."""
    if parts == 1:
        if n >= lo:
            yield (n,)
        return
    f = lo
    while f ** parts <= n:
        if n % f == 0:
            for rest in _splits(n // f, parts - 1, f):
                yield (f,) + rest
        f += 1


def balanced_split(n: int, d: int) -> tuple[int, ...] | None:
    """``n`` as d integer factors, as balanced as possible, largest first; None if impossible.

    n = 1 gives ``(1,) * d``. Otherwise all factors are > 1 (None when n has fewer than d
    prime factors counted with multiplicity). "Balanced": the least sum of squared natural
    logs of the factors (equivalently, the least variance of the log factors around
    log(n)/d); ties go to the lexicographically smallest ascending tuple. The factors are
    returned in descending order (e.g. 384, d=3 -> (8, 8, 6); 1536, d=3 -> (16, 12, 8)).
    """
    if n == 1:
        return (1,) * d
    best, best_key = None, None
    for split in _splits(n, d, 2):
        key = (round(sum(math.log(f) ** 2 for f in split), 9), split)
        if best_key is None or key < best_key:
            best, best_key = split, key
    return None if best is None else tuple(sorted(best, reverse=True))


def factorizations(rows: int, cols: int, max_d: int = 4) -> list[Modes]:
    """Candidate mode layouts for a (rows, cols) matrix, in a fixed order.

    1. dense ``[(rows, cols)]``;
    2. SVD ``[(rows, 1), (1, cols)]``;
    3. for d = 2..max_d, the balanced TT-matrix layout ``[(m_k, n_k)]`` with
       ``m = balanced_split(rows, d)`` and ``n = balanced_split(cols, d)`` paired position by
       position (both largest first). Skipped when rows or cols (other than 1) cannot be
       split into d factors > 1, when rows = cols = 1, and when it repeats an earlier layout.
    """
    for name, v in (("rows", rows), ("cols", cols)):
        if not _is_int(v) or v < 1:
            raise errors.InvalidParameterError(f"{name} must be an integer >= 1, got {v!r}")
    if not _is_int(max_d) or max_d < 1:
        raise errors.InvalidParameterError(f"max_d must be an integer >= 1, got {max_d!r}")
    rows, cols = int(rows), int(cols)
    out: list[Modes] = [[(rows, cols)], [(rows, 1), (1, cols)]]
    if rows == cols == 1:
        return out
    for d in range(2, max_d + 1):
        ms, ns = balanced_split(rows, d), balanced_split(cols, d)
        if ms is None or ns is None:
            continue
        layout = list(zip(ms, ns))
        if layout not in out:
            out.append(layout)
    return out


# ---------------------------------------------------------------------------------------------
# decompose
@dataclasses.dataclass(frozen=True, eq=False)
class TTResult:
    """A decomposed tensor and its honest accounting.

    ``rel_error`` is measured: ``||A - B||_F / ||A||_F`` in float64, A the float32 input, B
    rebuilt from the float32 cores (0.0 for dense; for A = 0 it is 0.0 when B = 0, else inf).
    ``bound_holds`` is ``rel_error <= eps * (1 + BOUND_RTOL) + BOUND_ATOL`` (None without
    eps); it can only be False when ``max_rank`` cut a rank.
    """

    cores: list[np.ndarray]
    shape: tuple[int, ...]
    modes: Modes
    ranks: tuple[int, ...]
    format: str
    eps: float | None
    max_rank: int | None
    rel_error: float
    dense_bytes: int
    stored_bytes: int
    bound_holds: bool | None

    @property
    def ratio(self) -> float:
        """Compression ratio ``dense_bytes / stored_bytes`` (1.0 for dense, < 1 when larger)."""
        return self.dense_bytes / self.stored_bytes

    def to_dense(self) -> np.ndarray:
        """The reconstructed tensor in its original ``shape`` (float32)."""
        return reconstruct(self.cores).reshape(self.shape)


def _stored_bytes(cores) -> int:
    return 4 * sum(int(g.size) for g in cores)


def _rel_error(mat: np.ndarray, cores: list[np.ndarray]) -> float:
    """Measured ``||mat - B||_F / ||mat||_F`` in float64 (B from the float32 cores)."""
    a = mat.astype(np.float64)
    num = float(np.linalg.norm(a - _full([g.astype(np.float64) for g in cores])))
    den = float(np.linalg.norm(a))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def _result(mat, shape, cores, eps, max_rank) -> TTResult:
    d = len(cores)
    rel = 0.0 if d == 1 else _rel_error(mat, cores)
    holds = None if eps is None else bool(rel <= eps * (1 + BOUND_RTOL) + BOUND_ATOL)
    return TTResult(cores=cores, shape=shape, modes=core_modes(cores), ranks=core_ranks(cores),
                    format="dense" if d == 1 else "tt", eps=eps, max_rank=max_rank,
                    rel_error=rel, dense_bytes=4 * int(mat.size),
                    stored_bytes=_stored_bytes(cores), bound_holds=holds)


LAYOUTS = ("auto", "svd", "ttm")


def decompose(a, eps: float | None = None, max_rank: int | None = None, modes=None,
              keep_dense_if_larger: bool = True, layout: str = "auto") -> TTResult:
    """Decompose tensor ``a`` (any ndim, through its 2-D view; converted to float32 first).

    ``modes`` given: exactly that layout (``[(rows, cols)]`` is dense), no fallback.
    Otherwise every layout of ``factorizations(rows, cols)`` but the dense one (``layout``
    "svd": only the low-rank one ``[(rows, 1), (1, cols)]``; "ttm": only the TT-matrix ones
    with d >= 2 non-trivial modes) is tried with
    ``tt_svd(eps, max_rank)``, and the one with the fewest stored bytes is kept (ties: fewer
    cores, then the earlier layout). If it is not smaller than the dense tensor
    (``stored_bytes >= dense_bytes``) the dense result (one core) is returned instead when
    ``keep_dense_if_larger``, else the TT anyway. The result records the measured error.
    """
    eps = _check_eps(eps)
    max_rank = _check_max_rank(max_rank)
    shape = tuple(int(s) for s in np.shape(a))
    mat = _as_matrix(a, np.float32)
    rows, cols = mat.shape
    dense = [mat.reshape(1, rows, cols, 1).copy()]
    if modes is not None:
        modes = _check_modes(modes, rows, cols)
        cores = dense if len(modes) == 1 else tt_svd(mat, modes, eps, max_rank)
        return _result(mat, shape, cores, eps, max_rank)
    if layout not in LAYOUTS:
        raise errors.InvalidParameterError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    svd = [(rows, 1), (1, cols)]
    candidates = [m for m in factorizations(rows, cols) if len(m) > 1
                  and (layout == "auto" or (m == svd) == (layout == "svd"))]
    # none (e.g. "ttm" for a prime dimension): kept dense below
    best, best_key = None, None
    for pos, lay in enumerate(candidates):
        cores = tt_svd(mat, lay, eps, max_rank)
        key = (_stored_bytes(cores), len(cores), pos)
        if best_key is None or key < best_key:
            best, best_key = cores, key
    if best is None or (keep_dense_if_larger and best_key[0] >= 4 * mat.size):
        best = dense
    return _result(mat, shape, best, eps, max_rank)
