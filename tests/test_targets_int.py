"""Integer graphs on the TVM back end: bit-identical to qcc.interp.

quantize / dequantize / requantize / qconv / qmatmul / observe and the range-preserving
ops on u8/i8 tensors are compiled for the host and compared with the reference
interpreter with np.array_equal; so are the float values between integer segments of
quantized models (dequantize, add, global_avg_pool, quantize...) — only
transcendental float ops (softmax) get a 1e-6 tolerance.
"""
from __future__ import annotations

import time
from pathlib import Path

import re

import numpy as np
import pytest

from qcc.interp import run as interp_run
from qcc.ir import Graph, TensorType
from qcc.ops.quant import qconv as ref_qconv, qmatmul as ref_qmatmul

tvm = pytest.importorskip("tvm")

from qcc.targets import (LoweringStrategy, compile_graph, llvm_source, lower_graph,  # noqa: E402
                         runner_from_executable)

ROOT = Path(__file__).resolve().parents[1]
TRANSCENDENTAL = {"softmax", "log_softmax", "exp", "log", "sigmoid", "tanh", "erf", "gelu", "sqrt",
                  "sin", "cos", "pow", "reciprocal", "layer_norm", "hard_swish"}


# --- helpers -----------------------------------------------------------------------------

def _run_compiled(g: Graph, feeds, preset="host", strategy=None):
    ex = compile_graph(g, preset, strategy=strategy)
    return runner_from_executable(ex, g).run(feeds)


def assert_bit_equal(got: dict, ref: dict, float_atol: dict = None):
    """Every output identical (dtype, shape, bits); `float_atol` names outputs allowed
    an absolute tolerance (transcendental float ops)."""
    float_atol = float_atol or {}
    assert set(got) == set(ref), (sorted(got), sorted(ref))
    for k, r in ref.items():
        o = got[k]
        assert o.dtype == r.dtype and o.shape == r.shape, f"{k}: {o.dtype}{o.shape} vs {r.dtype}{r.shape}"
        if k in float_atol:
            np.testing.assert_allclose(o, r, rtol=0, atol=float_atol[k], err_msg=k)
            continue
        same = (o == r) | (np.isnan(o) & np.isnan(r)) if r.dtype.kind == "f" else (o == r)
        bad = np.flatnonzero(~same)
        assert bad.size == 0, (f"{k}: {bad.size}/{r.size} elements differ, first at {bad[:5]}: "
                               f"got {o.ravel()[bad[:5]]}, reference {r.ravel()[bad[:5]]}")


def check_int_graph(g: Graph, feeds: dict, preset="host", strategy=None):
    ref = interp_run(g, feeds)
    got = _run_compiled(g, feeds, preset, strategy)
    assert_bit_equal(got, ref)
    return got, ref


def int_feed(rng, shape, dtype):
    info = {"u8": (0, 255), "i8": (-128, 127), "i16": (-1000, 1000), "u4": (0, 15), "i4": (-8, 7)}[dtype]
    from qcc.ir.types import to_numpy_dtype

    return rng.integers(info[0], info[1] + 1, size=shape).astype(to_numpy_dtype(dtype))


def with_every_value_as_output(g: Graph) -> Graph:
    """The graph with each node output also a graph output (intermediates compared too)."""
    outs = list(g.outputs)
    seen = {id(v) for v in outs}
    for n in g.nodes:
        for v in n.outputs:
            if id(v) not in seen:
                outs.append(v)
                seen.add(id(v))
    g.set_outputs(outs)
    return g


# Float ops whose result the back end does not reproduce bit for bit: transcendental
# functions, and float reductions (TVM accumulates in another order, with FMAs).
# global_avg_pool is not here: it sums in float64, exactly, as the reference does.
INEXACT_FLOAT_OPS = TRANSCENDENTAL | {"conv", "conv_transpose", "matmul", "gemm", "reduce_sum", "reduce_mean",
                                      "reduce_prod", "avg_pool", "batch_norm", "resize"}


def inexact_values(g: Graph) -> set:
    """Names of the values computed (transitively) from an inexact float op: everything
    else in a quantized graph must match the interpreter bit for bit."""
    bad = set()
    for n in g.nodes:
        float_inexact = n.op in INEXACT_FLOAT_OPS and any(o.dtype in ("f32", "f16", "f64") for o in n.outputs)
        if float_inexact or any(v is not None and v.name in bad for v in n.inputs):
            bad |= {o.name for o in n.outputs}
    return bad


def requant_params(rng, n, acc_std, spread=False):
    """Per-channel (multiplier, shift): multipliers across [2^30, 2^31); shifts that map
    the accumulator's spread to ~40 output steps, or (spread=True) every shift from -20
    to +10 plus the clipped extremes (t = 31 - shift outside [1, 62])."""
    m = rng.integers(1 << 30, 1 << 31, size=n)
    m[0], m[-1] = 1 << 30, (1 << 31) - 1
    if spread:
        shifts = np.resize(np.array([-20, -15, -12, -9, -7, -5, -3, -1, 0, 1, 3, 5, 10, -40, 31, 40]), n)
        rng.shuffle(shifts)
    else:
        base = int(np.ceil(np.log2(40.0 / max(acc_std, 1.0))))
        shifts = base + rng.integers(-1, 2, size=n)
    return [int(v) for v in m], [int(s) for s in shifts]


# --- qconv -> requantize ----------------------------------------------------------------------

