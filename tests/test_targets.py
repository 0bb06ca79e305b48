"""qcc.targets: presets, Graph -> Relax lowering, build/export/load.

Every lowering is checked against the reference interpreter (qcc.interp) on
small graphs built with the Graph API. Compiled executables are cached per
printed graph for the session, so each graph compiles once.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import time

import numpy as np
import pytest

from qcc.interp import run as interp_run
from qcc.ir import Graph, TensorType

tvm = pytest.importorskip("tvm")

from qcc.targets import (LoweringError, build, compile_graph, get_target, list_targets,  # noqa: E402
                         llvm_source, load, lower_graph, runner_from_executable, supported_ops,
                         target_names)
from qcc.targets.presets import TargetPreset  # noqa: E402

RNG_SEED = 1234
COMPILE_TIMES: dict = {}


# --- helpers -----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _compiled(key: str, preset: str):
    g = _GRAPHS[key]
    t0 = time.perf_counter()
    ex = compile_graph(g, preset)
    COMPILE_TIMES[key] = time.perf_counter() - t0
    return ex


_GRAPHS: dict = {}


def compile_cached(g: Graph, preset: str = "host"):
    key = str(g)
    _GRAPHS.setdefault(key, g)
    return _compiled(key, preset)


def feeds_for(g: Graph, rng) -> dict:
    feeds = {}
    for v in g.inputs:
        dt = v.type.np_dtype
        if v.dtype == "bool":
            feeds[v.name] = rng.random(v.shape) > 0.5
        elif dt.kind in "iu":
            lo, hi = (-20, 20) if dt.kind == "i" else (0, 40)
            feeds[v.name] = rng.integers(lo, hi, size=v.shape).astype(dt)
        else:
            feeds[v.name] = rng.standard_normal(v.shape).astype(dt)
    return feeds


def assert_close(got: dict, ref: dict, rtol_range: float = 1e-4, atol: float = 0.0):
    assert set(got) == set(ref), (sorted(got), sorted(ref))
    for k in ref:
        r, o = np.asarray(ref[k]), np.asarray(got[k])
        assert o.shape == r.shape, f"{k}: shape {o.shape} vs reference {r.shape}"
        assert o.dtype == r.dtype, f"{k}: dtype {o.dtype} vs reference {r.dtype}"
        if r.dtype.kind in "iub":
            bad = np.flatnonzero(o != r)
            assert bad.size == 0, f"{k}: {bad.size} elements differ, first at {bad[:5]}: " \
                                  f"{o.ravel()[bad[:5]]} vs {r.ravel()[bad[:5]]}"
            continue
        rf, of = r.astype(np.float64), o.astype(np.float64)
        assert np.array_equal(np.isnan(rf), np.isnan(of)), f"{k}: NaNs differ"
        fin = np.isfinite(rf)
        assert np.array_equal(rf[~fin & ~np.isnan(rf)], of[~fin & ~np.isnan(rf)]), f"{k}: infs differ"
        if not fin.any():
            continue
        span = max(float(rf[fin].max() - rf[fin].min()), float(np.abs(rf[fin]).max()), 1e-6)
        err = float(np.abs(rf[fin] - of[fin]).max())
        assert err <= max(atol, rtol_range * span), \
            f"{k}: max abs err {err:.3g} > {rtol_range:g} * {span:.3g} (atol {atol:g})"


def check_graph(g: Graph, feeds=None, rtol_range: float = 1e-4):
    rng = np.random.default_rng(RNG_SEED)
    feeds = feeds if feeds is not None else feeds_for(g, rng)
    ref = interp_run(g, feeds)
    runner = runner_from_executable(compile_cached(g), g)
    got = runner.run(feeds)
    assert_close(got, ref, rtol_range)
    return got


def _w(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


# --- graph builders (one per op family) ----------------------------------------------------

def g_conv():
    rng = np.random.default_rng(1)
    g = Graph("conv")
    x = g.add_input("x", TensorType((2, 4, 9, 10), "f32"))
    outs = []
    # 3x3, stride 2, asymmetric pads, bias
    w = g.add_const("w", _w(rng, 6, 4, 3, 3))
    b = g.add_const("b", _w(rng, 6))
    outs.append(g.add_node("conv", [x, w, b], {"strides": [2, 1], "pads": [1, 0, 2, 1],
                                                "dilations": [1, 1], "group": 1}).output)
    # dilated, grouped, no bias
    w2 = g.add_const("w2", _w(rng, 4, 2, 3, 2))
    outs.append(g.add_node("conv", [x, w2], {"strides": [1, 1], "pads": [2, 1, 2, 1],
                                             "dilations": [2, 3], "group": 2}).output)
    # depthwise
    w3 = g.add_const("w3", _w(rng, 4, 1, 3, 3))
    outs.append(g.add_node("conv", [x, w3], {"strides": [1, 1], "pads": [1, 1, 1, 1],
                                             "dilations": [1, 1], "group": 4}).output)
    # weights as a graph input (not constant-folded)
    wi = g.add_input("wi", TensorType((3, 4, 1, 1), "f32"))
    outs.append(g.add_node("conv", [x, wi], {"strides": [1, 1], "pads": [0, 0, 0, 0],
                                             "dilations": [1, 1], "group": 1}).output)
    g.set_outputs(outs)
    return g


def g_conv_1d_3d():
    rng = np.random.default_rng(2)
    g = Graph("conv13")
    x1 = g.add_input("x1", TensorType((1, 3, 17), "f32"))
    w1 = g.add_const("w1", _w(rng, 5, 3, 4))
    b1 = g.add_const("b1", _w(rng, 5))
    y1 = g.add_node("conv", [x1, w1, b1], {"strides": [3], "pads": [2, 1], "dilations": [2],
                                           "group": 1}).output
    x3 = g.add_input("x3", TensorType((1, 2, 5, 6, 4), "f32"))
    w3 = g.add_const("w3", _w(rng, 3, 2, 2, 3, 2))
    y3 = g.add_node("conv", [x3, w3], {"strides": [1, 2, 1], "pads": [0, 1, 1, 1, 1, 0],
                                       "dilations": [1, 1, 1], "group": 1}).output
    g.set_outputs([y1, y3])
    return g


def g_conv_transpose():
    rng = np.random.default_rng(3)
    g = Graph("convt")
    x = g.add_input("x", TensorType((1, 4, 5, 6), "f32"))
    w = g.add_const("w", _w(rng, 4, 3, 3, 3))
    b = g.add_const("b", _w(rng, 3))
    y = g.add_node("conv_transpose", [x, w, b], {"strides": [2, 2], "pads": [1, 0, 1, 1],
                                                 "dilations": [1, 1], "output_padding": [1, 0],
                                                 "group": 1}).output
    wg = g.add_const("wg", _w(rng, 4, 2, 2, 3))
    yg = g.add_node("conv_transpose", [x, wg], {"strides": [1, 2], "pads": [0, 1, 0, 1],
                                                "dilations": [2, 1], "output_padding": [0, 1],
                                                "group": 2}).output
    x1 = g.add_input("x1", TensorType((2, 3, 7), "f32"))
    w1 = g.add_const("w1", _w(rng, 3, 2, 3))
    y1 = g.add_node("conv_transpose", [x1, w1], {"strides": [2], "pads": [1, 1], "dilations": [1],
                                                 "output_padding": [1], "group": 1}).output
    # kernel == stride: lowered as a 1x1 conv and a pixel shuffle (g_upsample_heads)
    ys = _upsample_heads(g, x, rng)
    g.set_outputs([y, yg, y1] + ys)
    return g


def _upsample_heads(g, x, rng):
    """conv_transposes whose kernel equals their stride (det's heads), with and without bias."""
    w2 = g.add_const("w2", _w(rng, 4, 5, 2, 2))
    y2 = g.add_node("conv_transpose", [x, w2, g.add_const("b2", _w(rng, 5))],
                    {"strides": [2, 2], "pads": [0, 0, 0, 0], "dilations": [1, 1], "output_padding": [0, 0],
                     "group": 1}).output
    w3 = g.add_const("w3", _w(rng, 4, 2, 3, 1))
    y3 = g.add_node("conv_transpose", [x, w3], {"strides": [3, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1],
                                                "output_padding": [0, 0], "group": 1}).output
    return [y2, y3]


def test_upsampling_conv_transpose_lowers_to_a_conv():
    from qcc.targets import lower_for

    rng = np.random.default_rng(9)
    g = Graph("heads")
    x = g.add_input("x", TensorType((2, 4, 5, 6), "f32"))
    g.set_outputs(_upsample_heads(g, x, rng))
    script = lower_for(g, "host").script(show_meta=False)
    # a conv: TVM's conv2d, or on an AVX2 host the x86 float conv kernel
    assert "conv2d_transpose" not in script and ("conv2d" in script or "qcc_f32x8_conv" in script
                                                 or "qcc_f32x16_conv" in script)
    check_graph(g, feeds_for(g, np.random.default_rng(RNG_SEED)), rtol_range=1e-4)


def g_gemm_matmul():
    rng = np.random.default_rng(4)
    g = Graph("gemm")
    a = g.add_input("a", TensorType((5, 7), "f32"))
    at = g.add_input("at", TensorType((7, 5), "f32"))
    bw = g.add_const("bw", _w(rng, 6, 7))
    c = g.add_const("c", _w(rng, 1, 6))
    y1 = g.add_node("gemm", [a, bw, c], {"alpha": 0.5, "beta": 2.0, "trans_a": 0, "trans_b": 1}).output
    b2 = g.add_input("b2", TensorType((7, 3), "f32"))
    y2 = g.add_node("gemm", [at, b2], {"alpha": 1.0, "beta": 1.0, "trans_a": 1, "trans_b": 0}).output
    c3 = g.add_input("c3", TensorType((6,), "f32"))
    y3 = g.add_node("gemm", [a, bw, c3], {"alpha": 1.0, "beta": 1.0, "trans_a": 0, "trans_b": 1}).output
    m1 = g.add_input("m1", TensorType((2, 1, 4, 7), "f32"))
    m2 = g.add_input("m2", TensorType((3, 7, 5), "f32"))
    y4 = g.add_node("matmul", [m1, m2]).output
    v = g.add_input("v", TensorType((7,), "f32"))
    y5 = g.add_node("matmul", [v, m2]).output
    y6 = g.add_node("matmul", [m1, v]).output
    g.set_outputs([y1, y2, y3, y4, y5, y6])
    return g


def g_binary():
    g = Graph("binary")
    a = g.add_input("a", TensorType((2, 3, 4), "f32"))
    b = g.add_input("b", TensorType((3, 1), "f32"))
    outs = [g.add_node(op, [a, b]).output for op in ("add", "sub", "mul", "div", "min", "max")]
    outs += [g.add_node(op, [a, b]).output for op in ("equal", "less", "greater")]
    p = g.add_input("p", TensorType((2, 3, 4), "f32"))
    e = g.add_const("e", np.array([2.0, 0.5, 3.0, -1.0], np.float32))
    pa = g.add_node("abs", [p]).output
    outs.append(g.add_node("pow", [pa, e]).output)
    lt = g.add_node("less", [a, p]).output
    outs.append(g.add_node("where", [lt, a, b]).output)
    outs.append(g.add_node("not", [lt]).output)
    g.set_outputs(outs)
    return g


def g_int_binary():
    g = Graph("intbin")
    a = g.add_input("a", TensorType((4, 6), "i32"))
    b = g.add_const("b", np.array([3, -3, 7, -7, 2, 5], np.int32))
    outs = [g.add_node(op, [a, b]).output for op in ("add", "sub", "mul", "div", "min", "max")]
    outs += [g.add_node(op, [a, b]).output for op in ("equal", "less", "greater")]
    e = g.add_const("e", np.array([2], np.int32))
    outs.append(g.add_node("pow", [a, e]).output)
    d = g.add_input("d", TensorType((4, 6), "i32"))  # run-time divisor: the trap-free path
    outs.append(g.add_node("div", [a, d]).output)
    g.set_outputs(outs)
    return g


_UNARY_OPS = ("sqrt", "erf", "exp", "log", "neg", "abs", "reciprocal", "floor", "ceil", "sin",
              "cos", "tanh", "sigmoid", "relu")


def g_unary():
    g = Graph("unary")
    x = g.add_input("x", TensorType((3, 17), "f32"))
    ax = g.add_node("abs", [x]).output
    pos = g.add_node("add", [ax, g.add_const("one", np.array(0.5, np.float32))]).output
    outs = []
    for op in _UNARY_OPS:
        src = pos if op in ("sqrt", "log") else x
        outs.append(g.add_node(op, [src], names=[f"u_{op}"]).output)
    g.set_outputs(outs)
    return g


def g_activations():
    rng = np.random.default_rng(5)
    g = Graph("act")
    x = g.add_input("x", TensorType((2, 3, 4, 5), "f32"))
    outs = [
        g.add_node("leaky_relu", [x], {"alpha": 0.1}).output,
        g.add_node("prelu", [x, g.add_const("slope", rng.random((3, 1, 1)).astype(np.float32))]).output,
        g.add_node("clip", [x], {"min": -0.5, "max": 0.75}).output,
        g.add_node("clip", [x], {"min": 0.0, "max": math.inf}).output,
        g.add_node("clip", [x], {"min": -math.inf, "max": 0.2}).output,
        g.add_node("clip", [x], {"min": 1.0, "max": 0.5}).output,  # min > max: all min
        g.add_node("hard_sigmoid", [x], {"alpha": 0.3, "beta": 0.4}).output,
        g.add_node("hard_swish", [g.add_node("mul", [x, g.add_const("four", np.array(4, np.float32))]).output]).output,
        g.add_node("gelu", [x], {"approximate": "none"}).output,
        g.add_node("gelu", [x], {"approximate": "tanh"}).output,
        g.add_node("softmax", [x], {"axis": 1}).output,
        g.add_node("softmax", [x], {"axis": 3}).output,
        g.add_node("log_softmax", [x], {"axis": 2}).output,
    ]
    xi = g.add_input("xi", TensorType((4, 5), "i8"))
    outs.append(g.add_node("clip", [xi], {"min": -3.5, "max": 6.2}).output)
    outs.append(g.add_node("relu", [xi]).output)
    g.set_outputs(outs)
    return g


def g_norms():
    rng = np.random.default_rng(6)
    g = Graph("norm")
    x = g.add_input("x", TensorType((2, 3, 4, 5), "f32"))
    bn = [g.add_const(n, a) for n, a in (("s", _w(rng, 3)), ("bb", _w(rng, 3)), ("m", _w(rng, 3)),
                                          ("v", rng.random(3).astype(np.float32) + 0.5))]
    y1 = g.add_node("batch_norm", [x] + bn, {"epsilon": 1e-3}).output
    vin = g.add_input("vin", TensorType((3,), "f32"))
    vpos = g.add_node("abs", [vin]).output
    y2 = g.add_node("batch_norm", [x, bn[0], bn[1], bn[2], vpos], {"epsilon": 1e-5}).output
    ls = g.add_const("ls", _w(rng, 5))
    lb = g.add_const("lb", _w(rng, 5))
    y3 = g.add_node("layer_norm", [x, ls, lb], {"axis": 3, "epsilon": 1e-5}).output
    ls2 = g.add_const("ls2", _w(rng, 4, 1))
    y4 = g.add_node("layer_norm", [x, ls2], {"axis": 2, "epsilon": 1e-6}).output
    g.set_outputs([y1, y2, y3, y4])
    return g


def g_pools():
    g = Graph("pool")
    x = g.add_input("x", TensorType((1, 3, 9, 8), "f32"))
    P = "kernel_shape strides pads ceil_mode".split()

    def mp(k, s, p, c, d=(1, 1)):
        return g.add_node("max_pool", [x], dict(zip(P, (list(k), list(s), list(p), c)),
                                                dilations=list(d))).output

    def ap(k, s, p, c, inc):
        return g.add_node("avg_pool", [x], dict(zip(P, (list(k), list(s), list(p), c)),
                                                count_include_pad=inc)).output

    outs = [
        mp((3, 3), (2, 2), (1, 1, 1, 1), 0),
        mp((3, 3), (2, 2), (0, 0, 1, 1), 1),
        mp((2, 2), (2, 2), (0, 0, 0, 0), 1),
        mp((2, 3), (1, 2), (1, 0, 0, 1), 0, (2, 1)),
        mp((5, 5), (1, 1), (2, 2, 2, 2), 0),  # separable (lower_nn._separable_max_pool)
        mp((5, 7), (2, 1), (2, 3, 1, 3), 0),
        ap((3, 3), (2, 2), (1, 1, 1, 1), 0, 0),
        ap((3, 3), (2, 2), (1, 1, 1, 1), 0, 1),
        ap((3, 3), (2, 2), (1, 1, 1, 1), 1, 1),
        ap((3, 2), (2, 3), (0, 1, 2, 0), 1, 0),
        ap((2, 2), (2, 2), (0, 0, 0, 0), 1, 1),
        g.add_node("global_avg_pool", [x]).output,
        g.add_node("global_max_pool", [x]).output,
    ]
    x1 = g.add_input("x1", TensorType((2, 2, 11), "f32"))
    outs.append(g.add_node("max_pool", [x1], {"kernel_shape": [3], "strides": [2], "pads": [1, 1],
                                              "ceil_mode": 1, "dilations": [1]}).output)
    outs.append(g.add_node("avg_pool", [x1], {"kernel_shape": [4], "strides": [3], "pads": [2, 0],
                                              "ceil_mode": 1, "count_include_pad": 0}).output)
    xi = g.add_input("xi", TensorType((1, 2, 5, 5), "i8"))
    outs.append(g.add_node("avg_pool", [xi], {"kernel_shape": [2, 2], "strides": [2, 2],
                                              "pads": [0, 0, 1, 1], "ceil_mode": 0,
                                              "count_include_pad": 0}).output)
    outs.append(g.add_node("global_avg_pool", [xi]).output)
    outs.append(g.add_node("max_pool", [xi], {"kernel_shape": [3, 3], "strides": [1, 1],
                                              "pads": [1, 1, 1, 1], "ceil_mode": 0,
                                              "dilations": [1, 1]}).output)
    g.set_outputs(outs)
    return g


def g_reduce():
    g = Graph("reduce")
    x = g.add_input("x", TensorType((3, 4, 5), "f32"))
    outs = []
    for op in ("reduce_mean", "reduce_sum", "reduce_max", "reduce_min", "reduce_prod"):
        outs.append(g.add_node(op, [x], {"axes": [1], "keepdims": 1}).output)
        outs.append(g.add_node(op, [x], {"axes": [0, 2], "keepdims": 0}).output)
    outs.append(g.add_node("reduce_sum", [x], {"axes": [], "keepdims": 0}).output)
    xi = g.add_input("xi", TensorType((3, 6), "i8"))
    outs.append(g.add_node("reduce_mean", [xi], {"axes": [1], "keepdims": 1}).output)
    outs.append(g.add_node("reduce_sum", [xi], {"axes": [0], "keepdims": 0}).output)
    # arg reductions with ties (small integers)
    t = g.add_input("t", TensorType((4, 7), "i32"))
    for op in ("arg_max", "arg_min"):
        for last in (0, 1):
            outs.append(g.add_node(op, [t], {"axis": 1, "keepdims": 1, "select_last_index": last}).output)
            outs.append(g.add_node(op, [t], {"axis": 0, "keepdims": 0, "select_last_index": last}).output)
    outs.append(g.add_node("arg_max", [x], {"axis": 2, "keepdims": 0, "select_last_index": 0}).output)
    g.set_outputs(outs)
    return g


def g_shape_ops():
    g = Graph("shape")
    x = g.add_input("x", TensorType((2, 3, 4, 5), "f32"))
    outs = [
        g.add_node("reshape", [x], {"shape": [6, 20]}).output,
        g.add_node("flatten", [x], {"axis": 2}).output,
        g.add_node("transpose", [x], {"perm": [0, 2, 3, 1]}).output,
        g.add_node("unsqueeze", [x], {"axes": [0, 5]}).output,
        g.add_node("squeeze", [g.add_node("reduce_max", [x], {"axes": [1], "keepdims": 1}).output],
                   {"axes": [1]}).output,
        g.add_node("concat", [x, x, g.add_node("neg", [x]).output], {"axis": 1}).output,
        g.add_node("expand", [g.add_node("reduce_sum", [x], {"axes": [3], "keepdims": 1}).output],
                   {"shape": [3, 2, 3, 4, 5]}).output,
        g.add_node("tile", [x], {"repeats": [1, 2, 1, 3]}).output,
    ]
    outs += g.add_node("split", [x], {"axis": 3, "split": [1, 3, 1]}).outputs
    xd = g.add_input("xd", TensorType((1, 8, 2, 3), "f32"))
    outs.append(g.add_node("depth_to_space", [xd], {"blocksize": 2, "mode": "DCR"}).output)
    outs.append(g.add_node("depth_to_space", [xd], {"blocksize": 2, "mode": "CRD"}).output)
    g.set_outputs(outs)
    return g


def g_slice_gather_pad():
    g = Graph("slice")
    x = g.add_input("x", TensorType((4, 6, 7), "f32"))
    outs = [
        g.add_node("slice", [x], {"starts": [1, 0], "ends": [4, 7], "axes": [0, 2], "steps": [2, 3]}).output,
        g.add_node("slice", [x], {"starts": [5, 6], "ends": [-1, 1], "axes": [1, 2], "steps": [-2, -1]}).output,
        g.add_node("slice", [x], {"starts": [3], "ends": [0], "axes": [0], "steps": [-1]}).output,
        g.add_node("slice", [x], {"starts": [2], "ends": [100], "axes": [1], "steps": [1]}).output,
    ]
    idx = g.add_const("idx", np.array([[0, -1], [2, 3]], np.int64))
    outs.append(g.add_node("gather", [x, idx], {"axis": 1}).output)
    iin = g.add_input("iin", TensorType((3,), "i32"))
    outs.append(g.add_node("gather", [x, iin], {"axis": 2}).output)
    s0 = g.add_const("s0", np.array(2, np.int64))
    outs.append(g.add_node("gather", [x, s0], {"axis": 0}).output)
    for mode in ("constant", "reflect", "edge", "wrap"):
        outs.append(g.add_node("pad", [x], {"pads": [1, 0, 2, 0, 3, 1], "mode": mode, "value": 1.5}).output)
    outs.append(g.add_node("pad", [x], {"pads": [-1, 2, 0, 1, -2, 3], "mode": "reflect", "value": 0.0}).output)
    outs.append(g.add_node("pad", [x], {"pads": [0, -1, 1, 0, 0, -2], "mode": "constant", "value": -2.0}).output)
    g.set_outputs(outs)
    return g


def _resize_node(g, x, sizes, mode, ctm, nearest="round_prefer_floor", **extra):
    attrs = {"sizes": list(sizes), "mode": mode, "coordinate_transformation_mode": ctm,
             "nearest_mode": nearest, "cubic_coeff_a": -0.75}
    attrs.update(extra)
    return g.add_node("resize", [x], attrs).output


def g_resize():
    g = Graph("resize")
    x = g.add_input("x", TensorType((1, 2, 5, 6), "f32"))
    outs = []
    for nm in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
        outs.append(_resize_node(g, x, (1, 2, 10, 9), "nearest", "asymmetric", nm))
        outs.append(_resize_node(g, x, (1, 2, 3, 13), "nearest", "half_pixel", nm))
    for ctm in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
                "half_pixel_symmetric", "tf_half_pixel_for_nn"):
        outs.append(_resize_node(g, x, (1, 2, 8, 4), "linear", ctm))
    outs.append(_resize_node(g, x, (1, 2, 11, 12), "cubic", "half_pixel"))
    outs.append(_resize_node(g, x, (1, 2, 3, 7), "cubic", "align_corners", exclude_outside=1))
    outs.append(_resize_node(g, x, (1, 2, 12, 15), "nearest", "asymmetric", "floor", scales=[1.0, 1.0, 2.5, 2.5]))
    outs.append(_resize_node(g, x, (1, 2, 5, 6), "nearest", "tf_half_pixel_for_nn"))  # same size: identity
    xi = g.add_input("xi", TensorType((1, 1, 4, 4), "u8"))
    outs.append(_resize_node(g, xi, (1, 1, 7, 7), "linear", "half_pixel"))
    outs.append(_resize_node(g, xi, (1, 1, 8, 8), "nearest", "asymmetric", "floor"))
    x3 = g.add_input("x3", TensorType((2, 3, 5), "f32"))
    outs.append(_resize_node(g, x3, (2, 3, 9), "linear", "align_corners"))
    g.set_outputs(outs)
    return g


