"""bitpress.evaluate and ``bitpress eval`` on real MiniLM vectors (no database)."""
import json

import numpy as np
import pytest

from bitpress import cli, errors
from bitpress import evaluate as ev

from conftest import load_shared

KEYS = {"method", "bits", "bytes", "compression", "recall_at_10", "recall_at_10_oversample_2",
        "recall_at_10_oversample_4", "recall_at_10_oversample_10", "ms_per_query"}


@pytest.fixture(scope="module")
def slice_data(minilm):
    """1,900 corpus rows and 100 held-out queries of the real MiniLM set (seed 0)."""
    return ev.holdout(minilm, 100, 10, seed=0)


def test_parse_methods():
    specs = ev.parse_methods("sign, pca:256,median+asym,itq:32+asym")
    assert [(s.method, s.bits, s.asym) for s in specs] == [
        ("sign", None, False), ("pca", 256, False), ("median", None, True), ("itq", 32, True)]
    assert specs[2].name == "median+asym"
    for bad in ("nope", "pca:x", "", ","):
        with pytest.raises(errors.InvalidParameterError):
            ev.parse_methods(bad)
    assert len(ev.parse_methods(",".join(ev.DEFAULT_METHODS))) == len(ev.DEFAULT_METHODS)


def test_holdout_and_exact_ground_truth(minilm):
    d = ev.holdout(minilm, 50, 10, seed=3)
    assert d.corpus.shape == (1950, 384) and d.queries.shape == (50, 384) and d.gt.shape == (50, 10)
    # no query is in the corpus; the ground truth is the exact cosine ranking
    assert not (d.queries[:, None, :] == d.corpus[None, :5, :]).all(axis=2).any()
    sims = d.queries @ d.corpus.T
    np.testing.assert_array_equal(d.gt[:, 0], sims.argmax(axis=1))
    assert (np.take_along_axis(sims, d.gt, axis=1)[:, :-1] >= np.take_along_axis(sims, d.gt, axis=1)[:, 1:] - 1e-6).all()
    again = ev.holdout(minilm, 50, 10, seed=3)
    np.testing.assert_array_equal(again.gt, d.gt)
    with pytest.raises(errors.InvalidParameterError, match="--queries must be 1..1999"):
        ev.holdout(minilm, 2000, 10)


def test_exact_topk_matches_the_shared_ground_truth():
    corpus = load_shared("pypi-minilm", "corpus.npy")
    queries = load_shared("pypi-minilm", "queries.npy")[:5]
    gt = load_shared("pypi-minilm", "gt_top100.npy")[:5, :10]
    found = ev.exact_topk(corpus, queries, 10)
    for f, g in zip(found, gt):
        assert set(f.tolist()) == set(g.tolist())


def test_recall_of_median_on_a_real_slice(slice_data):
    rows, total = ev.evaluate(slice_data, ev.parse_methods("sign,median,median+asym,thermometer"),
                              progress=False, out=lambda s: None)
    by = {r["method"]: r for r in rows}
    assert KEYS <= set(by["median"])
    # measured on this slice (seed 0): median 0.501 / 0.808 (os 4) / 0.929 (os 10),
    # median+asym 0.681, thermometer 0.615
    assert by["median"]["recall_at_10"] > 0.45
    assert by["median"]["recall_at_10_oversample_4"] > 0.75
    assert by["median"]["recall_at_10_oversample_10"] > 0.88
    assert by["median+asym"]["recall_at_10"] > 0.6
    assert by["thermometer"]["recall_at_10"] > by["median"]["recall_at_10"]
    for r in rows:
        assert r["recall_at_10"] <= r["recall_at_10_oversample_2"] + 0.05
        assert r["recall_at_10_oversample_2"] <= r["recall_at_10_oversample_4"] <= r["recall_at_10_oversample_10"] <= 1
        assert r["ms_per_query"] > 0
    assert by["median"]["bytes"] == 48 and by["median"]["compression"] == 32.0
    assert by["thermometer"]["bits"] == 768 and by["thermometer"]["compression"] == 16.0
    assert by["median+asym"]["search"] == "asymmetric" and by["median"]["search"] == "hamming"
    # same-size rows carry their paired difference to sign
    assert by["median"]["recall_at_10_minus_sign"] == pytest.approx(
        by["median"]["recall_at_10"] - by["sign"]["recall_at_10"], abs=1e-3)
    assert "recall_at_10_minus_sign" not in by["thermometer"] and "recall_at_10_minus_sign" not in by["sign"]


