"""The `bitpress` command: pg install (staged with --destdir, so no root needed) and pg status."""
import subprocess
import sys

import bitpress
from bitpress import cli, pg


def run(*args):
    return subprocess.run([sys.executable, "-m", "bitpress", *args], capture_output=True, text=True)


def test_pg_install_stages_a_working_build(tmp_path):
    proc = run("pg", "install", "--destdir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    inst = pg.installed(destdir=str(tmp_path))
    assert inst is not None and inst.version == bitpress.__version__
    assert inst.library.is_file() and inst.library.stat().st_size > 10_000
    # the current version's script, the first release's, and the upgrades between them
    assert sorted(s.name for s in inst.scripts) == [
        "bitpress--0.1.0--0.2.0.sql", "bitpress--0.1.0.sql", "bitpress--0.2.0--0.3.0.sql",
        "bitpress--0.3.0--0.4.0.sql", "bitpress--0.4.0--0.5.0.sql", "bitpress--0.5.0--0.6.0.sql", "bitpress--0.6.0--0.7.0.sql",
        f"bitpress--{bitpress.__version__}.sql"]
    assert f"built bitpress {bitpress.__version__}" in proc.stdout
    assert str(inst.library) in proc.stdout
    # the library exports the SQL entry points and was built without -march=native
    syms = subprocess.run(["nm", "-D", str(inst.library)], capture_output=True, text=True).stdout
    for fn in ("binarize_vector", "binarize_float4_thresholds", "hamming_varbit", "code_from_bytes", "_PG_init",
               "binarize_vector_codebook", "score_vector_codebook"):
        assert f" T {fn}\n" in syms


def test_pg_status_against_the_test_server(pg_dsn):
    proc = run("pg", "status", "--dsn", pg_dsn)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"bitpress {bitpress.__version__} installed" in proc.stdout
    assert f"bitpress available {bitpress.__version__}" in proc.stdout
    assert "vector   available 0.8" in proc.stdout


def test_pg_status_without_server_and_empty_destdir(tmp_path):
    assert pg.installed(destdir=str(tmp_path)) is None
    code = cli.main(["pg", "status", "--pg-config", pg.find_pg_config()])
    assert code == 0  # installed system-wide by scripts/test


def test_version_flag():
    proc = run("--version")
    assert proc.stdout.strip() == f"bitpress {bitpress.__version__}"
