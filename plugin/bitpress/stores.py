"""Packed code stores: a table's codes kept as segments of many codes per row, scanned by one
C call per segment with a bounded heap (exact Hamming k-NN at memory speed).

PostgreSQL: ``bitpress_store_create(...)`` in SQL (this module calls it); statement triggers
record every insert, update and delete in ``bitpress.code_delta``, which queries fold in, so a
store is always exact. DuckDB has no triggers: a DuckDB store is a snapshot of the table when
it was built, and ``rebuild()`` brings it up to date (``knn`` says so in its docs).
"""
from __future__ import annotations

import threading

import numpy as np

from . import _core, errors
from .tables import bitpress_columns, duckdb_find_table, fetchall, kind, quoted, transaction

SEGMENT_CODES = 16384


def create(conn, name: str, table: str, id_column: str, code_column: str,
           segment_codes: int = SEGMENT_CODES) -> int:
    """Creates store ``name`` over ``table.code_column`` (row ids from ``id_column``, unique
    and bigint-castable); returns the number of codes stored."""
    if kind(conn) == "pg":
        from psycopg import sql

        # the name as a quoted identifier, so regclass reads "Docs" or 'a"b' as written
        rel = sql.Identifier(*table.split(".")).as_string(conn)
        return conn.execute("SELECT bitpress_store_create(%s, %s::regclass, %s, %s, %s)",
                            (name, rel, id_column, code_column, segment_codes)).fetchone()[0]
    if isinstance(segment_codes, bool) or not isinstance(segment_codes, int) or segment_codes < 1:
        raise errors.InvalidParameterError(f"segment_codes must be at least 1, got {segment_codes!r}")
    # bits is set by the first rebuild (1 until then: the table's check wants a positive size);
    # the source is recorded qualified, so that no other schema's table of that name is read
    conn.execute("INSERT INTO bitpress.code_stores (name, source, id_column, code_column, bits, segment_codes) "
                 "VALUES (?, ?, ?, ?, 1, ?)", [name, _duckdb_source(conn, table), id_column, code_column,
                                               segment_codes]).fetchall()
    try:
        return rebuild(conn, name)
    except Exception:
        conn.execute("DELETE FROM bitpress.code_stores WHERE name = ?", [name]).fetchall()
        raise


def _store(conn, name):
    rows = fetchall(conn, "SELECT source, id_column, code_column, bits, segment_codes "
                          "FROM bitpress.code_stores WHERE name = %s", [name])
    if not rows:
        raise errors.UnknownCodebookError(f'code store "{name}" does not exist')
    return rows[0]