QCONV_CASES = {
    # name: (x dtype, x shape, w shape, strides, pads, dilations, group, bias, x_zero_point, w dtype)
    "regular_u8": ("u8", (2, 4, 9, 10), (6, 4, 3, 3), [1, 1], [1, 1, 1, 1], [1, 1], 1, True, 128, "i8"),
    "regular_i8": ("i8", (1, 5, 8, 8), (7, 5, 3, 3), [1, 1], [1, 1, 1, 1], [1, 1], 1, True, -5, "i8"),
    "depthwise": ("u8", (1, 8, 10, 11), (8, 1, 3, 3), [1, 1], [1, 1, 1, 1], [1, 1], 8, True, 3, "i8"),
    "depthwise_strided": ("u8", (1, 6, 11, 9), (6, 1, 5, 5), [2, 2], [2, 2, 2, 2], [1, 1], 6, False, 200, "i8"),
    "strided_asym_pad": ("i8", (1, 4, 12, 9), (5, 4, 3, 2), [2, 3], [1, 0, 2, 1], [1, 1], 1, True, 17, "i8"),
    "dilated_grouped": ("u8", (1, 6, 13, 12), (4, 3, 3, 2), [1, 1], [2, 3, 2, 3], [2, 3], 2, False, 77, "i8"),
    "pointwise_zp0": ("u8", (1, 16, 7, 7), (12, 16, 1, 1), [1, 1], [0, 0, 0, 0], [1, 1], 1, False, 0, "i8"),
    "i8_zp0_nobias": ("i8", (2, 3, 6, 6), (4, 3, 3, 3), [1, 1], [0, 1, 1, 0], [1, 1], 1, False, 0, "i8"),
    "i16_input": ("i16", (1, 3, 6, 7), (4, 3, 3, 3), [1, 1], [1, 1, 1, 1], [1, 1], 1, True, -300, "i8"),
    "sub_byte": ("u4", (1, 4, 6, 6), (3, 4, 3, 3), [1, 1], [1, 1, 1, 1], [1, 1], 1, True, 8, "i4"),
    "conv1d": ("u8", (2, 3, 17), (5, 3, 4), [3], [2, 1], [2], 1, True, 99, "i8"),
}


def g_qconv(name, seed=0):
    xdt, xshape, wshape, strides, pads, dil, group, bias, zx, wdt = QCONV_CASES[name]
    rng = np.random.default_rng(seed)
    g = Graph(f"qconv_{name}")
    x = g.add_input("x", TensorType(xshape, xdt))
    wlo, whi = (-8, 7) if wdt == "i4" else (-127, 127)
    wv = rng.integers(wlo, whi + 1, size=wshape).astype(np.int8)
    w = g.add_const("w", wv, dtype=wdt)
    oc = wshape[0]
    bv = rng.integers(-3000, 3000, size=oc).astype(np.int32) if bias else None
    ins = [x, w, g.add_const("b", bv)] if bias else [x, w]
    attrs = {"strides": strides, "pads": pads, "dilations": dil, "group": group, "x_zero_point": zx}
    acc = g.add_node("qconv", ins, attrs, names=["acc"]).output
    # the accumulator's spread on this graph's feeds, to pick useful shifts
    feeds = {"x": int_feed(np.random.default_rng(seed + 100), xshape, xdt)}
    a = ref_qconv(feeds["x"], wv, bv, **attrs)
    m1, s1 = requant_params(rng, oc, float(a.std()))
    m2, s2 = requant_params(rng, oc, float(a.std()), spread=True)
    outs = [acc]
    outs.append(g.add_node("requantize", [acc], {"multiplier": m1, "shift": s1, "axis": 1, "zero_point": 10,
                                                  "dtype": "u8", "clamp": [10, 255]}, names=["rq_relu"]).output)
    outs.append(g.add_node("requantize", [acc], {"multiplier": m2, "shift": s2, "axis": 1, "zero_point": -3,
                                                  "dtype": "i8"}, names=["rq_spread"]).output)
    outs.append(g.add_node("requantize", [acc], {"multiplier": m1[:1], "shift": s1[:1], "axis": -1,
                                                  "zero_point": 5, "dtype": "i8", "clamp": [-20, 100]},
                           names=["rq_tensor"]).output)
    g.set_outputs(outs)
    return g, feeds


@pytest.mark.parametrize("name", sorted(QCONV_CASES))
def test_qconv_requantize_bit_exact(name):
    g, feeds = g_qconv(name)
    got, ref = check_int_graph(g, feeds)
    rq = ref["rq_relu"]
    # the test is meaningful: outputs are spread over the range, not all clamped
    assert len(np.unique(rq)) > 10, np.unique(rq)


def test_qconv_second_input_draw():
    for seed in (1, 2):
        g, _ = g_qconv("regular_u8", seed)
        feeds = {"x": int_feed(np.random.default_rng(seed + 7), (2, 4, 9, 10), "u8")}
        feeds["x"][0, 0] = 0
        feeds["x"][1, 1] = 255
        check_int_graph(g, feeds)


def test_qconv_layout_hook_nhwc():
    """qconv goes through strategy.conv_layout like the float conv: NHWC/OHWI is exact too."""

    class NHWC(LoweringStrategy):
        def conv_layout(self, node):
            return ("NWC", "OWI") if len(node.inputs[0].shape) == 3 else ("NHWC", "OHWI")

    for name in ("regular_u8", "depthwise", "dilated_grouped", "conv1d"):
        g, feeds = g_qconv(name)
        text = lower_graph(g, NHWC()).script(show_meta=False)
        assert 'data_layout="NHWC"' in text or 'data_layout="NWC"' in text
        check_int_graph(g, feeds, strategy=NHWC())


# --- requantize on its own: rounding ties, input zero point, every shift ---------------------

