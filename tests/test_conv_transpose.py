"""conv_transpose as a conv + depth_to_space (+ slice), fuse's rewrite: the same outputs as
onnxruntime for the kernels, strides, paddings and output paddings upsampling heads use, and
an int8 conv at -O2 instead of a float conv_transpose TVM leaves unscheduled."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcc
from qcc.interp import run as interp_run
from qcc.pass_manager import PassManager

# name: (C, O, H, W, k, s, pads (top, left, bottom, right), output_padding)
CASES = {
    "k4_s2_p1": (6, 5, 7, 9, 4, 2, (1, 1, 1, 1), (0, 0)),  # the usual 2x upsampler
    "k3_s2_p1_op1": (4, 3, 5, 6, 3, 2, (1, 1, 1, 1), (1, 1)),  # 2x with output padding
    "k5_s3_asym": (3, 4, 4, 5, 5, 3, (2, 1, 1, 2), (0, 1)),
    "k3_s2_p0": (2, 2, 3, 3, 3, 2, (0, 0, 0, 0), (0, 0)),
    "k2_s2": (4, 3, 5, 6, 2, 2, (0, 0, 0, 0), (0, 0)),  # kernel == stride: no crop
}


def model(C, O, H, W, k, s, pads, op, seed=0):
    """ConvTranspose (k, s: an int for both axes, or (h, w)) and a Relu."""
    rng = np.random.default_rng(seed)
    (kh, kw), (sh, sw) = (k, k) if isinstance(k, int) else k, (s, s) if isinstance(s, int) else s
    w = numpy_helper.from_array(rng.standard_normal((C, O, kh, kw)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(O).astype(np.float32), "b")
    OH = (H - 1) * sh + kh - pads[0] - pads[2] + op[0]
    OW = (W - 1) * sw + kw - pads[1] - pads[3] + op[1]
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["t"], strides=[sh, sw], pads=list(pads),
                              output_padding=list(op), kernel_shape=[kh, kw]),
             helper.make_node("Relu", ["t"], ["y"])]
    g = helper.make_graph(nodes, "ct", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, W])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, O, OH, OW])], [w, b])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def ort(m, x):
    return onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_fuse_turns_conv_transpose_into_a_conv_with_the_same_output(name):
    C, O, H, W, *_ = CASES[name]
    m = model(*CASES[name])
    g = qcc.import_onnx(m)
    PassManager("canonicalize,fuse", verify_each=True).run(g)
    ops = [n.op for n in g.nodes]
    assert "conv_transpose" not in ops and "conv" in ops and "depth_to_space" in ops
    assert ("slice" in ops) == (name != "k2_s2")
    assert ops.index("relu") < ops.index("depth_to_space")  # next to the conv: its requantize clamp
    x = np.random.default_rng(1).standard_normal((1, C, H, W)).astype(np.float32)
    ref = ort(m, x)
    got = interp_run(g, {"x": x})["y"]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


def test_conv_transpose_is_an_int8_conv_at_o2(tmp_path):
    m = model(16, 8, 12, 18, 4, 2, (1, 1, 1, 1), (0, 0))
    onnx.save(m, tmp_path / "ct.onnx")
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((8, 16, 12, 18)).astype(np.float32))
    report = qcc.compile(tmp_path / "ct.onnx", tmp_path / "out", opt_level="O2", calib=str(tmp_path / "calib.npz"))
    assert report["summary"]["int8_mac_fraction"] == 1.0
    assert "conv_transpose" not in (tmp_path / "out" / "model.qir").read_text()
    x = rng.standard_normal((1, 16, 12, 18)).astype(np.float32)
    ref = ort(m, x)
    got = qcc.load(tmp_path / "out").run({"x": x})["y"]
    sqnr = 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum())
    assert sqnr > 25, sqnr


@pytest.mark.parametrize("k,s,pads,op", [(4, 2, (1, 1, 1, 1), (0, 0)), ((3, 4), (1, 2), (1, 1, 1, 1), (0, 1)),
                                         ((2, 3), (2, 3), (0, 0, 0, 0), (0, 0))])
def test_float_build_lowers_conv_transpose_as_a_conv(tmp_path, k, s, pads, op):
    """-O0 (no fuse) lowers the same way, per axis: strides and kernels may differ between
    the axes, a stride of 1 on one of them included."""
    m = model(5, 4, 6, 7, k, s, pads, op)
    onnx.save(m, tmp_path / "ct.onnx")
    qcc.compile(tmp_path / "ct.onnx", tmp_path / "out", opt_level="O0")
    from qcc.targets import lower_for

    assert "conv2d_transpose" not in lower_for(qcc.load_qir(tmp_path / "out" / "model.qir"), "host").script(
        show_meta=False)
    x = np.random.default_rng(4).standard_normal((1, 5, 6, 7)).astype(np.float32)
    ref = ort(m, x)
    got = qcc.load(tmp_path / "out").run({"x": x})["y"]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
