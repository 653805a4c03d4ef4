"""bitpress: vectors kept compressed inside PostgreSQL and DuckDB.

The same C core runs in the PostgreSQL extension, in DuckDB (through ``bitpress.duckdb``)
and on numpy arrays here, so every engine gives the same codes and distances.
"""
from . import errors
from ._core import VERSION as __version__
from .kernels import MAX_DIM, binarize, hamming, set_simd, simd, simd_supported

__all__ = [
    "MAX_DIM",
    "__version__",
    "binarize",
    "errors",
    "hamming",
    "set_simd",
    "simd",
    "simd_supported",
]