def test_requantize_ties_and_extremes():
    g = Graph("rq")
    x = g.add_input("x", TensorType((4, 64), "i32"))
    # M = 2^30, shift 0: real multiplier 1/2, y = (x + 1) >> 1: a tie at every odd x
    # (rounds half up, towards +inf, also for negatives)
    half = g.add_node("requantize", [x], {"multiplier": [1 << 30], "shift": [0], "dtype": "i16"},
                      names=["half"]).output
    quarter = g.add_node("requantize", [x], {"multiplier": [1 << 30], "shift": [-1], "dtype": "i32",
                                             "input_zero_point": 3, "zero_point": -2}, names=["quarter"]).output
    big = g.add_node("requantize", [x], {"multiplier": [(1 << 31) - 1], "shift": [10], "dtype": "i16"},
                     names=["big"]).output
    tiny = g.add_node("requantize", [x], {"multiplier": [(1 << 31) - 1], "shift": [-40], "dtype": "i8"},
                      names=["tiny"]).output
    per_row = g.add_node("requantize", [x], {"multiplier": [1 << 30, 1518500250, 2147483647, 1234567890],
                                             "shift": [-3, 31, -20, 5], "axis": 0, "zero_point": 100,
                                             "dtype": "u8", "input_zero_point": -7}, names=["per_row"]).output
    # per row, no input zero point, t from 31 (shift 0) to 62, clamped, multipliers up to 2^31 - 1
    per_row_32 = g.add_node("requantize", [x], {"multiplier": [1 << 30, 1518500250, 2147483647, 1],
                                                "shift": [0, -5, -31, -9], "axis": 0, "zero_point": -100,
                                                "dtype": "i8", "clamp": [-90, 127]}, names=["per_row_32"]).output
    # t >= 33 everywhere: the unsigned 32x32 -> 64 form (lower_quant._requantize_u32), with an
    # input zero point, multipliers 0 to 2^31 - 1 and t from 33 to 62; and into int32
    u32_row = g.add_node("requantize", [x], {"multiplier": [1 << 30, 2147483647, 1, 0], "shift": [-2, -31, -9, -40],
                                             "axis": 0, "zero_point": 100, "dtype": "u8",
                                             "input_zero_point": -7}, names=["u32_row"]).output
    u32_wide = g.add_node("requantize", [x], {"multiplier": [2147483647], "shift": [-2], "zero_point": -5,
                                              "dtype": "i32", "input_zero_point": 1 << 30}, names=["u32_wide"]).output
    g.set_outputs([half, quarter, big, tiny, per_row, per_row_32, u32_row, u32_wide])
    from qcc.targets.builder import lower_for

    lowered = lower_for(g).script()
    assert len(re.findall(r"cls\.requantize\d*,", lowered)) == 3, "tiny, u32_row and u32_wide take the unsigned form"
    # t < 33 into at most 16 bits: the clamped-window form (lower_quant._window_form): half,
    # big and per_row (t from 1 to 51); per_row_32 (M = 1 at t = 40: a window wider than
    # int32) and quarter (into int32) keep the int64 formula
    assert len(re.findall(r"cls\.requantize_window\d*,", lowered)) == 3, lowered
    xs = np.arange(-128, 128, dtype=np.int32).reshape(4, 64)
    xs[0, :4] = [2 ** 31 - 1, -2 ** 31, 2 ** 30, -2 ** 30 - 1]
    check_int_graph(g, {"x": xs})
    rng = np.random.default_rng(0)
    check_int_graph(g, {"x": rng.integers(-2 ** 31, 2 ** 31, size=(4, 64)).astype(np.int32)})
    # the compiled window form at its edges: x from xmin - 2 to xmin + 2 and from xmax - 2 to
    # xmax + 2 of half, big and (row by row) per_row, where its clamps take over
    from qcc.ops.quant import _clamp_bounds
    from qcc.targets.lower_quant import _window_form

    edges = np.zeros((4, 64), np.int64)
    for r in range(4):
        row = []
        for node in (half.producer, big.producer, per_row.producer):
            a = node.attrs
            k = r if len(a["multiplier"]) > 1 else 0
            t = int(np.clip(31 - a["shift"][k], 1, 62))
            lo, hi = _clamp_bounds(a["dtype"], a.get("clamp"))
            form = _window_form("int32", np.array([a["multiplier"][k]]), np.array([t]),
                                a.get("input_zero_point", 0), a.get("zero_point", 0), lo, hi)
            xmin, xmax = int(form[0][0]), int(form[1][0])
            row += [xmin + d for d in range(-2, 3)] + [xmax + d for d in range(-2, 3)]
        edges[r, :len(row)] = row
    check_int_graph(g, {"x": np.clip(edges, -2 ** 31, 2 ** 31 - 1).astype(np.int32)})


def test_requantize_window_form_matches_the_reference_at_its_edges():
    """lower_quant._window_form's arithmetic (clamp x to [xmin, xmax], one unsigned 64-bit
    product, a logical shift), replayed in numpy for 3000 random requantizes -- multipliers
    from 1 to 2^32, t from 1 to 40, input and output zero points, 8- and 16-bit outputs,
    clamps -- equals the reference on every x at and around both window edges, on random x
    inside it and on int32's extremes; where it declines, the int64 formula runs."""
    from qcc.ops.quant import _clamp_bounds, requantize
    from qcc.targets.lower_quant import _window_form

    rng = np.random.default_rng(11)
    taken = 0
    for _ in range(3000):
        dtype = str(rng.choice(["i16", "i8", "u8"]))
        m = int(rng.integers(1 << 29, 1 << 31)) if rng.random() < 0.7 else int(rng.integers(1, 1 << 32))
        shift = int(rng.integers(-9, 31))
        izp = int(rng.integers(-300, 300)) if rng.random() < 0.5 else 0
        zp = int(rng.integers(-20, 20))
        clamp = [int(rng.integers(-10, 5)), int(rng.integers(20, 200))] if rng.random() < 0.3 else None
        lo, hi = _clamp_bounds(dtype, clamp)
        t = int(np.clip(31 - shift, 1, 62))
        form = _window_form("int32", np.array([m]), np.array([t]), izp, zp, lo, hi)
        if form is None:
            continue
        taken += 1
        xmin, xmax, base, mm, rem, tt = (int(c[0]) for c in form)
        xs = np.concatenate([np.arange(xmin - 3, xmin + 4), np.arange(xmax - 3, xmax + 4),
                             rng.integers(xmin, xmax + 1, 64), [-(1 << 31), (1 << 31) - 1, izp, 0]])
        xs = np.clip(xs, -(1 << 31), (1 << 31) - 1).astype(np.int32)
        u = (np.clip(xs.astype(np.int64), xmin, xmax) - xmin).astype(np.uint64)
        q = ((u * np.uint64(mm) + np.uint64(rem)) >> np.uint64(tt)).astype(np.int64) + base
        got = np.clip(q, lo, hi)
        want = requantize(xs, multiplier=[m], shift=[shift], axis=-1, input_zero_point=izp, zero_point=zp,
                          dtype=dtype, clamp=clamp).astype(np.int64)
        assert np.array_equal(got, want), (m, shift, izp, zp, dtype, clamp)
    assert taken > 2000  # the form covers the normal cases, not a handful


# --- qmatmul -> requantize ----------------------------------------------------------------------

