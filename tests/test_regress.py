"""The pg_regress suite under sql/test (expected output, error cases included), run against
the session's PostgreSQL cluster like `make installcheck` would."""
import shutil
import subprocess
from pathlib import Path

from conftest import PG_CONFIG, ROOT


def test_pg_regress(postgresql_proc, tmp_path):
    pgxs = Path(subprocess.run([PG_CONFIG, "--pgxs"], capture_output=True, text=True, check=True).stdout.strip())
    pg_regress = pgxs.parent.parent / "test" / "regress" / "pg_regress"
    tests = sorted(p.stem for p in (ROOT / "sql" / "test" / "sql").glob("*.sql"))
    assert tests == ["binarize", "hamming"]
    inputdir = tmp_path / "test"
    shutil.copytree(ROOT / "sql" / "test", inputdir)
    proc = subprocess.run(
        [str(pg_regress), f"--inputdir={inputdir}", f"--outputdir={tmp_path / 'out'}",
         f"--host={postgresql_proc.host}", f"--port={postgresql_proc.port}",
         f"--user={postgresql_proc.user}", "--dbname=bitpress_regression",
         "--load-extension=vector", "--load-extension=bitpress", *tests],
        capture_output=True, text=True)
    diffs = tmp_path / "out" / "regression.diffs"
    assert proc.returncode == 0, proc.stdout + (diffs.read_text() if diffs.exists() else proc.stderr)
    assert f"All {len(tests)} tests passed" in proc.stdout
