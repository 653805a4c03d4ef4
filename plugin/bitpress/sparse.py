"""Activation-sparse feed-forward blocks: the numpy reference, the neuron predictor, the analysis.

A transformer feed-forward block (FFN) is ``y = act(x @ W1 + b1) @ W2 + b2`` with ``x`` of
``d`` components (384 in MiniLM), ``h`` hidden neurons (1536) and ``W1`` (d, h), ``W2`` (h, e).
Neuron ``i`` adds ``act(z_i) * W2[i, :]`` to the output, and in large models only a minority
of the ``h`` neurons matter for one input: the others have a pre-activation ``z_i`` far
enough below zero that ``act(z_i)`` is (nearly) 0. Computing the block over a set ``A`` of
neurons::

    y_A = act(x @ W1[:, A] + b1[A]) @ W2[A, :] + b2

costs ``2 d |A|`` multiply-adds instead of ``2 d h``, and reads only the columns ``W1[:, A]``
and rows ``W2[A, :]`` (a *neuron bundle*: column i of W1, b1[i] and row i of W2 belong
together). This is *contextual sparsity* (Deja Vu: Z. Liu et al., "Deja Vu: Contextual
Sparsity for Efficient LLMs at Inference Time", ICML 2023, arXiv:2310.17157), where a cheap
predictor picks ``A`` per input; PowerInfer (Y. Song, Z. Mi, H. Xie, H. Chen, "PowerInfer:
Fast Large Language Model Serving with a Consumer-grade GPU", 2023, arXiv:2312.12456) adds
that a few *hot* neurons are active for most inputs and the rest (*cold*) rarely; TEAL
(J. Liu et al., "Training-Free Activation Sparsity in Large Language Models", 2024,
arXiv:2408.14690) reaches 40-50 % model-wide activation sparsity in LLMs with nothing but
magnitude thresholds fitted on calibration data. This module is the numpy reference that
bitpress's C kernel and SQL functions must match, and the tools to decide how sparse one can
go on a real model.

What is here
------------
**Activations** (float32 in, float32 out, computed in float64 and rounded once):
``gelu_erf`` (exact GELU ``0.5 x (1 + erf(x / sqrt 2))``, BERT's and MiniLM's ``"gelu"``),
``gelu_tanh`` (the tanh approximation, ``"gelu_new"``), ``relu``, ``silu``; ``ACTIVATIONS``
maps names to them (``"gelu"`` is ``gelu_erf``). numpy has no erf and scipy is not a
dependency, so ``erf``/``erfc`` here are W. J. Cody's rational Chebyshev approximations
(W. J. Cody, "Rational Chebyshev approximations for the error function", Math. Comp. 23
(1969) 631-637; the coefficients of his CALERF), vectorized in float64: the largest relative
error against ``math.erf`` is 4.5e-16 (2 ulp), against ``math.erfc`` 9e-16, over a dense
grid of [-30, 30] and 1e-300..1e3 (tests/test_sparse.py checks < 1e-14), so every float32
activation is the correctly rounded value but for ties. ``gelu_erf`` evaluates
``0.5 x erfc(-x / sqrt 2)`` and ``gelu_tanh``/``silu`` ``x sigmoid(u)`` so that the far
negative tails keep their relative accuracy.

**Dense and sparse blocks.** ``ffn(x, w1, b1, w2, b2, activation)`` is the dense reference
(float32 matmuls, x of shape (d,) or (n, d)). ``sparse_ffn(..., active)`` computes only the
neurons in ``active``: one index set for every row (1-D integer array or (h,) boolean mask),
one per row (an (n, k) integer array, an (n, h) boolean mask, or a list of n index arrays of
any lengths). ``method="gather"`` does what a kernel does (each row gathers ``W1[:, A]``,
``b1[A]`` and ``W2[A, :]``), ``"masked"`` gets the same numbers faster in numpy (one matmul
for z, the inactive activations zeroed); both equal the formula above up to float32
summation order, and with every neuron active ``ffn``.

**Off values** (``neuron_offsets``, the ``offset=`` arguments). Skipping a neuron means
assuming it outputs 0. For GELU a quiet neuron does not output 0 but a small negative value
(the negative lobe, down to -0.17), and a thousand of those add up through W2 to a large
vector: on MiniLM's first two layers, dropping 70 % of the neurons with the exact top-30 %
gives a 48 % / 56 % relative output error, almost all of it this bias. A per-neuron off
value ``c_i`` (the median of ``act(z_i)`` on calibration data) fixes it at no cost per
input: ``y = (b2 + c @ W2) + sum_{i in A} (act(z_i) - c_i) W2[i, :]`` with the first term
stored once (``effective_bias``) and neurons ranked by ``|act(z_i) - c_i|`` (19 % error on
both layers at 30 % active). A C kernel should store ``c_i`` with each neuron bundle and
``b2 + c @ W2`` in place of ``b2``.

**Predictor** (``fit_predictor`` -> ``Predictor``). The pre-activation ``z = x @ W1 + b1`` is
approximated by ``z_hat = (x @ P) @ Q + b1`` with ``P`` (d, r) and ``Q`` (r, h): a cost of
``d r + r h`` multiply-adds per input (``Predictor.cost``) against ``2 d h`` for the dense
block. For d = 384, h = 1536 (dense: 1,179,648) that is 30,720 (2.6 %) at rank 16, 61,440
(5.2 %) at rank 32 and 122,880 (10.4 %) at rank 64: the predictor is only worth having at
ranks of a few tens, and the sparse block at fraction f then costs ``f + cost/dense`` of the
dense one. ``fit_predictor`` starts from the truncated SVD of ``W1`` (``P = U_r S_r``,
``Q = V_r^T``, the best rank-r approximation of W1 for *isotropic* inputs) and, with
``refine=True``, minimises the error on the calibration inputs ``X`` instead::

    min_{P,Q}  ||X (W1 - P Q)||_F^2 + lam ||W1 - P Q||_F^2,   lam = ridge * trace(X^T X) / d

Alternating least squares on this (Q fixed: ``P = W1 Q^T (Q Q^T)^-1``, which does not
depend on X, so that step alone gives back ``U_r S_r``; P fixed:
``Q = (P^T G P)^-1 P^T G W1`` with ``G = X^T X + lam I``) converges to its closed-form
optimum, which is computed directly: with ``R = G^(1/2)`` (symmetric) and the truncated SVD
``R W1 ~ U' S' V'^T``, ``P = R^-1 U' S'``, ``Q = V'^T``. This is the global minimiser of the
ridge objective, and since the SVD start minimises the ridge term alone, the calibration
error can only go down (kept as a safeguard: if rounding ever made it larger, the SVD start
is kept). ``Predictor.calib_error_svd`` / ``calib_error`` report the relative error
``||Z_hat - Z||_F / ||Z||_F`` of the pre-activation on the calibration rows before / after.
``fit_predictors`` fits several ranks at once (the SVDs shared); ``Predictor.to_dict`` /
``from_dict`` give and read a JSON-ready form (P, Q, b1, off values, quantiles).

*Which neurons.* A neuron's score is the magnitude of its predicted activation,
``|act(z_hat_i)|`` (``importance``), or ``|act(z_hat_i) - c_i|`` with off values: what
neuron i adds to the output is ``act(z_i) W2[i, :]`` (``(act(z_i) - c_i) W2[i, :]``), and
for GELU and SiLU, whose negative lobe is small but not zero (GELU's minimum is -0.17 at
z = -0.75), the magnitude is the natural score. (Weighting it by ``||W2[i, :]||`` was
measured and changes the output error by under 0.01.) For ReLU without off values the
score is ``z_hat`` itself: the same order for the positive ones, and no ties at 0 among
the negative ones. ``Predictor.select(x, k=...)`` or ``fraction=...`` (k = round(fraction h))
returns each row's top-k neurons (an (n, k) integer array, ascending neuron order, ties
broken arbitrarily); ``select(x, threshold=t)`` returns the (n, h) boolean mask
``score > t``. Thresholds: ONE global threshold per layer, ``Predictor.threshold_for(f)``,
the (1 - f) quantile of all calibration scores (every row, every neuron), so that a fraction
f of (row, neuron) pairs is active on average. A global threshold rather than per-neuron
quantiles, because per-neuron quantiles force every neuron to be active for the same
fraction of inputs: they would switch PowerInfer's hot neurons off for (1 - f) of the inputs
and switch near-dead ones on for f of them. One threshold keeps, over the calibration set,
the largest predicted activations whatever neuron they belong to (which, for a budget of
active pairs, maximises the kept predicted |activation| mass), lets an input with a
concentrated activation use fewer neurons than a diffuse one, and is what TEAL does (one
magnitude threshold per tensor). Its cost: the number of active neurons varies per input
(the C kernel must handle a variable count; top-k gives a fixed one).

**Analysis.** ``sparsity_profile`` (how many neurons carry 90 % / 99 % of each input's
``sum |act(z)|``, and what share of it the top 10/30/50/70 % keep), ``oracle_active`` (the
true top-k by ``importance(z)``: also what a kernel gets that computes z exactly and skips
only rows of W2), ``static_active`` (one fixed set: the k neurons with the largest mean
``|act(z)|`` on calibration data, PowerInfer's hot neurons, the baseline any predictor must
beat), ``predictor_recall`` (mean fraction of the true top-k that the predictor's top-k
contains; a random set scores k/h), ``output_error`` (mean over rows of
``||y_sparse - y|| / ||y||``) and ``analyze_layer``, which puts it all together for one layer.

Measured on paraphrase-MiniLM-L3-v2 (3 layers, exact GELU; predictors fitted on the 35,140
tokens of PyPI summaries 0-1999, measured on the 17,135 of 2000-2999): this small model is
*not* very sparse. 90 % of a token's ``sum |gelu(z)|`` takes 62 % / 71 % / 64 % of the 1536
neurons (layers 0/1/2), 99 % takes 84-91 %. With off values the exact top 30 % give a 19 % /
19 % / 22 % output error, the top 50 % 11 % / 11 % / 8 %. Rank-64 predictors (10.4 % of the
dense cost) recall 60 % / 54 % / 74 % of the true top 30 % (random 30 %, the static hot set
36-42 %); their 30 % selection gives 42 % / 38 % / 25 % output error with off values (62 % /
67 % / 25 % without). A global threshold behaves like top-k (within 0.01).

**Real inputs.** ``load_ffn`` reads the FFN weights of a BERT-like ONNX model
(``...layer.{L}.intermediate.dense`` / ``...layer.{L}.output.dense``) and the activation its
graph computes (``Erf`` nodes: exact GELU); ``capture_ffn_io(texts)`` runs the model with
onnxruntime (tokenized as ``bitpress.embed.Embedder`` does) and returns, per layer, the FFN
input and output of every real (non-padding) token (``ffn`` reproduces the captured outputs
to 3e-7 relative); ``load_texts`` reads the texts of the shared ``pypi-minilm`` corpus.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import errors

__all__ = [
    "ACTIVATIONS",
    "FFNWeights",
    "Predictor",
    "METHODS",
    "analyze_layer",
    "capture_ffn_io",
    "effective_bias",
    "erf",
    "erfc",
    "ffn",
    "fit_predictor",
    "fit_predictors",
    "gelu_erf",
    "gelu_tanh",
    "importance",
    "load_ffn",
    "load_texts",
    "neuron_offsets",
    "oracle_active",
    "output_error",
    "pre_activation",
    "predictor_recall",
    "relu",
    "shared_data_dir",
    "silu",
    "sparse_ffn",
    "sparsity_profile",
    "static_active",
]

ROOT = Path(__file__).resolve().parents[2]  # the repository (when run from a checkout)

# ---------------------------------------------------------------------------------------------
# erf / erfc: W. J. Cody's rational approximations (CALERF), float64
_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
      3.20937758913846947e03, 1.85777706184603153e-1)
_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
      2.84423683343917062e03)
_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
      2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
      2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)
_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
      1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
      3.43936767414372164e03, 1.23033935480374942e03)
_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
      1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)
_Q = (2.56852019228982242e00, 1.87295284992346725e00, 5.27905102951428412e-1,
      6.05183413124413191e-2, 2.33520497626869185e-3)
_SQRPI = 5.6418958354775628695e-1  # 1 / sqrt(pi)
_THRESH = 0.46875
_XBIG = 27.5  # erfc(27.5) underflows to 0: clamping here only avoids inf - inf


_CHUNK = 16384  # elements per pass: the temporaries of one chunk stay in cache


def _ratio(x: np.ndarray, a, b, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Numerator and denominator of Cody's rational function of x with coefficients a and b
    (degree m + 1, the denominator monic), by Horner's rule in Cody's order of operations."""
    num = a[m + 1] * x
    den = x.copy()
    for i in range(m):
        num += a[i]
        num *= x
        den += b[i]
        den *= x
    num += a[m]
    den += b[m]
    return num, den


