"""A real ONNX model (paraphrase-MiniLM-L3-v2) into bitpress.tt_* tables and back out.

Compress, resume, export and run with onnxruntime on both engines, and the `bitpress tt` CLI.
Only a few weight matrices are decomposed here (speed); benchmarks/eval_tt.py runs them all.
"""
import numpy as np
import pytest

from bitpress import cli, errors, onnx_weights, tensors, ttmodels
from bitpress.embed import Embedder, default_model_path
from bitpress.tables import fetchall

SENTENCES = ["Fast binary codes for vector search in PostgreSQL",
             "A tiny HTTP client with retries",
             "Plot geographic data on interactive maps"]
LAYER0_Q = r"layer\.0\.attention\.self\.query\.weight"


@pytest.fixture(scope="module")
def original():
    return Embedder(threads=1).encode(SENTENCES)


def _count(conn, table, model):
    col = "name" if table == tensors.MODELS else "model"
    return fetchall(conn, f"SELECT count(*) FROM {table} WHERE {col} = %s", (model,))[0][0]


def test_lossless_round_trip_gives_the_same_embeddings(duck_books, tmp_path, original):
    # eps 0: the one decomposed matrix would be larger as TT than dense, so it is kept dense
    rows = ttmodels.compress(duck_books, default_model_path(), "l3", eps=0.0, include=LAYER0_Q,
                             progress_bar=False)
    assert len(rows) == 53 and sum(r["decomposed"] for r in rows) == 1
    q = next(r for r in rows if r["decomposed"])
    assert q["format"] == "dense" and q["stored_bytes"] == q["dense_bytes"] == 384 * 384 * 4
    out = ttmodels.export(duck_books, "l3", tmp_path / "l3.onnx", progress_bar=False)
    again = Embedder(out, threads=1).encode(SENTENCES)
    assert np.array_equal(again, original)


def test_compressed_matrix_changes_the_model_by_its_measured_error(duck_books, tmp_path, original):
    rows = ttmodels.compress(duck_books, default_model_path(), "l3", eps=0.3, include=LAYER0_Q,
                             progress_bar=False)
    q = next(r for r in rows if r["decomposed"])
    assert q["format"] == "tt" and q["stored_bytes"] < q["dense_bytes"]
    assert 0.25 < q["rel_error"] <= 0.3 + 1e-6
    # the stored cores really give a tensor that far from the original
    model = onnx_weights.load_model(default_model_path())
    w = onnx_weights.tensor(model, "onnx::MatMul_470")
    got = tensors.load(duck_books, "l3", q["tensor"]).reconstruct()
    assert np.isclose(np.linalg.norm(got - w) / np.linalg.norm(w), q["rel_error"], rtol=1e-3)
    out = ttmodels.export(duck_books, "l3", tmp_path / "l3.onnx", progress_bar=False)
    cos = (Embedder(out, threads=1).encode(SENTENCES) * original).sum(1)
    assert 0.5 < cos.min() and cos.max() < 0.99999


def test_an_interrupted_compress_resumes_without_duplicates(duck_books):
    src = default_model_path()
    first = ttmodels.compress(duck_books, src, "l3", eps=0.3, include=LAYER0_Q, stop_after=5,
                              progress_bar=False)
    assert len(first) == 5 and _count(duck_books, tensors.TENSORS, "l3") == 5
    rest = ttmodels.compress(duck_books, src, "l3", eps=0.3, include=LAYER0_Q, progress_bar=False)
    assert len(rest) == 48 and not {r["tensor"] for r in first} & {r["tensor"] for r in rest}
    assert _count(duck_books, tensors.TENSORS, "l3") == 53
    assert _count(duck_books, tensors.MODELS, "l3") == 1
    assert ttmodels.compress(duck_books, src, "l3", eps=0.3, include=LAYER0_Q, progress_bar=False) == []
    with pytest.raises(errors.InvalidParameterError, match="other settings"):
        ttmodels.compress(duck_books, src, "l3", eps=0.2, include=LAYER0_Q, progress_bar=False)
    again = ttmodels.compress(duck_books, src, "l3", eps=0.2, include=LAYER0_Q, replace=True,
                              stop_after=1, progress_bar=False)
    assert len(again) == 1 and _count(duck_books, tensors.TENSORS, "l3") == 1


def test_a_failed_tensor_write_leaves_nothing_behind(duck_books, monkeypatch):
    src = default_model_path()
    real = tensors.core_rows

    def broken(model, name, cores):
        rows = real(model, name, cores)
        return rows + [rows[0]]  # a duplicate core index: the primary key refuses it

    monkeypatch.setattr(tensors, "core_rows", broken)
    with pytest.raises(Exception, match="(?i)constraint|duplicate"):
        ttmodels.compress(duck_books, src, "l3", eps=0.3, include=LAYER0_Q, progress_bar=False)
    assert _count(duck_books, tensors.TENSORS, "l3") == 0
    assert _count(duck_books, tensors.CORES, "l3") == 0
    monkeypatch.setattr(tensors, "core_rows", real)
    assert len(ttmodels.compress(duck_books, src, "l3", eps=0.3, include=LAYER0_Q, progress_bar=False)) == 53


def test_postgresql_and_duckdb_export_the_same_weights(pg_books, duck_books, tmp_path):
    src = default_model_path()
    for conn, name in ((pg_books, "pg"), (duck_books, "duck")):
        ttmodels.compress(conn, src, "l3", eps=0.3, include=r"layer\.1\.intermediate", progress_bar=False)
        ttmodels.export(conn, "l3", tmp_path / f"{name}.onnx", progress_bar=False)
    a = onnx_weights.load_model(tmp_path / "pg.onnx")
    b = onnx_weights.load_model(tmp_path / "duck.onnx")
    assert a.SerializeToString() == b.SerializeToString()
    # and the PostgreSQL function gives the same bits as the exported weight
    row = pg_books.execute("SELECT tensor FROM bitpress.tt_tensors WHERE format = 'tt'").fetchall()
    assert len(row) == 1
    sql = np.asarray(pg_books.execute("SELECT tt_reconstruct('l3', %s)", row[0]).fetchone()[0], np.float32)
    name = onnx_weights.readable_names(a)
    onnx_name = next(k for k, v in name.items() if v == row[0][0])
    assert np.array_equal(sql, onnx_weights.tensor(a, onnx_name))


def test_cli_compress_list_export_drop(tmp_path, capsys):
    db = str(tmp_path / "m.duckdb")
    src = str(default_model_path())
    assert cli.main(["tt", "compress", "--duckdb", db, src, "--name", "l3", "--eps", "0.3",
                     "--include", LAYER0_Q, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "53 tensors, 1 as TT" in out and "layer.0.attention.self.query.weight" in out
    assert cli.main(["tt", "list", "--duckdb", db, "l3"]) == 0
    assert "word_embeddings.weight" in capsys.readouterr().out
    assert cli.main(["tt", "export", "--duckdb", db, "l3", str(tmp_path / "x.onnx"), "--quiet"]) == 0
    assert (tmp_path / "x.onnx").stat().st_size > 60e6
    assert cli.main(["tt", "compress", "--duckdb", db, src, "--name", "l3", "--eps", "0.1",
                     "--include", LAYER0_Q, "--quiet"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert cli.main(["tt", "drop", "--duckdb", db, "l3"]) == 0
    assert "53 tensors removed" in capsys.readouterr().out
    assert cli.main(["tt", "export", "--duckdb", db, "l3", str(tmp_path / "y.onnx")]) == 2
    assert 'model "l3" does not exist' in capsys.readouterr().err
