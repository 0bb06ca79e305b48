"""Real accuracy: quantized models against float on real data (issue 4's "Done when").

* digits: a small conv net trained on scikit-learn's digits (tests/models.py), -O2 through
  the interpreter with calibration data and without (ranges from batch-norm statistics),
  against float onnxruntime and onnxruntime's own static int8 quantization;
* PP-OCR's text-direction classifier on real text-line crops from scikit-image's sample
  images, -O2 against float onnxruntime, with onnxruntime's static int8 alongside.

The measured figures are printed (run with -s) and recorded as junit properties.
"""
from __future__ import annotations

import numpy as np
import pytest

from qcc.driver import build_report
from qcc.pipelines import PIPELINES

from models import (digits_cnn, interp_batches, ort_quantize_static, ort_run, run_pipeline,
                    text_line_crops)

BATCH = 120  # digits: the test set (360) is 3 batches, the training set 11 (1320 of 1437)


def _say(record_property, capsys, name, value):
    record_property(name, value)
    with capsys.disabled():
        print(f"\n  {name}: {value}")


# --- digits -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    import onnx

    d = digits_cnn()
    path = tmp_path_factory.mktemp("digits") / "digits.onnx"
    onnx.save(d.model, path)
    calib = [{"x": d.x_train[i:i + BATCH]} for i in range(0, len(d.x_train) - BATCH + 1, BATCH)]
    float_prob = ort_run(path, "x", d.x_test)
    return d, path, calib, float_prob


def _acc(prob, y):
    return float((prob.argmax(1) == y).mean())


def test_digits_float_model_is_a_real_classifier(digits):
    d, path, _, float_prob = digits
    assert _acc(float_prob, d.y_test) > 0.97
    # the exported BNs hold the true statistics and are identities given them
    import qcc

    g = qcc.import_onnx(path, {"x": (BATCH, 1, 8, 8)})
    np.testing.assert_allclose(interp_batches(g, "x", d.x_test, BATCH), float_prob, atol=1e-5)


def test_digits_o2_with_calibration_matches_float(digits, record_property, capsys):
    d, path, calib, float_prob = digits
    g, ctx = run_pipeline(path, {"x": (BATCH, 1, 8, 8)}, calib)
    q = interp_batches(g, "x", d.x_test, BATCH)
    acc_f, acc_q = _acc(float_prob, d.y_test), _acc(q, d.y_test)
    summary = build_report(g, 0, [])["summary"]

    ort_path = ort_quantize_static(path, path.with_name("digits.ort_qdq.onnx"), "x", [c["x"] for c in calib])
    acc_ort = _acc(ort_run(ort_path, "x", d.x_test), d.y_test)
    _say(record_property, capsys, "digits_accuracy",
         f"float {acc_f:.2%}, qcc -O2 --calib {acc_q:.2%} (int8 MACs {summary['int8_mac_fraction']:.0%}), "
         f"onnxruntime quantize_static QDQ per-channel {acc_ort:.2%}; argmax agreement qcc/float "
         f"{float((q.argmax(1) == float_prob.argmax(1)).mean()):.2%}")
    assert abs(acc_q - acc_f) <= 0.005
    # integer end to end: every layer int8 but at most assign-bitwidths{a16-share} (10%) of the
    # MACs with 16-bit activations, which are integer too
    assert summary["int8_mac_fraction"] >= 0.9
    assert not any(n.op in ("conv", "gemm", "matmul") for n in g.nodes)
    # the logits only feed the (float) softmax: dequantized from the int32 accumulator,
    # not rounded to 8 bits and clipped to the calibrated range first
    sm = next(n for n in g.nodes if n.op == "softmax")
    assert sm.inputs[0].producer.op == "dequantize" and sm.inputs[0].producer.inputs[0].dtype == "i32"


def test_digits_o2_without_calibration_uses_batch_norm_statistics(digits, record_property, capsys):
    d, path, _, float_prob = digits
    # every layer behind a folded BN gets its output range from the BN statistics
    g, ctx = run_pipeline(path, {"x": (BATCH, 1, 8, 8)}, None,
                          pipeline="canonicalize,fuse,insert-observers,propagate-ranges")
    sources = {n.inputs[0].name: n.attrs["source"] for n in g.nodes if n.op == "observe"}
    assert [sources[v] for v in ("c0", "g1", "g2")] == ["bn"] * 3, sources

    g, ctx = run_pipeline(path, {"x": (BATCH, 1, 8, 8)}, None)
    assert any("no calibration data" in w for w in ctx.warnings)
    layers = ctx.report["layers_quantized"]
    assert [layers[k]["precision"] for k in ("g1", "g2")] == ["int8"] * 2, layers
    q = interp_batches(g, "x", d.x_test, BATCH)
    acc_f, acc_q = _acc(float_prob, d.y_test), _acc(q, d.y_test)
    frac = build_report(g, 0, [])["summary"]["int8_mac_fraction"]
    left = sorted(n.op for n in g.nodes if n.op in ("conv", "gemm", "matmul"))
    _say(record_property, capsys, "digits_accuracy_data_free",
         f"float {acc_f:.2%}, qcc -O2 without --calib {acc_q:.2%} (int8 MACs {frac:.0%}; "
         f"left in float: {', '.join(left) or 'none'} -- the model input has no data-free range)")
    assert abs(acc_q - acc_f) <= 0.01
    assert frac > 0.5


