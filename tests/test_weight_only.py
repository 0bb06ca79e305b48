"""-O1 (weight-only int8) as it ships: the library holds the int8 weights, not float ones
folded back by TVM, and its output is the float model's within the weight rounding.

The model has every layer kind quantize-weights touches: a regular and a depthwise 3x3 conv
(qcc's x86 float kernels, reading int8), a 1-D conv (the generic conv), a gemm with
transposed weights and a matmul (generic matmuls)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper as nh

import qcc
from qcc import interp

C = 128  # the 3x3 conv's 147k weights dominate the library's size


def _weights():
    rng = np.random.default_rng(7)
    w = lambda *s: (rng.normal(0, 1, s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)  # noqa: E731
    return {"w1": w(C, 16, 3, 3), "b1": w(C), "w2": w(C, C, 3, 3), "wd": w(C, 1, 3, 3),
            "w3": w(C, C, 3), "fw": w(96, C), "fb": w(96), "mw": w(96, 40)}


def _model(weights):
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c2", "wd"], ["c3"], pads=[1, 1, 1, 1], group=C),
             helper.make_node("Relu", ["c3"], ["r3"]),
             helper.make_node("Reshape", ["r3", "flat"], ["f3"]),
             helper.make_node("Conv", ["f3", "w3"], ["c4"], pads=[1, 1]),
             helper.make_node("ReduceMean", ["c4"], ["p"], axes=[2], keepdims=0),
             helper.make_node("Gemm", ["p", "fw", "fb"], ["g"], transB=1),
             helper.make_node("MatMul", ["g", "mw"], ["y"])]
    inits = [nh.from_array(v, k) for k, v in weights.items()] + [nh.from_array(np.array([1, C, 64], np.int64), "flat")]
    graph = helper.make_graph(nodes, "wonly", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 40])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    base = tmp_path_factory.mktemp("wonly")
    weights = _weights()
    path = base / "m.onnx"
    path.write_bytes(_model(weights).SerializeToString())
    outs = {lvl: base / lvl for lvl in ("O0", "O1")}
    for lvl, out in outs.items():
        qcc.compile(path, out, target="x86-avx2", opt_level=lvl)
    return path, weights, outs


def _input():
    return np.random.default_rng(3).normal(0, 1, (1, 16, 8, 8)).astype(np.float32)


def test_the_library_keeps_the_weights_int8(builds):
    """TVM's FoldConstant would fold a dequantize of a constant weight back to float32:
    the library would then be as large as the float one (it was: the saving was 0)."""
    _, weights, outs = builds
    saving = sum(v.size * 3 for k, v in weights.items() if k.startswith(("w", "fw", "mw")))  # 4 -> 1 byte
    so = {lvl: (out / "model.so").stat().st_size for lvl, out in outs.items()}
    assert so["O0"] - so["O1"] >= 0.8 * saving, (so, saving)


def test_weight_only_output_is_float_within_the_weight_rounding(builds):
    import onnxruntime

    path, _, outs = builds
    x = _input()
    ref = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = qcc.load(outs["O1"]).run({"x": x})["y"]
    # the compiled -O1 graph is what its interpreter says (scaling the output instead of the
    # weights changes float rounding only)
    graph = qcc.load_qir(outs["O1"] / "model.qir")
    want = list(interp.run(graph, {"x": x}).values())[0]
    span = float(ref.max() - ref.min())
    assert np.abs(got - want).max() <= 1e-4 * span
    # and int8 weights cost little against float (per-channel int8: about 40 dB here)
    sqnr = 10 * np.log10((ref ** 2).sum() / ((got - ref) ** 2).sum())
    assert sqnr > 30, sqnr
    assert not np.array_equal(got, qcc.load(outs["O0"]).run({"x": x})["y"])  # the weights really are int8


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("qemu-aarch64") and shutil.which("aarch64-linux-gnu-g++")),
                    reason="qemu-user and g++-aarch64-linux-gnu not installed")
def test_weight_only_on_arm_matches_x86(builds, tmp_path):
    """ARM's float convs take the generic conv: int8 weights read by TVM's conv2d."""
    from qcc.targets import emulate

    emulate.ensure_runtime()
    path, weights, outs = builds
    qcc.compile(path, tmp_path / "arm", target="arm-a72", opt_level="O1")
    x = _input()
    got = qcc.load(tmp_path / "arm").run({"x": x})["y"]
    want = qcc.load(outs["O1"]).run({"x": x})["y"]
    assert np.abs(got - want).max() <= 1e-4 * float(want.max() - want.min())
