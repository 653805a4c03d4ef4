"""IVF + RaBitQ indexes of DuckDB tables: the DuckDB side of PostgreSQL's ``bitpress_ivf``.

The index is two bitpress tables (schema revision 0010): ``bitpress.ivf_indexes`` (one row per
index: table, columns, metric, lists, bits, rotation seed, dimensions, rows, a checksum of those
parameters) and ``bitpress.ivf_lists`` (per list: the rotated centroid and its rows packed as
BLOBs: ids, DuckDB rowids, RaBitQ codes and their five factors, with a checksum). The arithmetic
is the C core's, the same functions the access method runs (``bitpress.ivf``): seeded k-means on
a sample of 32 rows per list, the seeded rotation, codes of each row's residual to its list's
centroid, and estimates with error bounds.

In SQL (``register(con)`` adds them)::

    SELECT bitpress_ivf_create('docs', 'id', 'embedding', lists := 224, bits := 1, metric := 'cosine');
    SELECT id, distance FROM bitpress_ivf_search('docs', (SELECT embedding FROM docs WHERE id = 1), 10,
                                                 probes := 48);

A search rotates the query once, reads the ``probes`` lists with the nearest centroids (more when
they hold fewer than k rows), and reranks their rows in the order of their lower bound (estimate
minus ``epsilon`` error bounds) with the exact distance, stopping when no lower bound left can
beat the k-th exact distance. Rows come back in exact-distance order with exact distances
(``cosine``: 1 - cosine, ``l2``: Euclidean, ``ip``: minus the inner product, as DuckDB's
``array_cosine_distance``, ``array_distance``, ``array_negative_inner_product``), computed in
double precision from the table's values.

Exactness under writes. DuckDB has no triggers, so every search compares the table with the
index, in two steps:

1. In the query's own transaction: the count and an XOR of hashes of the table's rowids, and the
   table's OID (one scan of the rowids plus a catalog lookup, well under a millisecond per 50,000
   rows here). DuckDB gives an updated LIST/ARRAY row (and a row whose key column is indexed) a
   new rowid, so inserts, deletes and updates of the vector all change it; a table dropped and
   created again has another OID.
2. Only when that changed since the last search on this connection: through a cursor, the table's
   (rowid, id) pairs are read and compared with the index's. Index rows whose pair is gone are
   never returned; rows not in the index (inserted, updated, or renumbered by a checkpoint that
   vacuumed deleted rows) are the delta, whose vectors are read once and searched exactly by
   every query. Every index row whose vector is read is coded again and must give its stored
   bytes (the core is deterministic), else it joins the delta. The rerank reads vectors from
   memory: a connection reads the vector column once (and codes every row again: about 1.7 s for
   50,000 x 384 here), then only rows that changed, and keeps dims x 4 bytes per row.

So the answer is exact for the table as the query sees it, with these limits:

- Changes made in the query's own open transaction and not yet committed (or committed by another
  connection after this transaction began) cannot be read by the cursor: the search raises
  40001 instead of answering; commit first.
- A large delta makes searches slower (each delta row costs an exact distance); ``refresh``
  rebuilds the index (k-means again) and empties it.
- Not seen until the rowids change again, a new connection, or ``refresh``: an UPDATE that
  changes only the id of a row, in place, in a table without a PRIMARY KEY or UNIQUE constraint on
  the id column (DuckDB then keeps its rowid); and a row updated and then moved back onto its old
  rowid by a checkpoint's vacuum with no search of the table in between.
- TEMP tables cannot be indexed (the cursor, another connection, does not see them).

Rows whose vector is NULL (and, for cosine, zero vectors, whose distance is undefined) are not
indexed and never returned.
"""
from __future__ import annotations

import hashlib
import re
import threading

import numpy as np
import pyarrow as pa

from . import _core, errors, ivf
from .tables import bitpress_columns, duckdb_find_table, kind, quote_ident, transaction

SEED = 0x6269747072657373 & 0x7FFFFFFFFFFFFFFF  # the access method's IVF_SEED ("bitpress")
SAMPLE_PER_LIST = 32
KMEANS_ITERS = 10
MAX_LISTS = 32768
DEFAULT_PROBES = 10
DEFAULT_EPSILON = 1.9
_ID_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER")
_VECTOR_TYPE = re.compile(r"^(FLOAT|DOUBLE)(\[\]|\[\d+\])$")


class SerializationError(errors.BitpressError):
    """The table as this query sees it is not the table the index can read (40001)."""

    sqlstate = "40001"


# as for code stores: an unknown index is UnknownCodebookError (42704), a taken name 22023
UnknownIndexError = errors.UnknownCodebookError
DuplicateIndexError = errors.InvalidParameterError


def params_checksum(source, id_column, vector_column, metric, lists, bits, seed, dims, n) -> str:
    """What bitpress.ivf_indexes.checksum holds: SHA-256 (hex) of the index's parameters."""
    text = "\x00".join(str(v) for v in (source, id_column, vector_column, metric, lists, bits, seed, dims, n))
    return hashlib.sha256(text.encode()).hexdigest()


def list_checksum(list_no, n, centroid, ids, rowids, codes, factors) -> str:
    """What bitpress.ivf_lists.checksum holds: SHA-256 (hex) of a list's number, size and bytes."""
    h = hashlib.sha256(f"{list_no}:{n}:".encode())
    for b in (centroid, ids, rowids, codes, factors):
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.hexdigest()


def _require_schema(conn):
    if "name" not in bitpress_columns(conn, "ivf_indexes"):
        from .schema import missing_table

        raise missing_table("bitpress.ivf_indexes", UnknownIndexError)