# --- PP-OCR text direction classifier --------------------------------------------------------

CLS_N, CLS_CALIB, CLS_BATCH = 240, 32, 16


@pytest.fixture(scope="module")
def ppocr_cls(ppocr_cls_path, tmp_path_factory):
    x, labels, sources = text_line_crops(CLS_N)
    float_prob = ort_run(ppocr_cls_path, "x", x, CLS_BATCH)
    calib = [{"x": x[i:i + CLS_BATCH]} for i in range(0, CLS_CALIB, CLS_BATCH)]
    ev = slice(CLS_CALIB, None)
    results = {}
    shape = {"x": (CLS_BATCH, 3, 48, 192)}
    all_int8 = PIPELINES["O2"].replace("assign-bitwidths", "assign-bitwidths{search=false}")
    no_cle = all_int8.replace("equalize,", "")
    for name, pipeline in (("O2", PIPELINES["O2"]), ("O2 all-int8", all_int8), ("O2 all-int8 no-CLE", no_cle),
                           ("O3", PIPELINES["O3"])):
        g, ctx = run_pipeline(ppocr_cls_path, shape, calib, pipeline=pipeline, verify_each=False)
        q = interp_batches(g, "x", x[ev], CLS_BATCH)
        results[name] = (q, build_report(g, 0, [])["summary"]["int8_mac_fraction"])
    out = tmp_path_factory.mktemp("ppocr") / "cls.ort_qdq.onnx"
    ort_q = ort_run(ort_quantize_static(ppocr_cls_path, out, "x", [c["x"] for c in calib]), "x", x[ev], CLS_BATCH)
    printed = ~np.char.startswith(np.array(sources[CLS_CALIB:]), "text")
    return float_prob[ev], labels[ev], printed, results, ort_q


def _agree(a, b):
    return float((a.argmax(1) == b.argmax(1)).mean())


def _logit_error(q, ref):
    """RMS error of the class-0 logit against float's, over the crops the float model is not
    sure of (0.05 < p0 < 0.95), where flips happen: the steady measure behind them (a flip
    count moves by a few crops with any change of the error, docs/equalization.md)."""
    def logit(p):
        p = np.clip(p.astype(np.float64), 1e-30, 1)
        return np.log(p[:, 0]) - np.log(p[:, 1])
    unsure = np.abs(ref[:, 0] - 0.5) < 0.45
    return float(np.sqrt(np.mean((logit(q[unsure]) - logit(ref[unsure])) ** 2)))


@pytest.mark.slow
def test_ppocr_cls_o2_agrees_with_float(ppocr_cls, record_property, capsys):
    ref, labels, printed, results, ort_q = ppocr_cls
    assert _agree(ref[printed], np.eye(2)[labels[printed]]) > 0.9  # the float model reads printed lines
    lines = []
    for name, (q, frac) in results.items():
        lines.append(f"qcc -{name[:2]}{' (assign-bitwidths{search=false})' if 'all' in name else ''}"
                     f"{'s mse recipe' if name == 'O3' else ''}"
                     f"{' without equalize' if 'no-CLE' in name else ''}: "
                     f"agreement {_agree(q, ref):.2%} (printed {_agree(q[printed], ref[printed]):.2%}, "
                     f"handwritten {_agree(q[~printed], ref[~printed]):.2%}), int8 MACs {frac:.1%}, "
                     f"RMS logit error {_logit_error(q, ref):.3f}")
    lines.append(f"onnxruntime quantize_static QDQ per-channel: agreement {_agree(ort_q, ref):.2%}, "
                 f"RMS logit error {_logit_error(ort_q, ref):.3f}")
    _say(record_property, capsys, "ppocr_cls_agreement",
         f"{len(ref)} eval crops ({int(printed.sum())} printed):\n    " + "\n    ".join(lines))
    q, frac = results["O2"]
    q8, frac8 = results["O2 all-int8"]
    assert frac8 == 1.0
    # what the compiler achieves today (issue 4 asks for >= 99% with >= 90% int8 MACs; see below).
    # Flips happen at the float model's near-ties, so their count is the noisy guard: on 4096
    # held-out crops with this calibration -O2 flips 1.6-1.8% (3-4 of these 208 on average), and
    # two builds whose errors differ by 2% share under half of their flips (docs/equalization.md,
    # "The input's own grid"). The logit error is the steadier one: 0.26 here, onnxruntime's
    # 0.85 (2026-12-07); 0.250 at 98.08% and 97.2% int8 MACs since assign-bitwidths{a16-share}
    # (2026-12-07, session 41: 4096 held-out crops 74 -> 68 flips, 0.296 -> 0.255); 0.208 at
    # 99.52% and 90.4% with the 10% share (session 42: 4096 crops 68 -> 48 flips, 0.255 -> 0.255);
    # 0.155 at 98.56% and 90.2% with insert-observers' modelled tails (session 43: 4096 crops
    # 62 -> 37 flips, 0.255 -> 0.197). All-int8 (search off) measured 96.63% here with the tails,
    # 7 flips, where on the 4096 crops it went 75 -> 58 flips, 0.299 -> 0.279
    assert _agree(q, ref) >= 0.975
    assert _agree(q8, ref) >= 0.96
    assert _logit_error(q, ref) < 0.32
    assert _logit_error(q, ref) < _logit_error(ort_q, ref) / 2.5
    assert _agree(q8, ref) >= _agree(ort_q, ref)
    assert _agree(q, ref) >= _agree(ort_q, ref)
    # cross-layer equalization (in -O2) must not cost accuracy: all-int8 without and with it
    # measured 98.08% and 98.56% here (2026-11-22), 98.08% and 97.60% (2026-12-07: one crop
    # either way) at RMS logit errors of 0.257 and 0.263, and on 4096 held-out crops 0.297 and
    # 0.296: the error, not the count of near-ties it tips, is what it must not raise. With the
    # modelled tails (session 43) 0.277 and 0.204 here, but 0.279 and 0.263 on the 4096 crops
    # (80 of these 208 are unsure, 1/20 as many), and -O2 itself 0.197 with it and 0.199 without
    assert _logit_error(q8, ref) <= 1.5 * _logit_error(results["O2 all-int8 no-CLE"][0], ref)


