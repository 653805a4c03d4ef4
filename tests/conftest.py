"""Shared fixtures: a real PostgreSQL 15 cluster (pytest-postgresql) with pgvector and
bitpress created, an in-process DuckDB connection with bitpress registered, and the real
embedding sets from ../shared/data.

PostgreSQL refuses to run as root: run the suite through scripts/test, which runs pytest
as the `postgres` user when it is started as root.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import numpy as np
import psycopg
import pytest
from pytest_postgresql import factories

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BITPRESS_SHARED_DATA", ROOT.parent / "shared" / "data"))
PG_CONFIG = os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config")
PG_BINDIR = Path(subprocess.run([PG_CONFIG, "--bindir"], capture_output=True, text=True,
                                check=True).stdout.strip())

if os.geteuid() == 0:
    raise pytest.UsageError("PostgreSQL will not start as root: run the tests with scripts/test, "
                            "which runs pytest as the postgres user")


def _create_extensions(host, port, user, dbname, password, **_):
    with psycopg.connect(host=host, port=port, user=user, dbname=dbname, password=password) as conn:
        conn.execute("CREATE EXTENSION vector")
        conn.execute("CREATE EXTENSION bitpress")


postgresql_proc = factories.postgresql_proc(
    executable=str(PG_BINDIR / "pg_ctl"),
    port=None,
    unixsocketdir="/tmp",
    load=[_create_extensions],
)
postgresql = factories.postgresql("postgresql_proc")


@pytest.fixture
def pg(postgresql):
    """A psycopg connection (autocommit) to a fresh database with vector and bitpress."""
    from pgvector.psycopg import register_vector

    postgresql.autocommit = True
    register_vector(postgresql)
    return postgresql


@pytest.fixture(scope="session")
def pg_dsn(postgresql_proc):
    """DSN of the test cluster's default database (for CLI tests)."""
    p = postgresql_proc
    return f"host={p.host} port={p.port} user={p.user} dbname=postgres"


@pytest.fixture
def duck():
    import bitpress.duckdb

    con = bitpress.duckdb.connect()
    yield con
    con.close()


