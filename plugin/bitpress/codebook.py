"""What a codebook is: the fitted map from a float vector to a bit code, and its binary form.

A codebook turns a vector ``x`` of ``dims`` floats into ``bits`` bits in three steps:

1. ``z = x - center`` (``center`` may be absent: zero);
2. ``z = projection @ z`` when there is a projection (``components x dims``, e.g. PCA or the
   ITQ rotation); otherwise ``z`` keeps all ``dims`` components;
3. bit ``b`` is 1 when ``z[src_a[b]] > thr_a[b]``, or, for a *pair* bit (``src_b[b] >= 0``),
   when ``z[src_a[b]] > thr_a[b]`` or ``z[src_b[b]] > thr_b[b]`` (so it is 0 only when both
   components are at or below their cut points).

Every method is one of these: ``sign``/``mean``/``median`` are one threshold per component,
Matryoshka truncation uses only the first k components, the 2-bit thermometer code has two
bits per component (two cut points), ``hybrid`` adds pair bits, ``pca``/``itq`` project.

Optional reconstruction levels (``base[components]``, ``delta[bits]``) give the asymmetric
score: ``z_hat[j] = base[j] + sum(delta[b] * bit_b for bits b with src_a[b] == j)``, and
``x_hat = center + projection.T @ z_hat``, so ``q . x_hat`` is linear in the bits.

A *RaBitQ* codebook (``method="rabitq"``, ``rabitq=(bits_per_dim, metric, seed)``) is the
estimator of the ``bitpress_ivf`` index with one list: ``center`` is the rotated centroid,
a vector (normalized first for cosine) is rotated by the seed's orthogonal matrix and coded as
``bits_per_dim`` bit planes of its residual to the center, followed by five float32 correction
factors; its asymmetric score is the index's estimate (``pyext/bp_ivf.c``): the estimated
cosine, inner product or minus squared distance. It has no thresholds (``src_a`` is empty).

``to_bytes()`` is the form stored in ``bitpress.codebooks.params`` and read by the C core
(``pyext/bp_codebook.c``), identical in PostgreSQL and DuckDB. ``encode_reference`` is the
plain numpy statement of the rules above; the C core must match it bit for bit (tested).
"""
from __future__ import annotations

import dataclasses
import struct

import numpy as np

from . import errors, ivf

MAGIC = b"BPCB"
FORMAT = 1
F_CENTER, F_PROJECTION, F_PAIRS, F_RECON, F_RABITQ = 1, 2, 4, 8, 16
_HEADER = struct.Struct("<4sHHIIII")


