"""An exact numpy forward pass of paraphrase-MiniLM-L3-v2, with hooks on its feed-forward blocks.

``embed.Embedder`` runs the ONNX model with onnxruntime, which hides the intermediate
activations. ``Bert`` runs the same transformer in numpy from the ONNX file's own weights
(read with ``onnx_weights``), so that one can

* **capture** the real inputs of every feed-forward (FFN) block (``capture=``,
  ``capture_ffn_inputs``), e.g. to fit a sparse or compressed approximation of it, and
* **replace** any FFN block by another function (``ffn=``) and measure the end-to-end effect
  on the sentence embeddings.

What the graph says (checked when the model is loaded, read from the graph where it is a
number): a BERT encoder of 3 layers, hidden size 384, 12 heads of size 32, FFN 384 -> 1536
-> 384. Embeddings: ``LayerNorm((word[ids] + token_type[0]) + position[0..seq-1])``; the
graph has no ``token_type_ids`` input (a buffer of zeros) and its position ids are a buffer
``arange(512)`` sliced to the sequence length. Every LayerNormalization has epsilon
``1e-12`` (float32: 9.99999996e-13). Attention: scores ``(Q @ K^T) / 5.656854`` (a Div by
float32 sqrt(32)) plus an additive mask ``(1 - attention_mask) * -3.4028235e38``
(``finfo(float32).min``, not -inf), softmax over the keys. The FFN activation is the exact
GELU built from an Erf node: ``(x * (erf(x / 1.4142135) + 1)) * 0.5``. Residuals are
post-LayerNorm (``LN(sublayer(x) + x)``). The graph's mean pooling output is not used;
as ``Embedder`` does, the token embeddings (the last LayerNorm) are mean-pooled over the
attention mask and L2-normalised outside the graph (the same code as ``Embedder._run``).

Numerics: weights, activations and matmuls are float32 (numpy/BLAS); LayerNorm statistics
are computed in float64 and the result rounded to float32; erf is evaluated in float64
(``bitpress.sparse.erf``, Cody's approximations, relative error <= 4.5e-16) and rounded to float32, the rest of GELU is the
graph's float32 arithmetic. Against onnxruntime the sentence embeddings agree to about
1e-6 (cosine >= 0.99999, see tests/test_bert.py).

Padding: each batch is padded to its longest text. Padding keys get the additive mask, so
their weight in the softmax is exactly 0 and they never change a real token. The FFN (dense
or replaced) is only evaluated on the real tokens; the FFN output of padding positions is
set to zeros (their hidden states stay finite but are not those onnxruntime computes; the
pooled outputs do not depend on them).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from . import embed, onnx_weights
from .embed import ModelFileError
from .errors import BitpressError
from .sparse import erf  # Cody's erf, shared with bitpress.sparse (see gelu_erf)

__all__ = ["Bert", "capture_ffn_inputs", "erf", "ffn_dense", "gelu_erf", "layer_norm"]

_PREFIX = "model.0.auto_model."  # readable initializer names of the sentence-transformer export


# ----------------------------------------------------------------------------- erf, GELU

# numpy has no erf and scipy is not a dependency: bitpress.sparse.erf (W. J. Cody's rational
# approximations, relative error <= 4.5e-16 against math.erf) serves both modules. Rounded to
# float32 it is the correctly rounded float32 erf except when the exact value lies within
# ~1e-15 of a rounding boundary (onnxruntime's float32 Erf is within 1 ulp of it).

_SQRT2_F32 = np.float32(1.4142135)  # the graph's constants, as float32
_ONE_F32 = np.float32(1.0)
_HALF_F32 = np.float32(0.5)


def gelu_erf(x) -> np.ndarray:
    """Exact GELU as the graph computes it, float32: ``(x * (erf(x / 1.4142135) + 1)) * 0.5``.

    Every operation is float32 as in the graph except erf, evaluated in float64 by
    ``bitpress.sparse.erf`` and rounded to float32.
    """
    x = np.asarray(x, dtype=np.float32)
    e = erf(x / _SQRT2_F32).astype(np.float32)
    e += _ONE_F32
    e *= x
    e *= _HALF_F32
    return e


def ffn_dense(x, params) -> np.ndarray:
    """The reference FFN block: ``gelu(x @ w1 + b1) @ w2 + b2``, float32 in and out.

    ``x``: ``(tokens, hidden)``; ``params``: a dict as returned by ``Bert.ffn_params`` (only
    ``w1, b1, w2, b2`` and ``activation`` are read). This is the block's output before the
    residual add and LayerNorm.
    """
    activation = params.get("activation", "gelu_erf")
    if activation != "gelu_erf":
        raise BitpressError(f"unsupported FFN activation {activation!r}")
    x = np.asarray(x, dtype=np.float32)
    h = x @ params["w1"]
    h += params["b1"]
    h = gelu_erf(h)
    y = h @ params["w2"]
    y += params["b2"]
    return y


def layer_norm(x, gamma, beta, eps) -> np.ndarray:
    """LayerNormalization over the last axis: statistics in float64, result float32."""
    x64 = np.asarray(x, dtype=np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    centered = x64 - mean
    var = np.mean(centered * centered, axis=-1, keepdims=True)
    centered /= np.sqrt(var + float(eps))
    out = centered.astype(np.float32)
    out *= gamma
    out += beta
    return out


# ------------------------------------------------------------------------ graph reading


class _Graph:
    """The facts of the ONNX graph this module depends on, read from the graph itself."""

    def __init__(self, model, path):
        import onnx
        from onnx import helper, numpy_helper

        g = model.graph
        self.path = path
        producer = {o: n for n in g.node for o in n.output}
        consts = {}
        for n in g.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        consts[n.output[0]] = numpy_helper.to_array(a.t)
        for t in g.initializer:  # non-float initializers (shape constants, buffers)
            if t.data_type != onnx.TensorProto.FLOAT:
                consts.setdefault(t.name, numpy_helper.to_array(t))
        self.inputs = [i.name for i in g.input]

        def const_input(node):
            vals = [consts[i] for i in node.input if i in consts]
            return vals[0] if len(vals) == 1 else None

        def fail(what):
            raise ModelFileError(f"{path}: unexpected graph, cannot find {what}")

        nodes = list(g.node)
        # LayerNormalization epsilon (all equal)
        eps = {float(helper.get_attribute_value(a)) for n in nodes
               if n.op_type == "LayerNormalization" for a in n.attribute if a.name == "epsilon"}
        if len(eps) != 1:
            fail(f"one LayerNormalization epsilon (found {sorted(eps)})")
        self.epsilon = np.float32(eps.pop())
        self.n_layernorms = sum(n.op_type == "LayerNormalization" for n in nodes)

        # heads and head size: the constants [heads], [head_size] of the Concat giving the
        # shape of the attention Reshapes (batch, seq, heads, head_size)
        shapes = set()
        for n in nodes:
            if n.op_type == "Reshape" and "/attention/self/" in n.name:
                c = producer.get(n.input[1])
                if c is not None and c.op_type == "Concat" and len(c.input) == 4:
                    hv = [consts.get(i) for i in c.input[2:]]
                    if all(v is not None for v in hv):
                        shapes.add(tuple(int(np.asarray(v).reshape(-1)[0]) for v in hv))
        if len(shapes) != 1:
            fail(f"one (heads, head_size) for the attention reshapes (found {sorted(shapes)})")
        self.heads, self.head_size = shapes.pop()

        # the score scaling: Div of Q @ K^T by a constant
        divs = {float(const_input(n)) for n in nodes
                if n.op_type == "Div" and "/attention/self/" in n.name
                and const_input(n) is not None}
        if len(divs) != 1:
            fail(f"one attention score divisor (found {sorted(divs)})")
        self.score_div = np.float32(divs.pop())

        # the additive mask: Mul(Sub(1, Cast(mask)), value)
        mask_vals = set()
        for n in nodes:
            if n.op_type == "Mul" and const_input(n) is not None:
                others = [producer.get(i) for i in n.input if i not in consts]
                if others and others[0] is not None and others[0].op_type == "Sub":
                    mask_vals.add(float(const_input(n)))
        if len(mask_vals) != 1:
            fail(f"one additive attention mask value (found {sorted(mask_vals)})")
        self.mask_value = np.float32(mask_vals.pop())

        # the FFN activation: exact GELU from Erf (Div by sqrt(2), Add 1, Mul x, Mul 0.5)
        erfs = [n for n in nodes if n.op_type == "Erf"]
        tanhs = [n for n in nodes if n.op_type == "Tanh"]
        if tanhs or not erfs:
            fail("the exact (Erf) GELU activation (tanh GELU is not supported)")
        for n in erfs:
            d = producer.get(n.input[0])
            c = const_input(d) if d is not None and d.op_type == "Div" else None
            if c is None or not np.isclose(float(c), math.sqrt(2)):
                fail("the GELU Div by sqrt(2) before Erf")
        self.n_erf = len(erfs)

        # position ids and token type ids: Gather indices from constant buffers
        def gather_index_buffer(table_suffix):
            for n in nodes:
                if n.op_type == "Gather" and n.input[0].endswith(table_suffix):
                    src = n.input[1]
                    for _ in range(4):  # through Expand / Slice to the constant buffer
                        if src in consts:
                            return np.asarray(consts[src]).reshape(-1)
                        p = producer.get(src)
                        if p is None or p.op_type not in ("Slice", "Expand"):
                            return src  # a graph input, e.g. token_type_ids
                        src = p.input[0]
            return None

        pos = gather_index_buffer("position_embeddings.weight")
        if not isinstance(pos, np.ndarray) or not np.array_equal(pos, np.arange(pos.size)):
            fail("position ids from an arange buffer")
        self.max_positions = int(pos.size)
        tt = gather_index_buffer("token_type_embeddings.weight")
        if isinstance(tt, np.ndarray):
            if tt.size == 0 or not np.all(tt == tt[0]):
                fail("a constant token type buffer")
            self.token_type = int(tt[0])
        elif tt == "token_type_ids" or tt is None:
            self.token_type = 0  # Embedder feeds zeros
        else:
            fail("the token type ids")


# ---------------------------------------------------------------------------------- Bert


def _pool(tokens: np.ndarray, mask: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Mean pooling over the attention mask + L2 normalisation, as ``Embedder._run``."""
    pooled = np.einsum("bsd,bs->bd", tokens, mask.astype(np.float32))
    pooled /= np.maximum(lengths, 1)[:, None].astype(np.float32)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    a.flags.writeable = False
    return a