def g_qmatmul():
    rng = np.random.default_rng(3)
    g = Graph("qmm")
    outs = []
    # 2-D with constant i8 weights, bias, per-channel requantize
    a = g.add_input("a", TensorType((5, 16), "u8"))
    wv = rng.integers(-127, 128, size=(16, 7)).astype(np.int8)
    bv = rng.integers(-5000, 5000, size=7).astype(np.int32)
    acc = g.add_node("qmatmul", [a, g.add_const("w", wv), g.add_const("b", bv)], {"a_zero_point": 128},
                     names=["mm2d"]).output
    std = float(ref_qmatmul(int_feed(rng, (5, 16), "u8"), wv, bv, a_zero_point=128, b_zero_point=0).std())
    m, s = requant_params(rng, 7, std)
    outs += [acc, g.add_node("requantize", [acc], {"multiplier": m, "shift": s, "axis": 1, "zero_point": 120,
                                                   "dtype": "u8"}, names=["mm2d_rq"]).output]
    m, s = requant_params(rng, 7, std, spread=True)
    outs.append(g.add_node("requantize", [acc], {"multiplier": m, "shift": s, "axis": 1, "dtype": "i8",
                                                 "clamp": [-100, 90]}, names=["mm2d_spread"]).output)
    # batched 3-D, both operands activations with zero points
    a3 = g.add_input("a3", TensorType((2, 5, 16), "i8"))
    b3 = g.add_input("b3", TensorType((2, 16, 6), "u8"))
    acc3 = g.add_node("qmatmul", [a3, b3], {"a_zero_point": -3, "b_zero_point": 120}, names=["mm3d"]).output
    outs += [acc3, g.add_node("requantize", [acc3], {"multiplier": [1518500250], "shift": [-9],
                                                     "input_zero_point": 11, "zero_point": -1,
                                                     "dtype": "i8"}, names=["mm3d_rq"]).output]
    # 3-D activations times 2-D constant weights (broadcast batch), u8 weights with a zero point
    a4 = g.add_input("a4", TensorType((3, 4, 16), "u8"))
    w4 = rng.integers(0, 256, size=(16, 8)).astype(np.uint8)
    acc4 = g.add_node("qmatmul", [a4, g.add_const("w4", w4), g.add_const("b4", rng.integers(-99, 99, 8).astype(np.int32))],
                      {"a_zero_point": 0, "b_zero_point": 131}, names=["mm_bcast"]).output
    outs += [acc4, g.add_node("requantize", [acc4], {"multiplier": [1 << 30] * 8, "shift": list(range(-12, -4)),
                                                     "axis": 2, "dtype": "u8", "zero_point": 128},
                              names=["mm_bcast_rq"]).output]
    # a vector times a matrix
    v = g.add_input("v", TensorType((16,), "i8"))
    outs.append(g.add_node("qmatmul", [v, g.add_const("w5", wv)], {"a_zero_point": 0}, names=["mm_vec"]).output)
    g.set_outputs(outs)
    return g


def test_qmatmul_requantize_bit_exact():
    g = g_qmatmul()
    rng = np.random.default_rng(11)
    feeds = {v.name: int_feed(rng, v.shape, v.dtype) for v in g.inputs}
    got, ref = check_int_graph(g, feeds)
    assert len(np.unique(ref["mm2d_rq"])) > 5


# --- quantize / dequantize --------------------------------------------------------------------

def g_quant_dequant():
    g = Graph("qdq")
    x = g.add_input("x", TensorType((4, 300), "f32"))
    outs = []

    def q(name, scale, zp, dtype, axis=-1, src=x):
        return g.add_node("quantize", [src], {"scale": scale, "zero_point": zp, "dtype": dtype, "axis": axis},
                          names=[name]).output

    def dq(name, src, scale, zp, axis=-1):
        return g.add_node("dequantize", [src], {"scale": scale, "zero_point": zp, "axis": axis},
                          names=[name]).output

    # per tensor, power-of-two scales: x / s is exact, so the .5 ties reach the rounding
    for dt, zp in (("u8", 128), ("i8", -3), ("i16", 1000), ("u4", 8), ("i4", 0)):
        qv = q(f"q_{dt}", [0.5], [zp], dt)
        outs += [qv, dq(f"dq_{dt}", qv, [0.5], [zp])]
    # an arbitrary scale
    qv = q("q_odd", [0.0371], [-7], "i8")
    outs += [qv, dq("dq_odd", qv, [0.0371], [-7])]
    # int32 (a bias): the int64 saturation path
    qv = q("q_i32", [2.0 ** -20], [5], "i32")
    outs += [qv, dq("dq_i32", qv, [2.0 ** -20], [5])]
    # per axis (axis 0: one scale and zero point per row)
    sc, zps = [0.25, 0.5, 1.0, 2.0], [0, 3, -7, 100]
    qv = q("q_axis", sc, zps, "i8", axis=0)
    outs += [qv, dq("dq_axis", qv, sc, zps, axis=0)]
    sc2 = [0.013, 0.07, 0.5, 3.0]
    qv = q("q_axis_u8", sc2, [0, 128, 255, 17], "u8", axis=0)
    outs += [qv, dq("dq_axis_u8", qv, sc2, [0, 128, 255, 17], axis=0)]
    # per-axis dequantize of an int32 tensor (the last axis, broadcast shape (300,))
    xi = g.add_input("xi", TensorType((4, 300), "i32"))
    sc3 = list(np.linspace(1e-5, 1e-2, 300))
    outs.append(dq("dq_i32_lastaxis", xi, sc3, list(range(-150, 150)), axis=1))
    # observe is an identity
    outs.append(g.add_node("observe", [x], {"method": "minmax"}, names=["obs"]).output)
    g.set_outputs(outs)
    return g


def _qdq_feeds():
    rng = np.random.default_rng(5)
    # ties: (k + 0.5) * s for s = 0.5, 0.25, 1, 2 (row i of the per-axis case)
    k = np.arange(-150, 150, dtype=np.float32)
    x = np.stack([(k + np.float32(0.5)) * np.float32(s) for s in (0.5, 0.25, 1.0, 2.0)]).astype(np.float32)
    x[1, :40] = rng.standard_normal(40).astype(np.float32) * 30
    # out of range and non-finite values saturate (NaN quantizes to the zero point)
    x[2, :12] = [1e6, -1e6, np.inf, -np.inf, np.nan, 3e38, -3e38, -0.0, 1e-30, 4e9, -4e9, 2147.5]
    x[3, -3:] = [np.nan, np.inf, -np.inf]
    xi = rng.integers(-2 ** 31, 2 ** 31, size=(4, 300)).astype(np.int32)
    xi[0, :4] = [0, -1, 2 ** 31 - 1, -2 ** 31]
    return {"x": x, "xi": xi}


