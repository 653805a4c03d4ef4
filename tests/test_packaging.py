"""One version everywhere, no -march=native anywhere in what ships, and a wheel that carries
what `bitpress pg install` and `bitpress migrate` need."""
import re

from conftest import ROOT

import bitpress


def test_single_version():
    core = re.search(r'#define BP_VERSION "([^"]+)"', (ROOT / "pyext/bp_core.h").read_text()).group(1)
    control = re.search(r"default_version = '([^']+)'", (ROOT / "sql/bitpress.control").read_text()).group(1)
    assert bitpress.__version__ == core == control


def test_no_march_native_in_builds():
    for path in ("setup.py", "sql/Makefile", "pyproject.toml"):
        text = (ROOT / path).read_text()
        assert not re.search(r"^[^#]*-march=native", text, re.M), path


def test_wheel_ships_the_extension_sources_and_the_migrations(tmp_path):
    """A wheel must carry sql/ + pyext/ (for `bitpress pg install`) and the Alembic migrations
    (for `bitpress migrate`), since neither lives inside plugin/."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.o", "results"))
    # build isolation, as users get it: the venv's own setuptools may be older than pyproject needs
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                        "-w", str(tmp_path / "wheels"), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    wheel, = (tmp_path / "wheels").glob("bitpress-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("bitpress/_pgsrc/sql/bitpress.sql", "bitpress/_pgsrc/sql/bitpress--0.1.0--0.2.0.sql",
                 "bitpress/_pgsrc/sql/src/stores.c", "bitpress/_pgsrc/pyext/bp_codebook.c",
                 "bitpress/_migrations/env.py", "bitpress/_migrations/versions/0001_codebooks.py",
                 "bitpress/_migrations/versions/0002_code_stores.py", "bitpress/schema.py",
                 "bitpress/_pgsrc/sql/bitpress--0.2.0--0.3.0.sql", "bitpress/_pgsrc/sql/src/tt.c",
                 "bitpress/_pgsrc/pyext/bp_tt.c", "bitpress/_pgsrc/pyext/bp_tt_kernels.h",
                 "bitpress/_migrations/versions/0003_tt.py", "bitpress/tensors.py",
                 "bitpress/_pgsrc/pyext/bp_ffn.c", "bitpress/_pgsrc/sql/src/ffn.c",
                 "bitpress/_migrations/versions/0004_ffn_layers.py",
                 "bitpress/_migrations/versions/0005_code_columns.py", "bitpress/ops.py", "bitpress/etl.py",
                 "bitpress/_pgsrc/sql/bitpress--0.3.0--0.4.0.sql",
                 "bitpress/_pgsrc/sql/bitpress--0.4.0--0.5.0.sql",
                 "bitpress/_pgsrc/sql/bitpress--0.5.0--0.6.0.sql", "bitpress/_pgsrc/sql/src/ivfscan.c",
                 "bitpress/_pgsrc/sql/bitpress--0.6.0--0.7.0.sql",
                 "bitpress/_pgsrc/pyext/bp_ivf.c", "bitpress/ivf.py",
                 "bitpress/_migrations/versions/0006_inline_segments.py",
                 "bitpress/_migrations/versions/0007_store_integrity.py",
                 "bitpress/_migrations/versions/0008_store_access.py",
                 "bitpress/_migrations/versions/0009_params_checksums.py",
                 "bitpress/_migrations/versions/0010_duckdb_ivf.py", "bitpress/duckdb_ivf.py"):
        assert path in names, path
    assert any(n.startswith("bitpress/_core") and n.endswith(".so") for n in names)