def _erfc_tail(y: np.ndarray) -> np.ndarray:
    """erfc(y) for y in [0.46875, 27] (float64)."""
    num, den = _ratio(y, _C, _D, 7)
    num /= den
    big = y > 4.0
    if big.any():
        yb = y[big]
        ysq = 1.0 / (yb * yb)
        pn, pd = _ratio(ysq, _P, _Q, 4)
        num[big] = (_SQRPI - ysq * pn / pd) / yb
    # exp(-y^2) as exp(-t^2) exp(-(y - t)(y + t)), t = y rounded down to 1/16: no cancellation
    t = np.trunc(y * 16.0) / 16.0
    e = np.exp(-t * t)
    e *= np.exp(-(y - t) * (y + t))
    num *= e
    return num


def _cody(x, complement: bool) -> np.ndarray:
    """erf(x) (or erfc(x) when ``complement``) as float64, chunk by chunk."""
    v = np.asarray(x, dtype=np.float64)
    flat = v.ravel()
    out = np.empty(flat.shape, dtype=np.float64)
    with np.errstate(all="ignore"):  # branches are evaluated where they are not used
        for s in range(0, flat.size, _CHUNK):
            c = flat[s:s + _CHUNK]
            y = np.abs(c)
            small = y <= _THRESH
            res = None
            if small.any():  # erf(c) = c R(c^2) for |c| <= 0.46875
                ysq = np.minimum(y, _THRESH)
                ysq *= ysq
                num, den = _ratio(ysq, _A, _B, 3)
                num /= den
                num *= c
                res = 1.0 - num if complement else num
            if not small.all():
                tail = _erfc_tail(np.clip(y, _THRESH, _XBIG))  # erfc(|c|); NaN stays NaN
                tail = np.where(c < 0, 2.0 - tail, tail) if complement else np.copysign(1.0 - tail, c)
                res = tail if res is None else np.where(small, res, tail)
            out[s:s + _CHUNK] = res
    return out.reshape(v.shape)


def erf(x) -> np.ndarray:
    """The error function, elementwise, as float64 (Cody's approximations; max rel. error 4.5e-16)."""
    return _cody(x, False)


def erfc(x) -> np.ndarray:
    """The complementary error function ``1 - erf(x)``, elementwise, float64, accurate in the tail."""
    return _cody(x, True)


# ---------------------------------------------------------------------------------------------
# activations: float32 in, float32 out (float64 inside, one rounding)
_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu_erf(x) -> np.ndarray:
    """Exact GELU ``0.5 x (1 + erf(x / sqrt 2))`` (as ``0.5 x erfc(-x / sqrt 2)``), float32."""
    v = np.asarray(x, dtype=np.float64)
    return (0.5 * v * erfc(-v * _SQRT_HALF)).astype(np.float32)


