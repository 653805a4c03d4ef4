"""Store a real model's feed-forward layers with fitted predictors: ``bitpress sparse fit``.

For each FFN block of paraphrase-MiniLM-L3-v2 (or another BERT ONNX file ``bitpress.bert``
can run): capture its real inputs on calibration sentences (``Bert.capture_ffn_inputs``), fit
each neuron's off value (``bitpress.sparse.neuron_offsets``: what a skipped neuron is taken
to output), a rank-r predictor of its pre-activations on them (``bitpress.sparse.fit_predictor``:
SVD start refined by least squares on the calibration inputs), set one global threshold so that a
``fraction`` of the calibration (token, neuron) pairs pass it, measure the predictor's recall
of the truly active neurons and the output error on held-out sentences, and store the layer
in ``bitpress.ffn_layers`` as ``{name}.layer{i}`` (``bitpress.ffn``). Each layer is written in
its own transaction; running the command again replaces them.

With ``tt_model`` the layer's weights come from a model stored as Tensor-Train cores
(``bitpress tt compress``): each of W1, b1, W2, b2 is rebuilt from ``bitpress.tt_cores`` by the C
core (``bitpress.tensors``), so a compressed model's layers can be run sparse in SQL too. The
calibration inputs are still the original model's.

The neuron score the thresholds and the recall use is the one the C core ranks by
(pyext/bp_ffn.c score(): ``|z sigmoid(1.702 z)|`` for GELU), so that SQL's
``sparse_ffn(x, 'name.layer0')`` picks what was measured here.
"""
from __future__ import annotations

import numpy as np

from . import errors, ffn, progress, sparse



def score(z, c=None) -> np.ndarray:
    """The C core's ranking score of GELU neurons, in float32: |z sigmoid(1.702 z) - c|."""
    z = np.asarray(z, dtype=np.float32)
    with np.errstate(over="ignore"):
        g = z / (np.float32(1) + np.exp(np.float32(-1.702) * z))
    return np.abs(g if c is None else g - np.asarray(c, np.float32))


def recall(pred_scores, true_scores, k) -> float:
    """Mean share of each row's true top-k neurons among the predicted top-k."""
    true = sparse._top_k(np.asarray(true_scores), k)
    return sparse._recall(true, sparse._top_k(np.asarray(pred_scores), k), true_scores.shape[1])


def fit_model(conn, name: str, rank: int = 32, fraction: float = 0.3, int8: bool = False,
              calibration: int = 400, held_out: int = 100, offsets: bool = True, model_path=None,
              tt_model: str | None = None, progress_bar=None) -> list[dict]:
    """Fits and stores every FFN layer of the model; returns one report per layer. With
    ``tt_model``, the weights are rebuilt from that stored Tensor-Train model's cores."""
    from .bert import Bert

    if not 0 < fraction <= 1:
        raise errors.InvalidParameterError(f"fraction must be in (0, 1], got {fraction}")
    bert = Bert(model_path)
    x_cal = bert.capture_ffn_inputs(sparse.load_texts(0, calibration))
    x_test = bert.capture_ffn_inputs(sparse.load_texts(calibration, calibration + held_out))
    reports = []
    with progress.bar(total=bert.layers, desc=f"sparse fit {name}", progress=progress_bar, unit="layer") as bar:
        for i in range(bert.layers):
            p = bert.ffn_params(i)
            if tt_model is not None:
                from . import tensors

                p = dict(p, **{key: tensors.load(conn, tt_model, name).reconstruct()
                               for key, name in p["readable"].items()})
            c = sparse.neuron_offsets(x_cal[i], p["w1"], p["b1"], "gelu") if offsets else None
            pred = sparse.fit_predictor(p["w1"], p["b1"], x_cal[i], rank, offset=c)
            thr = float(np.quantile(score(pred.predict(x_cal[i]), c), 1.0 - fraction))
            k = max(1, int(round(fraction * p["w1"].shape[1])))
            xt = x_test[i]
            rec = recall(score(pred.predict(xt), c), score(xt @ p["w1"] + p["b1"], c), k)
            layer = ffn.Layer(p["w1"], p["b1"], p["w2"], p["b2"], "gelu_erf", pred.p, pred.q,
                              np.full(p["w1"].shape[1], thr, np.float32), offsets=c)
            blob = layer.to_bytes(int8=int8)
            dense, _ = ffn.run(blob, xt)

            def rel(y):
                return float(np.mean(np.linalg.norm(y - dense, axis=1) / np.linalg.norm(dense, axis=1)))

            layer.settings = {"rank": rank, "fraction": fraction, "k": k, "threshold": thr,
                              "offsets": bool(offsets), "weights_from_tt_model": tt_model,
                              "calibration_tokens": int(len(x_cal[i])), "held_out_tokens": int(len(xt)),
                              "recall_at_k": rec,
                              "output_rel_error_at_k": rel(ffn.run(blob, xt, k=k)[0]),
                              "output_rel_error_at_k_exact": rel(ffn.run(blob, xt, k=k, selector="exact")[0]),
                              "predictor_calib_error": float(pred.calib_error),
                              "predictor_cost": int(pred.cost)}
            ffn.save(conn, f"{name}.layer{i}", layer, int8=int8, source=str(bert.model_path))
            reports.append({"layer": f"{name}.layer{i}", **layer.settings})
            bar.update(1)
    return reports