def split_name(table: str) -> list[str]:
    """The parts of a table reference as SQL reads it: ``docs``, ``main.docs``, ``"My Docs"``,
    ``"we.ird"."a""b"`` (quoted parts as written, unquoted ones as they are)."""
    parts, i, s = [], 0, table.strip()
    while True:
        if s.startswith('"', i):
            j, part = i + 1, []
            while True:
                k = s.find('"', j)
                if k < 0:
                    raise errors.InvalidParameterError(f"unterminated quoted name in {table!r}")
                part.append(s[j:k])
                if s.startswith('"', k + 1):
                    part.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            parts.append("".join(part))
        else:
            k = s.find(".", i)
            part = s[i:] if k < 0 else s[i:k]
            if not part or '"' in part:
                raise errors.InvalidParameterError(f"malformed table name {table!r}")
            parts.append(part.strip())
            i = len(s) if k < 0 else k
        if i >= len(s):
            return parts
        if s[i] != ".":
            raise errors.InvalidParameterError(f"malformed table name {table!r}")
        i += 1


def _source(conn, table: str) -> str:
    """The table DuckDB reads for ``table``, as the index records it: its parts quoted,
    schema.table (the database first when it is not the current one). Unqualified names are
    looked up as DuckDB does (tables.duckdb_find_table, as for stores)."""
    parts = split_name(table)
    if not 1 <= len(parts) <= 3:
        raise errors.InvalidParameterError(f"malformed table name {table!r}")
    found = duckdb_find_table(conn, parts)
    if found:
        return ".".join(quote_ident(p) for p in found)
    raise errors.UndefinedTableError(f'relation "{table}" does not exist (an index reads its table through a '
                                     "connection of its own: TEMP tables and views cannot be indexed)")


def _types(conn, source, *columns):
    import duckdb

    try:
        rel = conn.sql(f"SELECT * FROM {source} LIMIT 0")
    except duckdb.CatalogException:
        raise errors.UndefinedTableError(f"relation {source} does not exist") from None
    types = {c.lower(): (c, str(t)) for c, t in zip(rel.columns, rel.types)}
    out = []
    for col in columns:
        if col.lower() not in types:
            raise errors.UndefinedColumnError(f'column "{col}" of relation {source} does not exist')
        out.append(types[col.lower()])
    return out


def _check_args(metric, bits, lists):
    if metric not in ivf.METRICS:
        raise errors.InvalidParameterError(f"metric must be cosine, ip or l2, got {metric!r}")
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= ivf.MAX_BITS:
        raise errors.InvalidParameterError(f"bits must be between 1 and {ivf.MAX_BITS}, got {bits!r}")
    if lists is not None and (isinstance(lists, bool) or not isinstance(lists, (int, np.integer))
                              or not 1 <= lists <= MAX_LISTS):
        raise errors.InvalidParameterError(f"lists must be between 1 and {MAX_LISTS}, got {lists!r}")


def _read_rows(conn, source, id_column, vector_column, rowids=None):
    """(rowids int64, ids int64, vectors float32 (n, dims)) of the rows whose vector is not NULL
    (of ``rowids`` only, when given), ordered by rowid; the checks of a build."""
    i, v = quote_ident(id_column), quote_ident(vector_column)
    q = f"SELECT rowid, CAST({i} AS BIGINT), CAST({v} AS FLOAT[]) FROM {source} WHERE {v} IS NOT NULL"
    if rowids is not None:
        conn.register("_bitpress_ivf_rowids", pa.table({"r": pa.array(rowids, pa.int64())}))
        try:
            arrow = _arrow(conn.sql(q + " AND rowid IN (SELECT r FROM _bitpress_ivf_rowids) ORDER BY rowid"))
        finally:
            conn.unregister("_bitpress_ivf_rowids")
    else:
        arrow = _arrow(conn.sql(q + " ORDER BY rowid"))
    rid = arrow.column(0).to_numpy().astype(np.int64)
    idc = arrow.column(1)
    if idc.null_count:
        raise errors.NotNullViolationError(f"{source}: {idc.null_count} rows have a vector and a NULL id "
                                           f"({id_column})")
    ids = idc.to_numpy().astype(np.int64)
    vec = arrow.column(2).combine_chunks()
    if len(vec) == 0:
        return rid, ids, None
    lengths = np.diff(np.asarray(vec.offsets, dtype=np.int64))
    if (lengths != lengths[0]).any():
        bad = int(np.nonzero(lengths != lengths[0])[0][0])
        raise errors.DimensionMismatchError(f"{source}.{vector_column} holds vectors of {lengths[0]} and "
                                            f"{lengths[bad]} dimensions (id {ids[bad]})")
    if lengths[0] == 0:
        raise errors.EmptyVectorError(f"{source}.{vector_column} holds empty vectors")
    values = vec.values
    if values.null_count:
        raise errors.NullValueError(f"{source}.{vector_column} holds vectors with NULL elements")
    x = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(vec), int(lengths[0]))
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise errors.NonFiniteError(f"NaN or infinity in {source}.{vector_column} (id {ids[np.argmin(finite)]})")
    return rid, ids, np.ascontiguousarray(x)


def _arrow(rel):
    return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()


def _prepared(x, metric):
    """The vectors as the index codes them: cosine normalized; and which rows it can hold."""
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1)
        return ivf.normalize(x), norms > 0
    return x, np.ones(len(x), bool)