def _x_sigmoid(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``x * sigmoid(u)`` in float64 without overflow or cancellation in either tail."""
    e = np.exp(-np.abs(u))
    return x * np.where(u >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def gelu_tanh(x) -> np.ndarray:
    """Tanh GELU ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, float32.

    Evaluated as ``x sigmoid(2 u)`` (the same function) so the negative tail is accurate.
    """
    v = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        u = _SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)
    return _x_sigmoid(v, 2.0 * u).astype(np.float32)


def relu(x) -> np.ndarray:
    """``max(x, 0)``, float32."""
    return np.maximum(np.asarray(x, dtype=np.float32), np.float32(0))


def silu(x) -> np.ndarray:
    """SiLU / swish ``x sigmoid(x)``, float32 (float64 inside, no overflow)."""
    v = np.asarray(x, dtype=np.float64)
    return _x_sigmoid(v, v).astype(np.float32)


#: Activation functions by name ("gelu" is the exact erf GELU, as in BERT / MiniLM).
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gelu": gelu_erf,
    "gelu_erf": gelu_erf,
    "gelu_tanh": gelu_tanh,
    "relu": relu,
    "silu": silu,
}
# activations scored by the (predicted) pre-activation itself rather than |act|
_SIGNED_SCORE = ("relu",)


def _activation(activation) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """(name, function) of an activation given by name or as a function."""
    if callable(activation):
        return getattr(activation, "__name__", "custom"), activation
    try:
        return str(activation), ACTIVATIONS[activation]
    except (KeyError, TypeError):
        raise errors.InvalidParameterError(
            f"unknown activation {activation!r} (known: {', '.join(ACTIVATIONS)})") from None


def importance(z, activation="gelu", offset=None) -> np.ndarray:
    """The score that ranks neurons given their (true or predicted) pre-activations ``z``.

    ``|act(z) - offset|`` (float32; ``offset`` per neuron, see ``neuron_offsets``; None is
    0), except for ReLU without offset: ``z`` itself (same order among the positive ones,
    no ties at 0 among the others).
    """
    name, act = _activation(activation)
    if offset is None and name in _SIGNED_SCORE:
        return np.array(z, dtype=np.float32)
    a = np.asarray(act(z), dtype=np.float32)
    if offset is not None:
        a = a - np.asarray(offset, dtype=np.float32)
    return np.abs(a)


# ---------------------------------------------------------------------------------------------
# input checks
def _rows(x, d: int, what: str = "x") -> tuple[np.ndarray, bool]:
    """x as a C-contiguous float32 (n, d) array, and whether it was one vector."""
    a = np.asarray(x)
    if a.dtype == object:
        raise errors.NullValueError(f"{what} must not contain nulls (got an object array)")
    if a.ndim not in (1, 2):
        raise errors.InvalidParameterError(f"{what} must be 1-D or 2-D, got {a.ndim}-D")
    if a.dtype.kind not in "biuf":
        raise errors.InvalidParameterError(f"{what} must hold real numbers, got dtype {a.dtype}")
    single = a.ndim == 1
    a = np.ascontiguousarray(a.reshape(1, -1) if single else a, dtype=np.float32)
    if a.shape[1] != d:
        raise errors.DimensionMismatchError(
            f"{what} has {a.shape[1]} components, the weights expect {d}")
    return a, single


def _matrix(w, what: str) -> np.ndarray:
    a = np.asarray(w)
    if a.ndim != 2 or a.dtype.kind not in "biuf" or 0 in a.shape:
        raise errors.InvalidParameterError(
            f"{what} must be a non-empty 2-D array of numbers, got shape {a.shape} {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _vector(b, n: int, what: str) -> np.ndarray:
    a = np.asarray(b)
    if a.shape != (n,) or a.dtype.kind not in "biuf":
        raise errors.DimensionMismatchError(f"{what} must have shape ({n},), got {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _layer1(w1, b1) -> tuple[np.ndarray, np.ndarray]:
    w1 = _matrix(w1, "w1")
    return w1, _vector(b1, w1.shape[1], "b1")


def _weights(w1, b1, w2, b2):
    w1, b1 = _layer1(w1, b1)
    w2 = _matrix(w2, "w2")
    if w2.shape[0] != w1.shape[1]:
        raise errors.DimensionMismatchError(
            f"w2 must have {w1.shape[1]} rows (one per hidden neuron), got {w2.shape[0]}")
    return w1, b1, w2, _vector(b2, w2.shape[1], "b2")


def _check_fraction(fraction) -> float:
    f = float(fraction)
    if not 0.0 <= f <= 1.0:
        raise errors.InvalidParameterError(f"fraction must be in [0, 1], got {fraction!r}")
    return f


def _check_k(k, h: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= h:
        raise errors.InvalidParameterError(f"k must be an integer in 0..{h}, got {k!r}")
    return int(k)


# ---------------------------------------------------------------------------------------------
# dense and sparse blocks
def pre_activation(x, w1, b1) -> np.ndarray:
    """``z = x @ W1 + b1`` (float32), for x of shape (d,) or (n, d)."""
    w1, b1 = _layer1(w1, b1)
    x2, single = _rows(x, w1.shape[0])
    z = x2 @ w1
    z += b1
    return z[0] if single else z


def ffn(x, w1, b1, w2, b2, activation="gelu") -> np.ndarray:
    """Dense reference ``act(x @ W1 + b1) @ W2 + b2`` in float32, x of shape (d,) or (n, d)."""
    w1, b1, w2, b2 = _weights(w1, b1, w2, b2)
    _, act = _activation(activation)
    x2, single = _rows(x, w1.shape[0])
    z = x2 @ w1
    z += b1
    y = np.asarray(act(z), dtype=np.float32) @ w2
    y += b2
    return y[0] if single else y


def neuron_offsets(x_calib, w1, b1, activation="gelu", fraction: float | None = None,
                   iterations: int = 5) -> np.ndarray:
    """Each neuron's *off value* ``c_i``: what a neuron left out is assumed to output.

    Plain activation sparsity replaces a skipped neuron's ``act(z_i)`` by 0. For GELU that
    is not what a "quiet" neuron outputs: most pre-activations sit in the negative lobe
    (``gelu(z)`` in [-0.17, 0)), and hundreds of skipped neurons' small negative outputs add
    up, through W2, to a large vector. With offsets the sparse block is::

        y = (b2 + c @ W2) + sum_{i in A} (act(z_i) - c_i) W2[i, :]

    (``effective_bias`` is the first term, stored once: no extra cost per input), and the
    neurons worth computing are those with the largest ``|act(z_i) - c_i|``.

    ``fraction=None``: ``c_i`` = the median of ``act(z_i)`` over the calibration rows
    ``x_calib`` (one offset for every sparsity level). ``fraction=f``: starting from the
    median, ``iterations`` rounds of: take each row's top round(f h) neurons by
    ``|act(z) - c|``, set ``c_i`` to the mean of ``act(z_i)`` over the rows where neuron i
    was *not* taken (the value that makes the skipped part zero-mean). Float32 (h,).
    """
    w1, b1 = _layer1(w1, b1)
    _, act = _activation(activation)
    a = np.asarray(act(pre_activation(np.atleast_2d(np.asarray(x_calib)), w1, b1)),
                   dtype=np.float32)
    if a.shape[0] < 1:
        raise errors.InvalidParameterError("x_calib needs at least 1 row")
    return _offsets(a, fraction, iterations)


def _offsets(a: np.ndarray, fraction: float | None, iterations: int) -> np.ndarray:
    """``neuron_offsets`` from the calibration activations a (n, h)."""
    n, h = a.shape
    c = np.median(a, axis=0).astype(np.float64)
    if fraction is not None:
        k = int(round(_check_fraction(fraction) * h))
        rows = np.arange(n)[:, None]
        for _ in range(int(iterations)):
            off = np.ones((n, h), dtype=bool)
            off[rows, _top_k(np.abs(a - c.astype(np.float32)), k)] = False
            cnt = off.sum(axis=0)
            total = np.where(off, a, 0.0).sum(axis=0, dtype=np.float64)
            c = np.where(cnt > 0, total / np.maximum(cnt, 1), c)
    return c.astype(np.float32)


def effective_bias(w2, b2, offset=None) -> np.ndarray:
    """``b2 + offset @ W2`` (float64 sum, rounded once to float32); ``b2`` when no offset."""
    w2 = _matrix(w2, "w2")
    b2 = _vector(b2, w2.shape[1], "b2")
    if offset is None:
        return b2.copy()
    c = _vector(offset, w2.shape[0], "offset").astype(np.float64)
    return (b2.astype(np.float64) + c @ w2.astype(np.float64)).astype(np.float32)


def _active(active, n: int, h: int):
    """Normalise ``active``: ("shared", idx), ("mask", (n, h) bool) or ("rows", idx, valid)."""
    if isinstance(active, (list, tuple)) and len(active) and all(np.ndim(r) == 1 for r in active):
        rows = [np.asarray(r) for r in active]  # a list of per-row index arrays (ragged)
        if len(rows) != n:
            raise errors.DimensionMismatchError(
                f"active has {len(rows)} index lists for {n} input rows")
        if any(r.size and r.dtype.kind not in "iu" for r in rows):
            raise errors.InvalidParameterError("active index lists must hold integers")
        kmax = max(r.size for r in rows)
        a = np.zeros((n, kmax), dtype=np.int64)
        valid = np.zeros((n, kmax), dtype=bool)
        for i, r in enumerate(rows):
            a[i, :r.size] = r
            valid[i, :r.size] = True
    else:
        a = np.asarray(active)
        valid = None
        if a.dtype == bool:
            if a.shape == (h,):
                return ("shared", np.flatnonzero(a))
            if a.shape != (n, h):
                raise errors.DimensionMismatchError(
                    f"an active mask must have shape ({h},) or ({n}, {h}), got {a.shape}")
            return ("mask", a)
        if a.size and a.dtype.kind not in "iu":
            raise errors.InvalidParameterError(
                f"active must be integer indices or a boolean mask, got dtype {a.dtype}")
        a = a.astype(np.int64)
        if a.ndim not in (1, 2):
            raise errors.InvalidParameterError(f"active must be 1-D or 2-D, got {a.ndim}-D")
        if a.ndim == 2 and a.shape[0] != n:
            raise errors.DimensionMismatchError(
                f"active has {a.shape[0]} rows of indices for {n} input rows")
    sel = a if valid is None else a[valid]
    if sel.size and (sel.min() < 0 or sel.max() >= h):
        raise errors.IndexOutOfRangeError(f"active neuron indices must be in 0..{h - 1}")
    # padding slots get distinct negative values, so only real repeats are found
    srt = np.sort(a if valid is None else np.where(valid, a, -1 - np.arange(a.shape[1])), axis=-1)
    if srt.shape[-1] > 1 and (srt[..., 1:] == srt[..., :-1]).any():
        raise errors.InvalidParameterError("active neuron indices must not repeat within a row")
    if a.ndim == 1:
        return ("shared", a)
    return ("rows", a, valid)


def _as_mask(form, n: int, h: int) -> np.ndarray:
    if form[0] == "mask":
        return form[1]
    _, idx, valid = form
    m = np.zeros((n, h), dtype=bool)
    r = np.broadcast_to(np.arange(n)[:, None], idx.shape)
    if valid is None:
        m[r, idx] = True
    else:
        m[r[valid], idx[valid]] = True
    return m


def _as_rows(form) -> tuple[np.ndarray, np.ndarray | None]:
    if form[0] == "rows":
        return form[1], form[2]
    m = form[1]
    counts = m.sum(axis=1)
    kmax = int(counts.max()) if m.shape[0] else 0
    order = np.argsort(~m, axis=1, kind="stable")[:, :kmax]  # the active ones, ascending
    valid = np.arange(kmax) < counts[:, None]
    return np.where(valid, order, 0), valid


def _masked_output(a: np.ndarray, mask: np.ndarray, w2: np.ndarray, bias: np.ndarray,
                   c: np.ndarray | None) -> np.ndarray:
    """``((a - c) * mask) @ W2 + bias`` (float32), a = act(z) for every neuron (n, h)."""
    dev = a - c if c is not None else a.copy()
    dev[~mask] = 0.0
    y = dev @ w2
    y += bias
    return y


_CHUNK_BYTES = 32 << 20  # the gathered weights of one chunk of rows
_GATHER_AUTO = 1 << 16   # method="auto" gathers when rows * active neurons is at most this
METHODS = ("auto", "gather", "masked")


def sparse_ffn(x, w1, b1, w2, b2, activation="gelu", active=None, *, offset=None,
               method: str = "auto") -> np.ndarray:
    """``act(x @ W1[:, A] + b1[A]) @ W2[A, :] + b2`` computing only the neurons A, float32.

    ``active``: one set for every row (1-D integer indices, or an (h,) boolean mask) or one
    per row (an (n, k) integer array, an (n, h) boolean mask, or a list of n 1-D index
    arrays of any lengths). Indices must be in 0..h-1 and distinct within a row; an empty
    set gives ``b2``. ``active=None`` means every neuron (= ``ffn``). ``offset`` (h,): the
    neurons' off values (``neuron_offsets``): then
    ``y = effective_bias(W2, b2, c) + (act(z_A) - c_A) @ W2[A, :]``.

    Per-row sets are computed one of two ways, equal up to float32 summation order:
    ``"gather"`` does what a kernel does, each row gathering its columns of W1, its b1 and
    its rows of W2 (chunks of rows); ``"masked"`` computes z for every neuron with one
    matmul, zeroes ``act(z) - c`` outside each row's set and multiplies by W2 (faster in
    numpy for many rows). ``"auto"``: gather when rows x active neurons <= 65536.
    """
    w1, b1, w2, b2 = _weights(w1, b1, w2, b2)
    _, act = _activation(activation)
    if method not in METHODS:
        raise errors.InvalidParameterError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    x2, single = _rows(x, w1.shape[0])
    n, (d, h), e = x2.shape[0], w1.shape, w2.shape[1]
    c = None if offset is None else _vector(offset, h, "offset")
    bias = effective_bias(w2, b2, c)
    form = _active(np.arange(h) if active is None else active, n, h)

    if form[0] == "shared":
        a_idx = form[1]
        z = x2 @ w1[:, a_idx]
        z += b1[a_idx]
        a = np.asarray(act(z), dtype=np.float32)
        if c is not None:
            a -= c[a_idx]
        y = a @ w2[a_idx]
        y += bias
        return y[0] if single else y

    if method == "auto":
        k = int(form[1].sum(axis=1).max()) if form[0] == "mask" and n else (
            form[1].shape[1] if form[0] == "rows" else 0)
        method = "gather" if n * k <= _GATHER_AUTO else "masked"
    if method == "masked":
        z = x2 @ w1
        z += b1
        y = _masked_output(np.asarray(act(z), dtype=np.float32), _as_mask(form, n, h), w2, bias, c)
        return y[0] if single else y

    idx, valid = _as_rows(form)
    k = idx.shape[1]
    out = np.empty((n, e), dtype=np.float32)
    if k == 0:
        out[:] = bias
        return out[0] if single else out
    w1t = np.ascontiguousarray(w1.T)  # (h, d): neuron i's column of W1 as a row
    chunk = max(1, _CHUNK_BYTES // (4 * k * max(d, e)))
    for s in range(0, n, chunk):
        ii = idx[s:s + chunk]
        z = np.matmul(w1t[ii], x2[s:s + chunk, :, None])[..., 0]  # (c, k)
        z += b1[ii]
        a = np.asarray(act(z), dtype=np.float32)
        if c is not None:
            a -= c[ii]
        if valid is not None:
            a[~valid[s:s + chunk]] = 0.0
        y = np.matmul(a[:, None, :], w2[ii])[:, 0, :]  # (c, e)
        y += bias
        out[s:s + chunk] = y
    return out[0] if single else out


# ---------------------------------------------------------------------------------------------
# top-k helpers
def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's k largest scores' columns, (n, k), in ascending column order."""
    n, h = scores.shape
    if k >= h:
        return np.broadcast_to(np.arange(h), (n, h)).copy()
    if k == 0:
        return np.empty((n, 0), dtype=np.int64)
    idx = np.argpartition(scores, h - k, axis=1)[:, h - k:]
    idx.sort(axis=1)
    return idx.astype(np.int64, copy=False)


