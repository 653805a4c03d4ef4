"""bitpress as a native DuckDB extension: ``bitpress.duckdb_extension``, built on demand.

The extension is the C adapter in ``duckdb/src/`` compiled together with the core files of
``pyext/`` (the same ones the PostgreSQL extension and ``bitpress._core`` run; no
``-march=native``: the core picks its SIMD path at LOAD). It targets DuckDB's C extension API
with the stable ``C_STRUCT`` ABI at API version v1.2.0, so one file loads into every DuckDB from
1.2 on. DuckDB's headers (``duckdb.h``, ``duckdb_extension.h``) are not in this repository: they
are taken at build time from DuckDB's own source distribution on PyPI (the pinned ``duckdb``
sdist, checked by SHA-256) and cached.

``path()`` gives the built file (building it when missing or stale); ``connect()`` opens a
DuckDB connection that allows unsigned extensions and loads it::

    con = bitpress.duckdb_native.connect()
    con.sql("SELECT hamming(binarize([1, -1, 2]::FLOAT[]), binarize([1, 1, 2]::FLOAT[]))")

From the DuckDB CLI: ``duckdb -unsigned -c "LOAD '$(bitpress duckdb-extension)'; ..."``.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from . import errors
from .pg import source_dir

#: DuckDB source distribution the headers come from (PyPI), pinned by SHA-256
DUCKDB_SDIST_VERSION = "2.0.1"
DUCKDB_SDIST_URL = ("https://files.pythonhosted.org/packages/49/d8/"
                    "ebb8ff07c617d1a8c25e7f7718a6955d2d5f7e539ec5219be1da478c0a42/duckdb-2.0.1.tar.gz")
DUCKDB_SDIST_SHA256 = "5b3f493140e35b75298ee0fc606d98e3065e8601e64fe81b09326de7a6fd68e0"
HEADERS = ("duckdb.h", "duckdb_extension.h")
#: the C extension API version the file is built for (the oldest DuckDB that loads it)
C_API_VERSION = (1, 2, 0)
#: the file's name; DuckDB calls <base name>_init_c_api, so it cannot be renamed
FILENAME = "bitpress.duckdb_extension"
ADAPTER = ("bitpress_duckdb.c", "hamming.c", "binarize.c", "codes.c", "simd.c")
CORE = ("bp_hamming.c", "bp_binarize.c", "bp_error.c", "bp_topk.c")
CFLAGS = ["-std=c11", "-O2", "-Wall", "-fPIC", "-fvisibility=hidden", "-ffp-contract=off"]


class BuildError(errors.BitpressError):
    """The native extension could not be built (no compiler, headers unavailable, ...)."""


def cache_dirs() -> list[Path]:
    """Where builds and headers are looked for, the first writable one also written to:
    $BITPRESS_CACHE, the checkout's build/ (next to setup.py), ~/.cache/bitpress."""
    out = []
    if os.environ.get("BITPRESS_CACHE"):
        out.append(Path(os.environ["BITPRESS_CACHE"]))
    root = Path(__file__).resolve().parent.parent.parent
    if (root / "setup.py").is_file():
        out.append(root / "build")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    out.append(Path(xdg) / "bitpress")
    return out


def _writable_cache() -> Path:
    for d in cache_dirs():
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(d, os.W_OK):
            return d
    raise BuildError("no writable cache directory for the DuckDB extension: set BITPRESS_CACHE")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def headers_dir() -> Path:
    """A directory holding duckdb.h and duckdb_extension.h of the pinned DuckDB sdist: a cached
    copy, else extracted from the sdist (downloaded once, or $BITPRESS_DUCKDB_SDIST, a local
    copy of the same file), after checking its SHA-256."""
    name = f"duckdb-{DUCKDB_SDIST_VERSION}-headers"
    for d in cache_dirs():
        if all((d / name / h).is_file() for h in HEADERS):
            return d / name
    cache = _writable_cache()
    sdist = Path(os.environ.get("BITPRESS_DUCKDB_SDIST") or cache / f"duckdb-{DUCKDB_SDIST_VERSION}.tar.gz")
    if not sdist.is_file() or _sha256(sdist) != DUCKDB_SDIST_SHA256:
        if os.environ.get("BITPRESS_DUCKDB_SDIST"):
            raise BuildError(f"{sdist} is not duckdb-{DUCKDB_SDIST_VERSION}.tar.gz (SHA-256 differs)")
        tmp = sdist.with_suffix(".part")
        try:
            with urllib.request.urlopen(DUCKDB_SDIST_URL, timeout=120) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as e:
            raise BuildError(f"cannot download DuckDB's headers ({DUCKDB_SDIST_URL}): {e}; "
                             "set BITPRESS_DUCKDB_SDIST to a local copy") from e
        got = _sha256(tmp)
        if got != DUCKDB_SDIST_SHA256:
            tmp.unlink()
            raise BuildError(f"duckdb-{DUCKDB_SDIST_VERSION}.tar.gz has SHA-256 {got}, "
                             f"expected {DUCKDB_SDIST_SHA256}")
        tmp.replace(sdist)
    out = cache / name
    part = Path(tempfile.mkdtemp(prefix=name, dir=cache))
    with tarfile.open(sdist) as tar:
        for h in HEADERS:
            member = f"duckdb-{DUCKDB_SDIST_VERSION}/external/duckdb/src/include/{h}"
            src = tar.extractfile(member)
            if src is None:
                raise BuildError(f"{member} missing from the DuckDB sdist")
            (part / h).write_bytes(src.read())
    if out.exists():
        shutil.rmtree(part)
    else:
        part.replace(out)
    return out


