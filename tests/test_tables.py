"""Reading vector columns of user tables (all rows or a sample) in both engines, with hostile
names quoted, and `bitpress eval` against a table."""
import json
import subprocess
import sys

import numpy as np
import pytest

from bitpress import errors
from bitpress.tables import read_vectors
from conftest import copy_vectors

ODD_TABLE, ODD_COL = 'My "Items"; --', "Emb Col"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "bitpress", *args], capture_output=True, text=True)


def test_read_all_and_a_sample_in_postgresql(pg, minilm):
    from psycopg import sql

    x = minilm[:500]
    pg.execute(sql.SQL("CREATE TABLE {} (id int, {} vector(384))").format(sql.Identifier(ODD_TABLE), sql.Identifier(ODD_COL)))
    with pg.cursor().copy(sql.SQL("COPY {} FROM STDIN WITH (FORMAT BINARY)").format(sql.Identifier(ODD_TABLE))) as cp:
        cp.set_types(["int4", "vector"])
        for i, v in enumerate(x):
            cp.write_row([i, v])
    pg.execute(sql.SQL("INSERT INTO {} VALUES (999, NULL)").format(sql.Identifier(ODD_TABLE)))
    got = read_vectors(pg, ODD_TABLE, ODD_COL)
    assert got.dtype == np.float32 and np.array_equal(np.sort(got, axis=0), np.sort(x, axis=0))
    s1 = read_vectors(pg, ODD_TABLE, ODD_COL, sample=200, seed=3)
    s2 = read_vectors(pg, ODD_TABLE, ODD_COL, sample=200, seed=3)
    assert 150 <= len(s1) <= 200 and np.array_equal(s1, s2)  # repeatable
    rows = {r.tobytes() for r in x}
    assert all(r.tobytes() in rows for r in s1)
    with pytest.raises(errors.InvalidParameterError):
        read_vectors(pg, ODD_TABLE, ODD_COL, sample=0)


def test_read_in_duckdb_and_bad_columns(duck, minilm):
    x = minilm[:300]
    duck.execute(f'CREATE TABLE "My ""Items""; --" AS SELECT unnest(?)::FLOAT[384] AS "Emb Col"', [x.tolist()])
    assert np.array_equal(read_vectors(duck, ODD_TABLE, ODD_COL), x)
    s = read_vectors(duck, ODD_TABLE, ODD_COL, sample=100, seed=1)
    assert s.shape == (100, 384) and np.array_equal(s, read_vectors(duck, ODD_TABLE, ODD_COL, sample=100, seed=1))
    duck.execute("CREATE TABLE ragged AS SELECT * FROM (VALUES ([1.0, 2]), ([1.0, 2, 3])) t(v)")
    with pytest.raises(errors.DimensionMismatchError):
        read_vectors(duck, "ragged", "v")
    duck.execute("CREATE TABLE holes AS SELECT * FROM (VALUES ([1.0, NULL])) t(v)")
    with pytest.raises(errors.NullValueError):
        read_vectors(duck, "holes", "v")
    duck.execute("CREATE TABLE nans AS SELECT * FROM (VALUES ([1.0, 'nan'::FLOAT])) t(v)")
    with pytest.raises(errors.NonFiniteError):
        read_vectors(duck, "nans", "v")
    duck.execute("CREATE TABLE empty (v FLOAT[])")
    with pytest.raises(errors.InvalidParameterError, match="no vectors"):
        read_vectors(duck, "empty", "v")


def test_eval_against_tables(pg, postgresql_proc, tmp_path, minilm):
    import bitpress.duckdb

    x = minilm
    copy_vectors(pg, "items", x)
    p = postgresql_proc
    dsn = f"host={p.host} port={p.port} user={p.user} dbname={pg.info.dbname}"
    path = str(tmp_path / "e.duckdb")
    con = bitpress.duckdb.connect(path)
    con.execute("CREATE TABLE items AS SELECT unnest(?)::FLOAT[384] AS v", [x.tolist()])
    con.close()
    out = {}
    for where in (["--dsn", dsn], ["--duckdb", path]):
        js = tmp_path / f"{where[0][2:]}.json"
        r = run_cli("eval", *where, "--table", "items", "--vector-col", "v", "--queries", "50",
                    "--methods", "sign,median", "--json", str(js), "--no-progress")
        assert r.returncode == 0, r.stderr
        rows = [json.loads(line) for line in js.read_text().splitlines()]
        assert [r["method"] for r in rows] == ["sign", "median"]
        out[where[0]] = rows
    # the same vectors (all rows, in table order) give the same report from both engines
    for a, b in zip(out["--dsn"], out["--duckdb"]):
        assert a["recall_at_10"] == b["recall_at_10"] and a["recall_at_10_oversample_10"] == b["recall_at_10_oversample_10"]
    assert 0.3 < out["--dsn"][1]["recall_at_10"] <= out["--dsn"][1]["recall_at_10_oversample_10"] <= 1.0