def oracle_active(x, w1, b1, activation="gelu", k: int = 0, offset=None) -> np.ndarray:
    """The true top-k neurons of each row by ``importance(z, activation, offset)``, (n, k)
    ascending. Also what a kernel gets that computes z exactly (dense W1) and skips rows of
    W2 (TEAL-style sparsity of the second matmul's input)."""
    w1, b1 = _layer1(w1, b1)
    k = _check_k(k, w1.shape[1])
    z = pre_activation(np.atleast_2d(np.asarray(x)), w1, b1)
    return _top_k(importance(z, activation, offset), k)


def static_active(x_calib, w1, b1, activation="gelu", k: int = 0, offset=None) -> np.ndarray:
    """One fixed set for every input: the k neurons with the largest mean ``|act(z) - c|``
    (c = ``offset``, default 0) over the calibration rows ``x_calib``.

    A 1-D ascending index array, to pass as ``active`` to ``sparse_ffn``. PowerInfer's
    *hot* neurons: the baseline a per-input predictor has to beat.
    """
    w1, b1 = _layer1(w1, b1)
    k = _check_k(k, w1.shape[1])
    _, act = _activation(activation)
    z = pre_activation(np.atleast_2d(np.asarray(x_calib)), w1, b1)
    a = np.asarray(act(z), dtype=np.float64)
    if offset is not None:
        a -= _vector(offset, w1.shape[1], "offset")
    return _top_k(np.abs(a).mean(axis=0)[None, :], k)[0]


