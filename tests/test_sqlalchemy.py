"""bitpress.sa: the code column type, binarize / hamming and knn, one test class over both engines."""
import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Session, mapped_column

import bitpress
from bitpress import sa as bp

N = 2000


class Base(DeclarativeBase):
    pass


def _model(engine_kind):
    """A mapped Document class for one engine (pgvector's Vector, or a DuckDB float list)."""
    if engine_kind == "pg":
        from pgvector.sqlalchemy import Vector

        vec_type = Vector(384)
    else:
        vec_type = sa.ARRAY(sa.Float)

    return type(f"Doc_{engine_kind}", (Base,), {
        "__tablename__": f"docs_{engine_kind}",
        "id": mapped_column(sa.Integer, primary_key=True, autoincrement=False),
        "embedding": mapped_column(vec_type),
        "code": mapped_column(bp.BITCODE(384), nullable=True),
    })


DOCS = {"pg": _model("pg"), "duckdb": _model("duckdb")}


@pytest.fixture(params=["pg", "duckdb"])
def setup(request, minilm):
    kind = request.param
    if kind == "pg":
        pg = request.getfixturevalue("postgresql")
        info = pg.info
        engine = sa.create_engine(f"postgresql+psycopg://{info.user}@{info.host}:{info.port}/{info.dbname}")
    else:
        engine = bp.duckdb_engine()
    Doc = DOCS[kind]
    Doc.__table__.create(engine)
    x = minilm[:N].astype(np.float32)
    with Session(engine) as s:
        s.add_all([Doc(id=i, embedding=v.tolist() if kind == "duckdb" else v) for i, v in enumerate(x)])
        s.commit()
    yield kind, engine, Doc, x
    engine.dispose()


def test_binarize_fills_codes_that_equal_the_core(setup):
    kind, engine, Doc, x = setup
    with Session(engine) as s:
        s.execute(sa.update(Doc).values(code=bp.binarize(Doc.embedding)))
        s.commit()
        codes = dict(s.execute(sa.select(Doc.id, Doc.code)).all())
    assert len(codes) == N and all(isinstance(c, bytes) and len(c) == 48 for c in codes.values())
    want = bitpress.binarize(x)
    assert all(codes[i] == want[i].tobytes() for i in range(N))


def test_hamming_comparator_and_a_code_written_from_python(setup):
    kind, engine, Doc, x = setup
    q = bitpress.binarize(x[7])
    with Session(engine) as s:
        s.execute(sa.update(Doc).values(code=bp.binarize(Doc.embedding)))
        s.get(Doc, 3).code = q.tobytes()  # bytes in, through the type's bind processor
        s.commit()
        rows = s.execute(sa.select(Doc.id, Doc.code.hamming(q.tobytes()).label("d"))
                         .order_by("d", Doc.id).limit(5)).all()
    assert [r.id for r in rows[:2]] == [3, 7] and rows[0].d == rows[1].d == 0
    d = bitpress.hamming(bitpress.binarize(x), q)
    d[3] = 0
    assert [r.d for r in rows] == sorted(d.tolist())[:5]


def test_knn_reranks_the_hamming_pool_exactly(setup):
    kind, engine, Doc, x = setup
    codes = bitpress.binarize(x)
    with Session(engine) as s:
        s.execute(sa.update(Doc).values(code=bp.binarize(Doc.embedding)))
        s.commit()
        for qi in (11, 222, 1333):
            q = x[qi] + 0.01
            got = s.scalars(bp.knn(Doc, Doc.code, Doc.embedding, q, k=10, oversample=4)).all()
            ids = [d.id for d in got]
            assert len(ids) == 10 and ids[0] == qi
            ham = bitpress.hamming(codes, bitpress.binarize(q))
            t = np.sort(ham)[39]
            assert all(ham[i] <= t for i in ids)  # from the Hamming pool of 40
            cos = 1 - (x @ q) / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
            assert np.all(np.diff(cos[ids]) >= -1e-6)  # reranked by exact cosine
            inside = np.nonzero(ham < t)[0]  # surely in the pool: nothing nearer was left out
            assert cos[ids[-1]] <= np.sort(cos[inside])[min(9, len(inside) - 1)] + 1e-6


def test_bad_input(setup):
    kind, engine, Doc, x = setup
    with pytest.raises(ValueError, match="k must be"):
        bp.knn(Doc, Doc.code, Doc.embedding, x[0], k=0)
    with pytest.raises(ValueError, match="metric"):
        bp.knn(Doc, Doc.code, Doc.embedding, x[0], metric="manhattan")
    with Session(engine) as s, pytest.raises(sa.exc.DBAPIError, match="does not exist"):
        s.execute(sa.select(bp.binarize(Doc.embedding, "no_such_codebook"))).all()


