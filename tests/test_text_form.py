"""The .qir text form: print -> parse -> print is the identity, weights bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qcc.ir import Graph, QuantParams, TensorType
from qcc.ir.parser import QirError, load, parse
from qcc.ir.printer import print_graph, print_with_sidecar, save


def roundtrip(g: Graph) -> Graph:
    text, side = print_with_sidecar(g)
    g2 = parse(text, sidecar=side)
    text2, side2 = print_with_sidecar(g2)
    assert text2 == text
    assert sorted(side) == sorted(side2)
    for k in side:
        assert side[k].dtype == side2[k].dtype and side[k].tobytes() == side2[k].tobytes()
    for name, c in g.constants.items():
        c2 = g2.value(name)
        assert c2.type == c.type and c2.data.tobytes() == c.data.tobytes() and c2.quant == c.quant
    return g2


def quantized_graph() -> Graph:
    """Per-channel weights (long enough for a sidecar scale list), int4, odd names."""
    rng = np.random.default_rng(0)
    g = Graph("net")
    x = g.add_input("input:0", TensorType((1, 3, 8, 8), "u8"), QuantParams(8, False, 0.0213, 131, range=(-2.79, 2.64)))
    scales = rng.uniform(1e-4, 1e-2, 32)
    w = g.add_const("conv1.w", rng.integers(-127, 128, (32, 3, 3, 3)), "i8",
                    QuantParams(8, True, scales, 0, axis=0))
    w4 = g.add_const("w4", rng.integers(-8, 8, (4, 3)), "i4", QuantParams(4, True, [0.5, 0.25, 0.125, 1.0], 0, axis=0))
    b = g.add_const("conv1.b", rng.integers(-1000, 1000, 32).astype(np.int32), "i32")
    h = g.add_const("h", np.array([1.5, -0.0, np.inf, -np.inf], np.float16))
    bf = g.add_const("bf", np.array([1.0, 3.140625, -2.5], np.float32).astype(TensorType((3,), "bf16").np_dtype))
    flags = g.add_const("flags", np.array([True, False, True]))
    n = g.add_node("onnx.QLinearConv", [x, w, b, None], {"pads": [1, 1, 1, 1], "mode": "x\"y", "alpha": 1e-05,
                                                          "kernel": np.arange(6, dtype=np.int64).reshape(2, 3),
                                                          "empty": [], "on": False},
                   names=["onnx::Conv_1 out"], types=[TensorType((1, 32, 8, 8), "u8")])
    n.output.quant = QuantParams(8, False, 0.05, 0)
    m = g.add_node("onnx.Split", [w4, h, bf, flags], {}, names=["s0", "s1"],
                   types=[TensorType((2, 3), "i4"), TensorType((2, 3), "i4")])
    g.set_outputs([n.output, *m.outputs])
    return g


def test_quantized_graph_roundtrips_bit_for_bit():
    g = quantized_graph()
    text = print_graph(g)
    assert "!q<i8 axis=0 scale=@conv1.w.scale>" in text  # long per-channel list in the sidecar
    assert '%"onnx::Conv_1 out"' in text
    g2 = roundtrip(g)
    assert g2.value("conv1.w").quant.scale == g.value("conv1.w").quant.scale
    assert g2.value("input:0").quant == g.inputs[0].quant


def test_file_roundtrip_with_sidecar(tmp_path):
    g = quantized_graph()
    save(g, tmp_path / "m.qir")
    assert (tmp_path / "m.npz").exists()
    g2 = load(tmp_path / "m.qir")
    assert print_graph(g2) == print_graph(g)
    # the sidecar is deterministic: saving twice gives the same bytes
    save(g2, tmp_path / "m2.qir")
    assert (tmp_path / "m2.npz").read_bytes() == (tmp_path / "m.npz").read_bytes()


def test_inline_all_needs_no_sidecar():
    g = quantized_graph()
    text = print_graph(g, inline_all=True)
    assert "@" not in text.replace("graph @net", "")
    assert print_graph(parse(text), inline_all=True) == text


_DTYPES = ["f32", "f16", "i64", "i32", "i16", "i8", "u8", "i4", "u4", "bool"]


@st.composite
def const_graphs(draw):
    g = Graph()
    x = g.add_input("x", TensorType((2,), "f32"))
    outs = [x]
    for i in range(draw(st.integers(1, 6))):
        dt = draw(st.sampled_from(_DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
        t = TensorType(shape, dt)
        if dt.startswith("f"):
            vals = draw(st.lists(st.floats(width=16 if dt == "f16" else 32, allow_nan=False),
                                 min_size=t.size, max_size=t.size))
        elif dt == "bool":
            vals = draw(st.lists(st.booleans(), min_size=t.size, max_size=t.size))
        else:
            from qcc.ir import int_range

            lo, hi = int_range(dt)
            vals = draw(st.lists(st.integers(lo, hi), min_size=t.size, max_size=t.size))
        arr = np.array(vals, dtype=t.np_dtype).reshape(shape)
        outs.append(g.add_const(f"c{i}", arr, dt))
    g.set_outputs(outs)
    return g


@settings(max_examples=60, deadline=None)
@given(const_graphs())
def test_random_constants_roundtrip(g):
    roundtrip(g)


BAD = [
    ("graph @m(%x: f32[1]) {\n  %y = qcc.relu(%z) : f32[1]\n  return %y\n}", 2, 17, "%z is used before it is defined"),
    ("graph @m(%x: f32[1]) {\n  %y = qcc.relu(%x) : f32[1\n  return %y\n}", 3, 3, "expected"),
    ("graph @m(%x: f33[1]) { return %x }", 1, 14, "expected a dtype"),
    ("graph @m(%x: f32[1]) {\n  %x = qcc.relu(%x) : f32[1]\n  return %x\n}", 2, 3, "defined twice"),
    ("graph @m(%x: f32[2]) {\n  %y = qcc.relu(%x) : f32[3]\n  return %y\n}", 2, 3, "does not match inferred f32[2]"),
    ("graph @m(%x: f32[2]) {\n  %y = qcc.nosuchop(%x) : f32[2]\n  return %y\n}", 2, 3, "unknown op"),
    ("graph @m(%x: f32[2]) {\n  %y = qcc.relu(%x) {bogus=1} : f32[2]\n  return %y\n}", 2, 3, "unknown attribute 'bogus'"),
    ("graph @m(%x: f32[2]) {\n  %c = const dense<[1, 2, 3]> : f32[2]\n  return %c\n}", 2, 3, "3 elements"),
    ("graph @m(%x: f32[2]) {\n  %c = const @w : f32[2]\n  return %c\n}", 2, 3, "no .npz"),
    ("graph @m(%x: f32[2] !q<i8 scale=0.1>) { return %x }", 1, 21, "not an integer type"),
    ("graph @m(%x: i8[2] !q<i8 scale=-1.0>) { return %x }", 1, 20, "positive"),
    ("graph @m(%x: i8[2] !q<i8 axis=0 scale=[1.0, 2.0, 3.0]>) { return %x }", 1, 20, "3 per-channel scales"),
    ("graph @m(%x: f32[2]) {\n  %c = const dense<[9, 1]> : i4[2]\n  return %c\n}", 2, 3, "outside i4"),
    ("graph @m(%x: f32[2]) {\n  return %q\n}", 2, 10, "%q is used before it is defined"),
    ("graph @m(%x: f32[2]) {\n  %y = qcc.add(%x) : f32[2]\n  return %y\n}", 2, 3, "takes 2 operands"),
]


@pytest.mark.parametrize("text,line,col,msg", BAD, ids=[b[3][:30] for b in BAD])
def test_parse_errors_are_one_positioned_line(text, line, col, msg):
    with pytest.raises(QirError) as e:
        parse(text, "bad.qir")
    s = str(e.value)
    assert "\n" not in s
    assert msg in s, s
    assert s.startswith("bad.qir:"), s
    if line:
        assert (e.value.line, e.value.col) == (line, col), s
