"""bitpress in SQLAlchemy: a code column type, the SQL functions, and a k-NN query builder.

PostgreSQL through psycopg 3, DuckDB through duckdb_engine, the same Python code::

    from bitpress import sa as bp

    class Document(Base):
        __tablename__ = "documents"
        id = mapped_column(Integer, primary_key=True)
        embedding = mapped_column(Vector(384))      # pgvector (PostgreSQL) / ARRAY(Float) (DuckDB)
        code = mapped_column(bp.BITCODE(384))

    session.execute(update(Document).values(code=bp.binarize(Document.embedding, "docs_v1")))
    session.scalars(select(Document).order_by(Document.code.hamming(bp.binarize(q, "docs_v1"))).limit(10))
    session.scalars(bp.knn(Document, Document.code, Document.embedding, q, k=10, codebook="docs_v1"))

``BITCODE(n)`` is ``bit(n)`` in PostgreSQL (pgvector's ``<~>`` and HNSW ``bit_hamming_ops`` work
on it) and ``BIT`` in DuckDB, the type of DuckDB's ``binarize`` (``bitpress.duckdb``): both carry
the bit length, so codes of another length are refused alike. In Python a code is ``bytes``, the
packed bits MSB first, the same in both engines. A DuckDB BLOB code column made before 0.5.0 is
``BITCODE(n, blob=True)``: values are bound as bytes, and SQL writing into it must go through
``code_bytes`` (``sa.func.code_bytes(bp.binarize(...))``), since DuckDB's own cast of a BIT to a
BLOB puts the padding bits first. DuckDB engines must carry bitpress's functions on every
connection: ``duckdb_engine(path)`` makes one.

Reflection: listen with ``column_reflect`` and reflected ``bit(n)`` columns come back as
``BITCODE(n)``, with ``.hamming()`` and bytes values::

    meta = sa.MetaData()
    sa.event.listen(meta, "column_reflect", bp.column_reflect)
    documents = sa.Table("documents", meta, autoload_with=engine)

(duckdb_engine cannot reflect columns with this SQLAlchemy: DuckDB tables are declared.)

The ``bitpress_ivf`` index (PostgreSQL) as an ``sa.Index``, made by ``metadata.create_all``::

    class Document(Base):
        __tablename__ = "documents"
        __table_args__ = (bp.ivf_index("documents_embedding_ivf", "embedding", lists=224),)
"""
from __future__ import annotations

import numpy as np
import sqlalchemy as sa
import sqlalchemy.ext.compiler  # noqa: F401  (sa.ext.compiler.compiles)
import sqlalchemy.orm  # noqa: F401  (sa.orm.aliased)
from sqlalchemy.dialects.postgresql.base import PGBit
from sqlalchemy.types import TypeDecorator

__all__ = ["BITCODE", "binarize", "hamming", "knn", "duckdb_engine", "column_reflect", "ivf_index"]


def _to_bytes(value, bits):
    """bytes of a code given as bytes, a uint8 array, a '0101' string or pgvector's Bit."""
    if value is None or isinstance(value, (bytes, bytearray, memoryview)):
        return None if value is None else bytes(value)
    if isinstance(value, np.ndarray):
        return value.astype(np.uint8).tobytes()
    if hasattr(value, "to_text"):  # pgvector.Bit
        value = value.to_text()
    if isinstance(value, str):
        return np.packbits(np.frombuffer(value.encode(), np.uint8) == ord("1")).tobytes()
    raise TypeError(f"a code must be bytes, a uint8 array or a bit string, got {type(value).__name__}")


class _DuckBit(sa.types.UserDefinedType):
    """DuckDB's ``BIT`` (a bit string that knows its length)."""

    cache_ok = True

    def get_col_spec(self, **kw):
        return "BIT"


