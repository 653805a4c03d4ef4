"""The C core on numpy arrays: whole batches per call, no Python loop per row.

Codes are ``uint8`` arrays holding the bits MSB-first, exactly the payload of a PostgreSQL
``bit(n)`` value and of a bitpress DuckDB BLOB; ``numpy.packbits(x > t, axis=-1)`` is the
reference they match.
"""
from __future__ import annotations

import numpy as np

from . import _core, errors

_core._set_error_factory(errors._from_core)

MAX_DIM = _core.MAX_DIM


def _as_float32_rows(x, what="vector"):
    a = np.asarray(x)
    if a.dtype == object:
        raise errors.NullValueError(f"{what} must not contain nulls")
    if a.ndim not in (1, 2):
        raise errors.BitpressError(f"{what} must be 1-D (one vector) or 2-D (one per row), got {a.ndim}-D")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, then an error
        a = np.ascontiguousarray(a, dtype=np.float32)
    return a


def binarize(x, thresholds=None) -> np.ndarray:
    """Binary codes of one vector (1-D) or a batch (2-D, one vector per row).

    Bit i is 1 where ``x[i] > thresholds[i]`` (0 when thresholds is None, which equals
    pgvector's ``binary_quantize``). ``thresholds`` is one row shared by every vector, or a
    2-D array with one row per vector. Returns ``uint8`` of shape ``(ceil(dim/8),)`` or
    ``(n, ceil(dim/8))``.
    """
    a = _as_float32_rows(x)
    single = a.ndim == 1
    rows = a.reshape(1, -1) if single else a
    n, dim = rows.shape
    t = None
    if thresholds is not None:
        t = _as_float32_rows(thresholds, "thresholds")
        if t.ndim == 2 and t.shape[0] == 1:
            t = t[0]
        tdim = t.shape[-1]
        if tdim != dim:
            _core.raise_error(_core.ERR_DIM_MISMATCH, dim, tdim)
        if t.ndim == 2 and t.shape[0] != n:
            raise errors.DimensionMismatchError(
                f"vector has {dim} dimensions but thresholds have {tdim} and {t.shape[0]} rows for {n} vectors")
    out = np.empty((n, (dim + 7) // 8), dtype=np.uint8)
    _core.binarize_into(rows, n, dim, t, out)
    return out[0] if single else out


def _as_codes(c, what):
    if isinstance(c, (bytes, bytearray, memoryview)):
        c = np.frombuffer(c, dtype=np.uint8)
    a = np.asarray(c)
    if a.dtype != np.uint8:
        raise errors.BitpressError(f"{what} must be uint8 codes (packed bits), got {a.dtype}")
    if a.ndim not in (1, 2):
        raise errors.BitpressError(f"{what} must be one code (1-D) or one code per row (2-D)")
    return np.ascontiguousarray(a)


def hamming(a, b):
    """Hamming distances between codes.

    ``a`` and ``b`` are one code (1-D ``uint8`` or ``bytes``) or one code per row (2-D).
    One against one gives an ``int``; one against many, or row by row for two batches of
    the same length, gives an ``int64`` array.
    """
    ca, cb = _as_codes(a, "a"), _as_codes(b, "b")
    if ca.shape[-1] != cb.shape[-1]:
        _core.raise_error(_core.ERR_BIT_LENGTH_MISMATCH, ca.shape[-1] * 8, cb.shape[-1] * 8)
    nbytes = ca.shape[-1]
    na = 1 if ca.ndim == 1 else ca.shape[0]
    nb = 1 if cb.ndim == 1 else cb.shape[0]
    if na != nb and na != 1 and nb != 1:
        raise errors.BitpressError(f"cannot pair {na} codes with {nb} codes")
    n = 0 if 0 in (na, nb) else max(na, nb)
    out = np.empty(n, dtype=np.uint64)
    _core.hamming_into(ca, na, cb, nb, nbytes, out)
    if ca.ndim == 1 and cb.ndim == 1:
        return int(out[0])
    return out.astype(np.int64)


def simd() -> str:
    """The Hamming kernel path in use: scalar, popcnt, avx2 or avx512."""
    return _core.get_impl()


def simd_supported() -> list[str]:
    """The kernel paths this CPU can run."""
    return _core.supported_impls()


def set_simd(name: str) -> str:
    """Force a kernel path ("auto" for the fastest supported); returns the one now in use."""
    return _core.set_impl(name)


# ---- codebooks (see codebook.py for the rules) ----
def _blob(codebook):
    """The stored form of a codebook: a Codebook, or its bytes (bytes or a uint8 array)."""
    if isinstance(codebook, (bytes, bytearray, memoryview, np.ndarray)):
        return codebook
    return codebook.to_bytes()


def encode(codebook, x) -> np.ndarray:
    """Codes of one vector (1-D) or a batch (2-D) under a fitted codebook, by the C core.

    ``codebook`` is a :class:`bitpress.codebook.Codebook` or its stored bytes.
    """
    blob = _blob(codebook)
    dims, _, bits, _ = _core.codebook_shape(blob)
    a = _as_float32_rows(x)
    single = a.ndim == 1
    rows = a.reshape(1, -1) if single else a
    out = np.empty((rows.shape[0], (bits + 7) // 8), dtype=np.uint8)
    _core.encode_into(blob, rows, rows.shape[0], rows.shape[1], out)
    return out[0] if single else out


def asymmetric_scores(codebook, query, codes) -> np.ndarray:
    """Estimated inner product ``query . x_hat`` for each code (float query, bit codes).

    Needs reconstruction levels (``codebook.asymmetric``). Higher is closer. One table of
    ``code bytes x 256`` partial sums per query, then one lookup per code byte.
    """
    blob = _blob(codebook)
    q = _as_float32_rows(query, "query")
    if q.ndim != 1:
        raise errors.BitpressError("query must be one vector (1-D)")
    c = np.atleast_2d(_as_codes(codes, "codes"))
    out = np.empty(c.shape[0], dtype=np.float64)
    _core.asym_scores_into(blob, q, c, c.shape[0], out)
    return out


def check_count(what, v) -> int:
    """v as an int, or InvalidParameterError unless it is an integer >= 1 (k, oversample)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise errors.InvalidParameterError(f"{what} must be at least 1, got {v!r}")
    return int(v)



def topk_smallest(values, k: int) -> np.ndarray:
    """Indices of the k smallest values, ascending by (value, index): a bounded heap in C."""
    k = check_count("k", k)
    v = np.asarray(values)
    kind = "u" if v.dtype.kind in "ui" and (v.size == 0 or v.min() >= 0) else "d"
    keys = np.ascontiguousarray(v, dtype=np.uint64 if kind == "u" else np.float64)
    n = keys.shape[0]
    idx = np.empty(min(k, n), dtype=np.int64)
    key = np.empty(min(k, n), dtype=np.float64)
    count = _core.topk_into(keys, kind, n, k, idx, key) if n else 0
    return idx[:count]


def hamming_topk(query_code, codes, k: int):
    """The k codes nearest ``query_code``: (indices, distances), ascending by (distance, index).

    One pass over the codes with a bounded heap; no array of n distances is built.
    """
    k = check_count("k", k)
    q = _as_codes(query_code, "query_code")
    c = np.atleast_2d(_as_codes(codes, "codes"))
    if q.ndim != 1:
        raise errors.BitpressError("query_code must be one code (1-D)")
    if q.shape[0] != c.shape[1]:
        _core.raise_error(_core.ERR_BIT_LENGTH_MISMATCH, q.shape[0] * 8, c.shape[1] * 8)
    n = c.shape[0]
    idx = np.empty(min(k, n), dtype=np.int64)
    dist = np.empty(min(k, n), dtype=np.float64)
    count = _core.hamming_topk_into(q, c, n, c.shape[1], k, idx, dist) if n else 0
    return idx[:count], dist[:count].astype(np.int64)
