"""equalize and bias-correct on real models: float semantics kept (equalize), the mean
error of quantized layers removed (bias-correct). The golden files show the rewrites."""
from __future__ import annotations

import numpy as np
import pytest

import qcc
from qcc.interp import run
from qcc.pass_manager import PassContext, PassManager

from models import digits_cnn, tiny_conv_model


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("options", ["", "{criterion=weights}"])
def test_equalize_keeps_ppocr_cls_float_output(ppocr_cls_path, options):
    g = qcc.import_onnx(ppocr_cls_path, {"x": (2, 3, 48, 192)})
    PassManager("canonicalize,fuse").run(g)
    x = {"x": np.random.default_rng(0).uniform(-1, 1, (2, 3, 48, 192)).astype(np.float32)}
    before = next(iter(run(g, x).values()))
    ctx = PassContext()
    PassManager(f"equalize{options}", verify_each=True).run(g, ctx)
    after = next(iter(run(g, x).values()))
    assert _rel(after, before) <= 1e-5
    eq = ctx.report["equalized"]
    # the expand -> relu -> depthwise -> relu -> project chains of the first blocks
    assert {"conv2d_54.tmp_0", "conv2d_58.tmp_0", "depthwise_conv2d_1.tmp_0"} <= set(eq), eq
    # a hard-swish is not positively homogeneous: the stem conv before one is left alone
    assert "conv2d_53.tmp_0" not in eq


def test_equalize_keeps_digits_float_output_and_bn_statistics():
    d = digits_cnn()
    g = qcc.import_onnx(d.model, {"x": (40, 1, 8, 8)})
    PassManager("canonicalize,fuse").run(g)
    stats = {v.name: v.meta["bn_stats"] for v in g.values() if "bn_stats" in v.meta}
    before = run(g, {"x": d.x_test[:40]})["prob"]
    ctx = PassContext()
    PassManager("equalize", verify_each=True).run(g, ctx)
    np.testing.assert_allclose(run(g, {"x": d.x_test[:40]})["prob"], before, rtol=1e-5, atol=1e-6)
    assert "g1" in ctx.report["equalized"]  # gemm -> relu -> gemm
    # the statistics of a rescaled layer are rescaled with it: mean/std ratios stay
    mu0, sd0 = stats["g1"]
    mu1, sd1 = g.value("g1").meta["bn_stats"]
    np.testing.assert_allclose(mu1 / sd1, mu0 / sd0, rtol=1e-6)
    assert not np.allclose(sd1, sd0)


def _quantized_mean_error(pipeline, calib):
    from qcc.sensitivity import quantized_copy

    g = qcc.import_onnx(tiny_conv_model(), {"x": (64, 3, 8, 8)})
    ctx = PassContext(options={"calib": calib})
    PassManager(pipeline).run(g, ctx)
    q = quantized_copy(g, ctx.options.get("bitwidths", {}))
    ref = qcc.import_onnx(tiny_conv_model(), {"x": (64, 3, 8, 8)})
    errs = [next(iter(run(q, c).values())) - next(iter(run(ref, c).values())) for c in calib]
    return np.abs(np.mean(np.concatenate(errs), axis=0)), ctx


def test_bias_correct_removes_the_mean_error_on_calibration_data():
    rng = np.random.default_rng(1)
    # inputs with a large common offset: weight rounding then shifts each channel's mean
    calib = [{"x": (rng.normal(2.0, 0.5, (64, 3, 8, 8))).astype(np.float32)} for _ in range(2)]
    base = "canonicalize,fuse,insert-observers,propagate-ranges,assign-bitwidths{search=false}"
    plain, _ = _quantized_mean_error(base, calib)
    corrected, ctx = _quantized_mean_error(base + ",bias-correct", calib)
    assert ctx.report["bias_correction"]["method"] == "empirical"
    assert corrected.max() < 0.5 * plain.max(), (plain, corrected)


def test_a_bias_shift_moves_a_gemms_output_by_exactly_that_with_any_beta():
    """bias-correct and round-weights{shift-bias} move a layer's output by d through
    _set_bias(n, _bias_of(n) + d): for a gemm, whose bias is added times beta, _bias_of
    must be that product (it was the raw bias: with beta = 2 the output moved by d - C)."""
    from qcc.ir.graph import Graph
    from qcc.ir.types import TensorType
    from qcc.passes.bias_correct import _bias_of, _set_bias

    rng = np.random.default_rng(0)
    g = Graph("gemm")
    x = g.add_input("x", TensorType((4, 5), "f32"))
    w = g.add_const("w", rng.normal(size=(3, 5)).astype(np.float32))
    c = g.add_const("c", np.array([1.0, 2.0, 3.0], np.float32))
    n = g.add_node("gemm", [x, w, c], {"alpha": 1.0, "beta": 2.0, "trans_a": 0, "trans_b": 1})
    g.set_outputs([n.output])
    feeds = {"x": rng.normal(size=(4, 5)).astype(np.float32)}
    before = next(iter(run(g, feeds).values()))
    d = np.array([0.5, -0.25, 1.0])
    _set_bias(n, _bias_of(n) + d, g)
    np.testing.assert_allclose(next(iter(run(g, feeds).values())) - before, np.broadcast_to(d, (4, 3)), atol=1e-5)


def test_bias_correct_runs_past_a_node_with_several_outputs():
    """A split (YOLOv8's C2f blocks have them) in the swept graph: the sweep asked every node
    for its single output and failed there ('split has 2 outputs')."""
    from onnx import TensorProto, helper, numpy_helper as nh

    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), "w1"),
             nh.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
             nh.from_array(rng.normal(0, 0.4, (4, 4, 1, 1)).astype(np.float32), "w2"),
             nh.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Split", ["r1"], ["s0", "s1"], axis=1),
             helper.make_node("Conv", ["s0", "w2", "b2"], ["c2"]),
             helper.make_node("Add", ["c2", "s1"], ["y"])]
    graph = helper.make_graph(nodes, "split", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 4, 8, 8])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    calib = [{"x": rng.normal(2.0, 0.5, (16, 3, 8, 8)).astype(np.float32)} for _ in range(3)]
    g = qcc.import_onnx(model, {"x": (16, 3, 8, 8)})
    assert any(len(n.outputs) > 1 for n in g.nodes)
    ctx = PassContext(options={"calib": calib})
    PassManager("canonicalize,fuse,insert-observers,propagate-ranges,assign-bitwidths{search=false},"
                "bias-correct,quantize,fold-requantize,canonicalize").run(g, ctx)
    assert ctx.report["bias_correction"]["method"] == "empirical"
    assert ctx.report["bias_correction"]["max_shift"]  # it reached the layers, past the split
