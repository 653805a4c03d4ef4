"""bitpress.onnx_weights: readable names, selection, skeleton + rebuild of ONNX models, on the
real paraphrase-MiniLM-L3-v2 model (run through bitpress.embed.Embedder) and tiny models."""
import os
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bitpress import embed
from bitpress import onnx_weights as ow

SENTENCES = [
    "A man is playing guitar.",
    "The stock market fell sharply on Monday.",
    "Serialize obj to a JSON formatted str.",
    "hi",
]
PREFIX = "model.0.auto_model.encoder."
MODULES = ["attention.self.query", "attention.self.key", "attention.self.value",
           "attention.output.dense", "intermediate.dense", "output.dense"]
MATMUL_NAMES = [f"{PREFIX}layer.{i}.{m}.weight" for i in range(3) for m in MODULES]


@pytest.fixture(scope="module")
def model():
    return ow.load_model(embed.default_model_path())


@pytest.fixture(scope="module")
def original_embeddings():
    return embed.Embedder(threads=1).encode(SENTENCES)


def _embed_with(m, path):
    ow.save(m, path)
    return embed.Embedder(model_path=path, threads=1).encode(SENTENCES)


def _matmul_inits(m):
    matmul_inputs = {i for n in m.graph.node if n.op_type == "MatMul" for i in n.input}
    return [t.name for t in m.graph.initializer if t.name in matmul_inputs]


# ------------------------------------------------------------------ readable names


def test_readable_names_real_model(model):
    names = ow.readable_names(model)
    assert list(names) == [t.name for t in model.graph.initializer]
    assert len(names) == 53
    renamed = {k: v for k, v in names.items() if k != v}
    assert sorted(renamed) == sorted(_matmul_inits(model))
    assert len(renamed) == 18
    assert all(k.startswith("onnx::MatMul_") for k in renamed)
    assert sorted(renamed.values()) == sorted(MATMUL_NAMES)  # unique, all .weight
    assert len(set(names.values())) == len(names)
    assert names["onnx::MatMul_470"] == PREFIX + "layer.0.attention.self.query.weight"
    assert names["onnx::MatMul_471"] == PREFIX + "layer.0.attention.self.key.weight"
    assert names["onnx::MatMul_481"] == PREFIX + "layer.0.intermediate.dense.weight"
    assert names["onnx::MatMul_493"] == PREFIX + "layer.1.attention.output.dense.weight"
    assert names["onnx::MatMul_508"] == PREFIX + "layer.2.output.dense.weight"
    # the readable ones are kept as they are
    for k in ("model.0.auto_model.embeddings.word_embeddings.weight",
              PREFIX + "layer.0.attention.self.query.bias",
              PREFIX + "layer.2.output.LayerNorm.weight"):
        assert names[k] == k