def test_quantize_dequantize_bit_exact():
    g = g_quant_dequant()
    feeds = _qdq_feeds()
    got, ref = check_int_graph(g, feeds)
    # ties really were exercised and went to even
    k = np.arange(-10, 10)
    assert np.array_equal(ref["q_u8"][0, 140:160].astype(int) - 128, np.rint(k + 0.5).astype(int))
    assert (ref["q_u8"][0, 140:160].astype(int) % 2 == 0).all()
    # saturation (the reference clips x / s to the int32 range before adding the zero point)
    assert ref["q_i32"].max() == 2 ** 31 - 1 and ref["q_i32"].min() == -2 ** 31 + 5
    assert ref["q_u8"].max() == 255 and ref["q_u8"].min() == 0


def test_quantize_ties_random_scales():
    """x = (k + 0.5) * s for random float32 scales: some divisions land exactly on .5."""
    rng = np.random.default_rng(9)
    g = Graph("ties")
    x = g.add_input("x", TensorType((8, 512), "f32"))
    outs = []
    for i, s in enumerate(rng.uniform(0.001, 0.2, 6).astype(np.float32)):
        outs.append(g.add_node("quantize", [x], {"scale": [float(s)], "zero_point": [int(rng.integers(0, 256))],
                                                 "dtype": "u8", "axis": -1}, names=[f"q{i}"]).output)
    g.set_outputs(outs)
    k = rng.integers(-128, 128, size=(8, 512)).astype(np.float32) + np.float32(0.5)
    for s in (0.003, 0.05):
        check_int_graph(g, {"x": (k * np.float32(s)).astype(np.float32)})


def test_quantize_small_shapes_nan_inf():
    """Tiny tensors are fully unrolled by LLVM (no loop): the NaN/inf handling must
    survive constant folding there too (TVM compiles with no-NaNs FP options)."""
    g = Graph("qsmall")
    x = g.add_input("x", TensorType((1, 8, 1, 1), "f32"))
    outs = [g.add_node("quantize", [x], {"scale": [0.5], "zero_point": [zp], "dtype": dt}, names=[f"q_{dt}"]).output
            for dt, zp in (("u8", 128), ("i8", -3), ("i32", 7))]
    g.set_outputs(outs)
    xs = np.array([np.nan, np.inf, -np.inf, 1.25, -1.25, 0.25, 1e10, -0.0], np.float32).reshape(1, 8, 1, 1)
    _, ref = check_int_graph(g, {"x": xs})
    # NaN -> the zero point; +-inf saturate like any out-of-range value (ONNX QuantizeLinear)
    assert ref["q_u8"].ravel()[:3].tolist() == [128, 255, 0]
    assert ref["q_i8"].ravel()[:3].tolist() == [-3, 127, -128]
    # (i32: x / s is clipped to the int32 range before the zero point is added, as 1e10 is)
    assert ref["q_i32"].ravel()[:3].tolist() == [7, 2 ** 31 - 1, -2 ** 31 + 7]


# --- FMA contraction: float math between integer segments is exact ---------------------------

_FMA = r"\bvfn?m(add|sub)\w*|\bfn?m(add|sub)\b|\bfml[as]\b"


def g_float_epilogues(shape):
    """Dequantized values through float elementwise ops that LLVM would fuse into FMAs:
    a residual add of two dequantized tensors, hard_sigmoid (x * a + b), hard_swish,
    a scaled add, then quantize (where a last-bit difference flips an integer)."""
    g = Graph("fma")
    a = g.add_input("a", TensorType(shape, "u8"))
    b = g.add_input("b", TensorType(shape, "u8"))
    da = g.add_node("dequantize", [a], {"scale": [0.0123456], "zero_point": [3]}).output
    db = g.add_node("dequantize", [b], {"scale": [0.0311], "zero_point": [100]}).output
    s = g.add_node("add", [da, db], names=["res"]).output
    hs = g.add_node("hard_sigmoid", [s], {"alpha": 0.2, "beta": 0.5}, names=["hsig"]).output
    hw = g.add_node("hard_swish", [db], names=["hswish"]).output
    m = g.add_node("mul", [hs, da], names=["se"]).output
    t = g.add_node("sub", [g.add_node("mul", [m, g.add_const("k", np.array(1.7, np.float32))]).output, hw],
                   names=["scaled"]).output
    outs = [s, hs, hw, m, t]
    outs += [g.add_node("quantize", [v], {"scale": [0.0137], "zero_point": [128], "dtype": "u8"},
                        names=[f"{v.name}.q"]).output for v in (s, hs, t)]
    g.set_outputs(outs)
    return g


@pytest.mark.parametrize("shape", [(1, 8, 1, 1), (1, 16, 4, 4), (1, 32, 24, 24)])
def test_float_epilogues_have_no_fma(shape):
    import re

    g = g_float_epilogues(shape)
    rng = np.random.default_rng(4)
    for _ in range(3):
        check_int_graph(g, {v.name: int_feed(rng, shape, "u8") for v in g.inputs})
    for preset in ("host", "arm-a76"):
        # quantize's quotient has FMAs by design (lower_quant._quotient): leave it out, so
        # any FMA left is a contraction
        from qcc.targets import get_target, strategy_for

        strategy = strategy_for(get_target(preset))
        strategy.fma_quotient = False
        asm = llvm_source(compile_graph(g, preset, strategy=strategy), "asm")
        assert not re.findall(_FMA, asm), f"{preset}: FMA in the elementwise kernels"


def g_quantize_only(shape, scale, dt="u8", zp=7):
    g = Graph("quotient")
    x = g.add_input("x", TensorType(shape, "f32"))
    g.set_outputs([g.add_node("quantize", [x], {"scale": scale, "zero_point": [zp] * len(scale),
                                                "axis": 1 if len(scale) > 1 else -1, "dtype": dt}).output])
    return g


