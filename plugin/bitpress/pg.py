"""Build and install the PostgreSQL extension, and report what is installed.

``bitpress pg install`` copies ``sql/`` and ``pyext/`` (from the repository, or from the
copy shipped inside the package as ``_pgsrc``) into a scratch directory, runs PGXS
``make`` and ``make install`` against the chosen ``pg_config`` and prints what went where.
Building in a scratch copy keeps the source tree clean and works from a read-only install.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

EXTENSION = "bitpress"


class InstallError(RuntimeError):
    pass


def source_dir() -> Path:
    """The directory holding sql/ and pyext/ (repository checkout or packaged copy)."""
    here = Path(__file__).resolve().parent
    for root in (here / "_pgsrc", here.parent.parent):
        if (root / "sql" / f"{EXTENSION}.control").is_file() and (root / "pyext" / "bp_core.h").is_file():
            return root
    raise InstallError("cannot find the extension sources (sql/ and pyext/) next to the package")


def find_pg_config(pg_config: str | None = None) -> str:
    """pg_config to build against: the argument, $PG_CONFIG, PostgreSQL 15's, or the one on PATH."""
    candidates = [pg_config, os.environ.get("PG_CONFIG"), "/usr/lib/postgresql/15/bin/pg_config",
                  shutil.which("pg_config")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    raise InstallError("pg_config not found: install postgresql-server-dev-15 (docker/install-deps.sh) "
                       "or pass --pg-config PATH")


def pg_config_value(pg_config: str, flag: str) -> str:
    return subprocess.run([pg_config, flag], check=True, capture_output=True, text=True).stdout.strip()


def control_version(control: Path) -> str | None:
    for line in control.read_text().splitlines():
        if line.strip().startswith("default_version"):
            return line.split("=", 1)[1].strip().strip("'\"")
    return None


@dataclass
class Installed:
    pg_config: str
    pg_version: str
    library: Path
    control: Path
    scripts: list[Path]
    version: str | None


def _dirs(pg_config: str, destdir: str | None = None):
    libdir = Path(pg_config_value(pg_config, "--pkglibdir"))
    sharedir = Path(pg_config_value(pg_config, "--sharedir")) / "extension"
    if destdir:
        libdir = Path(destdir) / libdir.relative_to("/")
        sharedir = Path(destdir) / sharedir.relative_to("/")
    return libdir, sharedir


def installed(pg_config: str | None = None, destdir: str | None = None) -> Installed | None:
    """What is installed for this pg_config (None if the extension is not there)."""
    pg_config = find_pg_config(pg_config)
    libdir, sharedir = _dirs(pg_config, destdir)
    control = sharedir / f"{EXTENSION}.control"
    library = libdir / f"{EXTENSION}.so"
    if not control.is_file():
        return None
    return Installed(pg_config, pg_config_value(pg_config, "--version"), library, control,
                     sorted(sharedir.glob(f"{EXTENSION}--*.sql")), control_version(control))


def install(pg_config: str | None = None, destdir: str | None = None, jobs: int = 2,
            quiet: bool = False, log=print) -> Installed:
    """Build with PGXS in a scratch copy and install; returns what was installed where."""
    pg_config = find_pg_config(pg_config)
    src = source_dir()
    make = shutil.which("make")
    if make is None:
        raise InstallError("make not found: install build-essential")
    with tempfile.TemporaryDirectory(prefix="bitpress-pgbuild-") as tmp:
        build = Path(tmp)
        for part in ("sql", "pyext"):
            shutil.copytree(src / part, build / part,
                            ignore=shutil.ignore_patterns("*.o", "*.so", "*.bc", "results"))
        args = [make, "-C", str(build / "sql"), f"PG_CONFIG={pg_config}", f"-j{jobs}"]
        if destdir:
            args.append(f"DESTDIR={destdir}")
        for target in ([], ["install"]):
            proc = subprocess.run(args + target, capture_output=True, text=True)
            if proc.returncode != 0:
                raise InstallError(f"`{' '.join(args + target)}` failed:\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}")
    result = installed(pg_config, destdir)
    if result is None:
        raise InstallError("make install finished but the control file is not where pg_config says")
    if not quiet:
        log(f"built bitpress {result.version} from {src} with PGXS ({result.pg_version}, {pg_config})")
        log(f"  library  {result.library}")
        log(f"  control  {result.control}")
        for s in result.scripts:
            log(f"  script   {s}")
        log("next: CREATE EXTENSION vector; CREATE EXTENSION bitpress;  (pgvector must be installed)")
    return result


def server_status(dsn: str) -> dict:
    """Available and installed versions of bitpress (and pgvector) in the database at dsn."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT name, default_version, installed_version FROM pg_available_extensions "
            "WHERE name = ANY(%s)", [[EXTENSION, "vector"]]).fetchall()
        found = {name: {"available": default, "installed": inst} for name, default, inst in rows}
        simd = None
        if found.get(EXTENSION, {}).get("installed"):
            simd = conn.execute("SELECT bitpress_simd()").fetchone()[0]
        server = conn.execute("SHOW server_version").fetchone()[0]
    return {"server_version": server, "extensions": found, "simd": simd}