class Bert:
    """paraphrase-MiniLM-L3-v2 in numpy, with FFN capture and replacement hooks.

    ``model_path`` / ``tokenizer_path`` default to the files ``embed.Embedder`` uses (and are
    then checked by SHA-256; files you pass are checked against ``model_sha256`` /
    ``tokenizer_sha256`` when given). ``max_length``: truncation in tokens (<= the model's
    512 positions). Weights are loaded once as read-only float32 arrays.

    Attributes: ``layers`` (3), ``hidden`` (384), ``intermediate`` (1536), ``heads`` (12),
    ``head_size`` (32), ``epsilon``, ``mask_value``, ``score_div``, ``dim`` (= hidden).
    """

    def __init__(self, model_path=None, tokenizer_path=None, max_length: int = 128, *,
                 model_sha256: str | None = None, tokenizer_sha256: str | None = None):
        if model_path is None:
            model_path, model_sha256 = embed.default_model_path(), embed.MODEL_SHA256
        if tokenizer_path is None:
            tokenizer_path, tokenizer_sha256 = (embed.default_tokenizer_path(),
                                                embed.TOKENIZER_SHA256)
        self.model_path, self.tokenizer_path = Path(model_path), Path(tokenizer_path)
        embed.verify_sha256(self.model_path, model_sha256)
        model = onnx_weights.load_model(self.model_path)
        g = _Graph(model, self.model_path)
        self.heads, self.head_size = g.heads, g.head_size
        self.epsilon, self.score_div, self.mask_value = g.epsilon, g.score_div, g.mask_value

        names = onnx_weights.readable_names(model)
        by_readable = {r: o for o, r in names.items()}

        def get(readable):
            onnx_name = by_readable.get(_PREFIX + readable)
            if onnx_name is None:
                raise ModelFileError(f"{self.model_path}: no initializer {_PREFIX + readable}")
            return onnx_name, _readonly(onnx_weights.tensor(model, onnx_name))

        layer_re = re.compile(re.escape(_PREFIX) + r"encoder\.layer\.(\d+)\.")
        n_layers = len({m.group(1) for m in map(layer_re.match, by_readable) if m})
        if n_layers == 0 or g.n_erf != n_layers or g.n_layernorms != 2 * n_layers + 1:
            raise ModelFileError(f"{self.model_path}: unexpected graph ({n_layers} layers, "
                                 f"{g.n_erf} Erf, {g.n_layernorms} LayerNormalization)")
        self.layers = n_layers

        self._word = get("embeddings.word_embeddings.weight")[1]
        self._pos = get("embeddings.position_embeddings.weight")[1]
        self._type_row = get("embeddings.token_type_embeddings.weight")[1][g.token_type]
        self._emb_ln = (get("embeddings.LayerNorm.weight")[1],
                        get("embeddings.LayerNorm.bias")[1])
        self.hidden = int(self._word.shape[1])
        if self.heads * self.head_size != self.hidden:
            raise ModelFileError(f"{self.model_path}: {self.heads} heads x {self.head_size} "
                                 f"!= hidden size {self.hidden}")
        self.dim = self.hidden
        max_positions = min(g.max_positions, int(self._pos.shape[0]))
        if not 2 <= max_length <= max_positions:
            raise BitpressError(f"max_length must be between 2 and {max_positions}")
        self.max_length = int(max_length)

        self._attn = []
        self._ffn = []
        for i in range(n_layers):
            p = f"encoder.layer.{i}."
            att = {}
            for key, mod in (("q", "attention.self.query"), ("k", "attention.self.key"),
                             ("v", "attention.self.value"), ("o", "attention.output.dense")):
                att["w" + key] = get(p + mod + ".weight")[1]
                att["b" + key] = get(p + mod + ".bias")[1]
            att["ln"] = (get(p + "attention.output.LayerNorm.weight")[1],
                         get(p + "attention.output.LayerNorm.bias")[1])
            self._attn.append(att)
            ffn, onnx_names, readable = {}, {}, {}
            for key, mod in (("w1", "intermediate.dense.weight"),
                             ("b1", "intermediate.dense.bias"),
                             ("w2", "output.dense.weight"), ("b2", "output.dense.bias")):
                onnx_names[key], ffn[key] = get(p + mod)
                readable[key] = _PREFIX + p + mod
            ffn["ln"] = (get(p + "output.LayerNorm.weight")[1],
                         get(p + "output.LayerNorm.bias")[1])
            ffn["names"], ffn["readable"] = onnx_names, readable
            self._ffn.append(ffn)
        self.intermediate = int(self._ffn[0]["w1"].shape[1])
        for f in self._ffn:
            if (f["w1"].shape != (self.hidden, self.intermediate)
                    or f["w2"].shape != (self.intermediate, self.hidden)):
                raise ModelFileError(f"{self.model_path}: unexpected FFN weight shapes")
        del model
        self.tokenizer = embed.load_tokenizer(self.tokenizer_path, tokenizer_sha256, self.max_length)

    # -------------------------------------------------------------------- parameters

    def ffn_params(self, layer: int) -> dict:
        """The FFN parameters of ``layer``: ``w1 (hidden, intermediate)``, ``b1``,
        ``w2 (intermediate, hidden)``, ``b2`` (read-only float32, ONNX MatMul convention
        ``y = x @ w``), ``activation`` (``"gelu_erf"``), ``names`` (the ONNX initializer
        names of w1, b1, w2, b2) and ``readable`` (their ``onnx_weights.readable_names``)."""
        f = self._ffn[self._check_layer(layer)]
        return dict(w1=f["w1"], b1=f["b1"], w2=f["w2"], b2=f["b2"], activation="gelu_erf",
                    names=dict(f["names"]), readable=dict(f["readable"]))

    ffn_dense = staticmethod(ffn_dense)

    def _check_layer(self, layer) -> int:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) \
                or not 0 <= layer < self.layers:
            raise BitpressError(f"layer must be an int in [0, {self.layers}), got {layer!r}")
        return int(layer)

    # ---------------------------------------------------------------------- forward

    def token_ids(self, texts) -> list[list[int]]:
        """The token ids of each text, as ``encode`` sees them (with [CLS]/[SEP],
        truncated to ``max_length``)."""
        if isinstance(texts, str):
            texts = [texts]
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def forward(self, ids: np.ndarray, mask: np.ndarray, ffn=None, capture=None) -> np.ndarray:
        """Token embeddings ``(batch, seq, hidden)`` float32 of one padded batch.

        ``ids``: int ``(batch, seq)``; ``mask``: 0/1 ``(batch, seq)`` with the real tokens of
        each row first. ``ffn``: ``{layer: callable}``, see ``encode``. ``capture``: a dict
        whose ``capture[layer]`` lists get this batch's FFN inputs ``(real tokens, hidden)``
        appended (row-major order: row 0's tokens, then row 1's, ...).
        """
        ffn = dict(ffn or {})
        for layer in ffn:
            self._check_layer(layer)
        ids = np.asarray(ids, dtype=np.int64)
        mask = np.asarray(mask) != 0
        b, s = ids.shape
        if s > self._pos.shape[0]:
            raise BitpressError(f"sequence of {s} tokens is longer than {self._pos.shape[0]}")
        H, nh, hd = self.hidden, self.heads, self.head_size
        x = self._word[ids] + self._type_row
        x += self._pos[:s]
        x = layer_norm(x, *self._emb_ln, self.epsilon).reshape(b * s, H)
        add_mask = ((_ONE_F32 - mask.astype(np.float32)) * self.mask_value)[:, None, None, :]
        real = mask.reshape(-1)
        n_real = int(real.sum())
        for layer in range(self.layers):
            a = self._attn[layer]
            q = (x @ a["wq"] + a["bq"]).reshape(b, s, nh, hd).transpose(0, 2, 1, 3)
            k = (x @ a["wk"] + a["bk"]).reshape(b, s, nh, hd).transpose(0, 2, 3, 1)
            v = (x @ a["wv"] + a["bv"]).reshape(b, s, nh, hd).transpose(0, 2, 1, 3)
            scores = q @ k
            scores /= self.score_div
            scores += add_mask
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            ctx = (scores @ v).transpose(0, 2, 1, 3).reshape(b * s, H)
            att = ctx @ a["wo"]
            att += a["bo"]
            att += x
            x = layer_norm(att, *a["ln"], self.epsilon)

            f = self._ffn[layer]
            xr = x[real]  # a copy: the real tokens, row-major
            if capture is not None:
                capture.setdefault(layer, []).append(xr.copy())
            if layer in ffn:
                y = np.asarray(ffn[layer](xr))
                if y.shape != (n_real, H):
                    raise BitpressError(f"the FFN replacement of layer {layer} returned shape "
                                        f"{y.shape}, expected {(n_real, H)}")
                if not np.all(np.isfinite(y)):
                    raise BitpressError(f"the FFN replacement of layer {layer} returned "
                                        f"non-finite values")
            else:
                y = ffn_dense(xr, f)
            out = np.zeros((b * s, H), dtype=np.float32)  # padding: FFN output 0
            out[real] = y
            out += x
            x = layer_norm(out, *f["ln"], self.epsilon)
        return x.reshape(b, s, H)

    def encode(self, texts, ffn=None, capture=None, batch_size: int = 32) -> np.ndarray:
        """Unit-norm float32 sentence embeddings ``(n, hidden)`` of ``texts`` (str or list).

        The same tokenization, mean pooling and normalisation as ``embed.Embedder.encode``;
        texts are batched by token length (each batch padded to its longest) and returned in
        input order.

        ``ffn``: optional ``{layer: callable}``. The callable replaces that layer's FFN block
        (``ffn_dense``) — its output before the residual add and LayerNorm. It is called once
        per batch with the float32 ``(real tokens of the batch, hidden)`` FFN inputs (padding
        removed, rows in the batch's order) and must return an array of the same shape; the
        result is scattered back to the real positions (padding positions get 0).

        ``capture``: optional dict; on return ``capture[layer]`` (for every layer, replacing
        what was there) is the ``(total real tokens, hidden)`` float32 array of that layer's
        FFN inputs, in input order: the tokens of text 0 (as ``token_ids``), then text 1, ...
        With ``ffn`` given, the captured inputs are those of the modified model.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if batch_size < 1:
            raise BitpressError("batch_size must be >= 1")
        if ffn is not None:
            for layer in ffn:
                self._check_layer(layer)
        out = np.empty((len(texts), self.hidden), dtype=np.float32)
        ids_list = self.token_ids(texts) if texts else []
        lengths = np.array([len(i) for i in ids_list], dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        parts = {} if capture is not None else None
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            lens = lengths[rows]
            ids = np.zeros((len(rows), int(lens.max())), dtype=np.int64)  # [PAD] = 0
            for row, r in zip(ids, rows):
                row[:len(ids_list[r])] = ids_list[r]
            mask = (np.arange(ids.shape[1]) < lens[:, None]).astype(np.int64)
            tokens = self.forward(ids, mask, ffn=ffn, capture=parts)
            out[rows] = _pool(tokens, mask, lens)
        if capture is not None:
            # processing order (batches of length-sorted texts) -> input order
            sorted_lengths = lengths[order]
            starts = np.empty(len(texts), dtype=np.int64)
            starts[order] = np.cumsum(sorted_lengths) - sorted_lengths
            index = np.concatenate([np.arange(st, st + n) for st, n in zip(starts, lengths)]
                                   + [np.zeros(0, dtype=np.int64)])
            for layer in range(self.layers):
                got = parts.get(layer, [])
                allx = (np.concatenate(got) if got
                        else np.zeros((0, self.hidden), dtype=np.float32))
                capture[layer] = allx[index]
        return out

    def capture_ffn_inputs(self, texts, ffn=None, batch_size: int = 32) -> dict[int, np.ndarray]:
        """``{layer: (total real tokens, hidden) float32}``: the FFN inputs of every layer
        for ``texts``, in input order (see ``encode``; ``token_ids`` gives the lengths)."""
        cap: dict[int, np.ndarray] = {}
        self.encode(texts, ffn=ffn, capture=cap, batch_size=batch_size)
        return cap


def capture_ffn_inputs(texts, bert: Bert | None = None, ffn=None,
                       batch_size: int = 32) -> dict[int, np.ndarray]:
    """``Bert.capture_ffn_inputs`` with a default ``Bert()`` when ``bert`` is None."""
    return (bert or Bert()).capture_ffn_inputs(texts, ffn=ffn, batch_size=batch_size)
