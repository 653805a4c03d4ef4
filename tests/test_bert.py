"""bitpress.bert: the numpy forward pass of paraphrase-MiniLM-L3-v2 against onnxruntime, and
its FFN replacement and capture hooks, on real PyPI summaries."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from bitpress import bert as bert_mod
from bitpress import embed, onnx_weights
from bitpress.errors import BitpressError
from conftest import pypi_docs

N_TEXTS = 50


@pytest.fixture(scope="module")
def texts():
    out = pypi_docs(N_TEXTS)[0]
    assert len(out) == N_TEXTS
    return out


@pytest.fixture(scope="module")
def bert():
    return bert_mod.Bert()


@pytest.fixture(scope="module")
def reference(bert, texts):
    return bert.encode(texts)


def _ort_with_outputs(names):
    """An onnxruntime session of the real model that also outputs the tensors ``names``."""
    import onnxruntime as ort

    model = onnx_weights.load_model(embed.default_model_path())
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                     None))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _padded(ids_list):
    lengths = np.array([len(i) for i in ids_list])
    ids = np.zeros((len(ids_list), lengths.max()), dtype=np.int64)
    for row, seq in zip(ids, ids_list):
        row[:len(seq)] = seq
    return ids, (np.arange(ids.shape[1]) < lengths[:, None]).astype(np.int64)


def test_graph_facts_and_params(bert):
    assert (bert.layers, bert.hidden, bert.intermediate) == (3, 384, 1536)
    assert (bert.heads, bert.head_size) == (12, 32)
    assert bert.epsilon == np.float32(1e-12)
    assert bert.mask_value == np.finfo(np.float32).min
    assert bert.score_div == np.float32(math.sqrt(32))
    model = onnx_weights.load_model(embed.default_model_path())
    readable = onnx_weights.readable_names(model)
    for layer in range(3):
        p = bert.ffn_params(layer)
        assert p["activation"] == "gelu_erf"
        assert p["w1"].shape == (384, 1536) and p["b1"].shape == (1536,)
        assert p["w2"].shape == (1536, 384) and p["b2"].shape == (384,)
        for key in ("w1", "b1", "w2", "b2"):
            assert p[key].dtype == np.float32 and not p[key].flags.writeable
            np.testing.assert_array_equal(p[key], onnx_weights.tensor(model, p["names"][key]))
            assert readable[p["names"][key]] == p["readable"][key]
        assert p["readable"]["w1"] == \
            f"model.0.auto_model.encoder.layer.{layer}.intermediate.dense.weight"
        assert p["readable"]["w2"] == \
            f"model.0.auto_model.encoder.layer.{layer}.output.dense.weight"
    with pytest.raises(BitpressError):
        bert.ffn_params(3)


def test_erf_and_gelu_are_exact():
    x = np.concatenate([np.linspace(-7, 7, 20001),
                        [0.0, 1e-30, -1e-12, 2.0, -4.0, 6.0, 40.0, np.inf, -np.inf]])
    ref = np.array([math.erf(v) for v in x])
    got = bert_mod.erf(x)
    assert np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-300)) < 1e-13
    assert np.array_equal(got.astype(np.float32), ref.astype(np.float32))
    assert np.isnan(bert_mod.erf(np.array([np.nan])))[0]
    h = np.random.default_rng(1).standard_normal(5000).astype(np.float32) * 4
    g = bert_mod.gelu_erf(h)
    assert g.dtype == np.float32
    # bitwise the graph's float32 arithmetic with a correctly rounded erf
    e = np.array([math.erf(v) for v in (h / np.float32(1.4142135)).astype(np.float64)],
                 dtype=np.float32)
    np.testing.assert_array_equal(g, (h * (e + np.float32(1))) * np.float32(0.5))
    # and within float32 rounding of the exact GELU
    gelu_ref = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in h.astype(np.float64)])
    assert np.max(np.abs(g - gelu_ref)) < 1e-6
    big = np.abs(gelu_ref) > 0.05
    assert np.max(np.abs(g - gelu_ref)[big] / np.abs(gelu_ref[big])) < 1e-6


def test_matches_onnxruntime(bert, texts, reference):
    ort_emb = embed.Embedder().encode(texts)
    assert reference.shape == (N_TEXTS, 384) and reference.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(reference, axis=1), 1.0, atol=1e-6)
    cos = np.sum(reference * ort_emb, axis=1)
    max_abs = float(np.max(np.abs(reference - ort_emb)))
    print(f"numpy vs onnxruntime: min cosine {cos.min():.9f}, max abs diff {max_abs:.3g}")
    assert cos.min() >= 0.99999
    assert max_abs < 2e-6  # measured ~1e-7
    # batching does not matter (padding never reaches a real token)
    np.testing.assert_allclose(bert.encode(texts, batch_size=7), reference, atol=1e-6)
    one = bert.encode(texts[3])
    np.testing.assert_allclose(one[0], reference[3], atol=1e-6)
    assert bert.encode([]).shape == (0, 384)


def test_capture_matches_onnxruntime_intermediates(bert, texts):
    """The captured FFN inputs are the real model's: onnxruntime's intermediate tensors."""
    base = "/model/model.0/auto_model/encoder/layer.{}/"
    ins = [base.format(i) + "attention/output/LayerNorm/LayerNormalization_output_0"
           for i in range(3)]
    outs = [base.format(i) + "output/dense/Add_output_0" for i in range(3)]
    sess = _ort_with_outputs(ins + outs)
    sub = texts[:12]
    ids, mask = _padded(bert.token_ids(sub))
    got = sess.run(ins + outs, {"input_ids": ids, "attention_mask": mask})
    cap = bert.capture_ffn_inputs(sub)
    real = mask.astype(bool)
    for layer in range(3):
        ort_in, ort_out = got[layer][real], got[3 + layer][real]
        assert cap[layer].shape == ort_in.shape
        # measured: |diff| <= 1.5e-6 * (1 + |value|) (layer 0's FFN output reaches 200)
        np.testing.assert_allclose(cap[layer], ort_in, rtol=1e-5, atol=1e-5)
        ours = bert.ffn_dense(cap[layer], bert.ffn_params(layer))
        np.testing.assert_allclose(ours, ort_out, rtol=1e-5, atol=1e-5)
        # and not trivially: the layers' inputs differ
        if layer:
            assert np.max(np.abs(cap[layer] - cap[layer - 1])) > 0.1


def test_dense_override_is_identity(bert, texts, reference):
    ffn = {layer: (lambda x, p=bert.ffn_params(layer): bert.ffn_dense(x, p))
           for layer in range(bert.layers)}
    out = bert.encode(texts, ffn=ffn)
    assert np.max(np.abs(out - reference)) <= 1e-6
    assert np.array_equal(out, reference)  # the same computation on the same arrays


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_zero_ffn_changes_embeddings(bert, texts, reference, layer):
    out = bert.encode(texts, ffn={layer: lambda x: np.zeros_like(x)})
    cos = np.sum(out * reference, axis=1)
    assert cos.mean() < 0.999 and cos.min() < 0.99
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_capture_through_the_hook(bert, texts):
    ids_list = bert.token_ids(texts)
    lengths = np.array([len(i) for i in ids_list])
    # texts sorted by token length: processing order == input order
    order = np.argsort(lengths, kind="stable")
    sorted_texts = [texts[i] for i in order]
    seen = {layer: ([], []) for layer in range(bert.layers)}

    def hook(layer):
        params = bert.ffn_params(layer)

        def f(x):
            assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 384
            y = bert.ffn_dense(x, params)
            seen[layer][0].append(x.copy())
            seen[layer][1].append(y)
            return y
        return f

    cap: dict = {}
    out = bert.encode(sorted_texts, ffn={l: hook(l) for l in range(3)}, capture=cap,
                      batch_size=16)
    total = int(lengths.sum())
    assert sorted(cap) == [0, 1, 2]
    for layer in range(3):
        xs, ys = seen[layer]
        assert len(xs) == 4  # 50 texts in batches of 16
        assert cap[layer].shape == (total, 384) and cap[layer].dtype == np.float32
        assert sum(len(x) for x in xs) == total  # only real tokens reach the hook
        np.testing.assert_array_equal(cap[layer], np.concatenate(xs))
        np.testing.assert_allclose(bert.ffn_dense(cap[layer], bert.ffn_params(layer)),
                                   np.concatenate(ys), rtol=1e-5, atol=1e-5)  # BLAS blocking
    # capture without a hook gives the same inputs and the same embeddings
    cap2 = bert.capture_ffn_inputs(sorted_texts, batch_size=16)
    for layer in range(3):
        np.testing.assert_array_equal(cap2[layer], cap[layer])
    np.testing.assert_array_equal(out, bert.encode(sorted_texts, batch_size=16))

    # unsorted input: the capture is in input order (text 0's tokens first, ...)
    cap3 = bert.capture_ffn_inputs(texts, batch_size=16)
    starts_in = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    sorted_lengths = lengths[order]
    starts_sorted = np.concatenate(([0], np.cumsum(sorted_lengths)[:-1]))
    for layer in range(3):
        assert cap3[layer].shape == (total, 384)
        for j, i in enumerate(order):
            a = cap3[layer][starts_in[i]:starts_in[i] + lengths[i]]
            b = cap[layer][starts_sorted[j]:starts_sorted[j] + lengths[i]]
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_hook_errors(bert, texts):
    with pytest.raises(BitpressError, match="shape"):
        bert.encode(texts[:3], ffn={0: lambda x: x[:-1]})
    with pytest.raises(BitpressError, match="non-finite"):
        bert.encode(texts[:3], ffn={1: lambda x: x * np.nan})
    with pytest.raises(BitpressError, match="layer"):
        bert.encode(texts[:3], ffn={5: lambda x: x})
    with pytest.raises(BitpressError):
        bert_mod.Bert(max_length=1000)