# ---------------------------------------------------------------------------------------------
# the predictor
_QUANTILE_LEVELS = 1001  # calibration score quantiles kept, at 0, 0.001, ..., 1


@dataclass
class Predictor:
    """A low-rank predictor of a layer's pre-activations: ``z_hat = (x @ p) @ q + b1``.

    ``p`` (d, r), ``q`` (r, h), ``b1`` (h,) float32; ``activation`` and ``offset`` (None or
    the neurons' off values, (h,)) define the neuron score ``importance(z_hat, activation,
    offset)``; ``quantiles``: the scores of the calibration rows (all rows, all neurons) at
    levels 0, 0.001, .., 1 (for ``threshold_for``). ``calib_error_svd`` / ``calib_error``:
    the relative error ``||Z_hat - Z||_F / ||Z||_F`` on the calibration rows with the SVD
    start / the final factors (equal when ``refined`` is False); ``ridge``, ``calib_rows``:
    how it was fitted.
    """

    p: np.ndarray
    q: np.ndarray
    b1: np.ndarray
    activation: str = "gelu"
    offset: np.ndarray | None = None
    quantiles: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    calib_error_svd: float = float("nan")
    calib_error: float = float("nan")
    refined: bool = False
    ridge: float = 0.0
    calib_rows: int = 0

    @property
    def rank(self) -> int:
        return int(self.p.shape[1])

    @property
    def dim(self) -> int:
        return int(self.p.shape[0])

    @property
    def hidden(self) -> int:
        return int(self.q.shape[1])

    @property
    def cost(self) -> int:
        """Multiply-adds per input vector: ``d r + r h`` (the dense block costs ``2 d h``)."""
        return self.dim * self.rank + self.rank * self.hidden

    def predict(self, x) -> np.ndarray:
        """Predicted pre-activations ``(x @ p) @ q + b1`` (float32), x (d,) or (n, d)."""
        x2, single = _rows(x, self.dim)
        z = (x2 @ self.p) @ self.q
        z += self.b1
        return z[0] if single else z

    def scores(self, x) -> np.ndarray:
        """``importance`` of the predicted pre-activations: (n, h), or (h,) for one vector."""
        return importance(self.predict(x), self.activation, self.offset)

    def calibrate(self, x_calib) -> "Predictor":
        """Recompute ``quantiles`` from the scores of ``x_calib`` (in place); returns self."""
        sc = self.scores(np.atleast_2d(np.asarray(x_calib)))
        self.quantiles = np.quantile(sc, np.linspace(0.0, 1.0, _QUANTILE_LEVELS)).astype(np.float32)
        return self

    def with_offset(self, offset, x_calib) -> "Predictor":
        """A copy scoring by ``|act(z_hat) - offset|`` (None: back to ``|act(z_hat)|``),
        its quantiles recomputed on ``x_calib``."""
        off = None if offset is None else _vector(offset, self.hidden, "offset").copy()
        return dataclasses.replace(self, offset=off).calibrate(x_calib)

    def threshold_for(self, fraction: float) -> float:
        """The global score threshold above which a ``fraction`` of the calibration
        (row, neuron) pairs lie: the (1 - fraction) quantile of the calibration scores
        (linear interpolation between the stored quantiles)."""
        f = _check_fraction(fraction)
        if self.quantiles.size < 2:
            raise errors.InvalidParameterError("this predictor has no calibration quantiles")
        levels = np.linspace(0.0, 1.0, self.quantiles.size)
        return float(np.interp(1.0 - f, levels, self.quantiles.astype(np.float64)))

    def select(self, x, k: int | None = None, fraction: float | None = None,
               threshold: float | None = None) -> np.ndarray:
        """The neurons to compute for each input row; give exactly one of the three.

        ``k`` or ``fraction`` (k = round(fraction h)): each row's k best-scored neurons, an
        (n, k) integer array in ascending neuron order (ties broken arbitrarily).
        ``threshold``: the (n, h) boolean mask ``score > threshold`` (a variable number per
        row; see ``threshold_for``). One vector x (d,) gives (k,) / (h,).
        """
        if sum(v is not None for v in (k, fraction, threshold)) != 1:
            raise errors.InvalidParameterError("give exactly one of k, fraction, threshold")
        s = self.scores(np.atleast_2d(np.asarray(x)))
        single = np.ndim(x) == 1
        if threshold is not None:
            out = s > np.float32(threshold)
        else:
            if fraction is not None:
                k = int(round(_check_fraction(fraction) * self.hidden))
            out = _top_k(s, _check_k(k, self.hidden))
        return out[0] if single else out

    def to_dict(self) -> dict:
        """JSON-ready description (arrays as nested lists of float32 values)."""
        return {"p": self.p.tolist(), "q": self.q.tolist(), "b1": self.b1.tolist(),
                "activation": self.activation,
                "offset": None if self.offset is None else self.offset.tolist(),
                "quantiles": self.quantiles.tolist(),
                "calib_error_svd": self.calib_error_svd, "calib_error": self.calib_error,
                "refined": self.refined, "ridge": self.ridge, "calib_rows": self.calib_rows}

    @classmethod
    def from_dict(cls, obj) -> "Predictor":
        """The predictor ``to_dict`` described (also accepts its ``json.dumps``)."""
        if isinstance(obj, (str, bytes)):
            obj = json.loads(obj)

        def f32(v):
            return np.ascontiguousarray(np.asarray(v, dtype=np.float32))

        return cls(p=f32(obj["p"]), q=f32(obj["q"]), b1=f32(obj["b1"]),
                   activation=obj.get("activation", "gelu"),
                   offset=None if obj.get("offset") is None else f32(obj["offset"]),
                   quantiles=f32(obj.get("quantiles", [])),
                   calib_error_svd=float(obj.get("calib_error_svd", float("nan"))),
                   calib_error=float(obj.get("calib_error", float("nan"))),
                   refined=bool(obj.get("refined", False)), ridge=float(obj.get("ridge", 0.0)),
                   calib_rows=int(obj.get("calib_rows", 0)))