def test_integer_nearest_resize_and_depth_to_space_are_one_gather():
    """Nearest up- and downsampling by index ratios (asymmetric, floor: an FPN's upsampling)
    and depth_to_space are one gather kernel each with the index arithmetic (not a take per
    axis through a constant table, not a reshape-transpose-reshape), their output rows'
    interleaved phases unrolled (cpu_rules.UNROLL_INNER), and move exactly the reference's
    elements (float and uint8)."""
    g = Graph("nearest")
    x = g.add_input("x", TensorType((1, 3, 5, 6), "f32"))
    q = g.add_input("q", TensorType((1, 2, 4, 4), "u8"))
    d = g.add_input("d", TensorType((1, 8, 3, 40), "u8"))
    g.set_outputs([_resize_node(g, x, (1, 3, 10, 12), "nearest", "asymmetric", "floor"),
                   _resize_node(g, x, (1, 3, 5, 3), "nearest", "asymmetric", "floor"),
                   _resize_node(g, q, (1, 2, 8, 12), "nearest", "asymmetric", "floor"),
                   g.add_node("depth_to_space", [d], {"blocksize": 2, "mode": "CRD"}).output,
                   g.add_node("depth_to_space", [d], {"blocksize": 2, "mode": "DCR"}).output])
    from qcc.targets import lower_for

    lowered = lower_for(g).script()
    assert lowered.count("def resize_nearest") == 3 and "R.take" not in lowered
    assert lowered.count("def depth_to_space") == 2 and "R.permute_dims" not in lowered
    # the x2 and x3 upsamplings of the last axis and both depth_to_space (phases of 2)
    assert lowered.count('"qcc_unroll_inner": 2') == 3 and lowered.count('"qcc_unroll_inner": 3') == 1
    rng = np.random.default_rng(3)
    feeds = {"x": rng.normal(size=(1, 3, 5, 6)).astype(np.float32),
             "q": rng.integers(0, 256, (1, 2, 4, 4)).astype(np.uint8),
             "d": rng.integers(0, 256, (1, 8, 3, 40)).astype(np.uint8)}
    ex = compile_graph(g, "host")
    # the unrolled phases let LLVM load whole vectors of bytes and interleave them; without
    # them it gathers byte by byte into a vector (insertelement per byte, no vector load)
    d2s = re.findall(r"^define [^\n]*@depth_to_space\w*_compute_\(.*?^\}", llvm_source(ex), re.S | re.M)
    assert len(d2s) == 2
    assert all(re.search(r"load <\d+ x i8>", body) and "insertelement" not in body for body in d2s)
    got = runner_from_executable(ex, g).run(feeds)
    ref = interp_run(g, feeds)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and np.array_equal(got[k], ref[k]), k