@pytest.mark.parametrize("scale,dt", [([0.0123456], "u8"), ([3.1e-5, 0.7, 1.0, 1e-30], "i8"),
                                      ([0.013], "i32"), ([1e-30], "i16")])
def test_quantize_quotient_is_the_division(scale, dt):
    """Quantize divides by its scale as x * (1/s) corrected by two FMAs (Markstein), which
    must be the IEEE quotient bit for bit: near-ties of the rounding (k + 1/2) * s, values
    whose quotient overflows (a 1e-30 scale), +-inf, NaN and subnormals included."""
    import re

    shape = (2, len(scale), 64, 33)
    g = g_quantize_only(shape, scale, dt)
    rng = np.random.default_rng(5)
    s = np.asarray(scale, np.float32).reshape(1, -1, 1, 1)
    x = (rng.standard_normal(shape) * np.exp(rng.uniform(-12, 12, shape))).astype(np.float32)
    x[0, :, :8] = ((rng.integers(-300, 300, (len(scale), 8, 33)) + 0.5) * s[0]).astype(np.float32)
    x[0, :, 8, :4] = np.nextafter(x[0, :, 0, :4], np.float32(np.inf))
    x[1, :, 0, :5] = [np.inf, -np.inf, np.nan, 1e-40, 3e38]
    ex = compile_graph(g, "host")
    asm = llvm_source(ex, "asm")
    assert "vdivps" not in asm and re.findall(_FMA, asm), "the quotient should be FMAs, not a division"
    ref = interp_run(g, {"x": x})
    assert_bit_equal(runner_from_executable(ex, g).run({"x": x}), ref)


def test_quantize_quotient_at_the_int32_limit():
    """Where x * (1/s) rounds up to 2^31 but x / s does not (1 ulp below it), int32 quantize
    gives 2^31 - 128, not a saturated 2^31 - 1: the overflow guard clamps x * (1/s) rather
    than keeping it, so the correction still runs there."""
    s = np.float32(1.9358152151107788)
    r = np.float32(1) / s
    x = [np.nextafter(np.float32(2 ** 31) * s, np.float32(0))]
    for _ in range(40):
        x.append(np.nextafter(x[-1], np.float32(0)))
    x = np.array(x, np.float32)
    tricky = (x * r >= 2 ** 31) & (x / s < 2 ** 31)
    assert tricky.any()  # the case this test is for
    x = np.concatenate([x, -x, [3e38, -3e38, np.inf, -np.inf]]).astype(np.float32).reshape(1, 1, 1, -1)
    g = g_quantize_only(x.shape, [float(s)], "i32", zp=0)
    ref = interp_run(g, {"x": x})
    assert (ref[g.outputs[0].name].ravel()[:41][tricky] == 2 ** 31 - 128).all()
    assert_bit_equal(_run_compiled(g, {"x": x}), ref)


def test_products_before_a_quantize_are_fenced_behind_a_softmax_output():
    """A model whose only output follows a softmax (PP-OCR cls) still needs its float
    products fenced where they reach a quantize: an FMA's last bit can change an integer,
    and that difference reaches the output in full (5e-4 on cls, not a last bit)."""
    shape = (1, 8, 4, 4)
    g = Graph("fma_softmax")
    a = g.add_input("a", TensorType(shape, "u8"))
    b = g.add_input("b", TensorType(shape, "u8"))
    da = g.add_node("dequantize", [a], {"scale": [0.0123456], "zero_point": [3]}).output
    db = g.add_node("dequantize", [b], {"scale": [0.0311], "zero_point": [100]}).output
    hs = g.add_node("hard_sigmoid", [g.add_node("add", [da, db]).output], {"alpha": 0.2, "beta": 0.5}).output
    q = g.add_node("quantize", [hs], {"scale": [0.0037], "zero_point": [0], "dtype": "u8"}, names=["hs.q"]).output
    d = g.add_node("dequantize", [q], {"scale": [0.0037], "zero_point": [0]}).output
    g.set_outputs([g.add_node("softmax", [d], {"axis": 1}).output])
    for preset in ("host", "arm-a76"):
        ll = llvm_source(compile_graph(g, preset), "ll")  # (the softmax's exp has FMAs of its own)
        assert "llvm.arithmetic.fence" in ll, f"{preset}: hard_sigmoid's x * alpha not fenced"
    rng = np.random.default_rng(1)
    feeds = {v.name: int_feed(rng, shape, "u8") for v in g.inputs}
    ref = interp_run(g, feeds)
    assert_bit_equal(_run_compiled(g, feeds), ref, {k: 1e-6 for k in ref})


def test_fma_fence_is_needed():
    """Without ExactFloatMultiply LLVM does fuse these (the test above is not vacuous)."""
    import re

    from qcc.targets import get_target, strategy_for

    g = g_float_epilogues((1, 8, 1, 1))
    for preset in ("host", "arm-a76"):
        strategy = strategy_for(get_target(preset))
        strategy.exact_float_multiply = False
        ex = compile_graph(g, preset, strategy=strategy)
        asm = llvm_source(ex, "asm")
        if preset == "host" and "fma" not in get_target("host").capabilities:
            continue  # a host without FMA has nothing to fuse
        assert re.findall(_FMA, asm), preset


# --- range-preserving ops on integer tensors -------------------------------------------------

