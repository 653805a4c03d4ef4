"""docker/: no Docker engine runs on CI machines, so the image's parts are run here as they are:
the entrypoint starts a real server from an empty data directory (password auth, vector and
bitpress created), and the Dockerfile and compose.yaml are checked against the scripts CI runs."""
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import psycopg
import pytest
import yaml

import bitpress
from conftest import PG_BINDIR, ROOT

DOCKER = ROOT / "docker"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp_path, port, password=None):
    env = {"PATH": f"{PG_BINDIR}:/usr/bin:/bin", "PGDATA": str(tmp_path / "data"), "PGPORT": str(port),
           "BITPRESS_SOCKET_DIR": str(tmp_path), "HOME": str(tmp_path)}
    if password is not None:
        env["POSTGRES_PASSWORD"] = password
    return subprocess.Popen([str(DOCKER / "entrypoint.sh")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def connect(port, password, deadline):
    while True:
        try:
            return psycopg.connect(host="127.0.0.1", port=port, user="postgres", password=password,
                                   dbname="postgres", connect_timeout=2)
        except psycopg.OperationalError as e:
            if "password authentication failed" in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def stop(proc):
    proc.send_signal(signal.SIGINT)  # fast shutdown
    out, _ = proc.communicate(timeout=60)
    return out


def test_entrypoint_initialises_a_server_with_both_extensions(tmp_path):
    port = free_port()
    proc = start(tmp_path, port, "s3cret")
    try:
        with connect(port, "s3cret", time.monotonic() + 60) as conn:
            exts = dict(conn.execute("SELECT extname, extversion FROM pg_extension").fetchall())
            assert conn.execute("SHOW server_encoding").fetchone()[0] == "UTF8"  # not SQL_ASCII
            rules = conn.execute("SELECT address, auth_method FROM pg_hba_file_rules WHERE type = 'host' "
                                 "AND address IN ('0.0.0.0', '::')").fetchall()
            assert sorted(rules) == [("0.0.0.0", "scram-sha-256"), ("::", "scram-sha-256")]
            assert exts["bitpress"] == bitpress.__version__ and exts["vector"].startswith("0.8")
            assert conn.execute("SELECT hamming(binarize('[1,-1,1]'::vector), B'011')").fetchone()[0] == 2
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            connect(port, "wrong", time.monotonic() + 10)
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    # the second start finds the data directory and needs no password to boot
    proc = start(tmp_path, port)
    try:
        with connect(port, "s3cret", time.monotonic() + 60) as conn:
            assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'bitpress'").fetchone()[0] == 1
    finally:
        stop(proc)


def test_entrypoint_refuses_to_initialise_without_a_password(tmp_path):
    proc = start(tmp_path, free_port())
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "set POSTGRES_PASSWORD" in out
    assert not (tmp_path / "data" / "PG_VERSION").exists()


def test_image_is_built_by_the_scripts_ci_runs():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    ci = (ROOT / "scripts" / "test").read_text()
    for step in ("docker/install-deps.sh", "scripts/dev-env", ".venv/bin/bitpress pg install"):
        assert step in dockerfile and step in ci, step
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()
    pgdata = re.search(r"PGDATA=(\S+)", dockerfile).group(1)
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    db = compose["services"]["db"]
    assert (DOCKER / db["build"]["context"] / db["build"]["dockerfile"]).resolve() == (DOCKER / "Dockerfile").resolve()
    assert db["volumes"] == [f"pgdata:{pgdata}"] and "pgdata" in compose["volumes"]
    assert db["ports"] == ["5432:5432"] and "POSTGRES_PASSWORD" in db["environment"]
    # the build context leaves out local builds and the venv
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv/" in ignored and "**/*.so" in ignored and ".git/" in ignored
    assert "STOPSIGNAL SIGINT" in dockerfile  # docker stop: a fast shutdown, not a kill after 10 s
    assert shutil.which("bash") and os.access(DOCKER / "entrypoint.sh", os.X_OK)
