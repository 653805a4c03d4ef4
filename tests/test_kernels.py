"""The C core on numpy arrays against a numpy reference, every compiled kernel path against
the scalar one, and every kind of bad input."""
import numpy as np
import pytest

import bitpress
from bitpress import _core, errors

PATHS = ["scalar", "popcnt", "avx2", "avx512"]


def need(path):
    if path not in _core.supported_impls():
        pytest.skip(f"this CPU cannot run the {path} path (supported: {_core.supported_impls()})")


@pytest.mark.parametrize("dim", [1, 7, 8, 9, 63, 64, 65, 384, 385, 1536, 3072])
def test_binarize_matches_packbits(dim):
    rng = np.random.default_rng(dim)
    x = rng.standard_normal((50, dim)).astype(np.float32)
    t = rng.standard_normal(dim).astype(np.float32) * 0.1
    per_row = rng.standard_normal((50, dim)).astype(np.float32)
    assert np.array_equal(bitpress.binarize(x), np.packbits(x > 0, axis=1))
    assert np.array_equal(bitpress.binarize(x, t), np.packbits(x > t, axis=1))
    assert np.array_equal(bitpress.binarize(x, per_row), np.packbits(x > per_row, axis=1))
    assert np.array_equal(bitpress.binarize(x[3], t), np.packbits(x[3] > t))


def test_binarize_edge_values_and_padding():
    x = np.array([0.0, -0.0, 1e-45, -1e-45, 3.4e38, -3.4e38, 1, -1, 0], dtype=np.float32)
    code = bitpress.binarize(x)
    assert code.tolist() == [0b00101010, 0b0]  # -0.0 and 0 are not > 0; padding bits are zero
    assert bitpress.binarize(x, x).tolist() == [0, 0]  # never strictly greater than itself


def test_binarize_accepts_float64_lists_and_empty_batches():
    assert bitpress.binarize([0.5, -2.0, 3.0]).tolist() == [0b10100000]
    assert bitpress.binarize(np.zeros((0, 16), np.float32)).shape == (0, 2)


@pytest.mark.parametrize("path", PATHS)
def test_each_path_matches_scalar_on_every_length(path):
    need(path)
    rng = np.random.default_rng(1)
    for nbytes in list(range(0, 300)) + [384, 512, 1000, 4096]:
        a = rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes()
        b = rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes()
        ref = int(np.bitwise_count(np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).sum())
        assert _core.hamming_with("scalar", a, b) == ref
        assert _core.hamming_with(path, a, b) == ref, (path, nbytes)
    ones = b"\xff" * 1000
    assert _core.hamming_with(path, ones, b"\x00" * 1000) == 8000  # no per-byte counter overflow


@pytest.mark.parametrize("path", PATHS)
def test_forced_path_batches_match_numpy(path):
    need(path)
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 256, (1000, 48), dtype=np.uint8)
    ref = np.bitwise_count(codes ^ codes[5]).sum(1)
    try:
        assert bitpress.set_simd(path) == path
        assert bitpress.simd() == path
        assert np.array_equal(bitpress.hamming(codes, codes[5]), ref)
        assert np.array_equal(bitpress.hamming(codes[5], codes), ref)
        assert np.array_equal(bitpress.hamming(codes, codes[::-1].copy()),
                              np.bitwise_count(codes ^ codes[::-1]).sum(1))
    finally:
        bitpress.set_simd("auto")


def test_auto_picks_a_supported_path():
    assert bitpress.set_simd("auto") in bitpress.simd_supported()
    with pytest.raises(errors.UnsupportedKernelError):
        bitpress.set_simd("sse9")


def test_hamming_scalar_results_and_types():
    a = bitpress.binarize([1, -1, 1, -1])
    b = bitpress.binarize([1, 1, -1, -1])
    assert bitpress.hamming(a, b) == 2
    assert bitpress.hamming(a.tobytes(), b.tobytes()) == 2
    assert bitpress.hamming(np.zeros((0, 4), np.uint8), np.zeros(4, np.uint8)).shape == (0,)