def g_int_data_movement(dt="u8"):
    g = Graph(f"move_{dt}")
    x = g.add_input("x", TensorType((1, 4, 9, 8), dt))
    y = g.add_input("y", TensorType((1, 2, 9, 8), dt))
    P = "kernel_shape strides pads ceil_mode dilations".split()

    def mp(k, s, p, c, d=(1, 1)):
        return g.add_node("max_pool", [x], dict(zip(P, (list(k), list(s), list(p), c, list(d))))).output

    zp = 128.0 if dt == "u8" else -3.0
    outs = [
        mp((3, 3), (2, 2), (1, 1, 1, 1), 0),
        mp((3, 3), (2, 2), (0, 0, 1, 1), 1),
        mp((2, 3), (1, 2), (1, 0, 0, 1), 0, (2, 1)),
        mp((9, 9), (1, 1), (4, 4, 4, 4), 0),  # separable (lower_nn._separable_max_pool)
        mp((5, 6), (2, 3), (1, 2, 2, 0), 0),
        g.add_node("concat", [x, y, x], {"axis": 1}).output,
        g.add_node("pad", [x], {"pads": [0, 0, 1, 2, 0, 0, 3, 1], "mode": "constant", "value": zp}).output,
        g.add_node("pad", [x], {"pads": [0, 1, 0, 2, 0, 0, 1, -1], "mode": "constant", "value": 0.0}).output,
        g.add_node("pad", [x], {"pads": [0, 0, 2, 1, 0, 0, 1, 2], "mode": "edge", "value": 0.0}).output,
        g.add_node("reshape", [x], {"shape": [4, 72]}).output,
        g.add_node("transpose", [x], {"perm": [0, 2, 3, 1]}).output,
        g.add_node("slice", [x], {"starts": [1, 7], "ends": [4, 0], "axes": [1, 3], "steps": [2, -3]}).output,
        g.add_node("resize", [x], {"sizes": [1, 4, 18, 12], "mode": "nearest",
                                   "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor",
                                   "cubic_coeff_a": -0.75}).output,
        g.add_node("flatten", [x], {"axis": 1}).output,
        g.add_node("squeeze", [x], {"axes": [0]}).output,
        g.add_node("unsqueeze", [x], {"axes": [2]}).output,
        g.add_node("gather", [x, g.add_const("idx", np.array([3, 0, -1], np.int64))], {"axis": 1}).output,
        g.add_node("global_max_pool", [x]).output,
        g.add_node("depth_to_space", [x], {"blocksize": 2, "mode": "DCR"}).output,
        g.add_node("depth_to_space", [x], {"blocksize": 2, "mode": "CRD"}).output,
        g.add_node("expand", [y], {"shape": [3, 2, 9, 8]}).output,
        g.add_node("tile", [y], {"repeats": [1, 2, 1, 3]}).output,
    ]
    outs += g.add_node("split", [x], {"axis": 1, "split": [1, 3]}).outputs
    g.set_outputs(outs)
    return g


@pytest.mark.parametrize("dt", ["u8", "i8"])
def test_data_movement_on_integers(dt):
    g = g_int_data_movement(dt)
    rng = np.random.default_rng(2)
    feeds = {v.name: int_feed(rng, v.shape, dt) for v in g.inputs}
    check_int_graph(g, feeds)
    # max_pool's padding never wins: an all-minimum-ish input (i8: all negative)
    lo = 0 if dt == "u8" else -128
    feeds = {v.name: np.full(v.shape, lo + 1, feeds[v.name].dtype) for v in g.inputs}
    feeds["x"][0, 0, 0, 0] = lo
    check_int_graph(g, feeds)


def test_requantize_after_max_pool_and_concat():
    """The fold-requantize shape: u8 -> max_pool / concat -> requantize (rescale) -> dequantize."""
    g = Graph("mpq")
    x = g.add_input("x", TensorType((1, 3, 8, 8), "u8"))
    p = g.add_node("max_pool", [x], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                     "ceil_mode": 0, "dilations": [1, 1]}).output
    c = g.add_node("concat", [p, p], {"axis": 1}).output
    r = g.add_node("requantize", [c], {"multiplier": [1717986918], "shift": [1], "input_zero_point": 120,
                                       "zero_point": 128, "dtype": "u8"}).output
    d = g.add_node("dequantize", [r], {"scale": [0.05], "zero_point": [128]}).output
    g.set_outputs([r, d])
    check_int_graph(g, {"x": int_feed(np.random.default_rng(0), (1, 3, 8, 8), "u8")})


# --- end to end: qcc.compile -O2 ---------------------------------------------------------------

def cut_at_inexact(g: Graph):
    """Every value an inexact float op produces becomes, for its consumers, a new graph
    input `cut.<name>` (fed the interpreter's value): then everything else the graph
    computes must match bit for bit. Returns (graph, {input name: value name})."""
    cuts = {}
    for n in list(g.nodes):
        if n.op in INEXACT_FLOAT_OPS and n.outputs[0].dtype in ("f32", "f16", "f64"):
            for v in n.outputs:
                if v.uses:
                    cut = g.add_input(g.unique_name(f"cut.{v.name}"), v.type)
                    v.replace_all_uses_with(cut)
                    cuts[cut.name] = v.name
    return g, cuts


def _check_artifact(out: Path, feeds_list, preset="host"):
    """qcc.load(out).run == qcc.interp on the artifact's final graph (values downstream
    of an inexact float op -- softmax, a float conv the pipeline left -- to 1e-5); then
    every intermediate value, with the graph cut at the inexact ops (their consumers
    fed the interpreter's values), bit for bit. Returns (graph, #values compared)."""
    import qcc

    mod = qcc.load(out)
    g = qcc.load_qir(out / "model.qir")
    loose = inexact_values(g)
    for feeds in feeds_list:
        ref = interp_run(g, feeds)
        got = mod.run(feeds)
        assert_bit_equal(got, ref, {k: 1e-5 for k in ref if k in loose})
    gall = with_every_value_as_output(qcc.load_qir(out / "model.qir"))
    inexact = {n.outputs[0].name for n in gall.nodes if n.op in INEXACT_FLOAT_OPS}
    full_ref = [interp_run(gall, feeds) for feeds in feeds_list]
    gcut, cuts = cut_at_inexact(gall)
    runner = runner_from_executable(compile_graph(gcut, preset), gcut)
    for feeds, full in zip(feeds_list, full_ref):
        feeds = dict(feeds, **{c: full[v] for c, v in cuts.items()})
        got, ref = runner.run(feeds), interp_run(gcut, feeds)
        assert_bit_equal({k: v for k, v in got.items() if k not in inexact},
                         {k: v for k, v in ref.items() if k not in inexact})
    return g, len(gcut.outputs) - len(inexact), len(cuts)