def _tiny(nodes, inits, inputs=("X",), outputs=("Y",), dim=64):
    g = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(i, TensorProto.FLOAT, [1, dim]) for i in inputs],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, dim]) for o in outputs],
        [numpy_helper.from_array(a, n) for n, a in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_readable_names_fallbacks_and_clashes():
    w = np.ones((4, 4), np.float32)
    b = np.ones(4, np.float32)
    nodes = [
        helper.make_node("MatMul", ["X", "onnx::MatMul_1"], ["a"], name="/enc/fc/MatMul"),
        helper.make_node("Add", ["a", "enc.fc.bias"], ["b"], name="/enc/fc/Add"),
        # same module path again: the name clashes, gets .1
        helper.make_node("MatMul", ["b", "onnx::MatMul_2"], ["c"], name="/enc/fc/MatMul_1"),
        # nothing in the graph is named like this path: the full path is used
        helper.make_node("MatMul", ["c", "onnx::MatMul_3"], ["d"], name="/head/proj/MatMul"),
        # no node name: kept
        helper.make_node("MatMul", ["d", "onnx::MatMul_4"], ["e"]),
        # read by two nodes: kept
        helper.make_node("MatMul", ["e", "onnx::MatMul_5"], ["f"], name="/x/y/MatMul"),
        helper.make_node("MatMul", ["f", "onnx::MatMul_5"], ["g"], name="/x/z/MatMul"),
        # a one-part node name has no module path: kept
        helper.make_node("MatMul", ["g", "123"], ["h"], name="MatMul_7"),
        # a clash with a readable name already in the graph
        helper.make_node("MatMul", ["h", "_v_9"], ["i"], name="/enc/ln/MatMul"),
        helper.make_node("Add", ["i", "enc.ln.weight"], ["Y"], name="/enc/ln/Add"),
    ]
    inits = [("enc.fc.bias", b), ("onnx::MatMul_1", w), ("onnx::MatMul_2", w),
             ("onnx::MatMul_3", w), ("onnx::MatMul_4", w), ("onnx::MatMul_5", w),
             ("123", w), ("_v_9", w), ("enc.ln.weight", b)]
    names = ow.readable_names(_tiny(nodes, inits, dim=4))
    assert names == {
        "enc.fc.bias": "enc.fc.bias",
        "onnx::MatMul_1": "enc.fc.weight",
        "onnx::MatMul_2": "enc.fc.weight.1",
        "onnx::MatMul_3": "head.proj.weight",
        "onnx::MatMul_4": "onnx::MatMul_4",
        "onnx::MatMul_5": "onnx::MatMul_5",
        "123": "123",
        "_v_9": "enc.ln.weight.1",
        "enc.ln.weight": "enc.ln.weight",
    }


# ------------------------------------------------------------------------ select


def test_select_defaults_real_model(model):
    sel = ow.select(model)
    assert len(sel) == 53  # every initializer of this model is float32
    assert [w.onnx_name for w, _ in sel] == [t.name for t in model.graph.initializer]
    chosen = [w for w, flag in sel if flag]
    assert sorted(w.name for w in chosen) == sorted(MATMUL_NAMES)
    assert all(w.consumers == ("MatMul",) for w in chosen)
    info = {w.name: (w, flag) for w, flag in sel}
    q, flag = info[PREFIX + "layer.0.attention.self.query.weight"]
    assert flag and q.onnx_name == "onnx::MatMul_470"
    assert (q.shape, q.dtype, q.size) == ((384, 384), "float32", 384 * 384)
    inter, _ = info[PREFIX + "layer.1.intermediate.dense.weight"]
    assert inter.shape == (384, 1536)
    word, flag = info["model.0.auto_model.embeddings.word_embeddings.weight"]
    assert not flag and word.shape == (30522, 384) and word.consumers == ("Gather",)
    for name in ("model.0.auto_model.embeddings.position_embeddings.weight",
                 "model.0.auto_model.embeddings.LayerNorm.weight",
                 PREFIX + "layer.0.attention.output.LayerNorm.bias",
                 PREFIX + "layer.0.intermediate.dense.bias"):
        assert info[name][1] is False


def test_select_overrides(model):
    def chosen(**kw):
        return [w.name for w, flag in ow.select(model, **kw) if flag]

    inter = chosen(include=r"intermediate")
    assert inter == [f"{PREFIX}layer.{i}.intermediate.dense.weight" for i in range(3)]
    assert chosen(include=r"layer\.1\.attention\.self") == [
        f"{PREFIX}layer.1.attention.self.{m}.weight" for m in ("query", "key", "value")]
    # the 384x1536 / 1536x384 matrices have 589824 elements, the others 147456
    assert len(chosen(min_size=200_000)) == 6
    assert chosen(exclude=r"layer\.[01]\.|attention") == [
        f"{PREFIX}layer.2.{m}.weight" for m in ("intermediate.dense", "output.dense")]
    # a user pattern is case-sensitive; "" excludes nothing
    assert chosen(skip_gather=False, min_size=0) == chosen()  # the default excludes embeddings
    assert len(chosen(exclude=r"EMBEDDING", skip_gather=False, min_size=0)) == 21
    no_exclude = chosen(exclude="")
    assert "model.0.auto_model.embeddings.position_embeddings.weight" not in no_exclude  # Gather
    assert len(no_exclude) == 18
    with_gather = chosen(exclude="", skip_gather=False)
    assert sorted(with_gather) == sorted(MATMUL_NAMES + [
        "model.0.auto_model.embeddings.word_embeddings.weight",
        "model.0.auto_model.embeddings.position_embeddings.weight"])  # token types: 768 < 4096
    assert len(chosen(exclude="", skip_gather=False, min_size=0)) == 21  # + token types


def test_select_skips_non_float32():
    nodes = [helper.make_node("MatMul", ["X", "onnx::MatMul_1"], ["a"], name="/fc/MatMul"),
             helper.make_node("Reshape", ["a", "shape"], ["Y"], name="/fc/Reshape")]
    m = _tiny(nodes, [("onnx::MatMul_1", np.ones((64, 64), np.float32)),
                      ("shape", np.array([1, 64], np.int64))])
    sel = ow.select(m)
    assert [(w.onnx_name, w.name, flag) for w, flag in sel] == [
        ("onnx::MatMul_1", "fc.weight", True)]
    assert ow.readable_names(m)["shape"] == "shape"


def test_tensor_is_a_contiguous_copy(model):
    a = ow.tensor(model, "onnx::MatMul_470")
    assert a.shape == (384, 384) and a.dtype == np.float32 and a.flags.c_contiguous
    a[:] = 0
    assert np.abs(ow.tensor(model, "onnx::MatMul_470")).sum() > 1.0
    with pytest.raises(ValueError, match="no_such_tensor"):
        ow.tensor(model, "no_such_tensor")


# --------------------------------------------------------------- skeleton, rebuild


def test_skeleton_is_small_and_valid(model):
    names = [w.onnx_name for w, _ in ow.select(model)]
    skeleton = ow.graph_without_weights(model, names)
    assert len(skeleton) < 100_000
    assert len(model.SerializeToString()) > 60_000_000
    parsed = onnx.load_from_string(skeleton)
    inits = {t.name: t for t in parsed.graph.initializer}
    assert list(inits) == [t.name for t in model.graph.initializer]
    word = inits["model.0.auto_model.embeddings.word_embeddings.weight"]
    assert list(word.dims) == [30522, 384] and word.data_type == TensorProto.FLOAT
    assert not word.raw_data and not word.float_data
    assert len(parsed.graph.node) == len(model.graph.node)
    # the model itself is untouched
    assert len(model.graph.initializer[0].raw_data) == 30522 * 384 * 4
    # a partial skeleton keeps the other data
    part = onnx.load_from_string(ow.graph_without_weights(model, ["onnx::MatMul_470"]))
    kept = {t.name: t for t in part.graph.initializer}
    assert not kept["onnx::MatMul_470"].raw_data
    assert len(kept["onnx::MatMul_471"].raw_data) == 384 * 384 * 4
    with pytest.raises(ValueError, match="nope"):
        ow.graph_without_weights(model, ["nope"])


def test_round_trip_gives_identical_embeddings(model, original_embeddings, tmp_path):
    names = [w.onnx_name for w, _ in ow.select(model)]
    skeleton = ow.graph_without_weights(model, names)
    weights = {n: ow.tensor(model, n) for n in names}
    rebuilt = ow.rebuild(skeleton, weights)
    assert rebuilt.SerializeToString() == model.SerializeToString()
    out = _embed_with(rebuilt, tmp_path / "rebuilt.onnx")
    assert out.shape == (len(SENTENCES), 384)
    assert np.array_equal(out, original_embeddings)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # atomic save cleaned up


def test_perturbed_weight_changes_the_output(model, original_embeddings, tmp_path):
    names = [w.onnx_name for w, flag in ow.select(model) if flag]
    skeleton = ow.graph_without_weights(model, names)
    weights = {n: ow.tensor(model, n) for n in names}
    weights["onnx::MatMul_481"] *= 0  # layer.0.intermediate.dense.weight
    out = _embed_with(ow.rebuild(skeleton, weights), tmp_path / "perturbed.onnx")
    assert np.abs(out - original_embeddings).max() > 1e-2
    # and the untouched weights still give the original
    weights["onnx::MatMul_481"] = ow.tensor(model, "onnx::MatMul_481")
    out = _embed_with(ow.rebuild(skeleton, weights), tmp_path / "perturbed.onnx")
    assert np.array_equal(out, original_embeddings)


def test_rebuild_errors(model):
    names = ["onnx::MatMul_470", "onnx::MatMul_481"]
    skeleton = ow.graph_without_weights(model, names)
    good = {n: ow.tensor(model, n) for n in names}
    ow.rebuild(skeleton, good)  # fine

    with pytest.raises(ValueError, match=re.escape("onnx::MatMul_481")):
        ow.rebuild(skeleton, {"onnx::MatMul_470": good["onnx::MatMul_470"]})
    with pytest.raises(ValueError, match=r"onnx::MatMul_470.*shape \(384, 383\)"):
        ow.rebuild(skeleton, {**good, "onnx::MatMul_470": good["onnx::MatMul_470"][:, :-1]})
    with pytest.raises(ValueError, match=r"onnx::MatMul_481.*shape \(1536, 384\)"):
        ow.rebuild(skeleton, {**good, "onnx::MatMul_481": good["onnx::MatMul_481"].T})
    with pytest.raises(ValueError, match=r"onnx::MatMul_470.*float64"):
        ow.rebuild(skeleton, {**good, "onnx::MatMul_470":
                              good["onnx::MatMul_470"].astype(np.float64)})
    with pytest.raises(ValueError, match=r"onnx::MatMul_470.*float16"):
        ow.rebuild(skeleton, {**good, "onnx::MatMul_470":
                              good["onnx::MatMul_470"].astype(np.float16)})
    # a weight for a tensor the skeleton still holds (or does not have)
    with pytest.raises(ValueError, match="onnx::MatMul_471"):
        ow.rebuild(skeleton, {**good, "onnx::MatMul_471": good["onnx::MatMul_470"]})
    with pytest.raises(ValueError, match="skeleton"):
        ow.rebuild(b"\xff\xff not a model", good)
    assert isinstance(ow.OnnxWeightsError("x"), ValueError)


# ------------------------------------------------------------------------ loading


def test_load_model_errors(tmp_path):
    missing = tmp_path / "missing.onnx"
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        ow.load_model(missing)
    bad = tmp_path / "bad.onnx"
    bad.write_text("hello, this is not an ONNX model\n")
    with pytest.raises(ValueError, match="bad.onnx.*not a valid ONNX model"):
        ow.load_model(bad)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.onnx"):
        ow.load_model(empty)
    with pytest.raises(ValueError, match="not a file"):
        ow.load_model(tmp_path)


def _external_model(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["X", "onnx::MatMul_7"], ["a"], name="/fc/MatMul"),
             helper.make_node("Add", ["a", "fc.bias"], ["Y"], name="/fc/Add")]
    m = _tiny(nodes, [("fc.bias", b), ("onnx::MatMul_7", w)])
    path = tmp_path / "tiny.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="tiny.onnx.data", size_threshold=0)
    return path, w, b


