"""bitpress in DuckDB: ``register(con)`` adds ``binarize`` and ``hamming`` to a connection.

The functions are Arrow UDFs: DuckDB hands over whole batches (2048 rows), and each batch
is one call into the same C core the PostgreSQL extension runs. ``binarize`` returns DuckDB
``BIT`` codes, which carry their bit length as PostgreSQL's ``bit(n)`` does, so every function
taking codes gives PostgreSQL's answer or error for them.

BLOB codes (columns made before, or filled with ``code_bytes(binarize(v))``) hold exactly the
bytes of a PostgreSQL code (MSB first, zero padding at the end) and cross engines, Arrow and
numpy without conversion, but do not know their bit length: a BLOB is read at the length it
meets (a codebook's bits, a store's, the query's, a ``BIT``'s) with PostgreSQL's
``code_from_bytes`` checks (byte count, zero padding), and two BLOBs count whole bytes. DuckDB
lays a ``BIT`` out with a leading byte counting padding bits, which are 1-bits at the *front* of
the first data byte (PostgreSQL: 0-bits at the *end* of the last); ``code_bytes`` (SQL),
``_bit_rows`` / ``_bit_array`` convert, and the SQL side passes BLOBs plus bit lengths to the
UDFs, because DuckDB hands a ``BIT`` column to Python far slower than a BLOB one.

DuckDB keeps Python UDFs in the database's catalog, which every connection to the same file in
one process shares, while macros live per connection. So the pure functions (``bitpress_hamming_*``,
``bitpress_binarize*``) are registered once per database, and those that read bitpress's tables
through their connection are registered under a name unique to that connection, behind a
TEMP macro with the public name (``udf``): two connections to one file each read through their
own. Known cost: DuckDB offers no way to unregister them when a connection closes, so each
``register`` leaves its handful of functions in that database's catalog for the life of the
process (an engine with NullPool registers on every checkout: prefer a pool that keeps them).
"""
from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa

from . import _core, errors
from .kernels import binarize as _binarize
from .kernels import check_count
from .kernels import hamming as _hamming
from .tables import bitpress_columns, check_params