class BITCODE(TypeDecorator):
    """A bitpress code: ``bit(n)`` in PostgreSQL, ``BIT`` in DuckDB (``BLOB`` with ``blob=True``:
    a column made before 0.5.0), ``bytes`` in Python."""

    impl = sa.LargeBinary
    cache_ok = True

    def __init__(self, bits: int | None = None, blob: bool = False):
        super().__init__()
        self.bits, self.blob = bits, blob

    def _bit_string(self, dialect) -> bool:  # bound as '0101' and cast, rather than as bytes
        return dialect.name == "postgresql" or not self.blob

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(PGBit(self.bits) if self.bits else PGBit(varying=True))
        return dialect.type_descriptor(sa.LargeBinary() if self.blob else _DuckBit())

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        data = _to_bytes(value, self.bits)
        if not self._bit_string(dialect):
            return data
        bits = np.unpackbits(np.frombuffer(data, np.uint8))
        n = self.bits or len(bits)
        return "".join("1" if b else "0" for b in bits[:n])

    def process_result_value(self, value, dialect):
        return _to_bytes(value, self.bits)

    def bind_expression(self, bindvalue):
        # a code bound as a '0101' string: cast it (BIT VARYING, DuckDB's BIT), or it is text
        return _BitParam(bindvalue)

    class comparator_factory(TypeDecorator.Comparator):
        def hamming(self, other):
            """Number of differing bits (bitpress's ``hamming``), INTEGER."""
            if not isinstance(other, sa.sql.ClauseElement) and not hasattr(other, "__clause_element__"):
                other = sa.bindparam(None, other, type_=self.type)
            return hamming(self.expr, other)


def column_reflect(inspector, table, column_info) -> None:
    """A ``column_reflect`` listener: a PostgreSQL ``bit(n)`` or ``bit varying`` column is
    reflected as ``BITCODE(n)`` (a code column made by ``op.add_code_column`` is ``bit(n)``)."""
    t = column_info.get("type")
    if isinstance(t, PGBit):
        column_info["type"] = BITCODE(None if t.varying else t.length)


class _BitParam(sa.sql.expression.ColumnElement):
    inherit_cache = True

    def __init__(self, bindvalue):
        self.bindvalue = bindvalue
        self.type = bindvalue.type


@sa.ext.compiler.compiles(_BitParam)
def _compile_bit_param(element, compiler, **kw):
    p = compiler.process(element.bindvalue, **kw)
    if not element.type._bit_string(compiler.dialect):
        return p
    return f"CAST({p} AS {'BIT VARYING' if compiler.dialect.name == 'postgresql' else 'BIT'})"


def hamming(a, b):
    return sa.func.hamming(a, b, type_=sa.Integer)


def binarize(vector, codebook: str | None = None, version: int | None = None, bits: int | None = None):
    """``binarize(vector[, codebook[, version]])`` as a BITCODE expression. ``vector`` is a
    column or a Python list / numpy array (sent as a float list)."""
    if not isinstance(vector, sa.sql.ClauseElement) and not hasattr(vector, "__clause_element__"):
        vector = _vector_param(vector)
    args = [vector] + ([] if codebook is None else [sa.literal(codebook)]) + \
        ([] if version is None else [sa.literal(int(version))])
    return sa.func.binarize(*args, type_=BITCODE(bits))


class _VectorParam(sa.sql.expression.ColumnElement):
    """A query vector: ``CAST(:q AS vector)`` in PostgreSQL, ``CAST(:q AS FLOAT[])`` in DuckDB."""

    inherit_cache = True
    type = sa.ARRAY(sa.Float)

    def __init__(self, values):
        self.values = [float(v) for v in np.asarray(values, dtype=np.float32).ravel()]


@sa.ext.compiler.compiles(_VectorParam)
def _compile_vector(element, compiler, **kw):
    p = compiler.process(sa.bindparam(None, element.values, type_=sa.ARRAY(sa.Float)), **kw)
    if compiler.dialect.name == "postgresql":
        return f"CAST({p} AS vector)"
    return f"CAST({p} AS FLOAT[])"


def _vector_param(values):
    return _VectorParam(values)


class _Distance(sa.sql.expression.ColumnElement):
    """Exact distance for the rerank: pgvector's operators in PostgreSQL, DuckDB's list functions."""

    inherit_cache = True
    type = sa.Float()

    def __init__(self, metric, a, b):
        self.metric, self.a, self.b = metric, a, b


