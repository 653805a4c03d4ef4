"""The ``bitpress_ivf`` index from Python (PostgreSQL): create, status, drop.

::

    from bitpress import index

    index.create(conn, "app.docs", "embedding", metric="cosine", lists=224)
    for st in index.status(conn, "app.docs"):
        print(st.index, st.lists, st.bits, st.valid, st.size_bytes)
    index.drop(conn, "app.docs_embedding_idx")

``conn`` is a psycopg connection (or an SQLAlchemy connection on psycopg). A table (or an
index) is "name" (found on search_path, as any query finds it), "schema.name", a
``(schema, name)`` pair, the names as they are (no SQL quoting needed), or its OID
(``IndexStatus.index_oid``, ``table_oid``): every name is quoted by
``psycopg.sql.Identifier`` and tables are resolved to their OID (``regclass``). A halfvec
column gets the ``bitpress_halfvec_*_ops`` operator classes, found from the catalog.
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

from . import errors

__all__ = ["create", "status", "drop", "opclass", "IndexStatus", "Progress", "METRICS",
           "DEFAULT_LISTS", "DEFAULT_BITS"]

AM = "bitpress_ivf"
METRICS = {"cosine": "<=>", "l2": "<->", "ip": "<#>"}  # the operator each operator class orders by
# the index's own defaults for its options (docs/INDEX.md, "Settings"): an index made without
# ``lists`` or ``bits`` has these, so status() reports them for such an index
DEFAULT_LISTS = 100
DEFAULT_BITS = 1
_TYPES = ("vector", "halfvec")
_METRIC_OF_SUPPORT = {"bitpress_ivf_cosine": "cosine", "bitpress_ivf_l2": "l2", "bitpress_ivf_ip": "ip"}


def opclass(metric: str = "cosine", halfvec: bool = False) -> str:
    """The operator class of a metric: ``bitpress_cosine_ops``, ``bitpress_halfvec_l2_ops``, ..."""
    if metric not in METRICS:
        raise errors.InvalidParameterError(f"metric must be cosine, l2 or ip, got {metric!r}")
    return f"bitpress_{'halfvec_' if halfvec else ''}{metric}_ops"


@dataclass
class Progress:
    """A build's row of ``pg_stat_progress_create_index``."""

    pid: int
    command: str
    phase: str
    blocks_total: int
    blocks_done: int
    tuples_total: int
    tuples_done: int


@dataclass
class IndexStatus:
    """One bitpress_ivf index. ``index`` and ``table`` are schema-qualified and quoted as SQL
    needs them (``format('%I.%I')``); ``lists``/``bits`` are the index's options (its defaults
    when it was made without them; a build on fewer rows than ``lists`` makes fewer lists); ``rows`` is ``pg_class.reltuples`` (None: not known yet);
    ``valid`` is ``pg_index.indisvalid`` (False while CREATE INDEX CONCURRENTLY runs, or after it
    failed); ``progress`` is set while a build or REINDEX of it runs. An index that a
    CREATE INDEX in another transaction is still building is not in the catalog yet: it is
    listed with ``index`` and ``index_oid`` None (PostgreSQL reports no OID for it), its table
    and its progress."""

    index: str | None
    index_oid: int | None
    table: str
    table_oid: int
    column: str | None
    type: str | None
    opclass: str | None
    metric: str | None
    lists: int | None
    bits: int | None
    size_bytes: int | None
    rows: int | None
    valid: bool
    progress: Progress | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _raw(conn):
    """The psycopg connection under an SQLAlchemy connection (or ``conn`` itself)."""
    if hasattr(conn, "exec_driver_sql"):
        conn = conn.connection.driver_connection
    from .tables import kind

    if kind(conn) != "pg":
        raise TypeError("bitpress_ivf is a PostgreSQL index: pass a psycopg connection")
    return conn


def _rows(conn, query, params=()):
    return conn.execute(query, params).fetchall()


def _ident_text(parts) -> str:
    from psycopg import sql

    return sql.Identifier(*parts).as_string(None)