def g_cast():
    g = Graph("cast")
    x = g.add_input("x", TensorType((3, 8), "f32"))
    xs = g.add_node("mul", [x, g.add_const("k", np.array(9.0, np.float32))]).output
    outs = [g.add_node("cast", [xs], {"to": to}).output for to in ("i32", "i8", "bool", "f16", "i4")]
    xi = g.add_input("xi", TensorType((3, 8), "i32"))
    outs += [g.add_node("cast", [xi], {"to": to}).output for to in ("f32", "i8", "u4", "i64")]
    xb = g.add_input("xb", TensorType((3, 8), "bool"))
    outs.append(g.add_node("cast", [xb], {"to": "f32"}).output)
    g.set_outputs(outs)
    return g


def g_f16():
    """f16 graphs accumulate convs/matmuls and run transcendentals in f32, as the reference."""
    rng = np.random.default_rng(7)
    g = Graph("f16")
    x = g.add_input("x", TensorType((1, 4, 8, 8), "f16"))
    w = g.add_const("w", _w(rng, 4, 4, 3, 3, dtype=np.float16))
    c = g.add_node("conv", [x, w, g.add_const("b", _w(rng, 4, dtype=np.float16))],
                   {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1}).output
    outs = [c] + [g.add_node(op, [c]).output for op in ("relu", "sigmoid", "tanh", "erf")]
    outs.append(g.add_node("softmax", [c], {"axis": 1}).output)
    outs.append(g.add_node("avg_pool", [c], {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 1, 1],
                                             "ceil_mode": 0, "count_include_pad": 0}).output)
    outs.append(g.add_node("global_avg_pool", [c]).output)
    outs.append(g.add_node("layer_norm", [c, g.add_const("s", _w(rng, 8, dtype=np.float16))],
                           {"axis": 3, "epsilon": 1e-5}).output)
    m = g.add_node("reshape", [c], {"shape": [16, 16]}).output
    outs.append(g.add_node("matmul", [m, g.add_const("mw", _w(rng, 16, 5, dtype=np.float16))]).output)
    g.set_outputs(outs)
    return g


