"""bitpress backfill: codes for the existing rows of a real table (PyPI summaries with their
MiniLM embeddings), in committed batches, resumable after kill -9, right while the
application keeps writing, on PostgreSQL and DuckDB."""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psycopg
import pytest
import sqlalchemy as sa

from bitpress import codebooks, errors, etl, ops, schema
from conftest import create_docs, run_cli


def add_code_column(conn, dsn_or_path, codebook="docs_v1"):
    from bitpress import sa as bsa

    if isinstance(dsn_or_path, str) and dsn_or_path.startswith("host="):
        engine = sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn_or_path),
                                  poolclass=sa.pool.NullPool)
    else:
        engine = bsa.duckdb_engine(str(dsn_or_path), poolclass=sa.pool.NullPool)
    with engine.begin() as c:
        ops.operations(c).add_code_column("documents", "embedding", "code", codebook=codebook)
    engine.dispose()


def setup_docs(conn, n, dsn_or_path=None):
    texts, x = create_docs(conn, n)
    schema.upgrade(conn)
    codebooks.fit_table(conn, "documents", "embedding", "docs_v1", "median", sample_size=2000, progress=False)
    if dsn_or_path is not None:
        add_code_column(conn, dsn_or_path)
    return x, codebooks.load(conn, "docs_v1")


def check_pg(pg, book):
    from bitpress.tables import fetchall

    rows = fetchall(pg, "SELECT id, embedding, code_bytes(code) FROM documents ORDER BY id")
    x = np.array([r[1].to_numpy() for r in rows], np.float32)
    want = book.encode_reference(x)
    bad = [r[0] for r, w in zip(rows, want) if r[2] is None or bytes(r[2]) != w.tobytes()]
    assert not bad, f"{len(bad)} rows with a wrong or missing code, first ids {bad[:5]}"
    return len(rows)


def check_duck(con, book):
    rows = con.execute("SELECT id, embedding, code_bytes(code) FROM documents ORDER BY id").fetchall()
    want = book.encode_reference(np.array([r[1] for r in rows], np.float32))
    bad = [r[0] for r, w in zip(rows, want) if r[2] is None or bytes(r[2]) != w.tobytes()]
    assert not bad, f"{len(bad)} rows with a wrong or missing code, first ids {bad[:5]}"
    return len(rows)


def test_backfill_codes_every_row_once_and_a_rerun_changes_nothing(pg, pg_test_dsn):
    x, book = setup_docs(pg, 3000, pg_test_dsn)
    r = etl.backfill(pg, "documents", "code", batch_size=700, progress_bar=False)
    assert (r.rows_seen, r.rows_changed, r.resumed_from) == (3000, 3000, None)
    assert check_pg(pg, book) == 3000
    again = etl.backfill(pg, "documents", "code", batch_size=700, progress_bar=False)
    assert (again.rows_seen, again.rows_changed) == (3000, 0)
    assert pg.execute("SELECT kind, key_column, last_key, rows_seen, finished_at IS NOT NULL FROM bitpress.etl_jobs"
                      ).fetchall() == [("backfill", "id", "2999", 3000, True)]


def test_backfill_without_registry_pins_the_latest_version_and_warns_without_trigger(pg):
    x, book = setup_docs(pg, 500)
    pg.execute("ALTER TABLE documents ADD COLUMN code bit(384)")
    logged = []
    with pytest.raises(errors.InvalidParameterError, match="--vector-col, --codebook"):
        etl.backfill(pg, "documents", "code", progress_bar=False)
    r = etl.backfill(pg, "documents", "code", "embedding", "docs_v1", progress_bar=False, log=logged.append)
    assert r.rows_changed == 500 and check_pg(pg, book) == 500
    assert len(logged) == 1 and "no bitpress sync trigger" in logged[0]
    assert '"version": 1' in pg.execute("SELECT settings FROM bitpress.etl_jobs").fetchone()[0]