def create(conn, table: str, id_column: str, vector_column: str, *, lists: int | None = None, bits: int = 1,
           metric: str = "cosine", name: str | None = None, seed: int = SEED, replace: bool = False) -> str:
    """Builds an index over ``table.vector_column`` (rows named by ``id_column``: integer, unique,
    not NULL where a vector is); returns its name (default ``<table>_<column>_ivf``). ``lists``
    defaults to about the square root of the rows."""
    if kind(conn) != "duckdb":
        raise TypeError("duckdb_ivf indexes DuckDB tables; in PostgreSQL use CREATE INDEX ... USING bitpress_ivf")
    _check_args(metric, bits, lists)
    _require_schema(conn)
    source = _source(conn, table)
    (idc, id_type), (vc, v_type) = _types(conn, source, id_column, vector_column)
    if id_type not in _ID_TYPES:
        raise errors.DatatypeMismatchError(f"the id column {source}.{idc} is {id_type}; an index needs "
                                           "smallint, integer or bigint ids")
    if not _VECTOR_TYPE.match(v_type):
        raise errors.DatatypeMismatchError(f"the column {source}.{vc} is {v_type}, not FLOAT[] or DOUBLE[] "
                                           "(a list or an array)")
    name = name or f"{split_name(source)[-1]}_{vc}_ivf"
    exists = conn.execute("SELECT count(*) FROM bitpress.ivf_indexes WHERE name = ?", [name]).fetchall()[0][0]
    if exists and not replace:
        raise DuplicateIndexError(f'index "{name}" already exists')
    rid, ids, x = _read_rows(conn, source, idc, vc)
    if x is None:
        raise errors.InvalidParameterError(f"{source}.{vc} holds no vectors: build the index after loading")
    if len(np.unique(ids)) != len(ids):
        raise errors.InvalidParameterError(f"{source}.{idc} is not unique")
    xi, keep = _prepared(x, metric)
    rid, ids, xi = rid[keep], ids[keep], xi[keep]
    n, dims = xi.shape
    nlists = int(lists if lists is not None else max(1, round(np.sqrt(n))))
    nlists = min(nlists, n)
    spherical = metric != "l2"
    xr = ivf.rotate(xi, seed)
    rng = np.random.default_rng(seed)
    sample = xr if n <= nlists * SAMPLE_PER_LIST else xr[np.sort(rng.choice(n, nlists * SAMPLE_PER_LIST,
                                                                             replace=False))]
    centroids = ivf.kmeans(sample, nlists, iters=KMEANS_ITERS, seed=seed & 0x7FFFFFFF, spherical=spherical)
    enc = ivf.encode(xr, centroids, bits, spherical=spherical)
    order = np.lexsort((ids, enc.lists))
    bounds = np.searchsorted(enc.lists[order], np.arange(nlists + 1))
    with transaction(conn):
        conn.execute("DELETE FROM bitpress.ivf_lists WHERE index_name = ?", [name]).fetchall()
        conn.execute("DELETE FROM bitpress.ivf_indexes WHERE name = ?", [name]).fetchall()
        conn.execute("INSERT INTO bitpress.ivf_indexes (name, source, id_column, vector_column, metric, lists, "
                     "bits, seed, dims, n, checksum) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     [name, source, idc, vc, metric, nlists, bits, seed, dims, n,
                      params_checksum(source, idc, vc, metric, nlists, bits, seed, dims, n)]).fetchall()
        for lst in range(nlists):
            rows = order[bounds[lst]:bounds[lst + 1]]
            blobs = (centroids[lst].astype("<f4").tobytes(), ids[rows].astype(">i8").tobytes(),
                     rid[rows].astype(">i8").tobytes(), enc.codes[rows].tobytes(),
                     enc.factors[rows].astype("<f4").tobytes())
            conn.execute("INSERT INTO bitpress.ivf_lists (index_name, list, n, centroid, ids, rowids, codes, "
                         "factors, checksum) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         [name, lst, len(rows), *blobs, list_checksum(lst, len(rows), *blobs)]).fetchall()
    _forget(name)
    return name


def _meta(conn, name):
    res = conn.execute("SELECT * FROM bitpress.ivf_indexes WHERE name = ?", [name])
    rows = res.fetchall()
    if not rows:
        raise UnknownIndexError(f'index "{name}" does not exist')
    return dict(zip([d[0] for d in res.description], rows[0]))


def refresh(conn, name: str) -> str:
    """Rebuilds index ``name`` from its table with the same parameters (k-means again): the delta
    of rows changed since the last build becomes empty."""
    _require_schema(conn)
    m = _meta(conn, name)
    return create(conn, m["source"], m["id_column"], m["vector_column"], lists=m["lists"], bits=m["bits"],
                  metric=m["metric"], name=name, seed=m["seed"], replace=True)


def drop(conn, name: str) -> None:
    _require_schema(conn)
    _meta(conn, name)
    with transaction(conn):
        conn.execute("DELETE FROM bitpress.ivf_lists WHERE index_name = ?", [name]).fetchall()
        conn.execute("DELETE FROM bitpress.ivf_indexes WHERE name = ?", [name]).fetchall()
    _forget(name)


def search(conn, table: str, query, k: int, *, probes: int | None = None, epsilon: float | None = None,
           index: str | None = None) -> list[tuple[int, float]]:
    """The k nearest (id, distance) of ``table``'s index, nearest first: ``bitpress_ivf_search``
    on a connection ``register`` prepared (the query passed as text, the cheapest way to hand
    DuckDB a vector)."""
    from .tables import quote_literal

    q = np.asarray(query, dtype=np.float32).ravel()
    text = "[" + ",".join(repr(float(v)) for v in q) + "]"
    named = "".join(f", {key} := ?" for key, val in (("probes", probes), ("epsilon", epsilon), ("index", index))
                    if val is not None)
    args = [text, k] + [v for v in (probes, epsilon, index) if v is not None]
    # the table as a literal: the macro reads it when the query is bound
    return [tuple(r) for r in conn.execute(f"SELECT id, distance FROM bitpress_ivf_search("
                                           f"{quote_literal(table, False)}, CAST(? AS FLOAT[]), ?{named})",
                                           args).fetchall()]


# --- reading an index -------------------------------------------------------------------------

# Each connection keeps the indexes it searched (its _Searcher); create, refresh and drop bump
# the index's generation, so every connection of the process loads it again. (Only one process
# can write a DuckDB database: bitpress's own functions are the only writers of its index tables.)
_GENERATION: dict = {}
_EPOCH = [0]  # bumped with any generation: which tables have indexes may have changed
_LOCK = threading.Lock()


def _forget(name):
    with _LOCK:
        _GENERATION[name] = _GENERATION.get(name, 0) + 1
        _EPOCH[0] += 1


def _corrupt(name, what):
    return errors.CorruptDataError(f'bitpress_ivf index "{name}": {what}; rebuild it with '
                                   f"SELECT bitpress_ivf_refresh('{name}')")




class _Index:
    """An index's lists as contiguous arrays, and the state of its table last compared."""

    def __init__(self, meta, centroids, offsets, ids, rowids, codes, factors):
        self.meta = meta
        self.metric, self.bits, self.seed = meta["metric"], meta["bits"], meta["seed"]
        self.dims = meta["dims"]
        self.centroids = centroids
        # per list, each its own (aligned) array: the core reads factors 8-byte aligned
        self.offsets, self.ids, self.rowids, self.codes, self.factors = offsets, ids, rowids, codes, factors
        self.state = None  # _State
        self.entry_lists = self.all_codes = self.all_factors = None  # made when first needed
        self.lock = threading.Lock()


class _State:
    """The table as last compared: ``fp`` its rowid fingerprint; ``valid`` which index rows are
    still the table's, ``pos`` their row in ``vectors``; ``delta`` the rows searched exactly."""

    def __init__(self, fp, rowids, ids, vectors, valid, pos, delta):
        self.fp, self.rowids, self.ids, self.vectors = fp, rowids, ids, vectors
        self.valid, self.pos, self.delta = valid, pos, delta
        self.all_valid = bool(valid.all())
        self.norms = np.linalg.norm(vectors.astype(np.float64), axis=1) if len(vectors) else np.empty(0)


def _load(cur, name, meta) -> _Index:
    """The index's lists, every value checked: NULLs, sizes, checksums, the number of lists (XX001)."""
    for col in ("source", "id_column", "vector_column", "metric", "lists", "bits", "seed", "dims", "n",
                "checksum", "created_at"):
        if meta.get(col) is None:
            raise _corrupt(name, f'bitpress.ivf_indexes has a NULL "{col}"')
    if meta["metric"] not in ivf.METRICS or not 1 <= meta["bits"] <= ivf.MAX_BITS or meta["dims"] < 1 \
            or meta["lists"] < 1:
        raise _corrupt(name, "bitpress.ivf_indexes holds parameters bitpress never writes")
    if params_checksum(*(meta[c] for c in ("source", "id_column", "vector_column", "metric", "lists", "bits",
                                           "seed", "dims", "n"))) != meta["checksum"]:
        raise _corrupt(name, "the parameters in bitpress.ivf_indexes do not match their checksum")
    dims, bits, nl = meta["dims"], meta["bits"], meta["lists"]
    cb = ivf.code_bytes(dims, bits)
    rows = cur.execute("SELECT list, n, centroid, ids, rowids, codes, factors, checksum FROM bitpress.ivf_lists "
                       "WHERE index_name = ? ORDER BY list", [name]).fetchall()
    if len(rows) != nl:
        raise _corrupt(name, f"bitpress.ivf_lists holds {len(rows)} lists, the index has {nl}")
    cents, ids, rids, codes, facs, offsets = [], [], [], [], [], [0]
    for expected, row in enumerate(rows):
        lst, n = row[0], row[1]
        for col, value in zip(("list", "n", "centroid", "ids", "rowids", "codes", "factors", "checksum"), row):
            if value is None:
                raise _corrupt(name, f'bitpress.ivf_lists has a NULL "{col}" (list {lst})')
        if lst != expected:
            raise _corrupt(name, f"list {expected} is missing from bitpress.ivf_lists")
        c, i, r, k, f = (bytes(b) for b in row[2:7])
        if n < 0 or len(c) != 4 * dims or len(i) != 8 * n or len(r) != 8 * n or len(k) != cb * n \
                or len(f) != 4 * ivf.FACTORS * n:
            raise _corrupt(name, f"the sizes in bitpress.ivf_lists (list {lst}) do not match its {n} rows of "
                                 f"{dims} dimensions at {bits} bits")
        if list_checksum(lst, n, c, i, r, k, f) != row[7]:
            raise _corrupt(name, f"bitpress.ivf_lists (list {lst}) does not match its checksum")
        cents.append(np.frombuffer(c, "<f4"))
        ids.append(np.frombuffer(i, ">i8"))
        rids.append(np.frombuffer(r, ">i8"))
        codes.append(np.frombuffer(k, np.uint8).reshape(n, cb))
        facs.append(np.frombuffer(f, "<f4").reshape(n, ivf.FACTORS))
        offsets.append(offsets[-1] + n)
    if offsets[-1] != meta["n"]:
        raise _corrupt(name, f"bitpress.ivf_lists holds {offsets[-1]} rows, the index has {meta['n']}")
    return _Index(meta, np.ascontiguousarray(np.stack(cents), np.float32), np.asarray(offsets, np.int64),
                  np.concatenate(ids).astype(np.int64), np.concatenate(rids).astype(np.int64),
                  [np.array(c, np.uint8) for c in codes], [np.array(f, np.float32) for f in facs])


def fingerprint_sql(source: str) -> str:
    """The query of a table's fingerprint: "rows:XOR of the rowids' hashes:the table's OID" (a
    table dropped and created again has another OID, even with the same rows and rowids)."""
    from .tables import quote_literal

    parts = split_name(source)
    db = quote_literal(parts[0], False) if len(parts) == 3 else "current_database()"
    sch, name = (quote_literal(p, False) for p in parts[-2:])
    return (f"SELECT count(*) || ':' || coalesce(bit_xor(hash(rowid)), 0) || ':' || "
            f"(SELECT coalesce(max(table_oid), -1) FROM duckdb_tables() WHERE database_name = {db} "
            f"AND schema_name = {sch} AND table_name = {name}) AS fp FROM {source}")


NO_FINGERPRINT = "SELECT '0:0:-1' AS fp"


def _state(cur, idx: _Index, caller_fp: str | None) -> _State:
    """Compares the table with the index through cursor ``cur`` (see the module's docs)."""
    m = idx.meta
    source, i = m["source"], quote_ident(m["id_column"])
    v = quote_ident(m["vector_column"])
    try:
        arrow = _arrow(cur.sql(f"SELECT rowid, CAST({i} AS BIGINT) FROM {source} WHERE {v} IS NOT NULL "
                               "ORDER BY rowid"))
        fp = cur.execute(fingerprint_sql(source)).fetchall()[0][0]
    except Exception as e:
        if "does not exist" in str(e) or "Catalog" in type(e).__name__:
            raise errors.UndefinedTableError(f'bitpress_ivf index "{m["name"]}": its table {source} does not '
                                             "exist") from None
        raise
    if caller_fp is not None and fp != caller_fp:
        raise SerializationError(
            f"bitpress_ivf_search: {source} as this query sees it differs from its last committed state "
            "(changes not yet committed in this transaction, or committed since it began); commit and retry")
    if arrow.column(1).null_count:
        raise errors.NotNullViolationError(f"{source}: a row has a vector and a NULL id ({m['id_column']})")
    rid = arrow.column(0).to_numpy().astype(np.int64)
    tid = arrow.column(1).to_numpy().astype(np.int64)
    # index rows still the table's: the same (rowid, id) pair
    if len(rid):
        p = np.minimum(np.searchsorted(rid, idx.rowids), len(rid) - 1)
        valid = (rid[p] == idx.rowids) & (tid[p] == idx.ids)
    else:
        p, valid = np.zeros(len(idx.rowids), np.int64), np.zeros(len(idx.rowids), bool)
    old = idx.state
    if old is not None and old.fp.rsplit(":", 1)[-1] != fp.rsplit(":", 1)[-1]:
        old = None  # another table of that name: nothing read from the old one is reused
    # vectors: reuse those of pairs already read, read the others
    vectors = np.empty((len(rid), idx.dims), np.float32)
    have = np.zeros(len(rid), bool)
    if old is not None and len(old.rowids):
        q = np.minimum(np.searchsorted(old.rowids, rid), len(old.rowids) - 1)
        same = (old.rowids[q] == rid) & (old.ids[q] == tid)
        vectors[same] = old.vectors[q[same]]
        have = same
    reused = have.copy()
    need = np.nonzero(~have)[0]
    if len(need):
        if len(need) > len(rid) // 4:
            r2, i2, x2 = _read_rows(cur, source, m["id_column"], m["vector_column"])
        else:
            r2, i2, x2 = _read_rows(cur, source, m["id_column"], m["vector_column"], rowids=rid[need])
        if x2 is not None:
            if x2.shape[1] != idx.dims:
                raise errors.DimensionMismatchError(
                    f"{source}.{m['vector_column']} now holds vectors of {x2.shape[1]} dimensions, the index "
                    f"{idx.dims}")
            q = np.searchsorted(rid, r2)
            ok = (q < len(rid))
            q, r2, i2, x2 = q[ok], r2[ok], i2[ok], x2[ok]
            hit = (rid[q] == r2) & (tid[q] == i2)
            vectors[q[hit]] = x2[hit]
            have[q[hit]] = True
        if not have.all():  # a row changed between the two reads: the caller must retry
            raise SerializationError(f"bitpress_ivf_search: {source} changed while it was read; retry")
    # an index row whose vector was read now is checked against its code: coded again, it must
    # give the same bytes (the core is deterministic), else the row is searched exactly (delta)
    bad = np.zeros(len(valid), bool) if old is None else old.bad.copy()
    fresh = np.nonzero(valid & ~reused[p])[0] if len(rid) else np.empty(0, np.int64)
    if len(fresh):
        bad[fresh] = ~_codes_match(idx, fresh, vectors[p[fresh]])
    valid &= ~bad
    pos = np.where(valid, p, -1)
    covered = np.zeros(len(rid), bool)
    covered[pos[valid]] = True
    delta = np.nonzero(~covered)[0]
    if idx.metric == "cosine" and len(delta):  # zero vectors have no cosine distance
        delta = delta[np.linalg.norm(vectors[delta], axis=1) > 0]
    state = _State(fp, rid, tid, vectors, valid, pos, delta)
    state.bad = bad
    return state


def _codes_match(idx, entries, x):
    """Whether rows x, coded as index rows ``entries`` are (their lists), give their stored bytes."""
    if idx.entry_lists is None:
        idx.entry_lists = np.repeat(np.arange(len(idx.centroids), dtype=np.int32), np.diff(idx.offsets))
        idx.all_codes = np.concatenate(idx.codes) if idx.codes else np.empty((0, 0), np.uint8)
        idx.all_factors = np.concatenate(idx.factors) if idx.factors else np.empty((0, ivf.FACTORS), np.float32)
    ok = np.ones(len(entries), bool)
    for start in range(0, len(entries), 65536):
        e = entries[start:start + 65536]
        xi, nonzero = _prepared(np.ascontiguousarray(x[start:start + 65536], np.float32), idx.metric)
        enc = ivf.encode(ivf.rotate(xi, idx.seed), idx.centroids, idx.bits, spherical=idx.metric != "l2",
                         lists=idx.entry_lists[e])
        ok[start:start + len(e)] = (nonzero & (enc.codes == idx.all_codes[e]).all(axis=1)
                                    & (enc.factors.view(np.uint32) == idx.all_factors[e].view(np.uint32)).all(axis=1))
    return ok


def _exact(x, q, metric, norms=None, qnorm=None):
    """The index's distances (l2 squared) of rows x to q, in double precision."""
    x64 = x.astype(np.float64)
    if metric == "l2":
        d = x64 - q
        return np.einsum("ij,ij->i", d, d)
    dot = x64 @ q
    if metric == "ip":
        return -dot
    return 1.0 - dot / (norms * qnorm)


def _shown(d, metric):
    """The distance a user sees: Euclidean for l2 (the index works with its square)."""
    return np.sqrt(np.maximum(d, 0.0)) if metric == "l2" else d


def search_index(idx: _Index, state: _State, query, k: int, probes: int | None = None,
                 epsilon: float | None = None):
    """(rowids, ids, distances) of the k nearest rows, ascending by (distance, id)."""
    from .kernels import check_count

    k = check_count("k", k)
    probes = DEFAULT_PROBES if probes is None else probes
    if isinstance(probes, bool) or not isinstance(probes, (int, np.integer)) or probes < 1:
        raise errors.InvalidParameterError(f"probes must be at least 1, got {probes!r}")
    epsilon = DEFAULT_EPSILON if epsilon is None else float(epsilon)
    if not np.isfinite(epsilon) or epsilon < 0:
        raise errors.InvalidParameterError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    q = np.asarray(query, dtype=np.float32).ravel()
    if q.shape[0] != idx.dims:
        raise errors.DimensionMismatchError(f"the query has {q.shape[0]} dimensions, the index {idx.dims}")
    if not np.isfinite(q).all():
        raise errors.NonFiniteError("NaN or infinity in the query")
    metric = idx.metric
    q64 = q.astype(np.float64)
    qnorm = float(np.linalg.norm(q64))
    if metric == "cosine":
        if qnorm == 0:
            raise errors.InvalidParameterError("a zero query has no cosine distance")
        qi = (q / np.float32(qnorm)).astype(np.float32)
    else:
        qi = q
    qr = ivf.rotate(qi[None, :], idx.seed)[0]
    c = idx.centroids
    if metric == "l2":
        cd = ((c - qr) ** 2).sum(axis=1)
    else:
        cd = -(c @ qr)
    order = np.argsort(cd, kind="stable")
    sizes = np.diff(idx.offsets)
    valid = state.valid
    # the probes nearest lists, then more until they hold k rows still the table's
    counts = np.add.reduceat(valid.astype(np.int64), idx.offsets[:-1]) if len(valid) else np.zeros(len(c), int)
    counts = np.where(sizes > 0, counts, 0)
    have = np.cumsum(counts[order])
    need = k - len(state.delta)
    take = max(min(probes, len(order)), int(np.searchsorted(have, need) + 1) if need > 0 else 0)
    take = min(take, len(order))
    lists = order[:take]
    lists = lists[sizes[lists] > 0]
    starts, lens = idx.offsets[lists], sizes[lists]
    total = int(lens.sum())
    est, bound = np.empty(total, np.float64), np.empty(total, np.float64)
    at = 0
    mid = ivf.metric_id(metric)
    for lst, n in zip(lists.tolist(), lens.tolist()):  # one core call per list (its own centroid)
        _core.ivf_estimate_into(qr, c[lst], idx.codes[lst], idx.factors[lst], n, idx.dims, idx.bits, mid,
                                est[at:at + n], bound[at:at + n])
        at += n
    lb = est - epsilon * bound
    # each estimate's index row: the lists' ranges one after the other
    ent = np.arange(total, dtype=np.int64) + np.repeat(starts - (np.cumsum(lens) - lens), lens)
    if not state.all_valid:
        ok = valid[ent]
        lb, ent = lb[ok], ent[ok]
    norms = state.norms
    # the delta: exact distances
    dpos = state.delta
    best_d = _exact(state.vectors[dpos], q64, metric, norms[dpos], qnorm) if len(dpos) else np.empty(0)
    best_p = dpos.astype(np.int64)
    if len(lb):
        # candidates by lower bound: the first few hundred sorted (a partition), the rest only when needed
        first = min(len(lb), max(32 * k, 512))
        if first < len(lb):
            part = np.argpartition(lb, first)
            head = part[:first]
            head = head[np.argsort(lb[head])]
            rest_lb = lb[part[first]]  # the smallest bound outside the head
        else:
            head, rest_lb = np.argsort(lb), np.inf
        cand, cand_lb = ent[head], lb[head]
        start, batch, full = 0, max(2 * k, 64), first == len(lb)
        while True:
            if start >= len(cand):
                if full or (len(best_d) >= k and best_d.max() <= rest_lb):
                    break
                srt = np.argsort(lb)[first:]  # the head did not settle it: every other candidate, in order
                cand, cand_lb, start, full = ent[srt], lb[srt], 0, True
                continue
            stop = min(start + batch, len(cand))
            p = state.pos[cand[start:stop]]
            d = _exact(state.vectors[p], q64, metric, norms[p], qnorm)
            best_d, best_p = np.concatenate([best_d, d]), np.concatenate([best_p, p])
            if len(best_d) > k:
                keep = np.argpartition(best_d, k - 1)[:k]
                best_d, best_p = best_d[keep], best_p[keep]
            start = stop
            nxt = cand_lb[start] if start < len(cand) else (np.inf if full else rest_lb)
            if len(best_d) >= k and best_d.max() <= nxt:
                break
            batch *= 2
    ids = state.ids[best_p]
    srt = np.lexsort((ids, best_d))[:k]
    return state.rowids[best_p[srt]], ids[srt], _shown(best_d[srt], metric)


# --- the SQL side -----------------------------------------------------------------------------

def _resolve(cur, table, index, column):
    """The name of the index a search on ``table`` (``index``, ``column``: optional) uses."""
    if index is not None:
        _meta(cur, index)
        return index
    source = _source(cur, table)
    rows = cur.execute("SELECT name, vector_column FROM bitpress.ivf_indexes WHERE source = ? ORDER BY name",
                       [source]).fetchall()
    if column is not None:
        rows = [r for r in rows if r[1].lower() == column.lower()]
    if not rows:
        raise UnknownIndexError(f"no bitpress_ivf index on {source}" + (f" ({column})" if column else ""))
    if len(rows) > 1:
        raise errors.InvalidParameterError(f"{source} has {len(rows)} bitpress_ivf indexes "
                                           f"({', '.join(r[0] for r in rows)}): name one with index := ...")
    return rows[0][0]


class _Searcher:
    """A connection's searches: the indexes it resolved and loaded, and their tables' state."""

    def __init__(self, con):
        self.con = con
        self.names = {}    # (table, index, column) -> index name
        self.indexes = {}  # index name -> (generation, _Index)
        self.usable_cache = {}

    def index(self, table, index, column):
        key = (table, index, column)
        name = self.names.get(key)
        if name is not None:
            hit = self.indexes.get(name)
            if hit is not None and hit[0] == _GENERATION.get(name, 0):
                return hit[1]
        gen = _GENERATION.get(name, 0) if name is not None else None
        cur = self.con.cursor()
        try:
            _require_schema(cur)
            name = _resolve(cur, table, index, column)
            if gen is None or self.names.get(key) != name:
                gen = _GENERATION.get(name, 0)
            idx = _load(cur, name, _meta(cur, name))
        finally:
            cur.close()
        if len(self.names) > 1000:
            self.names.clear()
        self.names[key] = name
        self.indexes[name] = (gen, idx)
        return idx

    def indexed(self, table, column=None, metric=None):
        """The index bitpress_knn (column and metric given) or a fingerprint (any index) would use
        for ``table``, or None; cached until an index is created, refreshed or dropped. Never
        raises: a name that is no table (a view, a DataFrame, a file) has no index."""
        return self._indexed(table, column, metric)[0]

    def source(self, table):
        """The recorded source of a table with an index (as indexed() found it)."""
        return self._indexed(table, None, None)[1]

    def _indexed(self, table, column, metric):
        key = ("indexed", table, column, metric)
        hit = self.usable_cache.get(key)
        if hit is not None and hit[0] == _EPOCH[0]:
            return hit[1:]
        epoch, name, source = _EPOCH[0], None, None
        cur = self.con.cursor()
        try:
            if "name" in bitpress_columns(cur, "ivf_indexes"):
                source = _source(cur, table)
                rows = cur.execute("SELECT name, vector_column, metric FROM bitpress.ivf_indexes WHERE source = ? "
                                   "ORDER BY name", [source]).fetchall()
                rows = [r for r in rows if (column is None or r[1].lower() == column.lower())
                        and (metric is None or r[2] == metric)]
                name = rows[0][0] if rows else None
        except Exception:  # noqa: BLE001 - not a table bitpress can index: no index
            name = None
        finally:
            cur.close()
        if len(self.usable_cache) > 1000:
            self.usable_cache.clear()
        self.usable_cache[key] = (epoch, name, source if name is not None else None)
        return name, (source if name is not None else None)

    def search(self, table, index, column, query, k, probes, epsilon, fp):
        idx = self.index(table, index, column)
        with idx.lock:
            if idx.state is None or idx.state.fp != fp:
                cur = self.con.cursor()
                try:
                    idx.state = _state(cur, idx, fp)
                finally:
                    cur.close()
            state = idx.state
        return search_index(idx, state, query, k, probes, epsilon)


_RESULT = pa.list_(pa.struct([("id", pa.int64()), ("distance", pa.float64()), ("row_id", pa.int64())]))


def _search_batch(searcher, table, index, column, query, k, probes, epsilon, fp):
    from .duckdb import _list_rows

    values, offsets, lengths = _list_rows(query, "query")
    out = []
    for r, (t, ix, col, kk, pr, ep, f) in enumerate(zip(*(a.to_pylist() for a in (table, index, column, k, probes,
                                                                                   epsilon, fp)))):
        if t is None:
            raise errors.NullValueError("the table must not be NULL")
        rowids, ids, dist = searcher.search(t, ix, col, values[offsets[r]:offsets[r + 1]], kk, pr, ep, f)
        out.append({"id": ids, "distance": dist, "row_id": rowids})
    if len(out) == 1:  # the usual case: one query
        o = out[0]
        values = pa.StructArray.from_arrays([pa.array(o["id"], pa.int64()), pa.array(o["distance"], pa.float64()),
                                             pa.array(o["row_id"], pa.int64())], fields=list(_RESULT.value_type))
        return pa.ListArray.from_arrays(pa.array([0, len(o["id"])], pa.int32()), values, type=_RESULT)
    return pa.array([[{"id": int(i), "distance": float(d), "row_id": int(w)}
                      for i, d, w in zip(o["id"], o["distance"], o["row_id"])] for o in out], type=_RESULT)


def _usable_batch(searcher, table, column, metric):
    return pa.array([t is not None and c is not None and m is not None and searcher.indexed(t, c, m) is not None
                     for t, c, m in zip(table.to_pylist(), column.to_pylist(), metric.to_pylist())], pa.bool_())


def _rows_sql_batch(searcher, table, column, metric):
    """The rows of table with their rowid when bitpress_knn uses an index on it, else none."""
    from .tables import quote_literal

    out = []
    for t, c, m in zip(table.to_pylist(), column.to_pylist(), metric.to_pylist()):
        name = searcher.indexed(t, c, m) if None not in (t, c, m) else None
        if name is None:
            out.append(f"SELECT NULL::BIGINT AS _bitpress_rowid, * FROM query_table({quote_literal(t or '', False)}) "
                       "LIMIT 0")
        else:
            out.append(f"SELECT rowid AS _bitpress_rowid, * FROM {searcher.source(t)}")
    return pa.array(out, pa.string())


def _fp_sql_batch(searcher, table):
    """What bitpress_ivf_fingerprint counts: the table's rowids when it has an index, else nothing
    (a name that is no table then still binds: a search of it says it has no index)."""
    out = []
    for t in table.to_pylist():
        if t is not None and searcher.indexed(t) is not None:
            out.append(fingerprint_sql(searcher.source(t)))
        else:
            out.append(NO_FINGERPRINT)
    return pa.array(out, pa.string())


def _create_batch(con, table, id_column, vector_column, lists, bits, metric, name):
    out = []
    for t, i, v, li, b, m, nm in zip(*(a.to_pylist() for a in (table, id_column, vector_column, lists, bits,
                                                               metric, name))):
        cur = con.cursor()
        try:
            out.append(create(cur, t, i, v, lists=li, bits=b, metric=m, name=nm))
        finally:
            cur.close()
    return pa.array(out, pa.string())


def _refresh_batch(con, name):
    out = []
    for nm in name.to_pylist():
        cur = con.cursor()
        try:
            out.append(refresh(cur, nm))
        finally:
            cur.close()
    return pa.array(out, pa.string())


def _drop_batch(con, name):
    out = []
    for nm in name.to_pylist():
        cur = con.cursor()
        try:
            drop(cur, nm)
            out.append(nm)
        finally:
            cur.close()
    return pa.array(out, pa.string())


MACROS = ["""
CREATE OR REPLACE TEMP MACRO bitpress_ivf_create(tbl, id_column, vector_column, lists := NULL, bits := 1,
        metric := 'cosine', name := NULL) AS
    bitpress_ivf_create_udf(tbl, id_column, vector_column, CAST(lists AS INTEGER), CAST(bits AS INTEGER),
                            metric, CAST(name AS VARCHAR))
""", """
CREATE OR REPLACE TEMP MACRO bitpress_ivf_refresh(name) AS bitpress_ivf_refresh_udf(name)
""", """
CREATE OR REPLACE TEMP MACRO bitpress_ivf_drop(name) AS bitpress_ivf_drop_udf(name)
""", """
CREATE OR REPLACE TEMP MACRO bitpress_ivf_fingerprint(tbl) AS
    -- rows, XOR of the rowids' hashes and the table's OID, in the calling query's transaction
    -- (query_table hides rowid: query() reads the table bitpress_ivf_fp_sql names)
    (SELECT fp FROM query(bitpress_ivf_fp_sql(tbl)))
""", """

CREATE OR REPLACE TEMP MACRO bitpress_ivf_hits(tbl, query, k, probes := NULL, epsilon := NULL, index := NULL,
        vector_column := NULL) AS
    -- the k nearest rows as a list of (id, distance, row_id), nearest first
    bitpress_ivf_search_udf(tbl, CAST(index AS VARCHAR), CAST(vector_column AS VARCHAR),
                            CAST(query AS FLOAT[]), CAST(k AS INTEGER), CAST(probes AS INTEGER),
                            CAST(epsilon AS DOUBLE), bitpress_ivf_fingerprint(tbl))
""", """
CREATE OR REPLACE TEMP MACRO bitpress_ivf_search(tbl, query, k, probes := NULL, epsilon := NULL, index := NULL,
        vector_column := NULL) AS TABLE
    SELECT id, distance FROM (
        SELECT unnest(bitpress_ivf_hits(tbl, query, k, probes := probes, epsilon := epsilon, index := index,
                                        vector_column := vector_column), recursive := true))
    ORDER BY distance, id
"""]


def register(con, udf):
    """Adds bitpress_ivf_create / _refresh / _drop / _search to a connection (``udf``: duckdb.udf)."""
    searcher = _Searcher(con)
    udf(con, "bitpress_ivf_create_udf", lambda t, i, v, li, b, m, nm: _create_batch(con, t, i, v, li, b, m, nm),
        ["VARCHAR", "VARCHAR", "VARCHAR", "INTEGER", "INTEGER", "VARCHAR", "VARCHAR"], "VARCHAR",
        side_effects=True, null_handling="special")
    udf(con, "bitpress_ivf_refresh_udf", lambda n: _refresh_batch(con, n), ["VARCHAR"], "VARCHAR",
        side_effects=True)
    udf(con, "bitpress_ivf_drop_udf", lambda n: _drop_batch(con, n), ["VARCHAR"], "VARCHAR", side_effects=True)
    udf(con, "bitpress_ivf_search_udf",
        lambda t, ix, c, q, k, p, e, f: _search_batch(searcher, t, ix, c, q, k, p, e, f),
        ["VARCHAR", "VARCHAR", "VARCHAR", "FLOAT[]", "INTEGER", "INTEGER", "DOUBLE", "VARCHAR"],
        "STRUCT(id BIGINT, distance DOUBLE, row_id BIGINT)[]", side_effects=True, null_handling="special")
    # read when a query is planned (pure for DuckDB: folded to constants, so that bitpress_knn's
    # unused half is pruned and query() gets its text)
    udf(con, "bitpress_ivf_usable", lambda t, c, m: _usable_batch(searcher, t, c, m),
        ["VARCHAR", "VARCHAR", "VARCHAR"], "BOOLEAN", side_effects=False, null_handling="special")
    udf(con, "bitpress_ivf_rows_sql", lambda t, c, m: _rows_sql_batch(searcher, t, c, m),
        ["VARCHAR", "VARCHAR", "VARCHAR"], "VARCHAR", side_effects=False, null_handling="special")
    udf(con, "bitpress_ivf_fp_sql", lambda t: _fp_sql_batch(searcher, t), ["VARCHAR"], "VARCHAR",
        side_effects=False, null_handling="special")
    for macro in MACROS:
        con.execute(macro)