def test_external_data_model(tmp_path):
    path, w, b = _external_model(tmp_path)
    assert os.path.getsize(path) < 1000  # the data really is outside
    assert os.path.getsize(tmp_path / "tiny.onnx.data") >= w.nbytes + b.nbytes
    m = ow.load_model(path)
    assert np.array_equal(ow.tensor(m, "onnx::MatMul_7"), w)
    assert np.array_equal(ow.tensor(m, "fc.bias"), b)
    sel = ow.select(m)
    assert [(x.onnx_name, x.name, x.shape, flag) for x, flag in sel] == [
        ("fc.bias", "fc.bias", (64,), False),
        ("onnx::MatMul_7", "fc.weight", (64, 64), True)]

    # a skeleton of the model loaded without its data drops the external references too
    raw = onnx.load(str(path), load_external_data=False)
    assert onnx.external_data_helper.uses_external_data(raw.graph.initializer[1])
    with pytest.raises(ValueError, match="external"):
        ow.tensor(raw, "onnx::MatMul_7")
    skeleton = ow.graph_without_weights(raw, ["fc.bias", "onnx::MatMul_7"])
    for t in onnx.load_from_string(skeleton).graph.initializer:
        assert not t.external_data and t.data_location == TensorProto.DEFAULT
        assert not t.raw_data
    rebuilt = ow.rebuild(skeleton, {"fc.bias": b, "onnx::MatMul_7": w})
    out = tmp_path / "out" / "tiny.onnx"
    out.parent.mkdir()
    ow.save(rebuilt, out)
    again = ow.load_model(out)
    assert np.array_equal(ow.tensor(again, "onnx::MatMul_7"), w)
    onnx.checker.check_model(again)

    import onnxruntime as ort

    x = np.arange(64, dtype=np.float32)[None] / 64
    y = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        None, {"X": x})[0]
    np.testing.assert_allclose(y, x @ w + b, rtol=1e-5, atol=1e-5)

    # the data file gone: a clear error naming the model
    os.remove(tmp_path / "tiny.onnx.data")
    with pytest.raises(FileNotFoundError, match="tiny.onnx"):
        ow.load_model(path)