def _table(conn, table):
    """(oid, schema, name, relkind) of a relation given as "name", "schema.name", (schema, name)
    or its OID (``IndexStatus.index_oid``): its regclass, resolved as any query resolves it
    (42P01 when there is none)."""
    if isinstance(table, int) and not isinstance(table, bool):
        row = _rows(conn, "SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
                          "ON n.oid = c.relnamespace WHERE c.oid = %s", (table,))
        if not row:
            raise errors.UndefinedTableError(f"relation with OID {table} does not exist")
        return row[0]
    parts = tuple(table) if isinstance(table, (tuple, list)) else tuple(str(table).split("."))
    row = _rows(conn, "SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
                      "ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)", (_ident_text(parts),))
    if not row:
        raise errors.UndefinedTableError(f'relation "{".".join(parts)}" does not exist')
    return row[0]


def _column(conn, oid, schema, name, column):
    """(type oid, type name) of a vector or halfvec column: 42703 when there is no such
    column, 42804 when it holds another type."""
    row = _rows(conn, "SELECT a.atttypid, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                      "WHERE a.attrelid = %s AND a.attname = %s AND a.attnum > 0 AND NOT a.attisdropped",
                (oid, column))
    if not row:
        raise errors.UndefinedColumnError(f'column "{column}" of relation "{schema}.{name}" does not exist')
    typoid, typname = row[0]
    if typname not in _TYPES:
        raise errors.DatatypeMismatchError(
            f'column "{column}" of relation "{schema}.{name}" is of type {typname}: '
            f"bitpress_ivf indexes vector and halfvec columns")
    return typoid, typname


def _opclass(conn, metric, typoid, typname):
    """The operator class for the column's type, schema-qualified (the extension's schema)."""
    from psycopg import sql

    opc = opclass(metric, typname == "halfvec")
    row = _rows(conn, "SELECT n.nspname FROM pg_opclass c JOIN pg_am a ON a.oid = c.opcmethod "
                      "JOIN pg_namespace n ON n.oid = c.opcnamespace "
                      "WHERE a.amname = %s AND c.opcname = %s AND c.opcintype = %s", (AM, opc, typoid))
    if not row:
        if not _rows(conn, "SELECT 1 FROM pg_am WHERE amname = %s", (AM,)):
            raise errors.BitpressError(
                f'access method "{AM}" does not exist: it comes with the bitpress extension 0.6.0 '
                "(CREATE EXTENSION bitpress, or ALTER EXTENSION bitpress UPDATE)", "42704")
        raise errors.BitpressError(f'operator class "{opc}" for type {typname} does not exist in this '
                                   "database (bitpress makes it where pgvector has the type)", "42704")
    return sql.Identifier(row[0][0], opc)


def _ivf_oids(conn, table_oid):
    return {r[0] for r in _rows(
        conn, "SELECT i.indexrelid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
              "JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = %s AND a.amname = %s", (table_oid, AM))}