def _calib(x, d: int) -> np.ndarray:
    a, _ = _rows(x, d, "x_calib")
    if a.shape[0] < 1:
        raise errors.InvalidParameterError("x_calib needs at least 1 row")
    if not np.isfinite(a).all():
        raise errors.NonFiniteError("NaN or infinity not allowed in x_calib")
    return a


def _relative_error(e: np.ndarray, g: np.ndarray, denom2: float) -> float:
    """sqrt(trace(E^T G E) / denom2): ``||X E||_F / ||Z||_F`` given G = X^T X."""
    num = float(np.einsum("ij,ij->", e, g @ e))
    return math.sqrt(max(num, 0.0) / denom2) if denom2 > 0 else 0.0


def fit_predictors(w1, b1, x_calib, ranks: Sequence[int], refine: bool = True, *,
                   activation="gelu", ridge: float = 1e-3, offset=None,
                   calibrate: bool = True) -> dict[int, Predictor]:
    """``fit_predictor`` for several ranks at once (the two SVDs are shared): {rank: Predictor}.

    ``calibrate=False`` skips the score quantiles (no ``threshold_for``; faster)."""
    w1, b1 = _layer1(w1, b1)
    d, h = w1.shape
    ranks = [ranks] if isinstance(ranks, (int, np.integer)) else list(ranks)
    for r in ranks:
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 1 <= r <= min(d, h):
            raise errors.InvalidParameterError(f"rank must be an integer in 1..{min(d, h)}, got {r!r}")
    if isinstance(ridge, bool) or not (isinstance(ridge, (int, float, np.number))
                                       and np.isfinite(ridge) and ridge >= 0):
        raise errors.InvalidParameterError(f"ridge must be a non-negative number, got {ridge!r}")
    name, _ = _activation(activation)
    off = None if offset is None else _vector(offset, h, "offset").copy()
    x32 = _calib(x_calib, d)
    x = x32.astype(np.float64)
    w = w1.astype(np.float64)
    bias = b1.astype(np.float64)

    g = x.T @ x
    s = x.sum(axis=0)
    # ||Z||_F^2 with Z = X W + 1 b^T
    denom2 = float(np.einsum("ij,ij->", w, g @ w) + 2.0 * (s @ w) @ bias
                   + x.shape[0] * bias @ bias)
    u, sv, vt = np.linalg.svd(w, full_matrices=False)
    if refine:
        lam = float(ridge) * float(np.trace(g)) / d
        ev, vec = np.linalg.eigh(g + lam * np.eye(d))
        ev = np.maximum(ev, ev.max() * 1e-15)  # lam = 0 with rank-deficient X
        root = (vec * np.sqrt(ev)) @ vec.T
        inv_root = (vec / np.sqrt(ev)) @ vec.T
        um, sm, vmt = np.linalg.svd(root @ w, full_matrices=False)
    out = {}
    for r in ranks:
        r = int(r)
        p, q = u[:, :r] * sv[:r], vt[:r]
        err_svd = _relative_error(w - p @ q, g, denom2)
        err = err_svd
        if refine:
            p2, q2 = inv_root @ (um[:, :r] * sm[:r]), vmt[:r]
            err2 = _relative_error(w - p2 @ q2, g, denom2)
            if err2 <= err_svd:  # always, up to rounding (module docstring)
                p, q, err = p2, q2, err2
        pred = Predictor(p=np.ascontiguousarray(p, dtype=np.float32),
                         q=np.ascontiguousarray(q, dtype=np.float32), b1=b1.copy(),
                         activation=name, offset=off, calib_error_svd=err_svd, calib_error=err,
                         refined=bool(refine), ridge=float(ridge) if refine else 0.0,
                         calib_rows=int(x.shape[0]))
        out[r] = pred.calibrate(x32) if calibrate else pred
    return out


def fit_predictor(w1, b1, x_calib, rank: int, refine: bool = True, *, activation="gelu",
                  ridge: float = 1e-3, offset=None) -> Predictor:
    """Fit a rank-``rank`` predictor of ``z = x @ W1 + b1`` on calibration inputs ``x_calib``.

    Starts from the truncated SVD of W1 (``P = U_r S_r``, ``Q = V_r^T``); with ``refine``
    replaces it by the minimiser of ``||X (W1 - P Q)||_F^2 + lam ||W1 - P Q||_F^2``,
    ``lam = ridge * trace(X^T X) / d`` (closed form: module docstring), which never has a
    larger calibration error. All in float64, stored as float32. ``activation`` and
    ``offset`` define the neuron score (``importance``) whose calibration quantiles the
    predictor keeps for ``threshold_for``.
    """
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise errors.InvalidParameterError(f"rank must be an integer, got {rank!r}")
    return fit_predictors(w1, b1, x_calib, [rank], refine, activation=activation, ridge=ridge,
                          offset=offset)[int(rank)]


# ---------------------------------------------------------------------------------------------
# analysis
def sparsity_profile(x, w1, b1, activation="gelu", levels: Sequence[float] = (0.9, 0.99),
                     fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7), offset=None) -> dict:
    """How concentrated each input's activation mass ``sum_i |act(z_i) - c_i|`` is (c =
    ``offset``, default 0: the plain ``sum |act(z_i)|``).

    For each level (0.9, 0.99): the number of neurons (largest first) needed to reach that
    share of the row's mass, its ``mean`` and ``median`` over rows and ``mean_fraction``
    (mean / h). For each fraction: ``kept_mass``, the mean share of the mass the row's top
    round(fraction h) neurons carry. Keys are "90%", "99%", "30%", ...
    """
    w1, b1 = _layer1(w1, b1)
    _, act = _activation(activation)
    z = pre_activation(np.atleast_2d(np.asarray(x)), w1, b1)
    a = np.asarray(act(z), dtype=np.float32)
    if offset is not None:
        a = a - _vector(offset, w1.shape[1], "offset")
    return _profile(np.abs(a), levels, fractions)


def _profile(a: np.ndarray, levels: Sequence[float], fractions: Sequence[float]) -> dict:
    """``sparsity_profile`` of the magnitudes a (n, h)."""
    n, h = a.shape
    c = np.cumsum(-np.sort(-a, axis=1), axis=1, dtype=np.float64)
    tot = c[:, -1:]
    out = {"rows": int(n), "h": int(h), "mass": {}, "kept_mass": {}}
    for lv in levels:
        need = np.minimum((c < float(lv) * tot).sum(axis=1) + 1, h)
        out["mass"][f"{100 * lv:g}%"] = {"mean": float(need.mean()),
                                         "median": float(np.median(need)),
                                         "mean_fraction": float(need.mean() / h)}
    for f in fractions:
        k = int(round(_check_fraction(f) * h))
        kept = c[:, k - 1] / np.maximum(tot[:, 0], 1e-300) if k else np.zeros(n)
        out["kept_mass"][f"{100 * f:g}%"] = float(kept.mean())
    return out


def _recall(true_idx: np.ndarray, got_idx: np.ndarray, h: int) -> float:
    n, k = true_idx.shape
    if k == 0 or n == 0:
        return 1.0
    mark = np.zeros((n, h), dtype=bool)
    rows = np.arange(n)[:, None]
    mark[rows, true_idx] = True
    return float(mark[rows, got_idx].sum(axis=1).mean() / k)