def test_reflected_bit_columns_are_codes(postgresql, minilm):
    """A table created in SQL (as op.add_code_column does), reflected: the code column is a
    BITCODE, values come back as bytes and .hamming() and knn work on it."""
    info = postgresql.info
    engine = sa.create_engine(f"postgresql+psycopg://{info.user}@{info.host}:{info.port}/{info.dbname}")
    x = minilm[:300]
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE documents (id int PRIMARY KEY, embedding vector(384), code bit(384), "
                          "other bit varying)")
        c.execute(sa.text("INSERT INTO documents (id, embedding) VALUES (:id, CAST(:v AS vector))"),
                  [{"id": i, "v": str(v.tolist())} for i, v in enumerate(x)])
        c.exec_driver_sql("UPDATE documents SET code = binarize(embedding), other = binarize(embedding)")
    meta = sa.MetaData()
    sa.event.listen(meta, "column_reflect", bp.column_reflect)
    from pgvector.sqlalchemy import Vector  # noqa: F401  (registers the vector type for reflection)

    docs = sa.Table("documents", meta, autoload_with=engine)
    assert isinstance(docs.c.code.type, bp.BITCODE) and docs.c.code.type.bits == 384
    assert isinstance(docs.c.other.type, bp.BITCODE) and docs.c.other.type.bits is None
    want = bitpress.binarize(x)
    with engine.connect() as c:
        codes = c.execute(sa.select(docs.c.code).order_by(docs.c.id)).scalars().all()
        assert codes == [w.tobytes() for w in want]
        near = c.execute(sa.select(docs.c.id).order_by(docs.c.code.hamming(want[42].tobytes()), docs.c.id)
                         .limit(1)).scalar()
        assert near == 42
        ids = c.execute(bp.knn(docs, docs.c.code, docs.c.embedding, x[42], k=3)).all()
        assert ids[0].id == 42
    engine.dispose()


def test_duckdb_codes_are_bit_and_old_blob_columns_keep_working():
    """In DuckDB BITCODE(n) is a BIT column, which refuses a query code of another length as
    PostgreSQL's bit(n) does; BITCODE(n, blob=True) reads and writes a BLOB column made before
    0.5.0 with PostgreSQL's bytes (written from SQL through code_bytes)."""
    x = np.random.default_rng(5).standard_normal((50, 12)).astype(np.float32)
    meta = sa.MetaData()
    new = sa.Table("new", meta, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                   sa.Column("v", sa.ARRAY(sa.Float)), sa.Column("code", bp.BITCODE(12)))
    old = sa.Table("old", meta, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                   sa.Column("v", sa.ARRAY(sa.Float)), sa.Column("code", bp.BITCODE(12, blob=True)))
    engine = bp.duckdb_engine()
    meta.create_all(engine)
    want = bitpress.binarize(x)
    with engine.begin() as c:
        types = dict(c.exec_driver_sql("SELECT table_name, data_type FROM information_schema.columns "
                                       "WHERE column_name = 'code'").fetchall())
        assert types == {"new": "BIT", "old": "BLOB"}
        for t in (new, old):
            c.execute(t.insert(), [{"id": i, "v": v.tolist()} for i, v in enumerate(x)])
        c.execute(new.update().values(code=bp.binarize(new.c.v)))
        c.execute(old.update().values(code=sa.func.code_bytes(bp.binarize(old.c.v))))
        c.execute(old.update().where(old.c.id == 3).values(code=want[3].tobytes()))  # bytes, bound as BLOB
        for t in (new, old):
            assert c.execute(sa.select(t.c.code).order_by(t.c.id)).scalars().all() == [w.tobytes() for w in want]
            d = c.execute(sa.select(t.c.code.hamming(want[7].tobytes())).order_by(t.c.id)).scalars().all()
            assert d == bitpress.hamming(want, want[7]).tolist()
            ids = c.execute(bp.knn(t, t.c.code, t.c.v, x[7], k=3)).all()
            assert ids[0].id == 7
        with pytest.raises(sa.exc.DBAPIError, match="different bit lengths 12 and 11"):
            c.execute(sa.select(new.c.id).order_by(new.c.code.hamming(bp.binarize(x[0, :11].tolist())))).all()
    engine.dispose()