@pytest.mark.parametrize("call, sqlstate, match", [
    (dict(table="nope"), "42P01", 'relation "nope" does not exist'),
    (dict(code_col="nope"), "42703", 'column "nope"'),
    (dict(codebook="other"), "22023", "kept in sync with codebook 'docs_v1' \\(bitpress.code_columns\\), not 'other'"),
    (dict(version=3), "22023", "kept in sync with version 1 \\(bitpress.code_columns\\), not 3"),
    (dict(key="nope"), "42703", 'column "nope"'),
    (dict(batch_size=0), "22023", "batch_size"),
])
def test_backfill_refuses_bad_arguments(pg, pg_test_dsn, call, sqlstate, match):
    setup_docs(pg, 100, pg_test_dsn)
    kw = dict(table="documents", code_col="code") | call
    with pytest.raises(errors.BitpressError, match=match) as ei:
        etl.backfill(pg, kw.pop("table"), kw.pop("code_col"), progress_bar=False, **kw)
    assert ei.value.sqlstate == sqlstate
    assert pg.execute("SELECT count(*) FROM documents WHERE code IS NOT NULL").fetchone()[0] == 0


@pytest.mark.parametrize("key_type, values", [
    ("uuid", "gen_random_uuid()"),
    ("text", "'k' || lpad(i::text, 5, '0')"),
    ("numeric(12,3)", "i / 7.0"),
    ("timestamptz", "timestamptz '2026-01-01' + i * interval '1 minute'"),
])
def test_backfill_walks_keys_of_other_types_and_resumes(pg, key_type, values):
    """Keys that are not integers: the last key survives JSON and the walk resumes exactly."""
    x, book = setup_docs(pg, 300)
    pg.execute(f"CREATE TABLE k (key {key_type} PRIMARY KEY, embedding vector(384), code bit(384))")
    pg.execute(f"INSERT INTO k SELECT {values}, d.embedding FROM documents d, LATERAL (SELECT d.id AS i) s")

    def stop(last_key, rows, changed):
        if stop.calls == 1:
            raise KeyboardInterrupt
        stop.calls += 1
    stop.calls = 0
    with pytest.raises(KeyboardInterrupt):
        etl.backfill(pg, "k", "code", "embedding", "docs_v1", batch_size=70, progress_bar=False, log=lambda m: None,
                     on_batch=stop)
    assert pg.execute("SELECT count(code) FROM k").fetchone()[0] == 140
    r = etl.backfill(pg, "k", "code", "embedding", "docs_v1", batch_size=70, progress_bar=False, log=lambda m: None)
    assert (r.rows_seen, r.rows_changed) == (300, 300) and r.resumed_from is not None
    assert pg.execute("SELECT count(*) FROM k WHERE code IS DISTINCT FROM binarize(embedding, 'docs_v1', 1)"
                      ).fetchone()[0] == 0


@pytest.mark.parametrize("ddl, match", [
    ("key real PRIMARY KEY", "is real: walk by an integer"),
    ("key int, UNIQUE (key)", "must be NOT NULL"),
    ("key int NOT NULL", "unique index"),
])
def test_backfill_refuses_keys_it_cannot_walk_exactly(pg, ddl, match):
    pg.execute(f"CREATE TABLE bad ({ddl}, v vector(3), code bit(3))")
    with pytest.raises(errors.InvalidParameterError, match=match):
        etl.backfill(pg, "bad", "code", "v", "cb", key="key", progress_bar=False)


def test_backfill_needs_an_autocommit_connection(pg_test_dsn):
    with psycopg.connect(pg_test_dsn) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v vector(3), code bit(3))")
        with pytest.raises(errors.InvalidParameterError, match="autocommit"):
            etl.backfill(conn, "t", "code", "v", "cb", progress_bar=False)


def test_backfill_needs_a_single_column_key(pg):
    pg.execute("CREATE TABLE pairs (a int, b int, v vector(3), code bit(3), PRIMARY KEY (a, b))")
    with pytest.raises(errors.InvalidParameterError, match="composite primary key") as ei:
        etl.backfill(pg, "pairs", "code", "v", "x", progress_bar=False)
    assert ei.value.sqlstate == "22023"


