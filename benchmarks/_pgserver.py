"""A throwaway PostgreSQL cluster for the benchmarks: initdb into a temp dir, start, stop, remove.

PostgreSQL refuses to run as root. When this process runs as root (euid 0), ``initdb`` and
``pg_ctl`` run as the ``postgres`` user through ``runuser`` and the temp dir is handed to that
user. The server listens on 127.0.0.1 (a free port) and on a unix socket inside the temp dir;
clients connect through the socket.

The postmaster runs in its own session, so a Ctrl-C in the terminal does not reach it: the
benchmark stops it itself (``stop()``, also registered with ``atexit``) and removes the dir.
"""
from __future__ import annotations

import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

DEFAULT_BINDIR = "/usr/lib/postgresql/15/bin"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayPostgres:
    """``with ThrowawayPostgres(settings={...}) as pg: psycopg.connect(pg.dsn)``."""

    def __init__(self, bindir: str | None = None, settings: dict | None = None, user: str = "postgres"):
        self.bindir = Path(bindir or os.environ.get("PG_BINDIR", DEFAULT_BINDIR))
        self.settings = dict(settings or {})
        self.os_user = user if os.geteuid() == 0 else None
        self.db_user = user
        self.tmpdir: Path | None = None
        self.datadir: Path | None = None
        self.port: int | None = None
        self.started = False
        self._atexit = False

    # -- helpers ---------------------------------------------------------------------------
    def _cmd(self, *args) -> list[str]:
        cmd = [str(self.bindir / args[0]), *map(str, args[1:])]
        if self.os_user:
            cmd = ["runuser", "-u", self.os_user, "--", *cmd]
        return cmd

    def _run(self, *args, new_session: bool = False):
        r = subprocess.run(self._cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, start_new_session=new_session)
        if r.returncode != 0:
            log = ""
            if self.tmpdir and (self.tmpdir / "server.log").exists():
                log = (self.tmpdir / "server.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{' '.join(args[:1])} failed ({r.returncode}):\n{r.stdout}\n{log}")
        return r.stdout

    @property
    def dsn(self) -> str:
        return f"host={self.tmpdir} port={self.port} user={self.db_user} dbname=postgres"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "ThrowawayPostgres":
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        self.tmpdir = Path(tempfile.mkdtemp(prefix="bitpress-bench-pg-"))
        self.datadir = self.tmpdir / "data"
        if self.os_user:
            pw = pwd.getpwnam(self.os_user)
            os.chown(self.tmpdir, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", self.datadir, "-U", self.db_user, "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-sync")
        self.port = free_port()
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": self.port,
            "unix_socket_directories": f"'{self.tmpdir}'",
            "fsync": "off",  # a throwaway cluster: no durability needed, reads are unaffected
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "wal_level": "minimal",
            "max_wal_senders": 0,
            "max_wal_size": "'4GB'",
            "logging_collector": "off",
        }
        conf.update(self.settings)
        with open(self.datadir / "postgresql.conf", "a") as f:  # appending keeps the owner
            f.write("\n# bitpress benchmark\n")
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        # own session: a terminal Ctrl-C goes to the benchmark, which then stops the server.
        # Marked started first, so an interrupt during pg_ctl start still stops it.
        self.started = True
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", self.datadir,
                  "-l", self.tmpdir / "server.log", new_session=True)
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove the temp dir; safe to call twice."""
        if self.started and self.datadir is not None:
            self.started = False
            try:
                subprocess.run(self._cmd("pg_ctl", "stop", "-m", "fast", "-w", "-t", "60",
                                         "-D", self.datadir),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True, timeout=90)
            except Exception:
                pass
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
