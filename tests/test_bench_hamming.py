"""benchmarks/bench_hamming.py runs end to end on a small set against the test server: every
answer it times is checked against numpy inside the script (exit 1 on a mismatch)."""
import json
import subprocess
import sys

from bitpress import schema
from conftest import ROOT


def test_postgresql_part_runs_and_checks_its_answers(pg, pg_test_dsn, tmp_path):
    # the store's table needs a unique id: before the script added its primary key, it died at
    # bitpress_store_create (42P16)
    schema.upgrade(pg)
    out = tmp_path / "h.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_hamming.py"), "--n", "3000",
                        "--bits", "384", "--queries", "2", "--engines", "postgresql", "--dsn", pg_test_dsn,
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "all answers checked against numpy" in p.stdout
    methods = {r["method"] for r in json.loads(out.read_text())}
    assert {"pgvector", "bitpress", "bitpress_store", "bitpress_store_par"} <= methods