GRAPHS = {f.__name__[2:]: f for f in (g_f16, 
    g_conv, g_conv_1d_3d, g_conv_transpose, g_gemm_matmul, g_binary, g_int_binary, g_unary,
    g_activations, g_norms, g_pools, g_reduce, g_shape_ops, g_slice_gather_pad, g_resize, g_cast)}


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_lowering_matches_interpreter(name):
    g = GRAPHS[name]()
    feeds = feeds_for(g, np.random.default_rng(RNG_SEED))
    if name == "slice_gather_pad":  # run-time gather indices, negatives included
        feeds["iin"] = np.array([6, -7, 0], np.int32)
    if name == "int_binary":  # divisors: no 0 (undefined), but -1 with INT_MIN
        feeds["d"] = np.where(feeds["d"] == 0, 3, feeds["d"]).astype(np.int32)
        feeds["d"][0, :2] = -1
        feeds["a"][0, 0] = np.iinfo(np.int32).min
    # f16 results may differ by one f16 ulp (~1e-3 relative) where the reference computes in f64
    check_graph(g, feeds, rtol_range=1e-3 if name == "f16" else 1e-4)


def test_wide_max_pool_runs_as_rows_then_columns():
    """A 13x13 max pool (YOLOX's SPP) lowers to a 1x13 pool and a 13x1 pool: 26 comparisons
    an output, not 169; a 3x3 pool stays one pass (the graph test above checks both against
    the interpreter, padding and strides included)."""
    from qcc.targets import lower_for

    g = Graph("spp")
    x = g.add_input("x", TensorType((1, 8, 13, 13), "f32"))
    attrs = {"strides": [1, 1], "ceil_mode": 0, "dilations": [1, 1]}
    g.set_outputs([g.add_node("max_pool", [x], {"kernel_shape": [13, 13], "pads": [6] * 4, **attrs}).output,
                   g.add_node("max_pool", [x], {"kernel_shape": [3, 3], "pads": [1] * 4, **attrs}).output])
    script = lower_for(g, "host").script(show_meta=False)
    assert re.search(r"pool_size=\[1, 13\]", script) and re.search(r"pool_size=\[13, 1\]", script), script
    assert "pool_size=[13, 13]" not in script and "pool_size=[3, 3]" in script