@pytest.mark.slow
@pytest.mark.xfail(reason="not met on crops beyond these: on 4096 held-out crops -O2 flips 0.9-1.3% over four "
                          "calibrations (session 43, modelled tails), the limit at 99% being 1%: two of the four "
                          "(docs/equalization.md). Here 99.52% at 99.3% int8 "
                          "MACs from 2026-12-05 (mse ranges), 97.60% at 100% since align-input-grid (2026-12-07: 5 "
                          "flips, all float near-ties, at a lower logit error), 98.08% at 97.2% with a16-share "
                          "(session 41), 99.52% at 90.4% with its 10% (session 42), 98.56% at 90.2% with the tails (RMS logit "
                          "error 0.208 -> 0.155); BLAS summation order moves it "
                          "too (OPENBLAS_CORETYPE=Haswell 99.04% on 2026-12-06)", strict=False)
def test_ppocr_cls_meets_the_issue_target(ppocr_cls):
    ref, _, _, results, _ = ppocr_cls
    assert any(_agree(q, ref) >= 0.99 and frac >= 0.9 for name, (q, frac) in results.items()
               if name.startswith("O2"))


@pytest.mark.slow
@pytest.mark.xfail(reason="one crop from the target either way, and machine-dependent (BLAS summation "
                          "order moves the search's choices): 97.60% on Zen 4 (2026-11-22); 99.52% at "
                          "97.6% int8 MACs on Zen 3 with the screened search (2026-12-03); 99.04% at 94.9% with "
                          "a16-share on a Xeon (2026-12-07), 99.04% at 90.6% with its 10% (session 42), 99.52% at 90.7% "
                          "with the modelled tails on an AMD EPYC (session 43)", strict=False)
def test_ppocr_cls_o3_meets_the_issue_target(ppocr_cls):
    """-O3's mse recipe (PIPELINES["O3"]: equalize, mse ranges, mixed-precision search; `qcc
    compile -O3` builds it instead of -O2's recipe only when it measures closer to float on
    held-out calibration batches beyond chance: qcc/driver.py, replaces) against issue 4's target; measured
    99.52% with 97.4% int8 MACs, i.e. issue 5's 99.5% too (one crop of 208 flips; on 400
    other crops 98.75%, against 97.00% without equalize), with the search of 2026-11-22 09:00."""
    ref, _, _, results, _ = ppocr_cls
    q, frac = results["O3"]
    assert frac >= 0.9
    assert _agree(q, ref) >= 0.99


# --- logits ---------------------------------------------------------------------------------

def test_logits_beyond_the_calibrated_range_are_not_clipped():
    """A classifier head's logits are a graph output: the int32 accumulator is dequantized, so
    a held-out input whose logit passes every calibration sample's (an input aligned with one
    column of the weight) is not clipped to the calibrated range (8-bit requantize: 3.7 dB)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 10)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["logits"])], "head",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
                          [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    calib = [{"x": rng.uniform(-1, 1, (1, 64)).astype(np.float32)} for _ in range(16)]
    graph, _ = run_pipeline(model, {"x": (1, 64)}, calib)
    assert [n.op for n in graph.nodes if n.op in ("qmatmul", "matmul")] == ["qmatmul"]
    x = np.sign(w[:, :1].T).astype(np.float32)  # inside the input's range, logit 0 at its peak
    from qcc.interp import run

    y = run(graph, {"x": x})["logits"]
    ref = x @ w
    assert abs(ref[0, 0]) > 2 * max(np.abs(c["x"] @ w).max() for c in calib)
    sqnr = 10 * np.log10((ref ** 2).sum() / ((y - ref) ** 2).sum())
    assert sqnr > 30, sqnr