def test_tiny_cnn_o2_end_to_end(tmp_path):
    import qcc

    out = tmp_path / "tiny"
    t0 = time.perf_counter()
    qcc.compile(ROOT / "examples" / "tiny_cnn.onnx", out, opt_level="O2",
                calib=ROOT / "examples" / "tiny_cnn_calib.npz", input_shapes={"input": (1, 3, 32, 32)})
    print(f"tiny_cnn -O2 compile: {time.perf_counter() - t0:.1f} s")
    rng = np.random.default_rng(0)
    feeds_list = [{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    with np.load(ROOT / "examples" / "tiny_cnn_input.npz") as z:
        feeds_list.append({"input": z[z.files[0]].astype(np.float32).reshape(1, 3, 32, 32)})
    g, n_exact, n_cuts = _check_artifact(out, feeds_list)
    print(f"tiny_cnn: {n_exact} values bit-exact, {n_cuts} cuts at inexact float ops")
    assert n_cuts == 0 and n_exact >= len(g.nodes) - 1
    ops = {n.op for n in g.nodes}
    assert {"quantize", "qconv", "requantize", "qmatmul", "dequantize"} <= ops, ops


def _ppocr_image(shape, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 6, shape[2]), np.linspace(0, 9, shape[3]), indexing="ij")
    img = np.stack([np.sin(xx * rng.uniform(0.5, 2) + c + rng.uniform(0, 3)) *
                    np.cos(yy * (c + 1) * rng.uniform(0.5, 2)) for c in range(3)])
    return img.astype(np.float32)


@pytest.mark.slow
def test_ppocr_cls_o2_end_to_end(tmp_path, ppocr_cls_path):
    import qcc

    shape = (1, 3, 48, 192)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.stack([_ppocr_image(shape, s) for s in range(4)]))
    t0 = time.perf_counter()
    qcc.compile(ppocr_cls_path, tmp_path / "cls", opt_level="O2", calib=calib, input_shapes={"x": shape})
    print(f"PP-OCR cls -O2 compile: {time.perf_counter() - t0:.1f} s")
    feeds_list = [{"x": _ppocr_image(shape, 100 + s)[None]} for s in range(3)]
    g, n_exact, n_cuts = _check_artifact(tmp_path / "cls", feeds_list)
    float_left = sorted(n.outputs[0].name for n in g.nodes if n.op in INEXACT_FLOAT_OPS)
    print(f"PP-OCR cls: {n_exact} values bit-exact; graph cut at {n_cuts} inexact float ops left by -O2: "
          f"{float_left}")
    # fuse now recognises paddle2onnx's hard-swish (x*clip(x+3,0,6)/6: four values -> one), so
    # the graph has fewer values to compare: 185 measured (over 200 before)
    assert n_exact > 150
    assert sum(n.op == "qconv" for n in g.nodes) > 40


# --- CUDA ------------------------------------------------------------------------------------

def _cuda_sources(mod):
    from qcc.targets.cuda_emit import cuda_modules

    return [m.inspect_source() for m in cuda_modules(mod)]


def test_cuda_sm80_builds_integer_graph(tmp_path):
    from qcc.targets import build

    g, _ = g_qconv("regular_u8")
    x2 = g.add_input("f", TensorType((2, 6, 9, 10), "f32"))
    q = g.add_node("quantize", [x2], {"scale": [0.1], "zero_point": [128], "dtype": "u8", "axis": -1}).output
    dq = g.add_node("dequantize", [q], {"scale": [0.1], "zero_point": [128]}).output
    res = g.add_node("add", [dq, x2]).output  # a product feeding an add: must not become an FMA
    g.set_outputs(list(g.outputs) + [q, dq, res])
    ex = compile_graph(g, "cuda-sm80")
    src = "\n".join(_cuda_sources(ex.mod))
    assert "__global__" in src
    # operands are staged as 8-bit values (u8 activations, s8 weights)...
    assert "uchar* __restrict__ x_ptr" in src and "signed char" in src
    # ...quantize rounds half to even on the GPU too, and requantize shifts in int64
    assert "nearbyintf" in src and "roundf(" not in src
    assert "int64_t" in src and ">>" in src
    # the dequantize product nvcc must not contract into the add
    assert "__fmul_rn" in src
    print(f"cuda-sm80 integer conv: dp4a {'__dp4a' in src}, mma {'mma.sync' in src}, "
          f"int8 operands {'signed char' in src}")
    p = build(g, "cuda-sm80", tmp_path)
    assert p.stat().st_size > 0


def test_every_integer_op_is_tested():
    from qcc.targets import supported_ops

    graphs = [g_qconv(n)[0] for n in QCONV_CASES] + [g_qmatmul(), g_quant_dequant(), g_int_data_movement()]
    tested = {n.op for g in graphs for n in g.nodes}
    integer = {"quantize", "dequantize", "requantize", "qconv", "qmatmul", "observe"}
    assert integer <= set(supported_ops())
    assert integer <= tested, sorted(integer - tested)


def test_no_fence_where_the_output_is_inexact_anyway():
    """A product whose every consumer leads through an inexact op (erf, exp, ...) to the
    outputs is not fenced: the fence would buy no exactness and costs a scalar pass (GELU
    epilogue of a 56x56x96->384 int8 matmul: 2.57 -> 2.06 ms). Products that an exact
    output depends on keep theirs, also when other outputs are inexact."""
    from qcc.targets import lower_for
    from qcc.targets.exact_fp import ExactFloatMultiply

    g = Graph("fence")
    x = g.add_input("x", TensorType((1, 8, 4, 4), "i32"))

    def dq(name):
        return g.add_node("dequantize", [x], {"scale": [0.01], "zero_point": [0]}, names=[name]).output

    def plus_one(v, name):
        return g.add_node("add", [v, g.add_const(f"{name}_c", np.array(1.0, np.float32))], names=[name]).output

    gelu = g.add_node("gelu", [plus_one(dq("dq_gelu"), "a_gelu")], {"approximate": "none"}).output
    swish = g.add_node("hard_swish", [plus_one(dq("dq_swish"), "a_swish")]).output
    q = {"scale": [0.02], "zero_point": [0], "dtype": "i8", "axis": -1}
    g.set_outputs([g.add_node("quantize", [gelu], q).output, g.add_node("quantize", [swish], q).output])
    mod = ExactFloatMultiply(tvm.target.Target({"kind": "llvm"}))(lower_for(g, "host"))
    main = mod.script(show_meta=False).split("def main", 1)[1]
    assert 'dq_gelu: R.Tensor((1, 8, 4, 4), dtype="float32") = R.multiply(' in main
    assert "dq_swish = R.call_tir(cls.multiply" in main  # the fenced product