def _core_table_ops():
    """Op names of the core op table in docs/ops.md (the float contract)."""
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "ops.md"
    ops, in_table = set(), False
    for line in doc.read_text().splitlines():
        if line.startswith("| op |"):
            in_table = True
            continue
        if in_table:
            if not line.startswith("|"):
                break
            first = line.split("|")[1].strip()
            if not first.startswith("---"):
                ops |= {o.strip() for o in first.split(",") if o.strip()}
    return ops


def test_every_core_op_has_a_lowering():
    core = _core_table_ops()
    assert len(core) > 60
    missing = sorted(core - set(supported_ops()))
    assert not missing, f"core ops without a lowering: {missing}"


INTEGER_OPS = {"quantize", "dequantize", "requantize", "qconv", "qmatmul", "observe"}  # test_targets_int.py


def test_every_core_op_is_tested():
    tested = set()
    for f in GRAPHS.values():
        tested |= {n.op for n in f().nodes}
    missing = set(supported_ops()) - tested - INTEGER_OPS
    assert not missing, sorted(missing)


# --- lowering structure ----------------------------------------------------------------------

def test_lowered_module_shape():
    g = g_conv()
    mod = lower_graph(g)
    main = mod["main"]
    assert [p.name for p in main.params] == ["x", "wi"]
    assert [tuple(int(d) for d in p.ty.shape.values) for p in main.params] == [(2, 4, 9, 10), (3, 4, 1, 1)]
    text = mod.script(show_meta=False)
    assert "R.nn.conv2d" in text and "metadata" in text  # weights embedded as constants
    assert len(main.ret_ty.fields) == len(g.outputs)