@dataclasses.dataclass
class Codebook:
    method: str
    dims: int
    src_a: np.ndarray                      # int32[bits]: component tested by each bit
    thr_a: np.ndarray                      # float32[bits]: its cut point
    src_b: np.ndarray | None = None        # int32[bits]: second component of pair bits, -1 if none
    thr_b: np.ndarray | None = None        # float32[bits]
    center: np.ndarray | None = None       # float32[dims]
    projection: np.ndarray | None = None   # float32[components, dims]
    base: np.ndarray | None = None         # float32[components]: reconstruction with all bits 0
    delta: np.ndarray | None = None        # float32[bits]: what each 1 bit adds to its component
    options: dict = dataclasses.field(default_factory=dict)  # how it was fitted (JSON)
    rabitq: tuple | None = None            # (bits per dimension, metric id, seed): a RaBitQ codebook

    def __post_init__(self):
        f32 = lambda a: None if a is None else np.ascontiguousarray(a, dtype=np.float32)
        i32 = lambda a: None if a is None else np.ascontiguousarray(a, dtype=np.int32)
        self.src_a, self.thr_a = i32(self.src_a), f32(self.thr_a)
        self.src_b, self.thr_b = i32(self.src_b), f32(self.thr_b)
        self.center, self.projection = f32(self.center), f32(self.projection)
        self.base, self.delta = f32(self.base), f32(self.delta)
        self.dims = int(self.dims)
        if self.rabitq is not None:
            self.rabitq = tuple(int(v) for v in self.rabitq)
        self.validate()

    @property
    def bits(self) -> int:
        if self.rabitq is not None:
            # bit planes of 64-bit words, then the float32 factors
            return 8 * (ivf.code_bytes(self.dims, self.rabitq[0]) + 4 * ivf.FACTORS)
        return int(self.src_a.shape[0])

    @property
    def components(self) -> int:
        return self.dims if self.projection is None else int(self.projection.shape[0])

    @property
    def code_bytes(self) -> int:
        return (self.bits + 7) // 8

    @property
    def has_pairs(self) -> bool:
        return self.src_b is not None and bool((self.src_b >= 0).any())

    @property
    def asymmetric(self) -> bool:
        """Whether ``score()`` can rank codes against a float query (needs levels, no pairs)."""
        return self.rabitq is not None or (self.base is not None and not self.has_pairs)

    def validate(self):
        def bad(msg):
            raise errors.MalformedCodebookError(f"malformed codebook: {msg}")
        if self.rabitq is not None:
            if len(self.rabitq) != 3 or not 1 <= self.rabitq[0] <= ivf.MAX_BITS or self.rabitq[1] not in ivf.METRICS.values() \
                    or not 0 <= self.rabitq[2] < 2 ** 64:
                bad("rabitq must be (bits per dimension 1-4, metric 0-2, seed below 2**64)")
            if self.center is None or self.center.shape != (self.dims,) or not np.isfinite(self.center).all():
                bad("a RaBitQ codebook needs a finite center of one value per dimension")
            if self.src_a.shape != (0,) or any(a is not None for a in (self.src_b, self.projection, self.base, self.delta)):
                bad("a RaBitQ codebook has only its center")
            if self.dims < 1:
                bad("it needs at least 1 dimension")
            return
        b, m = self.bits, self.components
        if self.dims < 1 or b < 1:
            bad("it needs at least 1 dimension and 1 bit")
        if self.thr_a.shape != (b,):
            bad("thr_a must have one value per bit")
        if (self.src_b is None) != (self.thr_b is None):
            bad("src_b and thr_b come together")
        if self.src_b is not None and (self.src_b.shape != (b,) or self.thr_b.shape != (b,)):
            bad("src_b and thr_b must have one value per bit")
        if self.center is not None and self.center.shape != (self.dims,):
            bad("center must have one value per dimension")
        if self.projection is not None and (self.projection.ndim != 2 or self.projection.shape[1] != self.dims):
            bad("projection must be components x dims")
        if (self.base is None) != (self.delta is None):
            bad("base and delta come together")
        if self.base is not None and (self.base.shape != (m,) or self.delta.shape != (b,)):
            bad("base needs one value per component and delta one per bit")
        if ((self.src_a < 0) | (self.src_a >= m)).any():
            bad("src_a names a component that does not exist")
        if self.src_b is not None and ((self.src_b < -1) | (self.src_b >= m)).any():
            bad("src_b names a component that does not exist")
        for name in ("thr_a", "thr_b", "center", "projection", "base", "delta"):
            a = getattr(self, name)
            if a is not None and not np.isfinite(a).all():
                bad(f"{name} holds NaN or infinity")

    # ---- the stored form ----
    def to_bytes(self) -> bytes:
        if self.rabitq is not None:
            per_dim, metric, seed = self.rabitq
            return b"".join([_HEADER.pack(MAGIC, FORMAT, F_RABITQ | F_CENTER, self.dims, self.dims, self.bits, 0),
                             self.center.astype("<f4").tobytes(),
                             struct.pack("<iiII", per_dim, metric, seed & 0xFFFFFFFF, seed >> 32)])
        flags = ((F_CENTER if self.center is not None else 0)
                 | (F_PROJECTION if self.projection is not None else 0)
                 | (F_PAIRS if self.src_b is not None else 0)
                 | (F_RECON if self.base is not None else 0))
        parts = [_HEADER.pack(MAGIC, FORMAT, flags, self.dims, self.components, self.bits, 0)]
        for a in (self.center, self.projection, self.src_a, self.thr_a, self.src_b, self.thr_b,
                  self.base, self.delta):
            if a is not None:
                parts.append(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, blob: bytes, method: str = "", options: dict | None = None) -> "Codebook":
        blob = bytes(blob)
        if len(blob) < _HEADER.size:
            raise errors.MalformedCodebookError("malformed codebook: shorter than its header")
        magic, fmt, flags, dims, m, b, _ = _HEADER.unpack_from(blob)
        if magic != MAGIC or fmt != FORMAT:
            raise errors.MalformedCodebookError("malformed codebook: not a bitpress codebook (format 1)")
        pos = _HEADER.size
        if flags & F_RABITQ:
            if flags != F_RABITQ | F_CENTER or m != dims or len(blob) != pos + 4 * dims + 16:
                raise errors.MalformedCodebookError("malformed codebook: not a RaBitQ codebook's layout")
            center = np.frombuffer(blob, "<f4", dims, pos).astype(np.float32)
            per_dim, metric, lo, hi = struct.unpack_from("<iiII", blob, pos + 4 * dims)
            cb = cls(method or "rabitq", dims, np.empty(0, np.int32), np.empty(0, np.float32), center=center,
                     options=dict(options or {}), rabitq=(per_dim, metric, lo | (hi << 32)))
            if cb.bits != b:
                raise errors.MalformedCodebookError("malformed codebook: its bits do not match its shape")
            return cb

        def take(dtype, count):
            nonlocal pos
            n = count * 4
            if pos + n > len(blob):
                raise errors.MalformedCodebookError("malformed codebook: truncated")
            a = np.frombuffer(blob, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=pos)
            pos += n
            return a.astype(dtype)
        center = take(np.float32, dims) if flags & F_CENTER else None
        projection = take(np.float32, m * dims).reshape(m, dims) if flags & F_PROJECTION else None
        src_a, thr_a = take(np.int32, b), take(np.float32, b)
        src_b = take(np.int32, b) if flags & F_PAIRS else None
        thr_b = take(np.float32, b) if flags & F_PAIRS else None
        base = take(np.float32, m) if flags & F_RECON else None
        delta = take(np.float32, b) if flags & F_RECON else None
        if pos != len(blob):
            raise errors.MalformedCodebookError("malformed codebook: trailing bytes")
        return cls(method, dims, src_a, thr_a, src_b, thr_b, center, projection, base, delta,
                   dict(options or {}))

    # ---- reference semantics (numpy); the C core is tested against these ----
    def transform_reference(self, x) -> np.ndarray:
        """``z`` for each row of x (float64 accumulation, like the C core)."""
        z = np.asarray(x, dtype=np.float32).astype(np.float64)
        if self.center is not None:
            z = (z.astype(np.float32) - self.center).astype(np.float64)
        if self.projection is not None:
            z = z @ self.projection.astype(np.float64).T
        return z.astype(np.float32)

    def encode_reference(self, x) -> np.ndarray:
        if self.rabitq is not None:  # the index's own encoder (bitpress.ivf), one list
            per_dim, metric, seed = self.rabitq
            x = np.atleast_2d(np.asarray(x, np.float32))
            if metric == ivf.METRICS["cosine"]:
                x = ivf.normalize(x)
            enc = ivf.encode(ivf.rotate(x, seed), self.center[None, :], per_dim, lists=np.zeros(len(x), np.int32))
            return np.concatenate([enc.codes, enc.factors.astype("<f4").view(np.uint8)], axis=1)
        z = self.transform_reference(np.atleast_2d(x))
        bit = z[:, self.src_a] > self.thr_a
        if self.src_b is not None:
            pair = self.src_b >= 0
            zb = z[:, np.where(pair, self.src_b, 0)]
            bit |= pair & (zb > self.thr_b)
        return np.packbits(bit, axis=-1)

    def reconstruct_reference(self, codes) -> np.ndarray:
        """``x_hat`` for each code (needs reconstruction levels)."""
        if not self.asymmetric or self.rabitq is not None:
            raise errors.BitpressError(f"codebook method {self.method!r} has no reconstruction levels")
        bits = np.unpackbits(np.atleast_2d(codes), axis=-1, count=self.bits).astype(np.float64)
        z = np.tile(self.base.astype(np.float64), (bits.shape[0], 1))
        np.add.at(z.T, self.src_a, (bits * self.delta).T)
        if self.projection is not None:
            z = z @ self.projection.astype(np.float64)
        if self.center is not None:
            z = z + self.center
        return z