def predictor_recall(pred: Predictor, x, w1, b1, activation=None, k: int = 0) -> float:
    """Mean over rows of the fraction of the true top-k that the predictor's top-k
    contains; the truth is ``oracle_active`` with the predictor's score (``|act(z)|``, or
    ``|act(z) - offset|`` for a predictor with offsets). A random choice scores k / h.
    ``activation`` defaults to the predictor's."""
    activation = pred.activation if activation is None else activation
    x2 = np.atleast_2d(np.asarray(x))
    true = oracle_active(x2, w1, b1, activation, k, pred.offset)
    return _recall(true, pred.select(x2, k=k), pred.hidden)


def output_error(x, w1, b1, w2, b2, activation="gelu", active=None, *, offset=None,
                 method: str = "auto") -> float:
    """Mean over rows of ``||sparse_ffn - ffn|| / ||ffn||`` (relative L2 error of the output)."""
    x2 = np.atleast_2d(np.asarray(x))
    dense = ffn(x2, w1, b1, w2, b2, activation).astype(np.float64)
    sparse = sparse_ffn(x2, w1, b1, w2, b2, activation, active, offset=offset,
                        method=method).astype(np.float64)
    num = np.linalg.norm(sparse - dense, axis=1)
    return float((num / np.maximum(np.linalg.norm(dense, axis=1), 1e-30)).mean())


def analyze_layer(w1, b1, w2, b2, activation, x_train, x_test, *,
                  ranks: Sequence[int] = (16, 32, 64),
                  fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7),
                  recall_fraction: float = 0.3, error_ranks: Sequence[int] | None = None,
                  offsets: bool = True) -> dict:
    """Every number needed to choose a sparse FFN kernel, for one layer.

    Offsets and predictors are fitted on ``x_train``; everything is measured on ``x_test``.

    * ``profile``: ``sparsity_profile`` (and ``profile_offset``, with the median offsets).
    * ``recall_k`` = round(recall_fraction h), ``recall_random`` (k / h), ``recall_static``
      (the fixed hot set's recall of the true top-k |act|).
    * ``predictors[r]``: ``cost`` (multiply-adds) and ``cost_fraction`` (of the dense
      ``2 d h``), ``calib_error_svd`` / ``calib_error`` (train), ``test_error`` (relative
      error of z_hat on the test rows), ``recall`` and ``recall_svd`` (the refined and the
      plain-SVD predictor's recall of the true top-k |act|), ``recall_offset`` (both truth
      and prediction scored by |act - c|, median offsets).
    * ``output_error[f]`` (keys "10%", ...): mean relative output error with k = round(f h)
      neurons of ``oracle`` (true top-k |act|), ``static`` (fixed hot set) and ``rank{r}``
      (predictor top-k), for r in ``error_ranks`` (default: ``ranks``); ``rank{r}_threshold``
      (global calibration threshold for f) with ``rank{r}_threshold_fraction``, the mean
      active fraction it gives on the test rows. With ``offsets`` the same again with the
      median off values (suffix ``_median``: ``oracle_median``, ``static_median``,
      ``rank{r}_median``, ``rank{r}_median_threshold``...) and ``oracle_cond`` (the
      off values ``neuron_offsets(fraction=f)``).
    """
    w1, b1, w2, b2 = _weights(w1, b1, w2, b2)
    name, act = _activation(activation)
    x_train, _ = _rows(np.atleast_2d(np.asarray(x_train)), w1.shape[0], "x_train")
    x_test, _ = _rows(np.atleast_2d(np.asarray(x_test)), w1.shape[0], "x_test")
    d, h = w1.shape
    n = x_test.shape[0]
    error_ranks = tuple(ranks if error_ranks is None else error_ranks)
    # every activation computed once; the helpers below work from these
    a_train = np.asarray(act(pre_activation(x_train, w1, b1)), dtype=np.float32)
    z_test = pre_activation(x_test, w1, b1)
    a_test = np.asarray(act(z_test), dtype=np.float32)
    y_test = (a_test @ w2 + b2).astype(np.float64)  # = ffn(x_test, ...)
    y_norm = np.maximum(np.linalg.norm(y_test, axis=1), 1e-30)
    median = _offsets(a_train, None, 0) if offsets else None

    def score(a, z, c):  # importance() from known activations
        if c is None and name in _SIGNED_SCORE:
            return z
        return np.abs(a - c) if c is not None else np.abs(a)

    def mask_of(idx):
        return _as_mask(("rows", np.broadcast_to(idx, (n, idx.shape[-1])), None), n, h)

    def static(k, c):
        a = a_train if c is None else a_train - c
        return _top_k(np.abs(a).mean(axis=0, dtype=np.float64)[None, :], k)[0]

    def err(mask, c=None):
        y = _masked_output(a_test, mask, w2, effective_bias(w2, b2, c), c).astype(np.float64)
        return float((np.linalg.norm(y - y_test, axis=1) / y_norm).mean())

    out: dict = {"h": int(h), "d": int(d), "train_rows": int(x_train.shape[0]),
                 "test_rows": int(n), "profile": _profile(np.abs(a_test), (0.9, 0.99), fractions)}
    if offsets:
        out["profile_offset"] = _profile(np.abs(a_test - median), (0.9, 0.99), fractions)
    k_rec = int(round(_check_fraction(recall_fraction) * h))
    true_rec = _top_k(score(a_test, z_test, None), k_rec)
    out["recall_k"] = k_rec
    out["recall_random"] = k_rec / h
    out["recall_static"] = _recall(true_rec, np.broadcast_to(static(k_rec, None), true_rec.shape), h)

    refined = fit_predictors(w1, b1, x_train, ranks, activation=activation)
    plain = fit_predictors(w1, b1, x_train, ranks, refine=False, activation=activation,
                           calibrate=False)
    with_off = {r: p.with_offset(median, x_train) for r, p in refined.items()} if offsets else {}
    scores = {}  # (rank, offset?) -> test scores
    out["predictors"] = {}
    z64 = z_test.astype(np.float64)
    for r in ranks:
        pr = refined[r]
        zt = pr.predict(x_test)
        scores[r, False] = score(np.asarray(act(zt), dtype=np.float32), zt, None)
        row = {"cost": pr.cost, "cost_fraction": pr.cost / (2 * d * h),
               "calib_error_svd": pr.calib_error_svd, "calib_error": pr.calib_error,
               "test_error": float(np.linalg.norm(zt - z64) / np.linalg.norm(z64)),
               "recall": _recall(true_rec, _top_k(scores[r, False], k_rec), h),
               "recall_svd": _recall(true_rec, plain[r].select(x_test, k=k_rec), h)}
        if offsets:
            scores[r, True] = with_off[r].scores(x_test)
            row["recall_offset"] = _recall(_top_k(score(a_test, z_test, median), k_rec),
                                           _top_k(scores[r, True], k_rec), h)
        out["predictors"][int(r)] = row

    out["output_error"] = {}
    for f in fractions:
        k = int(round(_check_fraction(f) * h))
        row = {"oracle": err(mask_of(_top_k(score(a_test, z_test, None), k))),
               "static": err(mask_of(static(k, None)))}
        if offsets:
            cond = _offsets(a_train, f, 5)
            row["oracle_median"] = err(mask_of(_top_k(score(a_test, z_test, median), k)), median)
            row["oracle_cond"] = err(mask_of(_top_k(score(a_test, z_test, cond), k)), cond)
            row["static_median"] = err(mask_of(static(k, median)), median)
        for r in error_ranks:
            variants = [("", refined[r], False, None)]
            if offsets:
                variants.append(("_median", with_off[r], True, median))
            for suffix, pr, key, c in variants:
                sc = scores[r, key]
                row[f"rank{r}{suffix}"] = err(mask_of(_top_k(sc, k)), c)
                m = sc > np.float32(pr.threshold_for(f))
                row[f"rank{r}{suffix}_threshold"] = err(m, c)
                row[f"rank{r}{suffix}_threshold_fraction"] = float(m.mean())
        out["output_error"][f"{100 * f:g}%"] = row
    return out