def _kill_midway(cmd, poll, done_at, total):
    """Starts cmd, waits until poll() reports some rows done, kills it with SIGKILL."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"the backfill ended before it could be killed ({proc.returncode}): {out}{err}")
            if poll() >= done_at:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_kill_9_then_rerun_in_postgresql(pg, pg_test_dsn):
    n = 20000
    x, book = setup_docs(pg, n, pg_test_dsn)

    def seen():
        with psycopg.connect(pg_test_dsn) as c:
            row = c.execute("SELECT rows_seen FROM bitpress.etl_jobs").fetchone()
            return row[0] if row else 0

    _kill_midway([sys.executable, "-m", "bitpress", "backfill", "--dsn", pg_test_dsn, "--table", "documents",
                  "--code-col", "code", "--batch-size", "50", "--quiet"], seen, 1000, n)
    last_key, rows_seen = pg.execute("SELECT last_key, rows_seen FROM bitpress.etl_jobs").fetchone()
    assert 1000 <= rows_seen < n
    # the committed batches and the job's record agree exactly: rows up to last_key have their code
    coded = pg.execute("SELECT count(*), max(id) FROM documents WHERE code IS NOT NULL").fetchone()
    assert coded == (rows_seen, int(last_key))
    proc = run_cli("backfill", "--dsn", pg_test_dsn, "--table", "documents", "--code-col", "code", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert f"resumed after key {int(last_key)}" in proc.stdout
    assert f"{n:,} rows walked over in the whole job, {n:,} codes written" in proc.stdout
    assert check_pg(pg, book) == n
    assert pg.execute("SELECT count(DISTINCT id) FROM documents").fetchone()[0] == n


def test_kill_9_then_rerun_in_duckdb(tmp_path):
    import bitpress.duckdb

    n = 8000
    path = tmp_path / "docs.duckdb"
    con = bitpress.duckdb.connect(str(path))
    x, book = setup_docs(con, n)
    con.close()
    add_code_column(None, path)

    # DuckDB allows one process per file: watch the CLI's per-batch log instead of the table
    proc = subprocess.Popen([sys.executable, "-m", "bitpress", "backfill", "--duckdb", str(path), "--table",
                             "documents", "--code-col", "code", "--batch-size", "40", "--verbose"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    buf = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and b"key 999:" not in buf and proc.poll() is None:
        buf += os.read(proc.stderr.fileno(), 4096)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, buf.decode()[-500:]

    con = bitpress.duckdb.connect(str(path))
    last_key, rows_seen = con.execute("SELECT last_key, rows_seen FROM bitpress.etl_jobs").fetchone()
    assert 1000 <= rows_seen < n
    assert con.execute("SELECT count(*), max(id) FROM documents WHERE code IS NOT NULL").fetchone() == \
        (rows_seen, int(last_key))
    con.close()
    done = run_cli("backfill", "--duckdb", str(path), "--table", "documents", "--code-col", "code", "--quiet")
    assert done.returncode == 0, done.stderr
    assert f"resumed after key {int(last_key)}" in done.stdout
    con = bitpress.duckdb.connect(str(path))
    assert check_duck(con, book) == n
    # new rows have NULL codes in DuckDB (no triggers): a rerun codes only them
    con.execute("INSERT INTO documents (id, embedding) SELECT id + 100000, embedding FROM documents WHERE id < 10")
    r = etl.backfill(con, "documents", "code", progress_bar=False)
    assert (r.rows_seen, r.rows_changed) == (n + 10, 10)
    assert check_duck(con, book) == n + 10
    con.close()


def test_backfill_while_the_application_writes(pg, pg_test_dsn):
    """A writer inserts, updates vectors and deletes rows in its own transactions during the
    backfill; afterwards every row has the code of its current vector and no row is lost."""
    n = 6000
    x, book = setup_docs(pg, n, pg_test_dsn)
    stop = threading.Event()
    done = {"inserted": 0, "deleted": 0, "updated": 0}
    rng = np.random.default_rng(7)

    def writer():
        from pgvector.psycopg import register_vector

        with psycopg.connect(pg_test_dsn, autocommit=True) as c:
            register_vector(c)
            i = 0
            while not stop.is_set() or i < 30:
                with c.transaction():
                    c.execute("INSERT INTO documents (id, body, embedding) VALUES (%s, 'new', %s)",
                              (100000 + i, x[rng.integers(n)]))
                    c.execute("UPDATE documents SET embedding = %s WHERE id = %s",
                              (x[rng.integers(n)], int(rng.integers(n))))
                    if i % 3 == 0:
                        done["deleted"] += c.execute("DELETE FROM documents WHERE id = %s",
                                                     (int(rng.integers(n)),)).rowcount
                done["inserted"] += 1
                done["updated"] += 1
                i += 1

    t = threading.Thread(target=writer)
    seen_at = []
    t.start()
    try:
        r = etl.backfill(pg, "documents", "code", batch_size=150, progress_bar=False,
                         on_batch=lambda *a: seen_at.append(done["inserted"]))
    finally:
        stop.set()
        t.join()
    assert seen_at[-1] - seen_at[0] > 0, "no write happened while the backfill ran"
    assert r.rows_seen >= n - done["deleted"]
    assert done["inserted"] >= 30
    assert check_pg(pg, book) == n + done["inserted"] - done["deleted"]


def test_backfill_odd_names_and_injection_strings(pg):
    from psycopg import sql

    odd, col = 'docs"; DROP TABLE victim; --', "code %s :x"
    pg.execute("CREATE TABLE victim (id int)")
    texts, x = create_docs(pg, 300, table=odd)
    schema.upgrade(pg)
    codebooks.fit_table(pg, odd, "embedding", "b'; DROP TABLE victim; --", "median", progress=False)
    book = codebooks.load(pg, "b'; DROP TABLE victim; --")
    pg.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} bit(384)").format(sql.Identifier(odd), sql.Identifier(col)))
    r = etl.backfill(pg, odd, col, "embedding", "b'; DROP TABLE victim; --", progress_bar=False, log=lambda m: None)
    assert r.rows_changed == 300
    got = pg.execute(sql.SQL("SELECT code_bytes({}) FROM {} ORDER BY id").format(
        sql.Identifier(col), sql.Identifier(odd))).fetchall()
    assert [bytes(g[0]) for g in got] == [w.tobytes() for w in book.encode_reference(x)]
    assert pg.execute("SELECT to_regclass('victim') IS NOT NULL").fetchone()[0]
    proc = run_cli("backfill", "--dsn", "host=/nonexistent", "--table", odd, "--code-col", col)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_duckdb_backfill_writes_postgresqls_bytes_into_an_old_blob_column(duck):
    """A DuckDB code column made before 0.5.0 is a BLOB: the backfill writes code_bytes of the
    BIT binarize returns (PostgreSQL's layout), not DuckDB's padding-first cast of it; a BIT
    column gets the BIT itself. 12 bits: the two layouts differ."""
    from bitpress import codebooks, schema

    schema.upgrade(duck)
    x = np.random.default_rng(4).standard_normal((300, 12)).astype(np.float32)
    duck.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v FLOAT[12], old BLOB, new BIT)")
    duck.executemany("INSERT INTO t (id, v) VALUES (?, ?)", [(i, v.tolist()) for i, v in enumerate(x)])
    codebooks.fit_table(duck, "t", "v", "cb", "median", progress=False)
    book = codebooks.load(duck, "cb")
    for col in ("old", "new"):
        etl.backfill(duck, "t", col, vector_col="v", codebook="cb", progress_bar=False, log=lambda *a: None)
    want = book.encode_reference(x)
    rows = duck.execute("SELECT old, code_bytes(new), new::VARCHAR FROM t ORDER BY id").fetchall()
    assert [bytes(r[0]) for r in rows] == [bytes(r[1]) for r in rows] == [w.tobytes() for w in want]
    assert [r[2] for r in rows] == ["".join(map(str, np.unpackbits(w)[:12])) for w in want]
    r = etl.backfill(duck, "t", "old", vector_col="v", codebook="cb", progress_bar=False, log=lambda *a: None)
    assert r.rows_changed == 0  # compared as PostgreSQL's bytes too: nothing to rewrite