def test_graph_output_may_be_input_or_constant():
    g = Graph("passthrough")
    x = g.add_input("x", TensorType((2, 2), "f32"))
    c = g.add_const("c", np.arange(4, dtype=np.float32).reshape(2, 2))
    y = g.add_node("add", [x, c]).output
    g.set_outputs([y, x, c])
    feeds = {"x": np.ones((2, 2), np.float32)}
    got = runner_from_executable(compile_cached(g), g).run(feeds)
    assert np.array_equal(got["x"], feeds["x"]) and np.array_equal(got["c"], c.data)
    assert np.array_equal(got["add"], feeds["x"] + c.data)


def test_unknown_op_is_a_clear_error():
    g = Graph("bad")
    x = g.add_input("x", TensorType((2,), "f32"))
    g.add_node("onnx.NoSuchOp", [x], {}, types=[TensorType((2,), "f32")])
    g.set_outputs([g.nodes[-1].output])
    with pytest.raises(LoweringError, match="NoSuchOp"):
        lower_graph(g)


def test_a_graph_missing_an_attribute_is_named_not_a_key_error():
    g = Graph("no_zero_point")
    x = g.add_input("x", TensorType((4,), "u8"))
    g.set_outputs([g.add_node("dequantize", [x], {"scale": [0.5]}).output])
    with pytest.raises(LoweringError, match="dequantize .*missing attribute 'zero_point'"):
        lower_graph(g)


def test_strategy_hook_overrides_one_op():
    from tvm.relax import op as R

    from qcc.targets import LoweringStrategy

    class Doubling(LoweringStrategy):
        def __init__(self):
            super().__init__()
            self.overrides["relu"] = lambda cx, node, ins, attrs: R.multiply(ins[0], cx.scalar(2.0, ins[0]))

    g = Graph("hook")
    x = g.add_input("x", TensorType((3,), "f32"))
    g.set_outputs([g.add_node("relu", [x]).output])
    assert "R.multiply" in lower_graph(g, Doubling()).script(show_meta=False)

    class NHWC(LoweringStrategy):
        def conv_layout(self, node):
            return "NHWC", "OHWI"

    gc = g_conv()
    text = lower_graph(gc, NHWC()).script(show_meta=False)
    assert 'data_layout="NHWC"' in text
    ex = tvm.compile(lower_graph(gc, NHWC()), target=get_target("host").target())
    feeds = feeds_for(gc, np.random.default_rng(0))
    assert_close(runner_from_executable(ex, gc).run(feeds), interp_run(gc, feeds))


# --- opaque ops --------------------------------------------------------------------------------