_MACROS = ["""
CREATE OR REPLACE TEMP MACRO hamming(a, b) AS CASE
    -- two strings: DuckDB's own hamming (mismatches); codes: BIT or BLOB (folded by type)
    WHEN typeof(a) = 'VARCHAR' AND typeof(b) = 'VARCHAR'
    THEN CAST(mismatches(CAST(a AS VARCHAR), CAST(b AS VARCHAR)) AS INTEGER)
    -- two BITs of one length: DuckDB's own popcount (padding bits are alike in both); of two
    -- lengths: the UDF raises PostgreSQL's error
    WHEN typeof(a) = 'BIT' AND typeof(b) = 'BIT' THEN CASE
        WHEN bit_length(CAST(a AS BIT)) <> bit_length(CAST(b AS BIT))
        THEN bitpress_hamming_codes(code_bytes(a), bitpress_code_bits(a), code_bytes(b), bitpress_code_bits(b))
        ELSE CAST(bit_count(xor(CAST(a AS BIT), CAST(b AS BIT))) AS INTEGER) END
    WHEN typeof(a) = 'BIT' OR typeof(b) = 'BIT'
    THEN bitpress_hamming_codes(code_bytes(a), bitpress_code_bits(a), code_bytes(b), bitpress_code_bits(b))
    ELSE bitpress_hamming_blobs(CAST(a AS BLOB), CAST(b AS BLOB)) END
""", """
CREATE OR REPLACE TEMP MACRO code_bytes(code) AS
    -- PostgreSQL's layout (MSB first, zero padding at the end) of a BIT code; a BLOB as it is.
    -- DuckDB's own CAST(BIT AS BLOB) puts the padding in front: widened to whole bytes, shifted
    -- left by the padding
    CASE WHEN typeof(code) <> 'BIT' THEN CAST(code AS BLOB)
         WHEN bit_length(CAST(code AS BIT)) % 8 = 0 THEN CAST(CAST(code AS BIT) AS BLOB)
         ELSE CAST(bitstring(CAST(code AS BIT), CAST(8 * octet_length(CAST(code AS BIT)) AS INTEGER))
                   << CAST(8 * octet_length(CAST(code AS BIT)) - bit_length(CAST(code AS BIT)) AS INTEGER)
                   AS BLOB) END
""", """
CREATE OR REPLACE TEMP MACRO code_from_bytes(code, n) AS
    -- a BIT of n bits from a code's bytes in PostgreSQL's layout, with its checks (byte count,
    -- zero padding); a BIT (binarize's) is read through code_bytes, not DuckDB's own cast
    bitpress_code_from_bytes(code_bytes(code), CAST(n AS BIGINT))
""", """
CREATE OR REPLACE TEMP MACRO bitpress_code_bits(code) AS
    -- the bit length a code carries: a BIT's own, 0 for a BLOB (whose length is checked
    -- against what it meets: a codebook, a store, a BIT query)
    CASE WHEN typeof(code) = 'BIT' THEN CAST(bit_length(CAST(code AS BIT)) AS INTEGER) ELSE 0 END
""", """
CREATE OR REPLACE TEMP MACRO binarize(v) AS bitpress_binarize_sign(CAST(v AS FLOAT[])),
    (v, thresholds_or_codebook) AS CASE WHEN typeof(thresholds_or_codebook) = 'VARCHAR'
        THEN bitpress_encode(CAST(v AS FLOAT[]), CAST(thresholds_or_codebook AS VARCHAR), 0)
        ELSE bitpress_binarize(CAST(v AS FLOAT[]), CAST(thresholds_or_codebook AS FLOAT[])) END,
    (v, codebook, version) AS bitpress_encode(CAST(v AS FLOAT[]), codebook, CAST(version AS INTEGER))
""", """
CREATE OR REPLACE TEMP MACRO bitpress_stamp(codebook, version, books := 'bitpress.codebooks') AS
    -- "version:hash of params" of a stored codebook, looked up once per query, so the scoring
    -- function can trust its cache for the whole query without asking the table per batch.
    -- `books` is a parameter (always bitpress.codebooks) so that DuckDB binds the table when
    -- the macro is used, not when it is created (before any migration)
    coalesce((SELECT CAST(c.version AS VARCHAR) || ':' || CAST(hash(c.params) AS VARCHAR)
              FROM query_table(books) c  -- a parameter: bound when used, after migration
              WHERE c.name = codebook AND (version = 0 OR c.version = version)
              ORDER BY c.version DESC LIMIT 1),
             error('codebook "' || codebook || '"' ||
                   CASE WHEN version = 0 THEN '' ELSE ' version ' || version END || ' does not exist'))
""", """
CREATE OR REPLACE TEMP MACRO bitpress_score(code, query, codebook, version := 0, books := 'bitpress.codebooks') AS
    -- one macro, version 0 the latest (as in PostgreSQL): DuckDB passes defaults positionally
    -- too, so a second overload made bitpress_score(c, q, 'cb', 1) ambiguous
    bitpress_score_udf(code_bytes(code), CAST(query AS FLOAT[]), codebook,
                       bitpress_stamp(codebook, CAST(version AS INTEGER), books := books), bitpress_code_bits(code))
""", """
CREATE OR REPLACE TEMP MACRO bitpress_pool(k, oversample) AS
    CASE WHEN k IS NULL OR k < 1 THEN error('k must be at least 1, got ' || coalesce(k::VARCHAR, 'NULL'))
         WHEN oversample IS NULL OR oversample < 1
         THEN error('oversample must be at least 1, got ' || coalesce(oversample::VARCHAR, 'NULL'))
         ELSE CAST(k AS BIGINT) * oversample END
""", """
CREATE OR REPLACE TEMP MACRO bitpress_query(query) AS
    -- the k-NN helpers raise on a NULL query, as in PostgreSQL, instead of ordering by NULL
    CASE WHEN query IS NULL THEN error('query must not be NULL') ELSE query END
""", """
CREATE OR REPLACE TEMP MACRO bitpress_query_code(query, codebook, k, oversample) AS
    -- the query's code, computed once per query (a scalar subquery), after checking k and
    -- oversample there: a LIMIT that can raise an error would cost DuckDB its top-N operator
    CASE WHEN bitpress_pool(k, oversample) > 0 AND codebook IS NULL THEN binarize(bitpress_query(query))
         -- only the Hamming stages code the query: a RaBitQ code ends in float factors
         WHEN bitpress_codebook_rabitq(CAST(codebook AS VARCHAR))
         THEN error('codebook "' || codebook || '" is a RaBitQ codebook: rank its codes with scoring => ''asymmetric''')
         ELSE binarize(bitpress_query(query), CAST(codebook AS VARCHAR)) END
""", """
CREATE OR REPLACE TEMP MACRO bitpress_query_bits(query, codebook, k, oversample) AS
    -- its bit length (the query's dimensions, or the codebook's bits) without coding it: the
    -- length a BIT column must have, and the one a BLOB column is read at (as in PostgreSQL)
    CASE WHEN bitpress_pool(k, oversample) > 0 AND codebook IS NULL
         THEN CAST(len(CAST(bitpress_query(query) AS FLOAT[])) AS INTEGER)
         ELSE bitpress_codebook_bits(CAST(codebook AS VARCHAR)) END
""", """
CREATE OR REPLACE TEMP MACRO bitpress_scoring(scoring) AS
    CASE WHEN scoring IN ('hamming', 'asymmetric') THEN scoring
         ELSE error('scoring must be hamming or asymmetric, got ' || coalesce(scoring, 'NULL')) END
""", """
CREATE OR REPLACE TEMP MACRO bitpress_score_codes(code, query, codebook) AS
    -- the asymmetric score of a BLOB or BIT code (the codebook looked up per batch: stamp '')
    bitpress_score_udf(code_bytes(code), CAST(query AS FLOAT[]), CAST(codebook AS VARCHAR), '',
                       bitpress_code_bits(code))
""", """
CREATE OR REPLACE TEMP MACRO bitpress_rank(code, query, codebook, k, oversample, scoring) AS
    -- stage-1 order of a code: Hamming distance to the query's code, or minus the asymmetric score
    -- (stamp '': the codebook is looked up per batch, so that this macro binds without the
    -- bitpress.codebooks table when only Hamming ranking is used)
    CASE WHEN bitpress_scoring(scoring) = 'asymmetric'
         THEN -bitpress_score_codes(code, (SELECT CAST(bitpress_query(query) AS FLOAT[])),
                                    coalesce((SELECT CAST(codebook AS VARCHAR) WHERE bitpress_pool(k, oversample) > 0),
                                             error('asymmetric scoring needs a codebook with reconstruction levels')))
         -- a BIT column: DuckDB's popcount when the query's code has its length, else hamming's error
         WHEN typeof(code) = 'BIT' THEN CASE
             WHEN bit_length(CAST(code AS BIT)) <> (SELECT bitpress_query_bits(query, codebook, k, oversample))
             THEN hamming(code, (SELECT bitpress_query_code(query, codebook, k, oversample)))
             ELSE CAST(bit_count(xor(CAST(code AS BIT),
                                     (SELECT CAST(bitpress_query_code(query, codebook, k, oversample) AS BIT))))
                       AS INTEGER) END
         -- a BLOB column: read at the query code's length, with code_from_bytes' checks
         ELSE bitpress_hamming_codes(CAST(code AS BLOB), 0,
                                     (SELECT code_bytes(bitpress_query_code(query, codebook, k, oversample))),
                                     (SELECT bitpress_query_bits(query, codebook, k, oversample))) END
""", """
CREATE OR REPLACE TEMP MACRO bitpress_distance(v, query, metric) AS
    -- the exact distance of the rerank stage (smaller is nearer)
    CASE metric
        WHEN 'cosine' THEN list_cosine_distance(v, CAST(query AS FLOAT[]))
        WHEN 'ip' THEN list_negative_inner_product(v, CAST(query AS FLOAT[]))
        WHEN 'l2' THEN list_distance(v, CAST(query AS FLOAT[]))
        ELSE error('metric must be cosine, ip or l2, got ' || coalesce(metric, 'NULL')) END
""", """
CREATE OR REPLACE TEMP MACRO bitpress_knn(tbl, code_column, vector_column, query, k,
        oversample := 4, codebook := NULL, metric := 'cosine', scoring := 'hamming', probes := NULL) AS TABLE
    -- a bitpress_ivf index on (tbl, vector_column) of this metric answers instead of the codes:
    -- bitpress_ivf_usable is folded when the query is planned, so one of the two halves is empty
    (SELECT * EXCLUDE (_bitpress_v) FROM (
        SELECT *, CAST(COLUMNS(lambda c: c = vector_column) AS FLOAT[]) AS _bitpress_v
        FROM (SELECT * FROM query_table(tbl)
              WHERE NOT bitpress_ivf_usable(tbl, vector_column, metric)
              ORDER BY bitpress_rank(COLUMNS(lambda c: c = code_column), query, codebook, k, oversample,
                                     scoring)
              LIMIT greatest(CAST(k AS BIGINT) * oversample, 1)))
    ORDER BY bitpress_distance(_bitpress_v, query, metric)
    LIMIT greatest(k, 1))  -- not k: DuckDB skips a LIMIT 0 plan without running the checks
    UNION ALL
    (SELECT * EXCLUDE (_bitpress_rowid, _bitpress_d) FROM (
        SELECT t.*, h.distance AS _bitpress_d
        FROM query(bitpress_ivf_rows_sql(tbl, vector_column, metric)) t
        JOIN (SELECT unnest(CASE WHEN bitpress_ivf_usable(tbl, vector_column, metric)
                                 THEN bitpress_ivf_hits(tbl, query, k, probes := probes,
                                                        vector_column := vector_column) END,
                            recursive := true)) h
        ON t._bitpress_rowid = h.row_id)
     ORDER BY _bitpress_d
     LIMIT greatest(k, 1))
""", """
CREATE OR REPLACE TEMP MACRO bitpress_knn_codes(tbl, code_column, query, k,
        oversample := 4, codebook := NULL, scoring := 'hamming') AS TABLE
    SELECT * FROM (SELECT * FROM query_table(tbl)
                   ORDER BY bitpress_rank(COLUMNS(lambda c: c = code_column), query, codebook, k,
                                          oversample, scoring)
                   LIMIT greatest(CAST(k AS BIGINT) *
                                  CASE WHEN codebook IS NULL OR scoring = 'asymmetric' THEN 1 ELSE oversample END, 1))
    ORDER BY CASE WHEN codebook IS NULL OR scoring = 'asymmetric' THEN 0
                  ELSE -bitpress_score_codes(COLUMNS(lambda c: c = code_column), query, codebook) END
    LIMIT greatest(k, 1)
""", """
CREATE OR REPLACE TEMP MACRO bitpress_knn_store(tbl, store, id_column, vector_column, query, k,
        oversample := 4, codebook := NULL, metric := 'cosine') AS TABLE
    -- bitpress_knn with its Hamming stage taken from a packed code store over tbl
    SELECT * EXCLUDE (_bitpress_v) FROM (
        SELECT *, CAST(COLUMNS(lambda c: c = vector_column) AS FLOAT[]) AS _bitpress_v
        FROM query_table(tbl)
        WHERE COLUMNS(lambda c: c = id_column) IN (
            SELECT unnest(bitpress_store_knn_udf(store, (SELECT code_bytes(bitpress_query_code(query, codebook, k, oversample))),
                                                 CAST(greatest(CAST(k AS BIGINT) * oversample, 1) AS INTEGER),
                                                 (SELECT bitpress_query_bits(query, codebook, k, oversample)))).id))
    ORDER BY bitpress_distance(_bitpress_v, query, metric)
    LIMIT greatest(k, 1)
""", """
CREATE OR REPLACE TEMP MACRO bitpress_store_knn(store, query, k) AS TABLE
    SELECT unnest(bitpress_store_knn_udf(store, code_bytes(bitpress_query(query)), CAST(k AS INTEGER),
                                         bitpress_code_bits(query)),
                  recursive := true)
"""]


