"""bitpress in DuckDB: ``register(con)`` adds ``binarize`` and ``hamming`` to a connection.

The functions are Arrow UDFs: DuckDB hands over whole batches (2048 rows), and each batch
is one call into the same C core the PostgreSQL extension runs. Codes are ``BLOB`` values
holding exactly the bytes of a PostgreSQL ``bit(n)`` code (MSB first, zero padding at the
end); ``code_bytes()`` / ``code_from_bytes()`` convert on the PostgreSQL side.

Why BLOB and not DuckDB's ``BIT``: DuckDB stores a ``BIT`` with a leading byte that counts
padding bits and puts the padding at the *front* of the first data byte, PostgreSQL at the
*end* of the last; Arrow has no bit-string type, so a BLOB is the one form that crosses
engines, Arrow and numpy without conversion.

DuckDB keeps Python UDFs in the database's catalog, which every connection to the same file in
one process shares, while macros live per connection. So the pure functions (``hamming``,
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

_MACROS = ["""
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
CREATE OR REPLACE TEMP MACRO bitpress_score(code, query, codebook, books := 'bitpress.codebooks') AS
        bitpress_score_udf(code, CAST(query AS FLOAT[]), codebook, bitpress_stamp(codebook, 0, books := books)),
    (code, query, codebook, version, books := 'bitpress.codebooks') AS
        bitpress_score_udf(code, CAST(query AS FLOAT[]), codebook,
                           bitpress_stamp(codebook, CAST(version AS INTEGER), books := books))
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
         ELSE binarize(bitpress_query(query), CAST(codebook AS VARCHAR)) END
""", """
CREATE OR REPLACE TEMP MACRO bitpress_scoring(scoring) AS
    CASE WHEN scoring IN ('hamming', 'asymmetric') THEN scoring
         ELSE error('scoring must be hamming or asymmetric, got ' || coalesce(scoring, 'NULL')) END
""", """
CREATE OR REPLACE TEMP MACRO bitpress_rank(code, query, codebook, k, oversample, scoring) AS
    -- stage-1 order of a code: Hamming distance to the query's code, or minus the asymmetric score
    -- (stamp '': the codebook is looked up per batch, so that this macro binds without the
    -- bitpress.codebooks table when only Hamming ranking is used)
    CASE WHEN bitpress_scoring(scoring) = 'asymmetric'
         THEN -bitpress_score_udf(code, (SELECT CAST(bitpress_query(query) AS FLOAT[])),
                                  coalesce((SELECT CAST(codebook AS VARCHAR) WHERE bitpress_pool(k, oversample) > 0),
                                           error('asymmetric scoring needs a codebook with reconstruction levels')),
                                  '')
         ELSE hamming(code, (SELECT bitpress_query_code(query, codebook, k, oversample))) END
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
        oversample := 4, codebook := NULL, metric := 'cosine', scoring := 'hamming') AS TABLE
    SELECT * EXCLUDE (_bitpress_v) FROM (
        SELECT *, CAST(COLUMNS(lambda c: c = vector_column) AS FLOAT[]) AS _bitpress_v
        FROM (SELECT * FROM query_table(tbl)
              ORDER BY bitpress_rank(COLUMNS(lambda c: c = code_column), query, codebook, k, oversample,
                                     scoring)
              LIMIT greatest(CAST(k AS BIGINT) * oversample, 1)))
    ORDER BY bitpress_distance(_bitpress_v, query, metric)
    LIMIT greatest(k, 1)  -- not k: DuckDB skips a LIMIT 0 plan without running the checks
""", """
CREATE OR REPLACE TEMP MACRO bitpress_knn_codes(tbl, code_column, query, k,
        oversample := 4, codebook := NULL, scoring := 'hamming') AS TABLE
    SELECT * FROM (SELECT * FROM query_table(tbl)
                   ORDER BY bitpress_rank(COLUMNS(lambda c: c = code_column), query, codebook, k,
                                          oversample, scoring)
                   LIMIT greatest(CAST(k AS BIGINT) *
                                  CASE WHEN codebook IS NULL OR scoring = 'asymmetric' THEN 1 ELSE oversample END, 1))
    ORDER BY CASE WHEN codebook IS NULL OR scoring = 'asymmetric' THEN 0
                  ELSE -bitpress_score_udf(COLUMNS(lambda c: c = code_column), CAST(query AS FLOAT[]),
                                           CAST(codebook AS VARCHAR), '') END
    LIMIT greatest(k, 1)