def g_opaque():
    g = Graph("opaque")
    x = g.add_input("x", TensorType((3, 4), "f32"))
    axis = g.add_const("axis", np.array(1, np.int64))
    cs = g.add_node("onnx.CumSum", [x, axis], {"exclusive": 0, "reverse": 1},
                    types=[TensorType((3, 4), "f32")]).output
    y = g.add_input("y", TensorType((4, 5), "f32"))
    es = g.add_node("onnx.Einsum", [x, y], {"equation": "ij,jk->ik"},
                    types=[TensorType((3, 5), "f32")]).output
    r = g.add_node("relu", [es]).output
    k = g.add_const("k", np.array([2], np.int64))
    tk = g.add_node("onnx.TopK", [es, k], {"axis": 1, "largest": 1, "sorted": 1},
                    types=[TensorType((3, 2), "f32"), TensorType((3, 2), "i64")]).outputs
    g.set_outputs([cs, r, *tk])
    return g


def test_opaque_onnx_ops_compile_and_run():
    g = g_opaque()
    check_graph(g)
    assert "cumsum" in lower_graph(g).script(show_meta=False).lower()


# --- presets ------------------------------------------------------------------------------------

def test_presets_validate():
    names = target_names()
    assert [p.name for p in list_targets()] == names
    for n in ("x86-avx2", "x86-avx512", "host", "arm-a53", "arm-a72", "arm-a76", "arm-neoverse-n1",
              "cuda-sm75", "cuda-sm80", "cuda-sm86", "cuda-sm90"):
        assert n in names
    for n in names:
        p = get_target(n)
        assert isinstance(p, TargetPreset) and p.name == n
        t = p.target()  # TVM accepts the dict
        assert t.kind.name == ("cuda" if p.family == "cuda" else "llvm")
        if p.family == "arm":
            assert p.tvm_target["mtriple"] == "aarch64-linux-gnu"
            assert "+neon" in p.tvm_target["mattr"] and "neon" in p.capabilities
            assert ("+dotprod" in p.tvm_target["mattr"]) == ("dotprod" in p.capabilities)
            assert p.toolchain == "aarch64-linux-gnu-g++"
        if p.family == "cuda":
            assert p.tvm_target["arch"] == "sm_" + n[len("cuda-sm"):]
            assert str(t.host.kind.name) == "llvm" and "dp4a" in p.capabilities
    assert "vnni" in get_target("x86-avx512").capabilities
    assert "avx512" not in get_target("x86-avx2").capabilities
    host = get_target("host")
    assert host.tvm_target["num-cores"] == os.cpu_count()
    assert host.tvm_target["mcpu"] == str(tvm.target.codegen.llvm_get_system_cpu())
    with pytest.raises(ValueError, match="known: .*x86-avx2"):
        get_target("pentium")
    d = get_target("x86-avx2").target_dict()
    d["mcpu"] = "changed"
    assert get_target("x86-avx2").tvm_target["mcpu"] == "haswell"  # presets are not mutated
    assert get_target("x86-avx2").with_cores(4).tvm_target["num-cores"] == 4
    with pytest.raises(ValueError):
        TargetPreset("bad", {"kind": "llvm"}, "mips", None, frozenset(), "")


# --- build / load / determinism ------------------------------------------------------------------

def test_build_load_roundtrip_and_determinism(tmp_path):
    g = g_activations()
    feeds = feeds_for(g, np.random.default_rng(3))
    p1 = build(g, "x86-avx2", tmp_path / "a")
    p2 = build(g, "x86-avx2", tmp_path / "b")
    assert p1.name == "model.so" and (tmp_path / "a" / "model.json").exists()
    h1 = hashlib.sha256(p1.read_bytes()).hexdigest()
    h2 = hashlib.sha256(p2.read_bytes()).hexdigest()
    assert h1 == h2, "two builds of the same graph differ"
    runner = load(p1)
    assert runner.input_names == ["x", "xi"]
    assert_close(runner.run(feeds), interp_run(g, feeds))
    with pytest.raises(ValueError, match="missing"):
        runner.run({"x": feeds["x"]})


def test_arm_build_cross_or_tar(tmp_path):
    import shutil

    g = g_binary()
    p = build(g, "arm-a76", tmp_path)
    again = build(g, "arm-a76", tmp_path / "again")
    assert p.read_bytes() == again.read_bytes(), "two ARM builds differ"
    if shutil.which("aarch64-linux-gnu-g++"):
        assert p.name == "model.so"
        assert p.read_bytes()[:4] == b"\x7fELF" and p.read_bytes()[18] == 183  # EM_AARCH64
    else:
        assert p.name == "model.tar" and p.stat().st_size > 0
        with pytest.raises(ValueError, match="unlinked"):
            load(p)
        import tarfile

        with tarfile.open(p) as tf:
            names = tf.getnames()
            lib = tf.extractfile("lib0.o").read()
        assert "lib0.o" in names and lib[:4] == b"\x7fELF" and lib[18] == 183  # AArch64 objects


_THREADS_SCRIPT = """
import os, tvm
from qcc.targets import configure_threads
n = configure_threads()
print(n, tvm.get_global_func("runtime.NumThreads")())
"""


@pytest.mark.parametrize("env", [None, "1"])
def test_thread_pool_size(env):
    import subprocess
    import sys

    e = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    if env is not None:
        e["TVM_NUM_THREADS"] = env
    out = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], env=e, capture_output=True,
                         text=True, check=True).stdout.split()
    want = int(env) if env else os.cpu_count()
    assert [int(v) for v in out] == [want, want]


def _cuda_sources(mod):
    from qcc.targets.cuda_emit import cuda_modules

    return [m.inspect_source() for m in cuda_modules(mod)]


def test_cuda_codegen_sm80(tmp_path):
    g = Graph("cuda")
    x = g.add_input("x", TensorType((4, 16), "f32"))
    w = g.add_const("w", np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32))
    y = g.add_node("relu", [g.add_node("matmul", [x, w]).output]).output
    g.set_outputs([g.add_node("softmax", [y], {"axis": 1}).output])
    ex = compile_graph(g, "cuda-sm80")
    srcs = _cuda_sources(ex.mod)
    assert srcs, "no CUDA module in the executable"
    assert any("__global__" in s for s in srcs)
    p = build(g, "cuda-sm80", tmp_path)  # exports without a GPU (the library embeds the source)
    assert p.name == "model.so" and p.stat().st_size > 0