_PG_OPS = {"cosine": "<=>", "l2": "<->", "ip": "<#>"}
_DUCK_FUNCS = {"cosine": "list_cosine_distance", "l2": "list_distance", "ip": "list_negative_inner_product"}


@sa.ext.compiler.compiles(_Distance)
def _compile_distance(element, compiler, **kw):
    a, b = compiler.process(element.a, **kw), compiler.process(element.b, **kw)
    if compiler.dialect.name == "postgresql":
        return f"({a} {_PG_OPS[element.metric]} {b})"
    return f"{_DUCK_FUNCS[element.metric]}(CAST({a} AS FLOAT[]), {b})"


def knn(entity, code_column, vector_column, query, k: int = 10, oversample: int = 4,
        codebook: str | None = None, metric: str = "cosine"):
    """A Select of the k rows nearest ``query``: the top k * oversample by Hamming distance of
    the codes (the query coded with ``codebook``, or by sign), reranked exactly on the vectors.
    Returns ORM entities when ``entity`` is a mapped class."""
    from . import errors
    from .kernels import check_count

    k, oversample = check_count("k", k), check_count("oversample", oversample)
    if metric not in _PG_OPS:
        raise errors.InvalidParameterError(f"metric must be cosine, ip or l2, got {metric!r}")
    q = _vector_param(query)
    pool = (sa.select(entity).order_by(hamming(code_column, binarize(q, codebook)))
            .limit(k * oversample).subquery())
    aliased = sa.orm.aliased(entity, pool) if hasattr(entity, "__mapper__") else pool
    vec = getattr(aliased, vector_column.key) if hasattr(entity, "__mapper__") else pool.c[vector_column.key]
    return sa.select(aliased).order_by(_Distance(metric, vec, q)).limit(k)


def duckdb_engine(path: str = ":memory:", **kwargs):
    """An SQLAlchemy engine on a DuckDB file whose every connection has bitpress's functions
    (``bitpress.duckdb.register``). ``:memory:`` keeps one connection (StaticPool)."""
    from duckdb_engine import ConnectionWrapper

    from .duckdb import connect

    if path == ":memory:":
        kwargs.setdefault("poolclass", sa.pool.StaticPool)
    return sa.create_engine("duckdb://", creator=lambda: ConnectionWrapper(connect(path)), **kwargs)


def _is_halfvec(column) -> bool:
    t = getattr(column, "type", None)
    return type(t).__name__ == "HALFVEC" or getattr(t, "__visit_name__", "") == "HALFVEC"


def ivf_index(name: str, column, *, metric: str = "cosine", lists: int | None = None, bits: int = 1) -> sa.Index:
    """An ``sa.Index`` ``USING bitpress_ivf (column bitpress_<metric>_ops) WITH (lists, bits)``,
    made by ``metadata.create_all`` / ``Index.create``. ``column`` is a Column or its name (in
    ``__table_args__``); a pgvector ``HALFVEC`` column gets ``bitpress_halfvec_<metric>_ops``
    (its type is read once the index knows its table). ``lists`` (or ``bits``) None: the
    index's own default (100 lists, 1 bit). Build the index after the rows are loaded, or ``REINDEX`` it then (docs/INDEX.md)."""
    from .index import opclass

    opclass(metric)  # 22023 for an unknown metric, now
    with_ = {k: int(v) for k, v in (("lists", lists), ("bits", bits)) if v is not None}
    col = column.__clause_element__() if hasattr(column, "__clause_element__") else column

    def ops_for(c):
        return {c.key: opclass(metric, _is_halfvec(c))}

    known = isinstance(col, sa.Column) and col.table is not None
    ix = sa.Index(name, col, postgresql_using="bitpress_ivf", postgresql_with=with_,
                  postgresql_ops=ops_for(col) if isinstance(col, sa.Column) else {})

    if not known:
        @sa.event.listens_for(ix, "after_parent_attach")
        def _attached(index, table):
            index.dialect_options["postgresql"]["ops"] = {
                k: v for c in index.columns for k, v in ops_for(c).items()}
    return ix