""", """
CREATE OR REPLACE TEMP MACRO bitpress_knn_store(tbl, store, id_column, vector_column, query, k,
        oversample := 4, codebook := NULL, metric := 'cosine') AS TABLE
    -- bitpress_knn with its Hamming stage taken from a packed code store over tbl
    SELECT * EXCLUDE (_bitpress_v) FROM (
        SELECT *, CAST(COLUMNS(lambda c: c = vector_column) AS FLOAT[]) AS _bitpress_v
        FROM query_table(tbl)
        WHERE COLUMNS(lambda c: c = id_column) IN (
            SELECT id FROM bitpress_store_knn(store, (SELECT bitpress_query_code(query, codebook, k, oversample)),
                                              greatest(CAST(k AS BIGINT) * oversample, 1))))
    ORDER BY bitpress_distance(_bitpress_v, query, metric)
    LIMIT greatest(k, 1)
""", """
CREATE OR REPLACE TEMP MACRO bitpress_store_knn(store, query, k) AS TABLE
    SELECT unnest(bitpress_store_knn_udf(store, CAST(bitpress_query(query) AS BLOB), CAST(k AS INTEGER)),
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


def _codes_array(codes_by_row, n):
    """A binary Arrow array from one uint8 code per row (equal lengths: zero copy)."""
    if isinstance(codes_by_row, np.ndarray):
        nbytes = codes_by_row.shape[1]
        offsets = (np.arange(n + 1, dtype=np.int32) * nbytes)
        return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets),
                                                     pa.py_buffer(np.ascontiguousarray(codes_by_row))])
    return pa.array([c.tobytes() for c in codes_by_row], type=pa.binary())


def _binarize_batch(v, t=None):
    values, offsets, lengths = _list_rows(v, "vector")
    n = len(lengths)
    if n == 0:
        return pa.array([], type=pa.binary())
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
        return _codes_array(_binarize(x, thr), n)
    # vectors of several lengths in one batch: one core call per length
    out = [None] * n
    for dim in dims:
        rows = np.nonzero(lengths == dim)[0]
        x = _gather(values, offsets, rows, int(dim))
        thr = None if t is None else _gather(tvalues, toffsets, rows, int(dim))
        codes = _binarize(x, thr)
        for i, r in enumerate(rows):
            out[r] = codes[i]
    return _codes_array(out, n)


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


def _hamming_batch(a, b):
    da, oa, la = _binary_rows(a)
    db, ob, lb = _binary_rows(b)
    n = len(la)
    if n == 0:
        return pa.array([], type=pa.int32())
    bad = np.nonzero(la != lb)[0]
    if len(bad):
        r = int(bad[0])
        _core.raise_error(_core.ERR_BIT_LENGTH_MISMATCH, int(la[r]) * 8, int(lb[r]) * 8)
    nbytes = int(la[0])
    if (la == nbytes).all():
        ca = da[oa[0]:oa[0] + n * nbytes].reshape(n, nbytes)
        cb = db[ob[0]:ob[0] + n * nbytes].reshape(n, nbytes)
        # row by row even for a constant query: checking for one costs more than the kernel
        return pa.array(_hamming(ca, cb).astype(np.int32))
    d = [_hamming(da[oa[i]:oa[i + 1]], db[ob[i]:ob[i + 1]]) for i in range(n)]
    return pa.array(np.asarray(d, dtype=np.int32))


class _Codebooks:
    """The codebooks one connection has used, checked against bitpress.codebooks per batch.

    A batch costs one indexed lookup of (version, created_at) through a cursor of the same
    database; the parameters are fetched and parsed only when they changed.
    """

    def __init__(self, con):
        self.con = con
        self.cache = {}

    def get(self, name, version, stamp=None):
        """The stored form of codebook ``name`` (``version`` 0: the latest). With ``stamp``
        ("version:hash", computed once per query by the bitpress_stamp macro) a cached copy
        with that stamp is used without asking the table."""
        if stamp is not None:
            hit = self.cache.get((name, "stamp", stamp))
            if hit is not None:
                return hit
            blob = self.get(name, int(stamp.split(":")[0]))
            self.cache[(name, "stamp", stamp)] = blob
            return blob
        cur = self.con.cursor()
        try:
            q = "SELECT version, CAST(created_at AS VARCHAR) FROM bitpress.codebooks WHERE name = ?"
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
            params = cur.execute("SELECT params FROM bitpress.codebooks WHERE name = ? AND version = ?",
                                 [name, row[0]]).fetchone()[0]
        finally:
            cur.close()
        errors.stored(params, "bitpress.codebooks", f'codebook "{name}" version {row[0]}', "params")
        blob = np.frombuffer(bytes(params), dtype=np.uint8).copy()  # aligned for the core
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
        return pa.array([], type=pa.binary())

    def prepare(key):
        blob = books.get(*key)
        return _core.codebook_shape(blob)[0], _core.ERR_CODEBOOK_DIM_MISMATCH, lambda m: encode(blob, m)

    return _codes_array(map_groups(v, (name, version), prepare), len(v))


