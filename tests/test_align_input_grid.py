"""align-input-grid: an input holding 8-bit data is quantized on its own grid, exactly."""
from __future__ import annotations

import numpy as np
import pytest

from qcc.ir.parser import parse
from qcc.pass_manager import PassContext, PassManager
from qcc.passes.align_input_grid import distinct_values, find_grid, grid_range

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (4, 3, 16, 16))


def test_grid_of_normalized_pixels():
    g = find_grid(distinct_values([((PIXELS - 127.5) / 127.5).astype(np.float32)]))
    assert g is not None and g.levels == 256
    assert g.step == pytest.approx(2 / 255, rel=1e-6)
    assert g.shift == pytest.approx(1 / 255, rel=1e-4)  # zero sits half-way: half a step
    lo, hi = grid_range(g)
    assert (hi - lo) / 255 == pytest.approx(g.step, rel=1e-9)
    assert -lo / g.step == pytest.approx(round(-lo / g.step), abs=1e-6)  # an integer zero point


def test_grid_through_zero_needs_no_shift():
    g = find_grid(distinct_values([(PIXELS / 255).astype(np.float32)]))
    assert g is not None and g.shift == 0.0
    assert grid_range(g) == pytest.approx((0.0, 1.0))  # non-negative data keeps zero at 0


def test_exact_zeros_off_the_grid_are_padding_not_data():
    x = ((PIXELS - 127.5) / 127.5).astype(np.float32)
    x[..., 10:] = 0  # a preprocessing's right padding
    g = find_grid(distinct_values([x]))
    assert g is not None and g.step == pytest.approx(2 / 255, rel=1e-6)


@pytest.mark.parametrize("x", [
    RNG.standard_normal((4, 3, 16, 16)),  # float data
    RNG.integers(0, 4096, (4, 1, 64, 64)) / 4095,  # 12-bit data: more than 256 levels
    # ImageNet normalization: three grids, one per channel, none shared
    (PIXELS / 255 - np.array([0.485, 0.456, 0.406])[:, None, None]) / np.array([0.229, 0.224, 0.225])[:, None, None],
    np.array([0.0, 0.5, 1.0, 1.5] * 64),  # a few values are not evidence of a grid
    (RNG.integers(0, 256, 40) * 2 / 255),  # 40 of 256 levels: sparse, not a grid seen
])
def test_no_grid(x):
    vals = distinct_values([np.asarray(x, np.float32)])
    assert vals is None or find_grid(vals) is None


CONV = """graph @main(%x: f32[1,3,16,16]) {
  %w = const dense<[%W%]> : f32[4,3,3,3]
  %b = const dense<[0.1, -0.2, 0.3, 0.0]> : f32[4]
  %c = qcc.conv(%x, %w, %b) {dilations=[1, 1], group=1, pads=[1, 1, 1, 1], strides=[1, 1]} : f32[1,4,16,16]
  %y = qcc.relu(%c) : f32[1,4,16,16]
  return %y
}
"""


def _conv_graph():
    w = np.round(np.random.default_rng(1).standard_normal(108), 3)
    return parse(CONV.replace("%W%", ", ".join(map(str, w))))


def _quantized(pipeline: str, calib):
    g = _conv_graph()
    ctx = PassContext(options={"calib": calib})
    PassManager(pipeline).run(g, ctx)
    return g, ctx


def test_o2_quantizes_pixels_exactly():
    """Through -O2, the input's quantize reproduces every pixel (shifted by half a step), and
    the layer's output is closer to float than with a range chosen from a histogram."""
    from qcc.interp import run
    from qcc.pipelines import PIPELINES

    px = [np.random.default_rng(s).integers(0, 256, (1, 3, 16, 16)) for s in range(4)]
    calib = [{"x": ((p - 127.5) / 127.5).astype(np.float32)} for p in px]
    g, ctx = _quantized(PIPELINES["O2"], calib)
    rep = ctx.report["input_grid"]["x"]
    assert rep["levels"] == 256 and rep["into_bias_of"] == ["c"]
    assert rep["padded"] == ["c"]
    q = next(n for n in g.nodes if n.op == "quantize" and n.inputs[0].name == "x.aligned")
    assert q.attrs["scale"][0] == pytest.approx(2 / 255, rel=1e-6)
    x, s, z = calib[0]["x"], q.attrs["scale"][0], q.attrs["zero_point"][0]
    qx = np.clip(np.rint((x - rep["shift"]) / s) + z, 0, 255)  # the input's quantize: every pixel
    np.testing.assert_allclose((qx - z) * s + rep["shift"], x, atol=1e-6)  # comes back as it was

    got = run(g, calib[0])

    ref = run(_conv_graph(), calib[0])
    base, _ = _quantized(PIPELINES["O2"].replace("align-input-grid,", ""), calib)
    other = run(base, calib[0])

    def err(out):
        return float(np.sqrt(np.mean((next(iter(out.values())) - next(iter(ref.values()))) ** 2)))

    assert err(got) < 0.8 * err(other)


def test_observers_keep_the_grid_range():
    """insert-observers calibrates every other tensor but leaves the grid's range as it is."""
    px = [np.random.default_rng(s).integers(0, 256, (1, 3, 16, 16)) for s in range(4)]
    calib = [{"x": (p / 255).astype(np.float32)} for p in px]
    g, ctx = _quantized("align-input-grid,insert-observers,propagate-ranges", calib)
    obs = {n.inputs[0].name: n for n in g.nodes if n.op == "observe"}
    assert obs["x"].attrs["source"] == "grid" and obs["x"].attrs["range"] == pytest.approx([0.0, 1.0])
    assert obs["c"].attrs["source"].startswith("observer")


def test_no_calibration_data_no_change():
    g = _conv_graph()
    assert PassManager("align-input-grid").run(g, PassContext()) is False


def test_compiled_pixels_are_bit_exact_and_reported(tmp_path):
    """The shift and the quantize after it compile to the interpreter's bits (a padding zero
    lands half-way between two levels: both must round it alike), and report.json and the
    terminal say what was done."""
    import json
    import subprocess
    import sys

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import qcc
    from qcc.interp import run
    from qcc.targets import compile_graph, runner_from_executable

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    x = ((rng.integers(0, 256, (8, 3, 16, 16)) - 127.5) / 127.5).astype(np.float32)
    x[:, :, :, 12:] = 0  # right padding, as PP-OCR's preprocessing adds
    np.savez(tmp_path / "c.npz", x=x)

    report = qcc.compile(tmp_path / "m.onnx", tmp_path / "out", target="host", opt_level="O2",
                         calib=tmp_path / "c.npz")
    assert report["input_grid"]["x"]["zeros_off_grid"] is True
    assert json.loads((tmp_path / "out" / "report.json").read_text())["input_grid"] == report["input_grid"]
    graph = qcc.load_qir(tmp_path / "out" / "model.qir")
    q = next(n for n in graph.nodes if n.op == "quantize")
    graph.set_outputs(list(graph.outputs) + [q.output])  # the quantized input, compared too
    ref = run(graph, {"x": x[:1]})
    got = runner_from_executable(compile_graph(graph, "host"), graph).run({"x": x[:1]})
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)

    out = subprocess.run([sys.executable, "-m", "qcc.cli", "compile", str(tmp_path / "m.onnx"), "-O2",
                          "--calib", str(tmp_path / "c.npz"), "-o", str(tmp_path / "out2")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "input x: 8-bit data, quantized on its own grid (step 0.007843, shifted" in out.stdout