def platform() -> str:
    """DuckDB's platform string (``PRAGMA platform``: linux_amd64, osx_arm64, ...), which the
    extension's footer must carry for DuckDB to load it."""
    import duckdb

    return duckdb.connect().execute("PRAGMA platform").fetchone()[0]


def footer(platform_name: str, extension_version: str) -> bytes:
    """The metadata DuckDB reads from the last bytes of a loadable extension: a WebAssembly
    custom section "duckdb_signature" (22-byte header) holding eight 32-byte fields, last field
    first (5 used: magic "4", platform, C API version, extension version, ABI "C_STRUCT"), then
    256 bytes of signature (zeros: the file is unsigned)."""
    def field(s: str) -> bytes:
        b = s.encode("ascii")
        if len(b) > 32:
            raise BuildError(f"extension metadata field longer than 32 bytes: {s!r}")
        return b.ljust(32, b"\0")

    api = "v{}.{}.{}".format(*C_API_VERSION)
    fields = ["4", platform_name, api, extension_version, "C_STRUCT", "", "", ""]
    # section id 0, section size 531 (LEB128 0x93 0x04), name of 16 bytes, payload size 512
    head = b"\x00\x93\x04\x10duckdb_signature\x80\x04"
    return head + b"".join(field(f) for f in reversed(fields)) + b"\0" * 256


def _sources() -> tuple[list[Path], list[Path]]:
    root = source_dir()
    adapter = [root / "duckdb" / "src" / f for f in ADAPTER]
    core = [root / "pyext" / f for f in CORE]
    missing = [str(p) for p in adapter + core if not p.is_file()]
    if missing:
        raise BuildError(f"extension sources missing: {', '.join(missing)}")
    return adapter, core


def _build_key(plat: str, cc: str, extra: tuple = ()) -> str:
    """What the built file depends on: sources, headers' version, flags, platform, compiler."""
    adapter, core = _sources()
    root = source_dir()
    h = hashlib.sha256()
    for p in adapter + core + [root / "duckdb" / "src" / "bitpress_duckdb.h", root / "pyext" / "bp_core.h"]:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    h.update(repr((DUCKDB_SDIST_SHA256, C_API_VERSION, CFLAGS, plat, cc, tuple(extra))).encode())
    return h.hexdigest()[:16]


def build(force: bool = False, verbose: bool = False, platform_name: str | None = None,
          extra_cflags: tuple[str, ...] = ()) -> Path:
    """Compiles the extension (when missing, stale or ``force``) and returns its path:
    <cache>/duckdb-ext/<key>/bitpress.duckdb_extension. ``platform_name``: the platform string
    of the DuckDB that will load it, when not the installed one's (DuckDB 1.2's Python wheel
    says linux_amd64_gcc4 where 1.5 and 2.0 say linux_amd64; the file is otherwise the same).
    ``extra_cflags``: added to every compile and to the link (tests build a sanitizer copy)."""
    from . import __version__

    cc = os.environ.get("CC", "cc")
    plat = platform_name or platform()
    key = _build_key(plat, cc, tuple(extra_cflags))
    if not force:
        for d in cache_dirs():
            f = d / "duckdb-ext" / key / FILENAME
            if f.is_file():
                return f
    if shutil.which(cc.split()[0]) is None:
        raise BuildError(f"C compiler {cc!r} not found (set CC)")
    include = headers_dir()
    adapter, core = _sources()
    root = source_dir()
    out = _writable_cache() / "duckdb-ext" / key
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=out))
    try:
        major, minor, patch = C_API_VERSION
        defs = ["-DDUCKDB_EXTENSION_NAME=bitpress", f"-DDUCKDB_EXTENSION_API_VERSION_MAJOR={major}",
                f"-DDUCKDB_EXTENSION_API_VERSION_MINOR={minor}", f"-DDUCKDB_EXTENSION_API_VERSION_PATCH={patch}"]
        objs = []
        for src in adapter + core:
            obj = work / (src.stem + ".o")
            cmd = [*cc.split(), *CFLAGS, *extra_cflags, *defs, f"-I{include}", f"-I{root / 'pyext'}",
                   f"-I{root / 'duckdb' / 'src'}", "-c", str(src), "-o", str(obj)]
            _run(cmd, verbose)
            objs.append(str(obj))
        lib = work / "bitpress.so"
        _run([*cc.split(), "-shared", *extra_cflags, "-o", str(lib), *objs], verbose)
        data = lib.read_bytes() + footer(plat, f"v{__version__}")
        tmp = work / FILENAME
        tmp.write_bytes(data)
        tmp.chmod(0o755)
        tmp.replace(out / FILENAME)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out / FILENAME


def _run(cmd, verbose):
    if verbose:
        print(" ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} failed:\n{r.stdout}{r.stderr}")


def path() -> Path:
    """The built extension (built first if needed)."""
    return build()


def load(con) -> None:
    """LOAD the extension into a connection opened with allow_unsigned_extensions."""
    con.execute(f"LOAD '{str(path()).replace(chr(39), chr(39) * 2)}'")


def connect(database: str = ":memory:", config: dict | None = None, **kwargs):
    """``duckdb.connect`` with unsigned extensions allowed and bitpress's native extension
    loaded: ``hamming``, ``bitpress_hamming``, ``binarize``, ``bitpress_binarize``, ``code_bytes``, ``code_from_bytes``,
    ``bitpress_simd``, ``bitpress_version`` (docs/DUCKDB_NATIVE.md). No Python UDF is
    registered on it."""
    import duckdb

    config = dict(config or {})
    config.setdefault("allow_unsigned_extensions", "true")
    con = duckdb.connect(database, config=config, **kwargs)
    load(con)
    return con