def test_rows_that_cannot_be_fitted_are_skipped(slice_data):
    lines = []
    rows, _ = ev.evaluate(slice_data, ev.parse_methods("pca:2000,hybrid:256+asym,matryoshka:32"),
                          progress=False, out=lines.append)
    assert [r["method"] for r in rows] == ["matryoshka"]
    text = "\n".join(lines)
    assert "skipped: pca projects on at most 384 axes" in text
    assert "skipped: hybrid codes have no reconstruction levels" in text


def test_cli_eval_writes_json_rows(tmp_path, minilm, capsys):
    path = tmp_path / "v.npy"
    np.save(path, minilm[:1000])
    out = tmp_path / "rows.json"
    code = cli.main(["eval", "--vectors", str(path), "--queries", "50", "--methods",
                     "median,itq:32,median+asym", "--json", str(out), "--no-progress"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["method"] for r in rows] == ["median", "itq", "median+asym"]
    for r in rows:
        assert KEYS <= set(r)
        assert r["n_queries"] == 50 and r["n_corpus"] == 950
    assert rows[1]["bits"] == 32 and rows[1]["bytes"] == 4 and rows[1]["compression"] == 384.0
    printed = capsys.readouterr().out
    assert "median+asym" in printed and "950 x 384" in printed


def test_cli_eval_dataset_dir(tmp_path, minilm):
    # a dataset directory without gt_top100.npy: the ground truth is computed
    np.save(tmp_path / "corpus.npy", minilm[:1500])
    np.save(tmp_path / "queries.npy", minilm[1500:1520])
    out = tmp_path / "rows.json"
    assert cli.main(["eval", "--dataset", str(tmp_path), "--methods", "sign", "--json", str(out),
                     "--no-progress"]) == 0
    row = json.loads(out.read_text())
    assert row["n_queries"] == 20 and row["n_corpus"] == 1500 and 0 < row["recall_at_10"] <= 1


def test_cli_eval_errors(tmp_path, minilm, capsys):
    path = tmp_path / "v.npy"
    np.save(path, minilm[:100])
    assert cli.main(["eval", "--vectors", str(path), "--queries", "100"]) == 2
    assert "--queries must be 1..99" in capsys.readouterr().err
    assert cli.main(["eval", "--vectors", str(path), "--methods", "bogus"]) == 2
    assert "unknown method 'bogus'" in capsys.readouterr().err
    assert cli.main(["eval", "--duckdb", str(tmp_path / "x.duckdb")]) == 2
    assert "need --table and --vector-col" in capsys.readouterr().err
    bad = minilm[:100].copy()
    bad[5, 0] = np.nan
    np.save(path, bad)
    assert cli.main(["eval", "--vectors", str(path)]) == 2
    assert "row 5" in capsys.readouterr().err


def test_fit_options_from_the_command_line(tmp_path, minilm):
    assert ev.parse_fit_options(["thermometer.cut=tertile", "thermometer.alpha=0.6", "itq.iterations=5"]) == {
        "thermometer": {"cut": "tertile", "alpha": 0.6}, "itq": {"iterations": 5}}
    for bad in ("thermometer", "nope.x=1", "thermometer.=1", "median.x=1"):
        with pytest.raises(errors.InvalidParameterError):
            ev.parse_fit_options([bad])
    path, out = tmp_path / "v.npy", tmp_path / "rows.json"
    np.save(path, minilm[:500])
    assert cli.main(["eval", "--vectors", str(path), "--methods", "thermometer", "--fit-option",
                     "thermometer.cut=tertile", "--json", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["fit"]["cut"] == "tertile"
    assert cli.main(["eval", "--vectors", str(path), "--methods", "median", "--fit-option", "median.x=1"]) == 2