def rebuild(conn, name: str) -> int:
    """Rewrites the segments from the table (and, in PostgreSQL, folds the delta in)."""
    if kind(conn) == "pg":
        return conn.execute("SELECT bitpress_store_rebuild(%s)", (name,)).fetchone()[0]
    from .duckdb import _binary_rows, _bit_rows

    source, id_column, code_column, _, segment_codes = _store(conn, name)
    id_type, code_type = _column_types(conn, name, source, id_column, code_column)
    if id_type not in _ID_TYPES:  # two DOUBLE or DECIMAL ids can become one BIGINT (1.4, 1.2)
        raise errors.DatatypeMismatchError(f"the id column {source}.{id_column} is {id_type}, a code store "
                                           "needs smallint, integer or bigint ids")
    if code_type not in ("BLOB", "BIT"):
        raise errors.DatatypeMismatchError(f'column "{code_column}" of relation {source} is not a BLOB or BIT column')
    t, c = quoted(conn, source, code_column)
    _, i = quoted(conn, source, id_column)
    bad = conn.execute(f"SELECT count(*) FROM {t} WHERE {i} IS NULL AND {c} IS NOT NULL").fetchall()[0][0]
    if bad:
        raise errors.NotNullViolationError(f'code store "{name}": {bad} rows have a code and a NULL id ({id_column})')
    rel = conn.sql(f"SELECT CAST({i} AS BIGINT), {c} FROM {t} WHERE {c} IS NOT NULL ORDER BY {i}")
    bit = code_type == "BIT"  # a BIT column carries its bit length, a BLOB is 8 bits a byte
    arrow = rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
    ids = arrow.column(0).to_numpy()
    n = len(ids)
    if n == 0:
        raise errors.InvalidParameterError(f"column {source}.{code_column} holds no codes")
    data, offsets, lengths, *nbits = (_bit_rows if bit else _binary_rows)(arrow.column(1))
    sizes = np.unique(nbits[0] if bit else lengths)
    if len(sizes) != 1:
        raise errors.CodeLengthMismatchError(
            f"column {source}.{code_column} holds codes of {len(sizes)} different lengths")
    nbytes = int(lengths[0])
    bits = int(sizes[0]) if bit else nbytes * 8
    if len(np.unique(ids)) != n:
        raise errors.InvalidParameterError(f"{source}.{id_column} is not unique")
    data = data[offsets[0]:offsets[0] + n * nbytes]
    sums = "checksum" in bitpress_columns(conn, "code_segments")  # schema revision 0007
    with transaction(conn):
        conn.execute("DELETE FROM bitpress.code_segments WHERE store = ?", [name]).fetchall()
        for seg, start in enumerate(range(0, n, segment_codes)):
            part = ids[start:start + segment_codes]
            width = 4 if part.min() >= -2**31 and part.max() < 2**31 else 8
            idb = part.astype(f">i{width}").tobytes()
            cb = data[start * nbytes:(start + len(part)) * nbytes].tobytes()
            conn.execute("INSERT INTO bitpress.code_segments (store, segment, n, ids, codes"
                         + (", checksum) VALUES (?, ?, ?, ?, ?, ?)" if sums else ") VALUES (?, ?, ?, ?, ?)"),
                         [name, seg, len(part), idb, cb] + ([_core.segment_checksum(idb, cb)] if sums else [])
                         ).fetchall()
        counted = "segments" in bitpress_columns(conn, "code_stores")  # schema revision 0006
        conn.execute("UPDATE bitpress.code_stores SET bits = ?, created_at = now(), fingerprint = ?"
                     + (", segments = ?" if counted else "") + " WHERE name = ?",
                     [bits, _fingerprint(conn, source, id_column, code_column)]
                     + ([-(-n // segment_codes)] if counted else []) + [name]).fetchall()
    _CACHE.pop((id(conn), name), None)
    return n


# DuckDB id types that a BIGINT holds exactly (a store keeps one code per integer id)
_ID_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER")


def _duckdb_source(conn, table: str) -> str:
    """The table DuckDB reads for ``table`` ("t", "schema.t" or "db.schema.t"), as the qualified
    name a DuckDB store records: schema.table, the database first when it is not the current one
    (a TEMP table: temp.main.t). Unqualified names are looked up as DuckDB does: temporary
    tables, then the search_path, then the current schema."""
    parts = table.split(".")
    found = duckdb_find_table(conn, parts) if len(parts) <= 3 else None
    if found:
        return ".".join(found)
    raise errors.UndefinedTableError(f'relation "{table}" does not exist')


def _column_types(cur, store, source, *columns):
    """The DuckDB types of columns of a store's table; refuses a table that is gone (42P01)."""
    import duckdb

    try:
        rel = cur.sql(f"SELECT * FROM {quoted(cur, source)[0]} LIMIT 0")
    except duckdb.CatalogException:
        raise errors.UndefinedTableError(f'code store "{store}": its table {source} does not exist') from None
    types = {col.lower(): str(ty) for col, ty in zip(rel.columns, rel.types)}
    missing = [col for col in columns if col.lower() not in types]
    if missing:
        raise errors.UndefinedColumnError(f'column "{missing[0]}" of relation {source} does not exist')
    return [types[col.lower()] for col in columns]


def _fingerprint(conn, source, id_column, code_column) -> str:
    t, c = quoted(conn, source, code_column)
    _, i = quoted(conn, source, id_column)
    n, h = conn.execute(f"SELECT count({c}), bit_xor(hash(CAST({i} AS BIGINT), {c})) FROM {t} "
                        f"WHERE {c} IS NOT NULL").fetchall()[0]
    return f"{n}:{h}"


def check(conn, name: str) -> bool:
    """Whether the store still matches its table. PostgreSQL stores always do (triggers); a
    DuckDB store is compared with the table by a count and hash of its (id, code) pairs, which
    reads the whole code column (about 15 ms per million codes here)."""
    if kind(conn) == "pg":
        _store(conn, name)
        return True
    source, id_column, code_column, _, _ = _store(conn, name)
    stored = conn.execute("SELECT fingerprint FROM bitpress.code_stores WHERE name = ?", [name]).fetchall()[0][0]
    return stored == _fingerprint(conn, source, id_column, code_column)


def drop(conn, name: str) -> None:
    if kind(conn) == "pg":
        conn.execute("SELECT bitpress_store_drop(%s)", (name,))
        return
    _store(conn, name)
    for t in ("code_segments", "code_delta"):
        conn.execute(f"DELETE FROM bitpress.{t} WHERE store = ?", [name]).fetchall()
    conn.execute("DELETE FROM bitpress.code_stores WHERE name = ?", [name]).fetchall()


# DuckDB: the segments of a store, held as two contiguous arrays, checked per query against
# the store's created_at (which rebuild() bumps)
_CACHE: dict = {}
_LOCK = threading.Lock()


class _Packed:
    """A store's ids and codes; ``exact``: built from a BIT column (``bits`` is the codes' own
    length) rather than a BLOB one (8 bits a byte); ``last_or``: the OR of the codes' last bytes,
    to check their padding when a query says it has fewer bits."""

    def __init__(self, stamp, bits, ids, codes, exact):
        self.stamp, self.bits, self.ids, self.codes, self.exact = stamp, bits, ids, codes, exact
        self.last_or = int(np.bitwise_or.reduce(codes[:, -1])) if codes.size else 0


def _corrupt(name, what):
    return errors.CorruptDataError(f'code store "{name}": {what}; rebuild it with stores.rebuild(conn, {name!r})')


def _packed(conn, name, cursor=None) -> _Packed:
    """A store's segments, every value read checked: NULLs, sizes, checksums (schema revision
    0007) and the number of segments (0006) are XX001 naming the table, column and segment."""
    cur = cursor or conn
    res = cur.execute("SELECT * FROM bitpress.code_stores WHERE name = ?", [name])
    rows = res.fetchall()
    if not rows:
        raise errors.UnknownCodebookError(f'code store "{name}" does not exist')
    meta = dict(zip([d[0] for d in res.description], rows[0]))
    for col in ("source", "code_column", "bits", "created_at"):
        if meta[col] is None:
            raise _corrupt(name, f"bitpress.code_stores has a NULL {col}")
    bits, stamp = meta["bits"], str(meta["created_at"])
    if bits < 1:
        raise _corrupt(name, f"bitpress.code_stores has bits = {bits}")
    # a store whose table is gone (dropped, renamed) is not served, even from the cache
    exact = _column_types(cur, name, meta["source"], meta["code_column"])[0] == "BIT"
    key = (id(conn), name)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit.stamp == stamp and hit.exact == exact:
            return hit
    nbytes = (bits + 7) // 8
    sums = "checksum" in bitpress_columns(cur, "code_segments")
    ids, codes = [], []
    segs = cur.execute("SELECT segment, n, ids, codes" + (", checksum" if sums else "")
                       + " FROM bitpress.code_segments WHERE store = ? ORDER BY segment", [name]).fetchall()
    for expected, (seg, n, idb, cb, *sum_) in enumerate(segs):
        where = f"bitpress.code_segments row segment = {seg}"
        for col, value in (("segment", seg), ("n", n), ("ids", idb), ("codes", cb)):
            if value is None:
                raise _corrupt(name, f"bitpress.code_segments has a NULL {col} in row segment = {seg}")
        if seg != expected:
            raise _corrupt(name, f"segment {expected} is missing (found segment {seg})")
        width = len(idb) // n if n > 0 else 8
        if n < 0 or width not in (4, 8) or len(idb) != n * width or len(cb) != n * nbytes:
            raise _corrupt(name, f"a segment's sizes do not match its {n} codes of {bits} bits ({where})")
        if sums and sum_[0] is None:
            raise _corrupt(name, f"a segment has no checksum (written before schema revision 0007) ({where})")
        if sums and _core.segment_checksum(idb, cb) != sum_[0]:
            raise _corrupt(name, f"a segment's checksum does not match its bytes ({where})")
        ids.append(np.frombuffer(idb, dtype=f">i{width}").astype(np.int64))
        codes.append(np.frombuffer(cb, dtype=np.uint8).reshape(n, nbytes))
    if meta.get("segments") is not None and meta["segments"] != len(segs):
        raise _corrupt(name, f"found {len(segs)} segments, its last rebuild wrote {meta['segments']}")
    packed = _Packed(stamp, bits, np.concatenate(ids) if ids else np.empty(0, np.int64),
                     np.concatenate(codes) if codes else np.empty((0, nbytes), np.uint8), exact)
    with _LOCK:
        _CACHE[key] = packed
    return packed


def knn(conn, name: str, query_code, k: int, *, refresh: bool = False) -> list[tuple[int, int]]:
    """The k (id, distance) nearest ``query_code`` in store ``name``, ascending by (distance, id).

    PostgreSQL: exact at all times (segments + delta). DuckDB: exact for the table as of the
    last ``create``/``rebuild``; with ``refresh=True`` the store is first checked against its
    table (``check``) and rebuilt if the table changed, so the answer is exact now.
    """
    from .kernels import _as_codes, check_count

    k = check_count("k", k)
    q = _as_codes(query_code, "query_code")
    if refresh and not check(conn, name):
        rebuild(conn, name)
    if kind(conn) == "pg":
        return [tuple(r) for r in conn.execute(
            "SELECT id, distance FROM bitpress_store_knn(%s, %s::varbit, %s)",
            (name, "".join(format(b, "08b") for b in q.tobytes())[:_store(conn, name)[3]], k)).fetchall()]
    return _duckdb_knn(conn, name, q, k)


def _duckdb_knn(conn, name, q, k, cursor=None, query_bits=None):
    """``query_bits``: the bit length of a BIT query (or of a vector's code); None for a BLOB.
    As hamming(): two lengths must agree, and a BLOB (query, or store of a BLOB column) is read
    at the other's length with code_from_bytes' checks."""
    from .duckdb import check_code_bytes

    p = _packed(conn, name, cursor)
    nbytes = p.codes.shape[1]
    if p.exact and query_bits is not None and query_bits != p.bits:
        _core.raise_error(_core.ERR_BIT_LENGTH_MISMATCH, query_bits, p.bits)
    if not p.exact and query_bits is not None:  # the store's codes read at the query's length
        if (query_bits + 7) // 8 != nbytes:
            _core.raise_error(_core.ERR_BIT_LENGTH_MISMATCH, query_bits, p.bits)
        if p.last_or & (0xFF >> (query_bits % 8)) and query_bits % 8:
            _core.raise_error(_core.ERR_CODE_PADDING, query_bits, 0)
    if q.shape[0] != nbytes:
        _core.raise_error(_core.ERR_BIT_LENGTH_MISMATCH, q.shape[0] * 8, p.bits)
    check_code_bytes(q, np.array([nbytes]), np.array([nbytes]), query_bits or p.bits)
    n = p.codes.shape[0]
    if n == 0:
        return []
    idx = np.empty(min(k, n), dtype=np.int64)
    dist = np.empty(min(k, n), dtype=np.float64)
    # ties in Hamming distance go to the lower position, and positions follow ids (segments
    # are written in id order), so the order is (distance, id) as in PostgreSQL
    count = _core.hamming_topk_into(q, p.codes, n, p.codes.shape[1], k, idx, dist)
    return [(int(p.ids[i]), int(d)) for i, d in zip(idx[:count], dist[:count])]