def create(conn, table, column: str, *, metric: str = "cosine", lists: int | None = None, bits: int = 1,
           name: str | None = None, concurrently: bool = False, if_not_exists: bool = False,
           on_progress=None, monitor=None, poll: float = 0.5) -> IndexStatus:
    """``CREATE INDEX [CONCURRENTLY] [IF NOT EXISTS] name ON table USING bitpress_ivf
    (column bitpress_<metric>_ops) WITH (lists = .., bits = ..)``; its status.

    ``lists`` (or ``bits``) None leaves the option out: the index then has its own default
    (100 lists, 1 bit).
    ``name`` None lets PostgreSQL choose the name (``table_column_idx``); ``if_not_exists``
    needs a name. ``on_progress(Progress)`` is called with each new row of
    ``pg_stat_progress_create_index`` while the build runs: the statement then runs in a thread
    and the progress is read every ``poll`` seconds from ``monitor``, a second connection to the
    same database (one is opened from this connection's parameters when not given).
    Ctrl-C cancels the build."""
    from psycopg import sql

    conn = _raw(conn)
    opclass(metric)  # 22023 before anything is read
    for what, v in (("lists", lists), ("bits", bits)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise errors.InvalidParameterError(f"{what} must be an integer, got {v!r}")
    if if_not_exists and name is None:
        raise errors.InvalidParameterError("if_not_exists needs the index's name")
    oid, schema, tname, _ = _table(conn, table)
    typoid, typname = _column(conn, oid, schema, tname, column)
    opc = _opclass(conn, metric, typoid, typname)
    options = [sql.SQL(f"{what} = {{}}").format(sql.Literal(v)) for what, v in (("lists", lists), ("bits", bits))
               if v is not None]
    stmt = sql.SQL("CREATE INDEX {conc}{ine}{name}ON {table} USING bitpress_ivf ({col} {opc}){opts}").format(
        conc=sql.SQL("CONCURRENTLY " if concurrently else ""), ine=sql.SQL("IF NOT EXISTS " if if_not_exists else ""),
        name=sql.SQL("") if name is None else sql.Composed([sql.Identifier(name), sql.SQL(" ")]),
        table=sql.Identifier(schema, tname), col=sql.Identifier(column), opc=opc,
        opts=sql.SQL(" WITH ({})").format(sql.SQL(", ").join(options)) if options else sql.SQL(""))
    before = _ivf_oids(conn, oid)
    if on_progress is None:
        conn.execute(stmt)
    else:
        _run_watched(conn, stmt, on_progress, monitor, poll)
    if name is not None:
        found = _rows(conn, "SELECT c.oid, a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam "
                            "WHERE c.relname = %s AND c.relnamespace = %s::regnamespace",
                      (name, _ident_text([schema])))
        if not found or found[0][1] != AM:
            raise errors.BitpressError(f'relation "{schema}.{name}" already exists and is not a {AM} index',
                                       "42P07")
        new = found[0][0]
    else:
        new = next(iter(_ivf_oids(conn, oid) - before))
    return next(s for s in _status(conn, None, new))


def _progress_query(where):
    return ("SELECT v.pid, v.index_relid, v.relid, v.command, v.phase, v.blocks_total, v.blocks_done, "
            "v.tuples_total, v.tuples_done FROM pg_stat_progress_create_index v "
            "JOIN pg_stat_get_progress_info('CREATE INDEX') s ON s.pid = v.pid "
            "WHERE s.param9 = (SELECT oid FROM pg_am WHERE amname = 'bitpress_ivf') " + where)


def _progress(row) -> Progress:
    pid, _, _, command, phase, bt, bd, tt, td = row
    return Progress(pid, command, phase, bt, bd, tt, td)


def _open_monitor(conn):
    import psycopg
    from psycopg.conninfo import make_conninfo

    extra = {"password": conn.info.password} if conn.info.password else {}
    return psycopg.connect(make_conninfo(conn.info.dsn, **extra), autocommit=True)


def _run_watched(conn, stmt, on_progress, monitor, poll):
    """Runs stmt on conn in a thread while monitor reads its pg_stat_progress_create_index row."""
    failed = []

    def build():
        try:
            conn.execute(stmt)
        except BaseException as e:  # handed to the caller's thread
            failed.append(e)

    own = monitor is None
    monitor = _open_monitor(conn) if own else _raw(monitor)
    pid, last = conn.info.backend_pid, None
    worker = threading.Thread(target=build, name="bitpress index build", daemon=True)
    try:
        worker.start()
        try:
            while worker.is_alive():
                worker.join(poll)
                row = _rows(monitor, _progress_query("AND v.pid = %s"), (pid,))
                if row and row[0] != last:
                    last = row[0]
                    on_progress(_progress(last))
        except BaseException:  # Ctrl-C (or on_progress failed): the build is cancelled
            conn.cancel_safe()
            worker.join()
            raise
    finally:
        if own:
            monitor.close()
    if failed:
        raise failed[0]


_STATUS = """
SELECT format('%%I.%%I', ni.nspname, ci.relname), i.indexrelid::bigint,
       format('%%I.%%I', nt.nspname, ct.relname), i.indrelid::bigint,
       att.attname, typ.typname, oc.opcname, pr.proname, ci.reloptions,
       pg_relation_size(i.indexrelid), ci.reltuples, i.indisvalid
FROM pg_index i
JOIN pg_class ci ON ci.oid = i.indexrelid
JOIN pg_am am ON am.oid = ci.relam AND am.amname = 'bitpress_ivf'
JOIN pg_namespace ni ON ni.oid = ci.relnamespace
JOIN pg_class ct ON ct.oid = i.indrelid
JOIN pg_namespace nt ON nt.oid = ct.relnamespace
LEFT JOIN pg_attribute att ON att.attrelid = i.indrelid AND att.attnum = i.indkey[0]
LEFT JOIN pg_type typ ON typ.oid = att.atttypid
LEFT JOIN pg_opclass oc ON oc.oid = i.indclass[0]
LEFT JOIN pg_amproc ap ON ap.amprocfamily = oc.opcfamily AND ap.amprocnum = 1
     AND ap.amproclefttype = oc.opcintype AND ap.amprocrighttype = oc.opcintype
LEFT JOIN pg_proc pr ON pr.oid = ap.amproc
WHERE (%(table)s::oid IS NULL OR i.indrelid = %(table)s::oid)
  AND (%(index)s::oid IS NULL OR i.indexrelid = %(index)s::oid)
ORDER BY 3, 1
"""


def _options(reloptions):
    opts = dict(o.split("=", 1) for o in reloptions or ())
    return int(opts.get("lists", DEFAULT_LISTS)), int(opts.get("bits", DEFAULT_BITS))


def _status(conn, table_oid, index_oid=None):
    building = _rows(conn, _progress_query(
        "AND v.datid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND (%s::oid IS NULL OR v.relid = %s::oid) ORDER BY v.pid"), (table_oid, table_oid))
    out = []
    for (idx, ioid, tbl, toid, col, typ, opc, proc, relopts, size, reltuples, valid) in _rows(
            conn, _STATUS, {"table": table_oid, "index": index_oid}):
        lists, bits = _options(relopts)
        prog = next((r for r in building if r[1] == ioid), None)
        out.append(IndexStatus(idx, ioid, tbl, toid, col, typ, opc, _METRIC_OF_SUPPORT.get(proc), lists, bits,
                               size, None if reltuples < 0 else int(reltuples), valid,
                               None if prog is None else _progress(prog)))
    if index_oid is None:
        # builds whose index is not in our catalog snapshot: a CREATE INDEX (not CONCURRENTLY)
        # not committed yet, which reports no index OID either
        listed = {s.index_oid for s in out}
        for row in building:
            if row[1] in listed:
                continue
            tbl = _rows(conn, "SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_class c "
                              "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s", (row[2],))
            out.append(IndexStatus(None, row[1] or None, tbl[0][0] if tbl else str(row[2]), row[2], None, None,
                                   None, None, None, None, None, None, False, _progress(row)))
    return out


def status(conn, table=None) -> list[IndexStatus]:
    """Every bitpress_ivf index of this database (or of one table), with its builds running."""
    conn = _raw(conn)
    return _status(conn, None if table is None else _table(conn, table)[0])


def drop(conn, index_or_table, *, concurrently: bool = False, if_exists: bool = False) -> list[str]:
    """``DROP INDEX [CONCURRENTLY]`` of a bitpress_ivf index, or of every bitpress_ivf index of a
    table; the names dropped. Any other relation is refused (42809): this never drops a btree
    index or a table. ``if_exists``: a name that resolves to nothing drops nothing (no 42P01)."""
    from psycopg import sql

    conn = _raw(conn)
    try:
        oid, schema, name, relkind = _table(conn, index_or_table)
    except errors.UndefinedTableError:
        if if_exists:
            return []
        raise
    if relkind in ("i", "I"):
        am = _rows(conn, "SELECT a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam WHERE c.oid = %s",
                   (oid,))[0][0]
        if am != AM:
            raise errors.BitpressError(f'"{schema}.{name}" is a {am} index, not a {AM} index', "42809")
        targets = [(schema, name)]
    elif relkind in ("r", "m", "p"):
        targets = [tuple(r) for r in _rows(
            conn, "SELECT n.nspname, c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                  "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am a ON a.oid = c.relam "
                  "WHERE i.indrelid = %s AND a.amname = %s ORDER BY c.relname", (oid, AM))]
    else:
        raise errors.BitpressError(f'"{schema}.{name}" is neither a table nor an index', "42809")
    dropped = []
    for s, n in targets:
        # named as status() names it (format('%I.%I')): quoted only where SQL needs it
        dropped.append(_rows(conn, "SELECT format('%%I.%%I', %s::text, %s::text)", (s, n))[0][0])
        conn.execute(sql.SQL("DROP INDEX {}{}{}").format(
            sql.SQL("CONCURRENTLY " if concurrently else ""), sql.SQL("IF EXISTS " if if_exists else ""),
            sql.Identifier(s, n)))
    return dropped