# ---------------------------------------------------------------------------------------------
# real model weights and inputs
class FFNWeights(NamedTuple):
    """One layer's FFN: ``ffn(x, *weights)`` computes it."""

    w1: np.ndarray  # (d, h)
    b1: np.ndarray  # (h,)
    w2: np.ndarray  # (h, e)
    b2: np.ndarray  # (e,)
    activation: str


_FFN_IN = re.compile(r"^(.*/layer\.(\d+))/intermediate/dense/MatMul$")
_ACT_OPS = (("Erf", "gelu"), ("Tanh", "gelu_tanh"), ("Sigmoid", "silu"), ("Relu", "relu"))


def _load_model(model_path):
    from . import onnx_weights

    if model_path is None:
        from .embed import default_model_path

        model_path = default_model_path()
    return Path(model_path), onnx_weights.load_model(model_path)


def _ffn_nodes(model) -> dict[int, dict]:
    """Per layer: the module prefix, FFN input tensor, output MatMul tensor, activation."""
    nodes = {n.name: n for n in model.graph.node}
    layers: dict[int, dict] = {}
    for name, node in nodes.items():
        m = _FFN_IN.match(name)
        if not m or node.op_type != "MatMul":
            continue
        prefix, layer = m.group(1), int(m.group(2))
        out_mm = nodes.get(f"{prefix}/output/dense/MatMul")
        if out_mm is None:
            raise errors.InvalidParameterError(f"{prefix}: no {prefix}/output/dense/MatMul node")
        ops = {n.op_type for n in model.graph.node
               if n.name.startswith(f"{prefix}/intermediate/") and n.name != name}
        acts = [a for op, a in _ACT_OPS if op in ops]
        for n in model.graph.node:  # a fused Gelu op (opset 20 / com.microsoft)
            if n.name.startswith(f"{prefix}/intermediate/") and n.op_type in ("Gelu", "FastGelu"):
                tanh = n.op_type == "FastGelu" or any(
                    a.name == "approximate" and a.s == b"tanh" for a in n.attribute)
                acts.append("gelu_tanh" if tanh else "gelu")
        if not acts:
            raise errors.InvalidParameterError(
                f"{prefix}: cannot tell the activation from the ops {sorted(ops)}")
        layers[layer] = {"prefix": prefix, "x": node.input[0], "w1": node.input[1],
                         "mm2": out_mm.output[0], "w2": out_mm.input[1], "activation": acts[0]}
    if not layers:
        raise errors.InvalidParameterError(
            "no BERT-like feed-forward block (.../layer.N/intermediate/dense/MatMul) in the model")
    return dict(sorted(layers.items()))


def _ffn_weights(model, layers: dict[int, dict]) -> dict[int, FFNWeights]:
    from . import onnx_weights

    names = onnx_weights.readable_names(model)
    by_readable = {v: k for k, v in names.items()}
    out = {}
    for layer, info in layers.items():
        w1 = onnx_weights.tensor(model, info["w1"])
        w2 = onnx_weights.tensor(model, info["w2"])
        stem = names[info["w1"]].rsplit(".weight", 1)[0]  # ...layer.L.intermediate.dense
        b1 = onnx_weights.tensor(model, by_readable[f"{stem}.bias"])
        stem2 = names[info["w2"]].rsplit(".weight", 1)[0]  # ...layer.L.output.dense
        b2 = onnx_weights.tensor(model, by_readable[f"{stem2}.bias"])
        out[layer] = FFNWeights(w1.astype(np.float32), b1.astype(np.float32),
                                w2.astype(np.float32), b2.astype(np.float32), info["activation"])
    return out


def load_ffn(model_path=None) -> dict[int, FFNWeights]:
    """Every layer's FFN weights and activation from a BERT-like ONNX model (default: the
    installed paraphrase-MiniLM-L3-v2). The activation comes from the graph's ops between the
    two MatMuls (``Erf``: exact GELU)."""
    _, model = _load_model(model_path)
    return _ffn_weights(model, _ffn_nodes(model))


def capture_ffn_io(texts, model_path=None, *, threads: int | None = None,
                   return_weights: bool = False):
    """Run the model on ``texts`` and return ``{layer: (x, y)}``: each layer's FFN input x
    (the input of ``.../intermediate/dense/MatMul``) and output y (the output of
    ``.../output/dense/MatMul`` plus the output bias), float32 (tokens, d) / (tokens, e), one
    row per real token (padding dropped), texts in order, tokens in order within a text.

    Tokenized and fed as ``bitpress.embed.Embedder`` does (its tokenizer, 128-token
    truncation, batches padded to their longest text, sorted by length). With
    ``return_weights`` also returns ``load_ffn``'s dict: ``(captures, weights)``.
    """
    import onnx
    import onnxruntime as ort

    from .embed import Embedder

    path, model = _load_model(model_path)
    layers = _ffn_nodes(model)
    weights = _ffn_weights(model, layers)
    emb = Embedder(path if model_path is not None else None, threads=threads)
    wanted = []
    for info in layers.values():
        wanted += [info["x"], info["mm2"]]
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                              for name in wanted if name not in have)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    # no busy-waiting threads left behind to slow down the numpy work that follows
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}

    texts = [texts] if isinstance(texts, str) else list(texts)
    ids_list = [e.ids for e in emb.tokenizer.encode_batch(texts)] if texts else []
    per_text: list[list[np.ndarray] | None] = [None] * len(texts)
    order = np.argsort([len(ids) for ids in ids_list], kind="stable")
    for start in range(0, len(texts), emb.batch_size):
        rows = order[start:start + emb.batch_size]
        lengths = np.array([len(ids_list[r]) for r in rows], dtype=np.int64)
        ids = np.zeros((len(rows), int(lengths.max())), dtype=np.int64)  # [PAD] = 0
        for row, r in zip(ids, rows):
            row[:len(ids_list[r])] = ids_list[r]
        mask = (np.arange(ids.shape[1]) < lengths[:, None]).astype(np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        outs = session.run(wanted, feed)
        for j, r in enumerate(rows):
            per_text[r] = [o[j, :lengths[j]] for o in outs]
    captures = {}
    for i, (layer, w) in enumerate(weights.items()):
        d, e = w.w1.shape[0], w.w2.shape[1]
        x = np.concatenate([t[2 * i] for t in per_text]) if texts else np.zeros((0, d))
        y = np.concatenate([t[2 * i + 1] for t in per_text]) if texts else np.zeros((0, e))
        y = np.ascontiguousarray(y, dtype=np.float32) + w.b2
        captures[layer] = (np.ascontiguousarray(x, dtype=np.float32), y)
    return (captures, weights) if return_weights else captures


def shared_data_dir() -> Path:
    """``$BITPRESS_SHARED_DATA``, or ``shared/data`` next to the repository."""
    return Path(os.environ.get("BITPRESS_SHARED_DATA", ROOT.parent / "shared" / "data"))


def load_texts(start: int = 0, stop: int | None = None, path=None) -> list[str]:
    """The ``text`` of lines start..stop-1 of a JSON-lines file (default: the shared
    ``pypi-minilm/corpus.jsonl``, one-line PyPI package summaries)."""
    path = Path(path) if path is not None else shared_data_dir() / "pypi-minilm" / "corpus.jsonl"
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if stop is not None and i >= stop:
                break
            if i >= start:
                out.append(json.loads(line)["text"])
    return out