def _list_rows(arr, what):
    """(values float32 view, offsets int64, lengths) of a list<float> Arrow array without nulls."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        raise errors.NullValueError(f"{what} must not be NULL here")
    offsets = np.asarray(arr.offsets, dtype=np.int64)
    values = arr.values
    if values.null_count:
        raise errors.NullValueError(f"{what} must not contain nulls")
    values = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values, offsets, np.diff(offsets)


def _gather(values, offsets, rows, dim):
    if len(rows) == 0:
        return np.empty((0, dim), dtype=np.float32)
    start = offsets[rows[0]]
    if np.array_equal(offsets[rows], start + dim * np.arange(len(rows))):
        return values[start:start + dim * len(rows)].reshape(len(rows), dim)
    return values[np.add.outer(offsets[rows], np.arange(dim))]


def _codes_array(codes_by_row, nbits):
    """A BIT Arrow array (DuckDB's layout) from one uint8 code per row in PostgreSQL's layout,
    of ``nbits`` bits each (an int, or one per row)."""
    n = len(codes_by_row)
    nbits = np.broadcast_to(np.asarray(nbits, dtype=np.int64), (n,))
    if isinstance(codes_by_row, np.ndarray):
        data = np.ascontiguousarray(codes_by_row).ravel()
        offsets = np.arange(n + 1, dtype=np.int64) * codes_by_row.shape[1]
    else:
        data = np.concatenate(codes_by_row) if n else np.empty(0, np.uint8)
        offsets = np.concatenate([[0], np.cumsum([len(c) for c in codes_by_row])]).astype(np.int64)
    return _bit_array(data, offsets, nbits)


def _binarize_batch(v, t=None):
    values, offsets, lengths = _list_rows(v, "vector")
    n = len(lengths)
    if n == 0:
        return _codes_array([], 0)
    if t is not None:
        tvalues, toffsets, tlengths = _list_rows(t, "thresholds")
        bad = np.nonzero(tlengths != lengths)[0]
        if len(bad):
            r = int(bad[0])
            _core.raise_error(_core.ERR_DIM_MISMATCH, int(lengths[r]), int(tlengths[r]))
    dims = np.unique(lengths)
    if len(dims) == 1:
        dim = int(dims[0])
        x = _gather(values, offsets, np.arange(n), dim)
        thr = None
        if t is not None:
            thr = _gather(tvalues, toffsets, np.arange(n), dim)
            if n > 1 and (thr == thr[0]).all():  # a constant argument: check and pass one row
                thr = thr[0]
        return _codes_array(_binarize(x, thr), dim)
    # vectors of several lengths in one batch: one core call per length
    out = [None] * n
    for dim in dims:
        rows = np.nonzero(lengths == dim)[0]
        x = _gather(values, offsets, rows, int(dim))
        thr = None if t is None else _gather(tvalues, toffsets, rows, int(dim))
        codes = _binarize(x, thr)
        for i, r in enumerate(rows):
            out[r] = codes[i]
    return _codes_array(out, lengths)


def _binarize_sign_batch(v):
    return _binarize_batch(v)


def _binary_rows(arr):
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        raise errors.NullValueError("codes must not be NULL here")
    if arr.type != pa.binary():
        arr = arr.cast(pa.binary())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset:arr.offset + len(arr) + 1]
    offsets = offsets.astype(np.int64)
    data = arr.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8)
    return data, offsets, np.diff(offsets)


def _hamming_rows(a, b):
    """Row-by-row distances of two codes columns, each (data, offsets, lengths) in PostgreSQL's
    layout, of equal byte lengths (the callers check the bit lengths)."""
    da, oa, la = a
    db, ob, lb = b
    n = len(la)
    if n == 0:
        return pa.array([], type=pa.int32())
    nbytes = int(la[0])
    if (la == nbytes).all():
        ca = da[oa[0]:oa[0] + n * nbytes].reshape(n, nbytes)
        cb = db[ob[0]:ob[0] + n * nbytes].reshape(n, nbytes)
        # row by row even for a constant query: checking for one costs more than the kernel
        return pa.array(_hamming(ca, cb).astype(np.int32))
    d = [_hamming(da[oa[i]:oa[i + 1]], db[ob[i]:ob[i + 1]]) for i in range(n)]
    return pa.array(np.asarray(d, dtype=np.int32))


def _hamming_batch(a, a_bits, b, b_bits):
    """hamming(a, b) of codes in PostgreSQL's layout, each with the bit length it carries (a
    BIT's; 0 for a BLOB): two BITs compare their bit lengths, as PostgreSQL does; a BLOB met
    with a BIT is read as a code of the BIT's length, with code_from_bytes' checks; two BLOBs
    are whole bytes (8 bits a byte)."""
    a, b = _binary_rows(a), _binary_rows(b)
    na, nb = (np.zeros(1, np.int64) if x is None else np.asarray(x.to_numpy(zero_copy_only=False), dtype=np.int64)
              for x in (a_bits, b_bits))
    for (data, offsets, lengths), own in ((a, na), (b, nb)):  # a length given must be the bytes'
        rows = np.nonzero(np.broadcast_to(own != 0, lengths.shape))[0]
        if len(rows):
            check_code_bytes(data, offsets[1:][rows], lengths[rows], np.broadcast_to(own, lengths.shape)[rows])
    if len(na) and na.min() == na.max() and nb.min() == nb.max():  # one kind each (the usual case)
        na, nb = int(na[0]), int(nb[0])
        if na == 0 and nb > 0:
            check_code_bytes(a[0], a[1][1:], a[2], nb)
        if nb == 0 and na > 0:
            check_code_bytes(b[0], b[1][1:], b[2], na)
        la, lb = (na or nb or a[2] * 8), (nb or na or b[2] * 8)
    else:
        for (data, offsets, lengths), own, other in ((a, na, nb), (b, nb, na)):
            rows = np.nonzero((own == 0) & (other > 0))[0]
            if len(rows):
                check_code_bytes(data, offsets[1:][rows], lengths[rows], other[rows])
        la = np.where(na > 0, na, np.where(nb > 0, nb, a[2] * 8))
        lb = np.where(nb > 0, nb, np.where(na > 0, na, b[2] * 8))
    bad = np.nonzero(np.broadcast_to(la != lb, a[2].shape))[0]
    if len(bad):
        r = int(bad[0])
        _core.raise_error(_core.ERR_BIT_LENGTH_MISMATCH, int(np.broadcast_to(la, a[2].shape)[r]),
                          int(np.broadcast_to(lb, a[2].shape)[r]))
    return _hamming_rows(a, b)


def _hamming_blobs_batch(a, b):
    return _hamming_batch(a, None, b, None)


# DuckDB's BIT as Arrow hands it to (and takes it from) a UDF: a first byte counting the
# padding bits, which are 1-bits at the front of the first data byte; PostgreSQL's bit(n) has
# its padding as 0-bits at the end of the last byte, the layout of bitpress's BLOB codes
_BIT = pa.opaque(pa.binary(), "bit", "DuckDB")


def _bit_rows(arr):
    """A BIT column in PostgreSQL's layout: (data, offsets, lengths) as _binary_rows gives,
    and each row's bit length."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    data, offsets, lengths = _binary_rows(arr)
    n = len(lengths)
    if n == 0:
        return np.empty(0, np.uint8), np.zeros(1, np.int64), lengths, lengths
    width = int(lengths[0])
    if (lengths == width).all():  # one length (the usual case): shift the rows as a matrix
        m = data[offsets[0]:offsets[0] + n * width].reshape(n, width)
        pad = m[:, 0]
        shift = int(pad[0])
        if (pad == shift).all():
            out = m[:, 1:] if shift == 0 else np.left_shift(m[:, 1:], shift)
            if shift:
                out[:, :-1] |= np.right_shift(m[:, 2:], 8 - shift)
            out = np.ascontiguousarray(out).ravel()
            return (out, np.arange(n + 1, dtype=np.int64) * (width - 1), lengths - 1,
                    np.full(n, (width - 1) * 8 - shift, dtype=np.int64))
    head = offsets[:-1] - offsets[0]
    d = data[offsets[0]:offsets[-1]].astype(np.uint16)
    pad = d[head]
    shift = np.repeat(pad, lengths)
    nxt = np.zeros_like(d)
    nxt[:-1] = d[1:]
    nxt[offsets[1:] - 1 - offsets[0]] = 0  # a row's last byte takes nothing from the next row
    out = ((d << shift) | (nxt >> (8 - shift))) & 0xFF
    keep = np.ones(len(d), bool)
    keep[head] = False
    return (out[keep].astype(np.uint8), offsets - offsets[0] - np.arange(n + 1), lengths - 1,
            (lengths - 1) * 8 - pad.astype(np.int64))


def _bit_array(data, offsets, nbits):
    """The inverse of _bit_rows: codes in PostgreSQL's layout, nbits each, as a BIT column."""
    n = len(nbits)
    lengths = np.diff(offsets)
    if n == 0:
        return pa.ExtensionArray.from_storage(_BIT, pa.array([], pa.binary()))
    width = int(lengths[0])
    if (lengths == width).all() and (nbits == nbits[0]).all():  # one length (binarize's case)
        pad = width * 8 - int(nbits[0])
        m = data[offsets[0]:offsets[0] + n * width].reshape(n, width)
        out = np.empty((n, width + 1), np.uint8)
        out[:, 0] = pad
        if pad == 0:
            out[:, 1:] = m
        else:  # each row shifted right by pad bits, 1-bits shifted in at its front
            out[:, 1:] = m >> pad
            out[:, 2:] |= m[:, :-1] << (8 - pad)
            out[:, 1] |= (0xFF << (8 - pad)) & 0xFF
        storage = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(np.arange(n + 1, dtype=np.int32)
                                                                            * (width + 1)), pa.py_buffer(out)])
        return pa.ExtensionArray.from_storage(_BIT, storage)
    pad = (lengths * 8 - nbits).astype(np.uint16)
    d = data[offsets[0]:offsets[-1]].astype(np.uint16)
    shift = np.repeat(pad, lengths)
    first = offsets[:-1] - offsets[0]
    prv = np.empty_like(d)
    prv[1:] = d[:-1]
    prv[first] = 0xFF  # the padding: 1-bits in front of a row's first byte
    body = (((prv << (8 - shift)) | (d >> shift)) & 0xFF).astype(np.uint8)
    out = np.insert(body, first, pad.astype(np.uint8))
    storage = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer((offsets - offsets[0] + np.arange(n + 1))
                                                                        .astype(np.int32)), pa.py_buffer(out)])
    return pa.ExtensionArray.from_storage(_BIT, storage)


