"""The reference interpreter: results, freeing, hooks, input checks and opaque ops."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcc.interp import Interpreter, InterpError, run
from qcc.ir.graph import Graph
from qcc.ir.types import TensorType

rng = np.random.default_rng(7)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def small_cnn():
    """conv -> relu -> max_pool -> global_avg_pool -> flatten -> gemm, with its ONNX twin."""
    w1, b1 = f32(8, 3, 3, 3), f32(8)
    w2, b2 = f32(10, 8), f32(10)
    g = Graph("cnn")
    x = g.add_input("x", TensorType((2, 3, 16, 16), "f32"))
    conv_attrs = dict(strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1], group=1)
    c = g.add_node("conv", [x, g.add_const("w1", w1), g.add_const("b1", b1)], conv_attrs,
                   names=["conv"]).output
    r = g.add_node("relu", [c], names=["relu"]).output
    p = g.add_node("max_pool", [r], dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0] * 4,
                                         dilations=[1, 1]), names=["pool"]).output
    gp = g.add_node("global_avg_pool", [p], names=["gap"]).output
    fl = g.add_node("flatten", [gp], dict(axis=1), names=["flat"]).output
    y = g.add_node("gemm", [fl, g.add_const("w2", w2), g.add_const("b2", b2)], dict(trans_b=1),
                   names=["logits"]).output
    g.set_outputs([y])

    init = [numpy_helper.from_array(a, n) for n, a in
            (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], **conv_attrs),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p"], ["gp"]),
             helper.make_node("Flatten", ["gp"], ["fl"], axis=1),
             helper.make_node("Gemm", ["fl", "w2", "b2"], ["logits"], transB=1)]
    model = helper.make_model(
        helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                       [2, 3, 16, 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], init),
        opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return g, model


def chain(n=10):
    g = Graph("chain")
    v = g.add_input("x", TensorType((4, 4), "f32"))
    for i in range(n):
        v = g.add_node("relu", [v], names=[f"r{i}"]).output
    g.set_outputs([v])
    return g


def test_small_cnn_matches_onnxruntime():
    g, model = small_cnn()
    x = f32(2, 3, 16, 16)
    got = run(g, {"x": x})
    assert list(got) == ["logits"]
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got["logits"].dtype == np.float32
    np.testing.assert_allclose(got["logits"], want, rtol=1e-5, atol=1e-5)


def test_values_are_freed_after_last_use():
    g = chain(10)
    it = Interpreter(g)
    out = it.run({"x": f32(4, 4)})
    assert it.peak_live == 2  # one operand and one result at a time
    assert it.live_count() == 1 and list(out) == ["r9"]  # only the output survives


def test_keep_retains_every_value():
    g = chain(5)
    x = f32(4, 4)
    it = Interpreter(g, keep=True)
    it.run({"x": x})
    assert {v.name for v in it.env} == {"x", "r0", "r1", "r2", "r3", "r4"}
    np.testing.assert_array_equal(it.array("r2"), np.maximum(x, 0))
    with pytest.raises(KeyError, match="keep=True"):
        dropped = Interpreter(g)
        dropped.run({"x": x})
        dropped.array("r2")


def test_residual_operand_lives_until_its_last_use():
    g = Graph()
    x = g.add_input("x", TensorType((3,), "f32"))
    a = g.add_node("relu", [x], names=["a"]).output
    b = g.add_node("neg", [a], names=["b"]).output
    c = g.add_node("add", [b, x], names=["c"]).output
    unused = g.add_node("exp", [a], names=["dead"]).output  # result nobody reads
    g.set_outputs([c, a])
    seen = []

    class Probe(Interpreter):
        def on_value(self, value, array):
            seen.append((value.name, sorted(v.name for v in self.env)))

    xv = np.array([-1.0, 0.5, 2.0], np.float32)
    out = Probe(g).run({"x": xv})
    np.testing.assert_allclose(out["c"], -np.maximum(xv, 0) + xv)
    np.testing.assert_array_equal(out["a"], np.maximum(xv, 0))
    names = [n for n, _ in seen]
    assert names == ["x", "a", "b", "c", "dead"]  # every input and result is observed
    env_at = dict(seen)
    assert "x" in env_at["c"]  # x is kept for the add
    assert "b" not in env_at["dead"] and "x" not in env_at["dead"]
    assert unused.name == "dead"


def test_on_value_sees_every_produced_value():
    g, _ = small_cnn()
    ranges = {}

    class Observer(Interpreter):
        def on_value(self, value, array):
            assert array.shape == value.shape
            ranges[value.name] = (float(array.min()), float(array.max()))

    Observer(g).run({"x": f32(2, 3, 16, 16)})
    assert set(ranges) == {"x", "conv", "relu", "pool", "gap", "flat", "logits"}
    assert ranges["relu"][0] >= 0


@pytest.mark.parametrize("feeds, match", [
    ({}, r"missing feed for input %x"),
    ({"x": np.zeros((2, 3, 16, 15), np.float32)}, r"input %x: expected shape \[2, 3, 16, 16\]"),
    ({"x": np.zeros((2, 3, 16, 16), np.float64)}, r"input %x: expected dtype f32"),
    ({"x": [[1.0]]}, r"input %x: expected a numpy array"),
    ({"x": np.zeros((2, 3, 16, 16), np.float32), "y": np.zeros(1)}, r"feed 'y' is not a graph input"),
])
def test_bad_feeds_are_value_errors(feeds, match):
    g, _ = small_cnn()
    with pytest.raises(ValueError, match=match) as e:
        run(g, feeds)
    assert "\n" not in str(e.value)


def test_sub_byte_input_range_is_checked():
    g = Graph()
    x = g.add_input("q", TensorType((3,), "i4"))
    g.set_outputs([g.add_node("neg", [x]).output])
    assert run(g, {"q": np.array([-7, 0, 7], np.int8)})["neg"].tolist() == [7, 0, -7]
    with pytest.raises(ValueError, match="outside the i4 range"):
        run(g, {"q": np.array([9, 0, 0], np.int8)})
    # -(-8) = 8 fits the int8 storage but not i4: the interpreter refuses to store it
    with pytest.raises(InterpError, match=r"neg %neg: result 0 %neg has values outside the i4"):
        run(g, {"q": np.array([-8, 0, 7], np.int8)})


def test_kernel_result_type_mismatch_names_the_node():
    g = chain(3)
    g.value("r1").type = TensorType((4, 4), "f16")  # a pass that broke a type
    with pytest.raises(InterpError, match=r"relu %r1: result 0 %r1 is declared f16\[4,4\]"):
        run(g, {"x": f32(4, 4)})
    g.value("r1").type = TensorType((4, 5), "f32")
    with pytest.raises(InterpError, match=r"relu %r1.*float32\[4,4\]"):
        run(g, {"x": f32(4, 4)})


def test_kernel_exception_is_annotated_with_the_node():
    g = Graph()
    x = g.add_input("x", TensorType((2, 3), "f32"))
    y = g.add_node("reshape", [x], dict(shape=[3, 2]), names=["rs"]).output
    g.set_outputs([y])
    y.producer.attrs["shape"] = [4, 2]  # invalid now: the kernel itself fails
    with pytest.raises(ValueError) as e:
        run(g, {"x": f32(2, 3)})
    assert "while running reshape %rs" in "".join(getattr(e.value, "__notes__", []))


def test_multi_output_and_passthrough_outputs():
    g = Graph()
    x = g.add_input("x", TensorType((6, 2), "f32"))
    parts = g.add_node("split", [x], dict(axis=0, split=[1, 2, 3]), names=["s0", "s1", "s2"]).outputs
    c = g.add_const("k", np.arange(3, dtype=np.int64))
    g.set_outputs([parts[2], x, c, parts[0]])
    xv = f32(6, 2)
    out = run(g, {"x": xv})
    assert list(out) == ["s2", "x", "k", "s0"]
    np.testing.assert_array_equal(out["s2"], xv[3:])
    np.testing.assert_array_equal(out["x"], xv)
    np.testing.assert_array_equal(out["k"], [0, 1, 2])


def test_opaque_onnx_cumsum():
    g = Graph()
    x = g.add_input("x", TensorType((2, 5), "f32"))
    axis = g.add_const("axis", np.array(1, np.int64))
    y = g.add_node("onnx.CumSum", [x, axis], {"exclusive": 1, "reverse": 0},
                   types=[TensorType((2, 5), "f32")], names=["cs"]).output
    z = g.add_node("relu", [y], names=["z"]).output
    g.set_outputs([z])
    xv = f32(2, 5)
    want = np.maximum(np.concatenate([np.zeros((2, 1), np.float32), np.cumsum(xv, 1)[:, :-1]], 1), 0)
    np.testing.assert_allclose(run(g, {"x": xv})["z"], want, rtol=1e-6, atol=1e-6)


def test_opaque_onnx_einsum_and_tensor_attribute():
    g = Graph()
    a = g.add_input("a", TensorType((2, 3, 4), "f32"))
    b = g.add_input("b", TensorType((2, 4, 5), "f32"))
    e = g.add_node("onnx.Einsum", [a, b], {"equation": "bij,bjk->bik"},
                   types=[TensorType((2, 3, 5), "f32")], names=["e"]).output
    shape = g.add_const("shape", np.array([2, 3], np.int64))
    k = g.add_node("onnx.ConstantOfShape", [shape], {"value": np.array([2.5], np.float32)},
                   types=[TensorType((2, 3), "f32")], names=["k"]).output
    g.set_outputs([e, k])
    av, bv = f32(2, 3, 4), f32(2, 4, 5)
    it = Interpreter(g)
    for _ in range(2):  # the second run reuses the cached evaluator
        out = it.run({"a": av, "b": bv})
        np.testing.assert_allclose(out["e"], av @ bv, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(out["k"], np.full((2, 3), 2.5, np.float32))


def test_opaque_output_is_cast_to_declared_type():
    g = Graph()
    x = g.add_input("x", TensorType((4,), "f32"))
    s = g.add_node("onnx.Shape", [x], {}, types=[TensorType((1,), "i64")], names=["s"]).output
    g.set_outputs([s])
    out = run(g, {"x": f32(4)})["s"]
    assert out.dtype == np.int64 and out.tolist() == [4]


def test_unknown_dialect_has_no_runner():
    g = Graph()
    x = g.add_input("x", TensorType((4,), "f32"))
    g.set_outputs([g.add_node("foo.Bar", [x], {}, types=[TensorType((4,), "f32")],
                              names=["fb"]).output])
    with pytest.raises(InterpError, match="no runner for the 'foo' dialect"):
        run(g, {"x": f32(4)})


# --- the integer kernels against int64 arithmetic written out -----------------------------

def test_integer_kernels_equal_their_int64_formulas():
    """qconv and qmatmul (their int32 sums skip int64 where no wrap is possible: a bias on
    either side of that limit), requantize and dequantize (worked in place), against the
    formulas in plain int64; and an int32 sum past 2^31 is still an error."""
    from qcc.ops.quant import ACC32_MAX, dequantize, qconv, qmatmul, requantize

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 8, 5, 6)).astype(np.uint8)
    w = rng.integers(-127, 128, (4, 8, 3, 3)).astype(np.int8)
    xs = np.pad(x.astype(np.int64) - 77, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros((2, 4, 5, 6), np.int64)
    for i in range(3):
        for j in range(3):
            ref += np.einsum("nchw,oc->nohw", xs[:, :, i:i + 5, j:j + 6], w[:, :, i, j].astype(np.int64))
    for big in (1000, ACC32_MAX - (1 << 24) - 1, ACC32_MAX - (1 << 24), ACC32_MAX - 600_000):
        b = np.array([big, -big, 3, -(big // 2)], np.int32)
        want = ref + b.astype(np.int64).reshape(1, -1, 1, 1)
        kw = dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1, x_zero_point=77)
        if want.max() > ACC32_MAX or want.min() < -ACC32_MAX - 1:
            with pytest.raises(OverflowError):
                qconv(x, w, b, **kw)
            continue
        got = qconv(x, w, b, **kw)
        assert got.dtype == np.int32 and np.array_equal(got, want), big
        got = qmatmul(x[0, :, 0].T.copy(), w[:, :, 0, 0].T.copy(), b, a_zero_point=77, b_zero_point=0)
        mm = (x[0, :, 0].T.astype(np.int64) - 77) @ w[:, :, 0, 0].T.astype(np.int64) + b
        assert got.dtype == np.int32 and np.array_equal(got, mm), big

    acc = rng.integers(-(1 << 31), 1 << 31, (3, 4, 7), dtype=np.int64).astype(np.int32)
    M, sh = [1 << 30, 1518500250, 2147483647, 1073741825], [0, -3, 5, -20]
    got = requantize(acc, multiplier=M, shift=sh, axis=1, input_zero_point=-9, zero_point=100,
                     dtype="i16", clamp=[])
    t = 31 - np.array(sh).reshape(1, 4, 1)
    want = ((acc.astype(np.int64) + 9) * np.array(M).reshape(1, 4, 1) + (1 << (t - 1))) >> t
    assert np.array_equal(got, np.clip(want + 100, -32768, 32767).astype(np.int16))
    s = np.float32([0.5, 1e-3, 3.0, 7.25])
    for z in ([0, 0, 0, 0], [1, -2, 0, 5]):
        got = dequantize(acc, scale=list(map(float, s)), zero_point=z, axis=1)
        want = (acc - np.int32(z).reshape(1, 4, 1)).astype(np.float32) * s.reshape(1, 4, 1)
        assert got.dtype == np.float32 and np.array_equal(got, want)