# --- imported models ---------------------------------------------------------------------------

def _import(path, shapes):
    import qcc

    return qcc.import_onnx(str(path), shapes)


def test_tiny_cnn_example_matches_onnxruntime():
    from pathlib import Path

    ort = pytest.importorskip("onnxruntime")
    path = Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn.onnx"
    if not path.exists():
        pytest.skip("examples/tiny_cnn.onnx is missing")
    g = _import(path, {"input": (1, 3, 32, 32)})
    feeds = feeds_for(g, np.random.default_rng(0))
    got = runner_from_executable(compile_cached(g), g).run(feeds)
    assert_close(got, interp_run(g, feeds))
    ref = ort.InferenceSession(str(path)).run(None, feeds)
    assert_close(dict(zip(got, ref)), got)


@pytest.mark.slow
@pytest.mark.parametrize("model,shape", [
    ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192)),
    ("ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320)),
    ("ch_PP-OCRv4_det_infer.onnx", (1, 3, 320, 320)),
])
def test_ppocr_models_match_onnxruntime(model, shape):
    ort = pytest.importorskip("onnxruntime")
    rapidocr = pytest.importorskip("rapidocr_onnxruntime")
    from pathlib import Path

    path = Path(rapidocr.__file__).parent / "models" / model
    g = _import(path, {"x": shape})
    # an image-like input: smooth, normalised to [-1, 1] as PP-OCR's preprocessing does
    yy, xx = np.meshgrid(np.linspace(0, 6, shape[2]), np.linspace(0, 9, shape[3]), indexing="ij")
    img = np.stack([np.sin(xx + c) * np.cos(yy * (c + 1)) for c in range(3)])[None]
    feeds = {g.inputs[0].name: img.astype(np.float32)}
    got = runner_from_executable(compile_graph(g, "host"), g).run(feeds)
    ref = ort.InferenceSession(str(path)).run(None, feeds)
    assert_close(got, dict(zip(got, ref)), rtol_range=1e-3, atol=1e-5)


def test_pow_by_2_3_4_is_products(capfd):
    """x**2, x**3 and x**4 by a constant (RMS norms, GELU's tanh form) lower to products, as
    onnxruntime computes them, not to a scalar powf call per element (for y >= 3 TVM warned on
    every build: GPT-2, ALBERT, T5); negative bases included."""
    g = Graph("pow_small")
    x = g.add_input("x", TensorType((3, 17), "f32"))
    outs = [g.add_node("pow", [x, g.add_const(f"e{k}", np.array(k, np.float32))]).output for k in (2, 3, 4)]
    outs.append(g.add_node("pow", [x, g.add_const("e3b", np.full((2, 1, 1), 3.0, np.float32))]).output)
    g.set_outputs(outs)
    xv = np.random.default_rng(0).uniform(-3, 3, (3, 17)).astype(np.float32)
    got = check_graph(g, {"x": xv})
    x2 = xv * xv
    for v, want in zip(outs, (x2, x2 * xv, x2 * x2, np.broadcast_to(x2 * xv, (2, 3, 17)))):
        np.testing.assert_array_equal(got[v.name], want)
    assert "Detected pow" not in capfd.readouterr().err


def test_transcendentals_are_vectorized_polynomials():
    """float32 exp, sigmoid, tanh, erf (and GELU, softmax) are polynomials LLVM vectorizes, not
    a call of libm's expf/tanhf/erff per element (measured: ~4 ns per element, 3-7 ms of
    convnext's MLP kernels), and stay within 4e-7 (relative) of float64; a softmax's row max
    and sum are interleaved partial results (lower_math._row_reduce)."""
    from scipy.special import erf, expit, log_softmax, softmax

    n = 4096
    g = Graph("transcendentals")
    x = g.add_input("x", TensorType((n,), "f32"))
    xe = g.add_input("xe", TensorType((n,), "f32"))
    s = g.add_input("s", TensorType((16, 197), "f32"))
    g.set_outputs([g.add_node("erf", [x], names=["erf"]).output, g.add_node("tanh", [x], names=["tanh"]).output,
                   g.add_node("gelu", [x], {"approximate": "none"}, names=["gelu"]).output,
                   g.add_node("sigmoid", [xe], names=["sigmoid"]).output, g.add_node("exp", [xe], names=["exp"]).output,
                   g.add_node("softmax", [s], {"axis": 1}, names=["sm"]).output,
                   g.add_node("log_softmax", [s], {"axis": 1}, names=["lsm"]).output])
    ex = compile_graph(g, "host")
    ir = llvm_source(ex)
    assert not re.findall(r"call [^@]*@(expf|tanhf|erff)\(", ir) and re.search(r"<(4|8|16) x float>", ir)
    # the softmax's max and sum over rows of 197 as interleaved partial results (and a tail)
    assert "row_max" in ir and "qcc_inexact_row_sum" in ir
    xs, xes = np.linspace(-6, 6, n).astype(np.float32), np.linspace(-80, 80, n).astype(np.float32)
    ss = np.random.default_rng(0).normal(0, 4, (16, 197)).astype(np.float32)
    got = runner_from_executable(ex, g).run({"x": xs, "xe": xes, "s": ss})
    X, XE, S = (a.astype(np.float64) for a in (xs, xes, ss))
    refs = {"erf": erf(X), "tanh": np.tanh(X), "sigmoid": expit(XE), "exp": np.exp(XE), "sm": softmax(S, 1)}
    for k, ref in refs.items():
        np.testing.assert_allclose(got[k], ref, rtol=4e-7 if k != "sm" else 2e-6, atol=1e-37, err_msg=k)
    np.testing.assert_allclose(got["gelu"], 0.5 * X * (1 + erf(X / math.sqrt(2))), rtol=0, atol=2e-6)
    np.testing.assert_allclose(got["lsm"], log_softmax(S, 1), rtol=1e-6, atol=4e-6)