def copy_vectors(conn, table, x):
    """Create `table (id int primary key, v vector(d))` and COPY the rows of x into it (binary)."""
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v vector({x.shape[1]}))")
    with conn.cursor().copy(f"COPY {table} (id, v) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["int4", "vector"])
        for i, v in enumerate(x):
            copy.write_row([i, v])


def load_shared(*parts) -> np.ndarray:
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.fail(f"real data set missing: {path} (set BITPRESS_SHARED_DATA to the shared/data folder)")
    return np.load(path)


@pytest.fixture(scope="session")
def openai_small():
    """88 x 1536 text-embedding-3-small vectors (real, OpenAI cookbook)."""
    return load_shared("openai", "cookbook_parsed_pdf_docs_3small", "vectors.npy")


@pytest.fixture(scope="session")
def openai_large():
    """49 x 3072 text-embedding-3-large vectors (real, OpenAI cookbook)."""
    return load_shared("openai", "cookbook_items_captions_3large", "vectors.npy")


@pytest.fixture(scope="session")
def minilm():
    """The first 2000 of 50k real all-MiniLM-L6-v2 embeddings of PyPI summaries (384-d)."""
    return load_shared("pypi-minilm", "corpus.npy")[:2000]


@pytest.fixture
def pg_books(pg):
    """``pg`` with bitpress's tables migrated (bitpress.codebooks)."""
    from bitpress import schema

    schema.upgrade(pg)
    return pg


@pytest.fixture
def duck_books(duck):
    """``duck`` with bitpress's tables migrated (bitpress.codebooks)."""
    from bitpress import schema

    schema.upgrade(duck)
    return duck


def error_of(conn, query, macro_errors=None):
    """(SQLSTATE, message) of the error a query raises, on a psycopg or a DuckDB connection.

    PostgreSQL reports the SQLSTATE itself. DuckDB wraps a UDF's exception in its own, whose
    message names the bitpress exception class (``... UDF: MalformedTensorError: ...``): its
    ``sqlstate`` is used. ``macro_errors`` maps words of a DuckDB macro's ``error()`` message
    (which names no class) to the SQLSTATE PostgreSQL gives for the same mistake."""
    from bitpress import errors
    from bitpress.tables import kind

    if kind(conn) == "duckdb":
        with pytest.raises(Exception) as ei:
            conn.execute(query).fetchall()
        msg = str(ei.value)
        for cls in vars(errors).values():
            if isinstance(cls, type) and issubclass(cls, errors.BitpressError) and f"{cls.__name__}:" in msg:
                return cls.sqlstate, msg
        return next((st for words, st in (macro_errors or {}).items() if words in msg), None), msg
    import psycopg

    with pytest.raises(psycopg.Error) as ei:
        conn.execute(query).fetchall()
    return ei.value.sqlstate, str(ei.value)


def run_cli(*args, **kwargs):
    """``python -m bitpress ARGS`` in a subprocess: its CompletedProcess (text output)."""
    import sys

    return subprocess.run([sys.executable, "-m", "bitpress", *args], capture_output=True, text=True, **kwargs)


@pytest.fixture
def pg_test_dsn(pg, postgresql_proc):
    """DSN of the test's own database (the one ``pg`` is connected to), for CLI runs."""
    p = postgresql_proc
    return f"host={p.host} port={p.port} user={p.user} dbname={pg.info.dbname}"


@pytest.fixture
def pg_engine(pg_test_dsn):
    """An SQLAlchemy engine (psycopg 3, no pool) on the test database."""
    import sqlalchemy as sa

    engine = sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(pg_test_dsn),
                              poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


@contextlib.contextmanager
def restored_copy(pg, postgresql_proc, tmp_path, name: str):
    """pg_dump -Fc of pg's database, pg_restore --exit-on-error into a new database ``name``:
    yields an autocommit connection to it (pgvector types registered), drops it afterwards."""
    from pgvector.psycopg import register_vector

    p, db = postgresql_proc, pg.info.dbname
    dump = tmp_path / f"{db}.dump"
    conn = ["-h", p.host, "-p", str(p.port), "-U", p.user]
    subprocess.run([str(PG_BINDIR / "pg_dump"), *conn, "-Fc", "-f", str(dump), db], check=True)
    pg.execute(f"DROP DATABASE IF EXISTS {name}")
    pg.execute(f"CREATE DATABASE {name}")
    try:
        subprocess.run([str(PG_BINDIR / "pg_restore"), *conn, "--exit-on-error", "-d", name, str(dump)],
                       check=True)
        with psycopg.connect(host=p.host, port=p.port, user=p.user, dbname=name, autocommit=True) as r:
            register_vector(r)
            yield r
    finally:
        pg.execute(f"DROP DATABASE {name} WITH (FORCE)")


def pypi_docs(n: int):
    """The first n PyPI summaries (text) and their real MiniLM embeddings (n x 384 float32)."""
    import json

    path = SHARED_DATA / "pypi-minilm" / "corpus.jsonl"
    if not path.is_file():
        pytest.fail(f"real data set missing: {path} (set BITPRESS_SHARED_DATA to the shared/data folder)")
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if len(texts) == n:
                break
    return texts, load_shared("pypi-minilm", "corpus.npy")[:n]


def create_docs(conn, n: int, table: str = "documents", with_embeddings: bool = True):
    """``table (id bigint primary key, body text, embedding vector(384) | FLOAT[384])`` holding
    the first n PyPI summaries and (unless ``with_embeddings`` is False) their embeddings."""
    from bitpress.tables import kind, quoted

    texts, x = pypi_docs(n)
    t, _ = quoted(conn, table)
    if kind(conn) == "pg":
        from psycopg import sql

        conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, body text, embedding vector(384))").format(t))
        with conn.cursor().copy(sql.SQL("COPY {} (id, body, embedding) FROM STDIN WITH (FORMAT BINARY)")
                                .format(t)) as cp:
            cp.set_types(["int8", "text", "vector"])
            for i in range(n):
                cp.write_row([i, texts[i], x[i] if with_embeddings else None])
    else:
        import pyarrow as pa

        conn.execute(f"CREATE TABLE {t} (id BIGINT PRIMARY KEY, body VARCHAR, embedding FLOAT[384])")
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 384) if with_embeddings else \
            pa.nulls(n, pa.list_(pa.float32(), 384))
        src = pa.table({"id": pa.array(range(n), pa.int64()), "body": texts, "embedding": emb})
        conn.register("bitpress_docs_src", src)
        conn.execute(f"INSERT INTO {t} SELECT * FROM bitpress_docs_src")
        conn.unregister("bitpress_docs_src")
    return texts, x