def _score_batch(books, code, q, name, stamp):
    from .kernels import asymmetric_scores

    data, offsets, lengths = _binary_rows(code)
    qvalues, qoffsets, qlengths = _list_rows(q, "query")
    n = len(lengths)
    out = np.empty(n, dtype=np.float64)
    for (nm, st), rows in _groups(name, stamp).items():
        blob = books.get(nm, 0, st or None)
        dims, _, bits, _ = _core.codebook_shape(blob)
        nbytes = (bits + 7) // 8
        bad = rows[lengths[rows] != nbytes]
        if len(bad):
            _core.raise_error(_core.ERR_BIT_LENGTH_MISMATCH, int(lengths[bad[0]]) * 8, bits)
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


def _store_knn_batch(con, store, query, k):
    """One k-NN per row (usually one row: constant arguments) over a packed store."""
    from .stores import _duckdb_knn

    out = []
    for s, q, kk in zip(store.to_pylist(), query.to_pylist(), k.to_pylist()):
        kk = check_count("k", kk)
        cur = con.cursor()
        try:
            rows = _duckdb_knn(con, s, np.frombuffer(q, dtype=np.uint8), kk, cursor=cur)
        finally:
            cur.close()
        out.append([{"id": i, "distance": d} for i, d in rows])
    return pa.array(out, type=_KNN_TYPE)


_SERIAL = itertools.count(1)


def udf(con, name: str, fn, params, returns, *, reads_tables: bool = True, **kwargs):
    """Registers an Arrow UDF: ``reads_tables`` ones under a per-connection name behind a TEMP
    macro ``name``; pure ones once per database (a second connection finds them there)."""
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
    (``FLOAT[]``, ``DOUBLE[]``, ``FLOAT[384]`` ...), the result a BLOB code.
    ``hamming(a, b)``: INTEGER number of differing bits of two BLOB codes.
    ``binarize(v, 'name'[, version])``: code under a codebook stored in bitpress.codebooks.
    ``bitpress_score(code, query, 'name'[, version])``: asymmetric score (higher is closer).
    ``bitpress_knn('table', 'code_col', 'vector_col', query, k[, oversample := 4,
    codebook := 'name', metric := 'cosine'])`` and ``bitpress_knn_codes('table', 'code_col',
    query, k[, oversample, codebook])``: table macros returning the k nearest rows.
    """
    books = _Codebooks(con)
    udf(con, "bitpress_binarize_sign", _binarize_sign_batch, ["FLOAT[]"], "BLOB",
        reads_tables=False, side_effects=False)
    udf(con, "bitpress_binarize", _binarize_batch, ["FLOAT[]", "FLOAT[]"], "BLOB",
        reads_tables=False, side_effects=False)
    # a real function, not a macro: it overloads DuckDB's own hamming(VARCHAR, VARCHAR)
    udf(con, "hamming", _hamming_batch, ["BLOB", "BLOB"], "INTEGER", reads_tables=False,
        side_effects=False)
    udf(con, "bitpress_encode", lambda v, n, ver: _encode_batch(books, v, n, ver),
        ["FLOAT[]", "VARCHAR", "INTEGER"], "BLOB", side_effects=False)
    udf(con, "bitpress_score_udf", lambda c, q, n, st: _score_batch(books, c, q, n, st),
        ["BLOB", "FLOAT[]", "VARCHAR", "VARCHAR"], "DOUBLE", side_effects=False)
    udf(con, "bitpress_store_knn_udf", lambda s_, q, k: _store_knn_batch(con, s_, q, k),
        ["VARCHAR", "BLOB", "INTEGER"], "STRUCT(id BIGINT, distance INTEGER)[]",
        side_effects=True)  # reads bitpress.code_segments
    for macro in _MACROS:
        con.execute(macro)
    from . import duckdb_ffn, duckdb_tt

    duckdb_tt.register(con)
    duckdb_ffn.register(con)
    return con


def connect(database: str = ":memory:", **kwargs):
    """``duckdb.connect(...)`` with bitpress's functions registered."""
    import duckdb

    return register(duckdb.connect(database, **kwargs))
