"""Builds bitpress._core from the C core in pyext/ (metadata lives in pyproject.toml).

The version comes from one place, BP_VERSION in pyext/bp_core.h, which the PostgreSQL
extension's control file must match (tests/test_packaging.py checks it). The sources of
the PostgreSQL extension (sql/ and pyext/) are shipped inside the package as
bitpress/_pgsrc so that `bitpress pg install` works from a wheel too, and the Alembic
migrations as bitpress/_migrations.
"""
import re
import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
CORE = ["pyext/bp_binarize.c", "pyext/bp_hamming.c", "pyext/bp_error.c", "pyext/bp_codebook.c",
        "pyext/bp_topk.c", "pyext/bp_tt.c", "pyext/bp_ffn.c", "pyext/bp_ivf.c"]
VERSION = re.search(r'#define BP_VERSION "([^"]+)"', (ROOT / "pyext/bp_core.h").read_text()).group(1)


class build_py_with_pgsrc(build_py):
    def run(self):
        super().run()
        dest = Path(self.build_lib) / "bitpress" / "_pgsrc"
        shutil.rmtree(dest, ignore_errors=True)
        for part in ("sql", "pyext", "duckdb"):  # duckdb/: the native DuckDB extension (duckdb_native)
            shutil.copytree(ROOT / part, dest / part,
                            ignore=shutil.ignore_patterns("*.o", "*.so", "*.bc", "results", "*.diffs"))
        # bitpress's Alembic migrations, found by bitpress.schema as bitpress/_migrations
        mig = Path(self.build_lib) / "bitpress" / "_migrations"
        shutil.rmtree(mig, ignore_errors=True)
        shutil.copytree(ROOT / "migrations", mig, ignore=shutil.ignore_patterns("__pycache__"))


setup(
    version=VERSION,
    ext_modules=[
        Extension(
            "bitpress._core",
            sources=["pyext/_coremodule.c", *CORE],
            include_dirs=["pyext"],
            depends=["pyext/bp_core.h", "pyext/bp_tt_kernels.h"],
            # no -march=native: each SIMD path carries its own target attribute
            extra_compile_args=["-std=c99", "-O2", "-Wall", "-ffp-contract=off"],
        )
    ],
    cmdclass={"build_py": build_py_with_pgsrc},
)
