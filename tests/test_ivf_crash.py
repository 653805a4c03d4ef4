"""bitpress_ivf survives a crash: a backend killed with SIGKILL (the postmaster then restarts
every backend and replays the WAL) during CREATE INDEX and during inserts leaves an index that
answers for exactly the committed rows. A cluster of its own, since a crash resets them all.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from pytest_postgresql import factories

from conftest import PG_BINDIR, copy_vectors, load_shared

crash_proc = factories.postgresql_proc(executable=str(PG_BINDIR / "pg_ctl"), port=None,
                                       unixsocketdir="/tmp",
                                       postgres_options="-c restart_after_crash=on")


def connect(proc, register=True):
    conn = psycopg.connect(host=proc.host, port=proc.port, user=proc.user, dbname="postgres",
                           autocommit=True)
    if register:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE EXTENSION IF NOT EXISTS bitpress")
        register_vector(conn)
    return conn


def wait_for_recovery(proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with connect(proc, register=False) as c:
                if not c.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return
        except psycopg.OperationalError:
            pass
        time.sleep(0.3)
    raise AssertionError("the server did not come back after the crash")


def ids_by_index(conn, q):
    conn.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in conn.execute(
        "EXPLAIN SELECT id FROM t ORDER BY v <=> %s LIMIT 1000000", (q,)))
    assert "Index Scan using t_ivf" in plan, plan
    return [r[0] for r in conn.execute("SELECT id FROM t ORDER BY v <=> %s LIMIT 1000000", (q,))]


def test_kill_during_build_and_during_inserts(crash_proc):
    x = load_shared("pypi-minilm", "corpus.npy")[:12000]
    with connect(crash_proc) as conn:
        conn.execute("DROP TABLE IF EXISTS t")
        copy_vectors(conn, "t", x[:8000])

        # 1. SIGKILL the backend building the index, while it codes rows
        builder = connect(crash_proc)
        pid = builder.execute("SELECT pg_backend_pid()").fetchone()[0]
        builder.execute("SET maintenance_work_mem = '256MB'")
        failed = []

        def build():
            try:
                builder.execute("CREATE INDEX t_ivf ON t USING bitpress_ivf (v) WITH (lists = 90)")
            except psycopg.Error as e:
                failed.append(e)

        th = threading.Thread(target=build)
        th.start()
        deadline = time.time() + 60
        phase = None
        while time.time() < deadline and th.is_alive():
            row = conn.execute("SELECT phase FROM pg_stat_progress_create_index WHERE pid = %s",
                               (pid,)).fetchone()
            phase = row and row[0]
            if phase in ("building index: performing k-means", "building index: coding rows"):
                break
            time.sleep(0.01)
        assert phase in ("building index: performing k-means", "building index: coding rows"), phase
        os.kill(pid, signal.SIGKILL)
        th.join()
        assert failed, "the build finished before it was killed"
    wait_for_recovery(crash_proc)

    with connect(crash_proc) as conn:
        # the build was never committed: no index; the table is whole; a new build works
        assert conn.execute("SELECT to_regclass('t_ivf')").fetchone()[0] is None
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 8000
        conn.execute("CREATE INDEX t_ivf ON t USING bitpress_ivf (v) WITH (lists = 90)")
        conn.execute("CHECKPOINT")

        # 2. SIGKILL a backend in the middle of inserts (new pages, new list heads)
        writer = connect(crash_proc)
        pid = writer.execute("SELECT pg_backend_pid()").fetchone()[0]
        committed = []

        def insert():
            try:
                for i in range(8000, 12000):
                    writer.execute("INSERT INTO t VALUES (%s, %s)", (i, x[i]))
                    committed.append(i)
            except psycopg.Error:
                pass

        th = threading.Thread(target=insert)
        th.start()
        while len(committed) < 1500 and th.is_alive():
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        th.join()
        assert 1500 <= len(committed) < 4000
    wait_for_recovery(crash_proc)

    with connect(crash_proc) as conn:
        rows = {r[0] for r in conn.execute("SELECT id FROM t")}
        # every committed insert is there (at most the one in flight besides)
        assert set(committed) <= rows and len(rows - set(range(8000)) - set(committed)) <= 1
        q = load_shared("pypi-minilm", "queries.npy")[0]
        got = ids_by_index(conn, q)
        assert sorted(got) == sorted(rows), "the index does not hold exactly the table's rows"
        # and it still takes rows and finds them
        conn.execute("INSERT INTO t VALUES (-1, %s)", (x[5],))
        conn.execute("SET bitpress.probes = 90")
        assert {r[0] for r in conn.execute("SELECT id FROM t ORDER BY v <=> %s LIMIT 2", (x[5],))} == {5, -1}
