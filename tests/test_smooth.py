"""smooth: per-channel scales moved from a tensor after a nonlinearity into the layers that
read it, kept only where the measured quantization error drops (passes/smooth.py)."""
from __future__ import annotations

import numpy as np

import qcc
from qcc.interp import Interpreter, run
from qcc.pass_manager import PassContext, PassManager

from models import interp_batches, run_pipeline


def _hardswish_chain(seed: int = 0):
    """x[N,3,8,8] -> Conv(8, 3x3) -> HardSwish -> Conv(8, 1x1) = y, ill-conditioned the way
    PP-LCNet's stem is: the first conv's channels span 1/16 .. 16 and the 1x1 conv's
    weights compensate, so each channel matters about equally. No scale can cross the
    hard-swish (cross-layer equalization leaves this pair alone)."""
    from onnx import TensorProto, helper, numpy_helper as nh

    rng = np.random.default_rng(seed)
    k = 2.0 ** np.linspace(-4, 4, 8)
    w1 = rng.normal(0, 0.5, (8, 3, 3, 3)) * k[:, None, None, None]
    w2 = rng.normal(0, 0.5, (8, 8, 1, 1)) / k[None, :, None, None]
    inits = [nh.from_array(w1.astype(np.float32), "w1"), nh.from_array(np.zeros(8, np.float32), "b1"),
             nh.from_array(w2.astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["c"], ["h"], name="hswish"),
             helper.make_node("Conv", ["h", "w2"], ["y"], name="conv2")]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = rng.normal(0, 1, (64, 3, 8, 8)).astype(np.float32)
    return m, x


def _prepared(m):
    g = qcc.import_onnx(m, {"x": (16, 3, 8, 8)})
    PassManager("canonicalize,fuse,equalize").run(g)
    return g


def test_smooth_balances_the_channels_after_a_hardswish_and_keeps_float_output():
    m, x = _hardswish_chain()
    g = _prepared(m)
    feeds = {"x": x[:16]}
    before = next(iter(run(g, feeds).values()))
    ctx = PassContext(options={"calib": [{"x": x[i:i + 16]} for i in range(0, 64, 16)]})
    PassManager("smooth", verify_each=True).run(g, ctx)
    after = next(iter(run(g, feeds).values()))
    assert float(np.abs(after - before).max() / np.abs(before).max()) <= 1e-5
    assert list(ctx.report["smoothed"]) == ["h"], ctx.report
    assert ctx.report["smoothed"]["h"]["measured_gain_db"] >= 1.0
    [mul] = [n for n in g.nodes if n.op == "mul"]
    assert mul.inputs[0].name == "h" and mul.inputs[1].is_const
    assert [u.op for u, _ in mul.output.uses] == ["conv"]

    seen = {}

    class Spy(Interpreter):
        def on_value(self, value, array):
            seen[value.name] = np.abs(array).max(axis=(0, 2, 3))

    Spy(g).run(feeds)
    spread = lambda a: float(a.max() / a.min())  # noqa: E731
    assert spread(seen["h"]) > 50  # the channels as they were: over 1:50 apart
    assert spread(seen[mul.output.name]) < spread(seen["h"]) / 4


def test_smooth_needs_calibration_data_and_a_measured_gain():
    m, x = _hardswish_chain()
    calib = [{"x": x[i:i + 16]} for i in range(0, 64, 16)]
    for pipe, ctx in (("smooth", PassContext()),  # data-free: nothing to measure on
                      ("smooth{min-gain-db=60}", PassContext(options={"calib": calib}))):
        g = _prepared(m)
        PassManager(pipe).run(g, ctx)
        assert "smoothed" not in ctx.report and not any(n.op == "mul" for n in g.nodes)


def test_smooth_raises_the_int8_accuracy_of_an_ill_conditioned_chain():
    """Every layer int8 (no search): output SQNR against float with and without it."""
    from qcc.pipelines import PIPELINES

    m, x = _hardswish_chain()
    calib = [{"x": x[i:i + 16]} for i in range(0, 32, 16)]
    want = interp_batches(qcc.import_onnx(m, {"x": (16, 3, 8, 8)}), "x", x[32:], 16).astype(np.float64)
    sqnr = {}
    for name, pipe in (("without", PIPELINES["O2"].replace("smooth,", "")), ("with", PIPELINES["O2"])):
        g, _ = run_pipeline(m, {"x": (16, 3, 8, 8)}, calib, verify_each=False,
                            pipeline=pipe.replace("assign-bitwidths,", ""))
        got = interp_batches(g, "x", x[32:], 16).astype(np.float64)
        sqnr[name] = 10 * np.log10((want ** 2).sum() / ((want - got) ** 2).sum())
    assert sqnr["with"] > sqnr["without"] + 6, sqnr


def test_smooth_scales_a_depthwise_reader_with_a_channel_multiplier():
    """A depthwise conv with two outputs per input channel (group = C, O = 2C) absorbs the
    scale of input channel i in both its output channels 2i and 2i+1."""
    from onnx import helper, numpy_helper as nh

    m, x = _hardswish_chain()
    w2 = np.random.default_rng(2).normal(0, 0.5, (16, 1, 3, 3)) / (2.0 ** np.linspace(-4, 4, 8)).repeat(2)[:, None, None, None]
    for init in m.graph.initializer:
        if init.name == "w2":
            init.CopyFrom(nh.from_array(w2.astype(np.float32), "w2"))
    conv2 = m.graph.node[2]
    conv2.attribute.extend([helper.make_attribute("group", 8), helper.make_attribute("pads", [1, 1, 1, 1])])
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 16
    g = _prepared(m)
    feeds = {"x": x[:16]}
    before = next(iter(run(g, feeds).values()))
    ctx = PassContext(options={"calib": [{"x": x[i:i + 16]} for i in range(0, 64, 16)]})
    PassManager("smooth", verify_each=True).run(g, ctx)
    assert "h" in ctx.report["smoothed"]
    after = next(iter(run(g, feeds).values()))
    assert float(np.abs(after - before).max() / np.abs(before).max()) <= 1e-5


