"""IVF + RaBitQ arithmetic from Python: the C core's k-means, rotation, codes and estimates.

The PostgreSQL access method ``bitpress_ivf`` runs the same C functions (pyext/bp_ivf.c) on its
pages; this module gives them numpy arrays, for DuckDB's index tables, tests and benchmarks.

Metrics are the index's distances: ``"l2"`` is the squared Euclidean distance (pgvector's
``<->`` squared), ``"ip"`` minus the inner product (``<#>``), ``"cosine"`` one minus the cosine
(``<=>``; vectors are normalized first).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _core

METRICS = {"l2": 0, "ip": 1, "cosine": 2}
MAX_BITS = 4
FACTORS = 5  # floats per vector: |r|, scale, error coefficient, <r, c>, scale <x, c>


def _f32(x, ndim: int) -> np.ndarray:
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != ndim:
        raise ValueError(f"expected a {ndim}-d array, got shape {a.shape}")
    return a


def metric_id(metric: str) -> int:
    try:
        return METRICS[metric]
    except KeyError:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}") from None


def normalize(x) -> np.ndarray:
    """Rows scaled to unit length by the core, bit for bit as the index does (zero rows stay zero)."""
    x = _f32(x, 2).copy()
    _core.ivf_normalize_into(x, x.shape[0], x.shape[1])
    return x


def kmeans(x, k: int, *, iters: int = 10, seed: int = 0, spherical: bool = False) -> np.ndarray:
    """k centroids of the rows of x (seeded, deterministic; spherical: unit centroids)."""
    x = _f32(x, 2)
    out = np.empty((k, x.shape[1]), np.float32)
    _core.ivf_kmeans_into(x, x.shape[0], x.shape[1], k, iters, seed, spherical, out)
    return out


def rotate(x, seed: int) -> np.ndarray:
    """Rows times the orthogonal matrix of seed (the index's rotation)."""
    x = _f32(x, 2)
    out = np.empty_like(x)
    _core.ivf_rotate_into(x, x.shape[0], x.shape[1], seed, out)
    return out


def code_bytes(dim: int, bits: int) -> int:
    return bits * ((dim + 63) // 64) * 8


@dataclass
class Encoded:
    lists: np.ndarray    # int32 (n,): each row's list
    codes: np.ndarray    # uint8 (n, code_bytes)
    factors: np.ndarray  # float32 (n, FACTORS)


def encode(xr, centroids, bits: int = 1, *, spherical: bool = False, lists=None) -> Encoded:
    """Codes of rotated rows xr against rotated centroids: each row's nearest list (or lists)."""
    xr, centroids = _f32(xr, 2), _f32(centroids, 2)
    n, dim = xr.shape
    assign = lists is None
    lists = np.full(n, -1, np.int32) if assign else np.ascontiguousarray(lists, np.int32).copy()
    codes = np.empty((n, code_bytes(dim, bits)), np.uint8)
    factors = np.empty((n, FACTORS), np.float32)
    _core.ivf_encode_into(xr, n, dim, centroids, centroids.shape[0], bits, spherical, assign,
                          lists, codes, factors)
    return Encoded(lists, codes, factors)


def estimate(qr, centroid, codes, factors, bits: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Estimated distances of one list's codes to the rotated query qr, and their bounds.

    ``est - epsilon * bound`` is the lower bound the index reranks by.
    """
    qr, centroid = _f32(qr, 1), _f32(centroid, 1)
    codes = np.ascontiguousarray(codes, np.uint8)
    factors = np.ascontiguousarray(factors, np.float32)
    n = codes.shape[0]
    est, bound = np.empty(n, np.float64), np.empty(n, np.float64)
    _core.ivf_estimate_into(qr, centroid, codes, factors, n, qr.shape[0], bits, metric_id(metric),
                            est, bound)
    return est, bound


def distance(x, q, metric: str) -> np.ndarray:
    """Exact distances of rows x to q in the index's form (numpy)."""
    x, q = np.asarray(x, np.float64), np.asarray(q, np.float64)
    if metric == "l2":
        return ((x - q) ** 2).sum(axis=1)
    if metric == "ip":
        return -(x @ q)
    if metric == "cosine":
        return 1.0 - (x @ q) / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
    metric_id(metric)
    raise AssertionError