@pytest.mark.parametrize("x,t,error,message", [
    ([1.0, np.nan], None, errors.NonFiniteError, "NaN or infinity not allowed in vector (element 2)"),
    ([np.inf], None, errors.NonFiniteError, "NaN or infinity not allowed in vector (element 1)"),
    ([1.0, 2.0], [0.0, -np.inf], errors.NonFiniteError, "NaN or infinity not allowed in thresholds (element 2)"),
    ([1e300], None, errors.NonFiniteError, "NaN or infinity not allowed in vector (element 1)"),
    ([1.0, 2.0], [0.0], errors.DimensionMismatchError, "vector has 2 dimensions but thresholds have 1"),
    ([], None, errors.EmptyVectorError, "vector must have at least 1 dimension"),
    (np.zeros(65537, np.float32), None, errors.VectorTooLargeError,
     "vector cannot have more than 65536 dimensions, got 65537"),
    ([1.0, None], None, errors.NullValueError, "vector must not contain nulls"),
])
def test_binarize_bad_input(x, t, error, message):
    with pytest.raises(error) as exc:
        bitpress.binarize(x, t)
    assert str(exc.value) == message
    assert isinstance(exc.value, ValueError)


def test_batch_errors_name_the_row():
    x = np.ones((5, 4), np.float32)
    x[3, 2] = np.nan
    with pytest.raises(errors.NonFiniteError, match=r"element 3\) \(row 3\)"):
        bitpress.binarize(x)
    with pytest.raises(errors.DimensionMismatchError, match="4 dimensions but thresholds have 4 and 2 rows"):
        bitpress.binarize(np.ones((5, 4)), np.ones((2, 4)))


def test_hamming_bad_input():
    with pytest.raises(errors.CodeLengthMismatchError, match="different bit lengths 8 and 16") as exc:
        bitpress.hamming(b"\x01", b"\x01\x02")
    assert exc.value.sqlstate == "22000"
    with pytest.raises(errors.BitpressError, match="cannot pair 3 codes with 2 codes"):
        bitpress.hamming(np.zeros((3, 2), np.uint8), np.zeros((2, 2), np.uint8))
    with pytest.raises(errors.BitpressError, match="must be uint8"):
        bitpress.hamming(np.zeros(2, np.int64), np.zeros(2, np.int64))


def test_segment_checksum_sees_every_flipped_byte_and_swapped_word():
    from bitpress import _core

    rng = np.random.default_rng(7)
    ids, codes = rng.bytes(620), rng.bytes(7380)
    base = _core.segment_checksum(ids, codes)
    # the stored format: this value is written beside segments in PostgreSQL and DuckDB alike
    assert base == _core.segment_checksum(bytes(ids), bytearray(codes))
    assert _core.segment_checksum(b"", b"") == 43806768328911886
    for buf, which in ((ids, 0), (codes, 1)):
        for pos in rng.choice(len(buf), 40, replace=False):
            b = bytearray(buf)
            b[pos] ^= 1 << int(rng.integers(8))
            parts = [ids, codes]
            parts[which] = bytes(b)
            assert _core.segment_checksum(*parts) != base
    swapped = codes[8:16] + codes[:8] + codes[16:]
    assert _core.segment_checksum(ids, swapped) != base
    # the boundary between ids and codes counts too
    assert _core.segment_checksum(ids + codes[:4], codes[4:]) != base


def test_half_to_float_is_exact_for_every_half():
    """The core's binary16 -> float (pgvector's halfvec) against numpy on all 65536 patterns."""
    h = np.arange(65536, dtype=np.uint16)
    out = np.empty(65536, np.float32)
    _core.half_to_float_into(h, out)
    want = h.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(out.view(np.uint32)[~nan], want.view(np.uint32)[~nan])
    assert np.isnan(out[nan]).all() and nan.sum() == 2046