def test_smooth_balances_an_ill_conditioned_gemm_reader():
    """The conv chain's case with gemms (trans_b=0: the reader's input channels are the rows
    of its weights): the same gain, every layer int8."""
    from onnx import TensorProto, helper, numpy_helper as nh

    from qcc.pipelines import PIPELINES

    rng = np.random.default_rng(3)
    k = 2.0 ** np.linspace(-4, 4, 8)
    w1 = rng.normal(0, 0.5, (8, 8)) * k[None, :]  # [K, N]: column j makes channel j
    w2 = rng.normal(0, 0.5, (8, 8)) / k[:, None]  # row j reads channel j
    inits = [nh.from_array(w1.astype(np.float32), "w1"), nh.from_array(w2.astype(np.float32), "w2")]
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["c"], name="fc1"),
             helper.make_node("HardSwish", ["c"], ["h"], name="hswish"),
             helper.make_node("Gemm", ["h", "w2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = rng.normal(0, 1, (256, 8)).astype(np.float32)
    calib = [{"x": x[i:i + 64]} for i in range(0, 128, 64)]
    want = interp_batches(qcc.import_onnx(m, {"x": (64, 8)}), "x", x[128:], 64).astype(np.float64)
    sqnr = {}
    for name, pipe in (("without", PIPELINES["O2"].replace("smooth,", "")), ("with", PIPELINES["O2"])):
        gq, ctx = run_pipeline(m, {"x": (64, 8)}, calib, verify_each=False,
                               pipeline=pipe.replace("assign-bitwidths,", ""))
        got = interp_batches(gq, "x", x[128:], 64).astype(np.float64)
        sqnr[name] = 10 * np.log10((want ** 2).sum() / ((want - got) ** 2).sum())
    assert "h" in ctx.report["smoothed"]
    assert sqnr["with"] > sqnr["without"] + 6, sqnr


def test_the_report_says_what_was_smoothed_and_equalized(tmp_path):
    """report.json carries each smoothed tensor (its scales' spread and the measured gain)
    next to the equalized layers and the rounded ones: the choices are visible after a
    compile."""
    import json

    import onnx

    m, x = _hardswish_chain()
    path = tmp_path / "chain.onnx"
    onnx.save(m, path)
    np.savez(tmp_path / "calib.npz", x=x[:32])
    qcc.compile(path, tmp_path / "out", opt_level="O2", calib=str(tmp_path / "calib.npz"),
                input_shapes={"x": (16, 3, 8, 8)})
    report = json.loads((tmp_path / "out/report.json").read_text())
    h = report["smoothed"]["h"]
    assert h["channels"] == 8 and h["measured_gain_db"] >= 1.0 and h["max_scale"] > h["min_scale"]
    assert "equalized" not in report  # no positively homogeneous pair in this chain
    # and the weight rounding the bit-width search measured (round-weights{defer=true})
    rounded = report["round_weights_before_search"]["layers"]
    assert rounded and all(r["weight_bits"] == 8 and "held_out_reduction_db" in r for r in rounded.values())


def test_fake_quantized_activation_is_the_uint8_grid_bit_for_bit():
    """smooth's error measure quantizes activations with the interpreter's kernel and looks
    their values up; they must be the uint8 grid's values as the float64 formula gives them,
    bit for bit (ties, the clipped tails, all-zero and one-signed tensors)."""
    from qcc.passes.smooth import _fake_quant_activation
    from qcc.quantization import params_for_range

    rng = np.random.default_rng(0)
    for k in range(12):
        x = (rng.standard_cauchy((2, 5, 7, 9)) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
        x = [x, np.abs(x), -np.abs(x), np.zeros_like(x), np.round(x * 4) / 4][k % 5]
        for p in (99.99, 90.0, 100.0):
            lo, hi = np.percentile(x, [100.0 - p, p])
            qp = params_for_range(lo, hi, "u8")
            s32 = qp.scale_array(x.ndim).astype(np.float32)
            codes = np.clip(np.rint(x / s32) + qp.zero_point_array(x.ndim), 0, 255)  # float64 sum
            want = ((codes.astype(np.uint8).astype(np.float32) - qp.zero_point_array(x.ndim))
                    * qp.scale_array(x.ndim)).astype(np.float32)
            got = _fake_quant_activation(x, p)
            assert got.dtype == np.float32 and np.array_equal(got, want), (k, p)


def test_smooth_chooses_the_same_scales_on_any_number_of_threads(monkeypatch):
    """The calibration batches' float runs go side by side (qcc.batches), each batch's
    activations kept in batch order: the scales must not depend on the thread count."""
    from qcc import batches

    m, x = _hardswish_chain()
    calib = [{"x": x[i:i + 16]} for i in range(0, 64, 16)]
    scales = []
    for n in (1, 3):
        monkeypatch.setattr(batches, "workers", lambda n=n: n)
        g = _prepared(m)
        ctx = PassContext(options={"calib": calib})
        PassManager("smooth").run(g, ctx)
        [c] = [v for v in g.constants.values() if v.name.endswith(".smooth")]
        scales.append(c.data)
    np.testing.assert_array_equal(scales[0], scales[1])