def check_code_bytes(data, ends, lengths, nbits):
    """PostgreSQL's code_from_bytes checks of BLOB codes (the rows of ``data`` ending at
    ``ends``, ``lengths`` bytes each) read as codes of ``nbits`` bits each (an int or one per
    row): one byte per 8 bits, and the padding bits after the last bit zero."""
    if np.ndim(nbits) == 0:  # one length for all rows
        nbits = int(nbits)
        if nbits < 0:
            _core.raise_error(_core.ERR_NEGATIVE_BITS, nbits, 0)
        bad = np.nonzero(lengths != (nbits + 7) // 8)[0]
        if len(bad):
            _core.raise_error(_core.ERR_CODE_BYTES, int(lengths[bad[0]]), nbits)
        if nbits % 8 and (data[ends - 1] & (0xFF >> (nbits % 8))).any():
            _core.raise_error(_core.ERR_CODE_PADDING, nbits, 0)
        return
    for n in np.unique(nbits):  # one length per row: the rows of each length in turn
        rows = np.nonzero(nbits == n)[0]
        check_code_bytes(data, ends[rows], lengths[rows], int(n))


def _code_from_bytes_batch(blob, nbits):
    rows = _binary_rows(blob)
    nbits = np.asarray(nbits.to_numpy(zero_copy_only=False), dtype=np.int64)
    check_code_bytes(rows[0], rows[1][1:], rows[2], nbits)
    if (nbits == 0).any():  # PostgreSQL's B'': DuckDB has no empty BIT ('' casts to '0')
        raise errors.InvalidParameterError("a DuckDB BIT holds at least 1 bit, got a code of 0 bits")
    return _bit_array(rows[0], rows[1], nbits)


class _Codebooks:
    """The codebooks one connection has used, checked against bitpress.codebooks per batch.

    A batch costs one indexed lookup of (version, created_at, hash of params, checksum) through
    a cursor of the same database; the parameters are fetched, checked and parsed only when
    they changed. Whether the table has a checksum (schema revision 0009) is looked up again
    with each fetch, not per batch.
    """

    def __init__(self, con):
        self.con = con
        self.cache = {}
        self.summed = False  # bitpress.codebooks had a checksum column at the last fetch

    def get(self, name, version, stamp=None):
        """The stored form of codebook ``name`` (``version`` 0: the latest). With ``stamp``
        ("version:hash", computed once per query by the bitpress_stamp macro) a cached copy
        with that stamp is used without asking the table."""
        if stamp is not None:
            hit = self.cache.get((name, "stamp", stamp))
            if hit is not None:
                return hit
            version = stamp.split(":")[0]
            if not version.isdigit():  # made by the bitpress_stamp macro: "version:hash"
                raise errors.InvalidParameterError(f"malformed codebook stamp {stamp!r}")
            blob = self.get(name, int(version))
            self.cache[(name, "stamp", stamp)] = blob
            return blob
        cur = self.con.cursor()
        try:
            # a row rewritten in place (params, or its checksum) is read again
            q = ("SELECT version, CAST(created_at AS VARCHAR), hash(params), "
                 f"{'checksum' if self.summed else 'NULL'} FROM bitpress.codebooks WHERE name = ?")
            args = [name]
            if version:
                q += " AND version = ?"
                args.append(version)
            row = cur.execute(q + " ORDER BY version DESC LIMIT 1", args).fetchone()
        except Exception as e:
            if "codebooks" in str(e) and ("does not exist" in str(e) or "not found" in str(e).lower()):
                from .schema import missing_table

                raise missing_table("bitpress.codebooks", errors.UnknownCodebookError) from None
            raise
        finally:
            cur.close()
        if row is None:
            what = f'codebook "{name}"' + (f" version {version}" if version else "")
            raise errors.UnknownCodebookError(f"{what} does not exist")
        errors.stored(row[0], "bitpress.codebooks", f'codebook "{name}"', "version")
        key = (name, version)
        hit = self.cache.get(key)
        if hit is not None and hit[0] == row:
            return hit[1]
        cur = self.con.cursor()
        try:
            columns = bitpress_columns(cur, "codebooks")
            self.summed = "checksum" in columns
            params, checksum = cur.execute(
                f"SELECT params, {'checksum' if self.summed else 'NULL'} FROM bitpress.codebooks "
                "WHERE name = ? AND version = ?", [name, row[0]]).fetchone()
        finally:
            cur.close()
        params = check_params(params, checksum, "codebooks", f'codebook "{name}" version {row[0]}', columns)
        blob = np.frombuffer(params, dtype=np.uint8).copy()  # aligned for the core
        _core.codebook_shape(blob)  # malformed parameters fail here, with the core's message
        self.cache[key] = (row, blob)
        return blob


def _groups(*cols):
    """Row indices per distinct combination of the given (constant-ish) Arrow columns."""
    n = len(cols[0])
    if n and all(len(c.unique()) == 1 for c in cols):  # the usual case: constants (C++ check)
        return {tuple(c[0].as_py() for c in cols): np.arange(n)}
    keys = list(zip(*(c.to_pylist() for c in cols)))
    out = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(i)
    return {k: np.asarray(v) for k, v in out.items()}


def map_groups(x, keys, prepare):
    """The rows of the list column ``x`` grouped by the key columns, each group computed as one
    matrix. ``prepare(key)`` gives ``(width, error, compute)``: a row of another length raises
    the core's ``error`` (PostgreSQL's message for the same mistake), and ``compute(matrix)``
    gives one result row per input row. Returns the results in row order: the group's own
    array when one group holds every row, else a list."""
    values, offsets, lengths = _list_rows(x, "vector")
    n = len(lengths)
    out = [None] * n
    for key, rows in _groups(*keys).items():
        width, error, compute = prepare(key)
        bad = rows[lengths[rows] != width]
        if len(bad):
            _core.raise_error(error, int(lengths[bad[0]]), width)
        y = compute(_gather(values, offsets, rows, width))
        if len(rows) == n:
            return y
        for i, r in enumerate(rows):
            out[r] = y[i]
    return out


def _encode_batch(books, v, name, version):
    from .kernels import encode

    if len(v) == 0:
        return _codes_array([], 0)
    bits = {}  # the codebook's bits, per (name, version)

    def prepare(key):
        blob = books.get(*key)
        dims, _, bits[key], _ = _core.codebook_shape(blob)
        return dims, _core.ERR_CODEBOOK_DIM_MISMATCH, lambda m: encode(blob, m)

    codes = map_groups(v, (name, version), prepare)
    nbits = next(iter(bits.values())) if len(bits) == 1 else \
        [bits[key] for key in zip(name.to_pylist(), version.to_pylist())]
    return _codes_array(codes, nbits)


def _is_rabitq(blob) -> bool:
    """Whether stored codebook parameters are a RaBitQ codebook's (flag 16 of the header)."""
    from .codebook import F_RABITQ
    _core.codebook_shape(blob)  # malformed parameters fail here, with the core's message
    return bool(int.from_bytes(bytes(blob[6:8]), "little") & F_RABITQ)


def _score_batch(books, code, q, name, stamp, code_bits):
    from .kernels import asymmetric_scores

    data, offsets, lengths = _binary_rows(code)
    code_bits = np.asarray(code_bits.to_numpy(zero_copy_only=False), dtype=np.int64)
    qvalues, qoffsets, qlengths = _list_rows(q, "query")
    n = len(lengths)
    out = np.empty(n, dtype=np.float64)
    for (nm, st), rows in _groups(name, stamp).items():
        blob = books.get(nm, 0, st or None)
        dims, _, bits, _ = _core.codebook_shape(blob)
        nbytes = (bits + 7) // 8
        # a BIT code carries its bit length; a BLOB (0) is read as a code of the codebook's bits
        for bad, have in ((rows[(code_bits[rows] > 0) & (code_bits[rows] != bits)], code_bits),
                          (rows[(code_bits[rows] == 0) & (lengths[rows] != nbytes)], lengths * 8)):
            if len(bad):
                _core.raise_error(_core.ERR_BIT_LENGTH_MISMATCH, int(have[bad[0]]), bits)
        blobs = rows[code_bits[rows] == 0]
        check_code_bytes(data, offsets[1:][blobs], lengths[blobs], bits)
        bad = rows[qlengths[rows] != dims]
        if len(bad):
            _core.raise_error(_core.ERR_CODEBOOK_DIM_MISMATCH, int(qlengths[bad[0]]), dims)
        codes = _gather(data, offsets, rows, nbytes)
        first = qoffsets[rows[0]]
        q0 = qvalues[first:first + dims]
        qs = _gather(qvalues, qoffsets, rows, dims)
        if (qs == q0).all():  # one query for the batch: one lookup table
            out[rows] = asymmetric_scores(blob, q0, codes)
        else:
            for i, r in enumerate(rows):
                out[r] = asymmetric_scores(blob, qs[i], codes[i])[0]
    return pa.array(out)


_KNN_TYPE = pa.list_(pa.struct([("id", pa.int64()), ("distance", pa.int32())]))


def _store_knn_batch(con, store, query, k, query_bits):
    """One k-NN per row (usually one row: constant arguments) over a packed store."""
    from .stores import _duckdb_knn

    out = []
    for s, q, kk, qb in zip(store.to_pylist(), query.to_pylist(), k.to_pylist(), query_bits.to_pylist()):
        kk = check_count("k", kk)
        cur = con.cursor()
        try:
            rows = _duckdb_knn(con, s, np.frombuffer(q, dtype=np.uint8), kk, cursor=cur, query_bits=qb or None)
        finally:
            cur.close()
        out.append([{"id": i, "distance": d} for i, d in rows])
    return pa.array(out, type=_KNN_TYPE)


_SERIAL = itertools.count(1)


def udf(con, name: str, fn, params, returns, *, reads_tables: bool = True, **kwargs):
    """Registers an Arrow UDF: ``reads_tables`` ones under a per-connection name behind a TEMP
    macro ``name``; pure ones once per database (a second connection finds them there), so
    ``fn`` must then be a module-level function: DuckDB keeps calling it after the connection
    that registered it closed (a closure freed with it crashed the process)."""
    import duckdb

    if not reads_tables:
        try:
            con.remove_function(name)  # registered before on this connection
        except Exception:
            pass
        try:
            con.create_function(name, fn, params, returns, type="arrow", **kwargs)
        except duckdb.CatalogException as e:
            if "already exists" not in str(e):
                raise
        return
    unique = f"{name}__bp{next(_SERIAL)}"
    con.create_function(unique, fn, params, returns, type="arrow", **kwargs)
    args = ", ".join(f"a{i}" for i in range(len(params)))
    con.execute(f"CREATE OR REPLACE TEMP MACRO {name}({args}) AS {unique}({args})")


def register(con):
    """Add bitpress's functions to a DuckDB connection; returns the connection.

    ``binarize(v)``, ``binarize(v, thresholds)``: v is any numeric list or array
    (``FLOAT[]``, ``DOUBLE[]``, ``FLOAT[384]`` ...), the result a BIT code (its bit length carried, as PostgreSQL's varbit).
    ``hamming(a, b)``: INTEGER number of differing bits of two BLOB or BIT codes.
    ``code_from_bytes(blob, n)`` -> BIT and ``code_bytes(bit)`` -> BLOB, as in PostgreSQL.
    ``binarize(v, 'name'[, version])``: code under a codebook stored in bitpress.codebooks.
    ``bitpress_score(code, query, 'name'[, version])``: asymmetric score (higher is closer).
    ``bitpress_knn('table', 'code_col', 'vector_col', query, k[, oversample := 4,
    codebook := 'name', metric := 'cosine', probes := 10])`` (through the table's bitpress_ivf
    index on that vector column and metric when it has one: see bitpress.duckdb_ivf) and ``bitpress_knn_codes('table', 'code_col',
    query, k[, oversample, codebook])``: table macros returning the k nearest rows.
    """
    books = _Codebooks(con)
    udf(con, "bitpress_binarize_sign", _binarize_sign_batch, ["FLOAT[]"], "BIT",
        reads_tables=False, side_effects=False)
    udf(con, "bitpress_binarize", _binarize_batch, ["FLOAT[]", "FLOAT[]"], "BIT",
        reads_tables=False, side_effects=False)
    # hamming(a, b) is a macro over this: BIT or BLOB codes, each with the bit length it carries
    udf(con, "bitpress_hamming_codes", _hamming_batch, ["BLOB", "INTEGER", "BLOB", "INTEGER"], "INTEGER",
        reads_tables=False, side_effects=False)
    udf(con, "bitpress_hamming_blobs", _hamming_blobs_batch, ["BLOB", "BLOB"], "INTEGER",
        reads_tables=False, side_effects=False)  # the same for two BLOBs, without the bit lengths' columns
    udf(con, "bitpress_code_from_bytes", _code_from_bytes_batch, ["BLOB", "BIGINT"], "BIT", reads_tables=False,
        side_effects=False)
    udf(con, "bitpress_encode", lambda v, n, ver: _encode_batch(books, v, n, ver),
        ["FLOAT[]", "VARCHAR", "INTEGER"], "BIT", side_effects=False)
    udf(con, "bitpress_codebook_bits", lambda n: pa.array([_core.codebook_shape(books.get(x, 0))[2]
                                                           for x in n.to_pylist()], pa.int32()),
        ["VARCHAR"], "INTEGER", side_effects=False)
    udf(con, "bitpress_codebook_rabitq", lambda n: pa.array([_is_rabitq(books.get(x, 0)) for x in n.to_pylist()],
                                                             pa.bool_()),
        ["VARCHAR"], "BOOLEAN", side_effects=False)
    udf(con, "bitpress_score_udf", lambda c, q, n, st, b: _score_batch(books, c, q, n, st, b),
        ["BLOB", "FLOAT[]", "VARCHAR", "VARCHAR", "INTEGER"], "DOUBLE", side_effects=False)
    udf(con, "bitpress_store_knn_udf", lambda s_, q, k, b: _store_knn_batch(con, s_, q, k, b),
        ["VARCHAR", "BLOB", "INTEGER", "INTEGER"], "STRUCT(id BIGINT, distance INTEGER)[]",
        side_effects=True)  # reads bitpress.code_segments
    for macro in _MACROS:
        con.execute(macro)
    from . import duckdb_ffn, duckdb_ivf, duckdb_tt

    duckdb_tt.register(con)
    duckdb_ffn.register(con)
    duckdb_ivf.register(con, udf)
    return con


def connect(database: str = ":memory:", **kwargs):
    """``duckdb.connect(...)`` with bitpress's functions registered."""
    import duckdb

    return register(duckdb.connect(database, **kwargs))
