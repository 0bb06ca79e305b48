"""AVX2's exact integer Winograd F(2x2, 3x3) (targets/x86_winograd.py): the identity it
rests on, which convs take it, and bit-exactness of the compiled kernel against the
reference interpreter, at the edges of its int16 and int32 ranges too."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from qcc.interp import run as interp_run
from qcc.ir import Graph, TensorType

pytest.importorskip("tvm")

from qcc.targets import compile_graph, lower_for, runner_from_executable, x86_winograd  # noqa: E402
from qcc.targets.presets import get_target  # noqa: E402
from qcc.targets.x86_int8 import AVX2, VNNI  # noqa: E402
from qcc.targets.x86_winograd import MAX_CHANNELS, wino_plan  # noqa: E402

HOST = get_target("host")
needs_avx2 = pytest.mark.skipif(not ("avx2" in HOST.capabilities and HOST.family == "x86"),
                                reason="the host has no AVX2")


def _direct(x, w, zx, pads):
    """The reference's sum((x - zx) * w) of a stride-1 3x3 conv, in int64."""
    pt, pl, pb, pr = pads
    xp = np.pad(x.astype(np.int64) - zx, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    oh, ow = xp.shape[2] - 2, xp.shape[3] - 2
    out = np.zeros((x.shape[0], w.shape[0], oh, ow), np.int64)
    for i in range(3):
        for j in range(3):
            out += np.einsum("oc,nchw->nohw", w[:, :, i, j].astype(np.int64), xp[:, :, i:i + oh, j:j + ow])
    return out


def test_integer_transforms_give_four_times_the_conv():
    """At [(G' g G't) . (Bt d B)] A == 4 conv(d, g) in integers, at the extremes of uint8
    pixels and int8 weights, with the factors inside int16."""
    rng = np.random.default_rng(0)
    for d, g in [(rng.integers(0, 256, (4, 4)), rng.integers(-128, 128, (3, 3))),
                 (np.full((4, 4), 255), np.full((3, 3), -128)),
                 (np.array([[255, 0] * 2, [0, 255] * 2] * 2), np.array([[127, -128, 127]] * 3))]:
        u = x86_winograd._G2 @ g @ x86_winograd._G2.T
        v = x86_winograd._BT @ d @ x86_winograd._BT.T
        y = x86_winograd._AT @ (u * v) @ x86_winograd._AT.T
        direct = np.array([[(d[i:i + 3, j:j + 3] * g).sum() for j in range(2)] for i in range(2)])
        assert np.array_equal(y, 4 * direct)
        assert (np.abs(u) <= x86_winograd.U_MAX).all() and (np.abs(v) <= x86_winograd.V_MAX).all()
    assert x86_winograd.U_MAX.max() < 1 << 15 and x86_winograd.V_MAX.max() < 1 << 15  # int16 operands


def test_which_convs_take_it():
    conv = {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1, "x_zero_point": 3}
    assert wino_plan((1, 96, 96, 144), "uint8", (24, 96, 3, 3), conv, AVX2).mr == 12
    assert wino_plan((1, 24, 12, 12), "int8", (5, 24, 3, 3), dict(conv, x_zero_point=-128), AVX2).zx == 0
    assert wino_plan((1, 96, 96, 144), "uint8", (24, 96, 3, 3), conv, VNNI) is None  # 4 bytes per lane there
    assert wino_plan((1, 96, 96, 144), "int16", (24, 96, 3, 3), conv, AVX2) is None  # past int16
    assert wino_plan((1, 96, 96, 144), "uint8", (24, 96, 3, 3), dict(conv, strides=[2, 2]), AVX2) is None
    assert wino_plan((1, 96, 96, 144), "uint8", (24, 96, 3, 3), dict(conv, dilations=[2, 2]), AVX2) is None
    assert wino_plan((1, 96, 96, 144), "uint8", (24, 48, 3, 3), dict(conv, group=2), AVX2) is None
    assert wino_plan((1, 96, 96, 144), "uint8", (24, 96, 5, 5), conv, AVX2) is None
    assert wino_plan((1, 96, 6, 6), "uint8", (8, 96, 3, 3), conv, AVX2) is None  # 36 pixels: too few
    assert wino_plan((1, 16, 60, 60), "uint8", (8, 16, 3, 3), conv, AVX2) is None  # too few channels
    assert wino_plan((1, MAX_CHANNELS, 16, 16), "uint8", (8, MAX_CHANNELS, 3, 3), conv, AVX2) is not None
    assert wino_plan((1, MAX_CHANNELS + 1, 16, 16), "uint8", (8, MAX_CHANNELS + 1, 3, 3), conv, AVX2) is None


# x dtype, x shape, out channels, pads, x zero point, bias
CASES = {
    "det_like": ("u8", (1, 96, 20, 30), 24, (1, 1, 1, 1), 125, True),
    "odd_everything": ("u8", (2, 25, 11, 9), 19, (1, 1, 1, 1), 0, True),
    "int8_input": ("i8", (1, 24, 10, 14), 5, (1, 1, 1, 1), -128, False),
    "asym_pads": ("u8", (1, 32, 9, 16), 7, (0, 2, 1, 0), 255, True),
    "no_pads": ("i8", (1, 26, 12, 14), 16, (0, 0, 0, 0), 127, True),
}


def _graph(name, seed=0):
    xdt, xshape, oc, pads, zx, bias = CASES[name]
    rng = np.random.default_rng(seed)
    g = Graph(f"wino_{name}")
    x = g.add_input("x", TensorType(xshape, xdt))
    ins = [x, g.add_const("w", rng.integers(-128, 128, (oc, xshape[1], 3, 3)).astype(np.int8))]
    if bias:
        ins.append(g.add_const("b", rng.integers(-20000, 20000, oc).astype(np.int32)))
    acc = g.add_node("qconv", ins, {"strides": [1, 1], "pads": list(pads), "dilations": [1, 1], "group": 1,
                                    "x_zero_point": zx}, names=["acc"]).output
    m = [int(v) for v in rng.integers(1 << 30, 1 << 31, oc)]
    rq = g.add_node("requantize", [acc], {"multiplier": m, "shift": [-12] * oc, "axis": 1, "zero_point": 10,
                                          "dtype": "u8", "clamp": [10, 255]}, names=["rq"]).output
    g.set_outputs([acc, rq])
    lo, hi = (0, 255) if xdt == "u8" else (-128, 127)
    feed = rng.integers(lo, hi + 1, xshape).astype(np.uint8 if xdt == "u8" else np.int8)
    feed.reshape(-1)[:4] = hi, lo, hi, lo
    return g, {"x": feed}


def _compile_and_check(g, feeds):
    assert "qcc_avx2_wino" in lower_for(g, "x86-avx2").script(show_meta=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed schedule warns and falls back: not here
        ex = compile_graph(g, "x86-avx2")
    ref = interp_run(g, feeds)
    for threads in (2, 1):
        got = runner_from_executable(ex, g, num_threads=threads).run(feeds)
        for k, r in ref.items():
            assert got[k].dtype == r.dtype and got[k].shape == r.shape
            bad = np.flatnonzero(got[k] != r)
            assert bad.size == 0, f"{k}, {threads} threads: {bad.size}/{r.size} differ"
    return ref, ex


@needs_avx2
@pytest.mark.parametrize("name", sorted(CASES))
def test_bit_exact_with_the_interpreter(name):
    g, feeds = _graph(name)
    ref, _ = _compile_and_check(g, feeds)
    xdt, xshape, oc, pads, zx, _ = CASES[name]
    w = g.nodes[0].inputs[1].data
    b = g.nodes[0].inputs[2].data if len(g.nodes[0].inputs) > 2 else 0
    direct = _direct(feeds["x"], w, zx, pads) + np.reshape(b, (1, -1, 1, 1))
    assert np.array_equal(ref["acc"], direct)  # the reference is the conv it claims
    assert len(np.unique(ref["rq"])) > 5


@needs_avx2
def test_largest_sums_stay_exact_at_the_channel_bound():
    """MAX_CHANNELS channels of pixels and weights at their extremes: the transformed
    products and their sums at the edge of int32, still bit for bit."""
    c = MAX_CHANNELS
    g = Graph("wino_bound")
    x = g.add_input("x", TensorType((1, c, 8, 8), "u8"))
    w = np.where(np.indices((4, c, 3, 3)).sum(0) % 2 == 0, 127, -128).astype(np.int8)
    w[0] = -128
    w[1] = 127
    acc = g.add_node("qconv", [x, g.add_const("w", w)], {"strides": [1, 1], "pads": [1, 1, 1, 1],
                                                          "dilations": [1, 1], "group": 1, "x_zero_point": 0},
                     names=["acc"]).output
    g.set_outputs([acc])
    checker = np.indices((1, c, 8, 8)).sum(0) % 2
    for xv in (np.full((1, c, 8, 8), 255, np.uint8), (255 * checker).astype(np.uint8)):
        _compile_and_check(g, {"x": xv})


@needs_avx2
def test_float_epilogue_runs_in_vectors():
    """A dequantize -> hard_swish -> quantize epilogue after the kernel: its fenced
    dequantize product and rounding run as vectors (inlined into the output transform,
    whose parities interleave the columns, they ran one value at a time), still exact; and
    `disabled()` gives the direct kernel back."""
    import re

    from qcc.targets import llvm_source
    from test_x86_int8 import _conv_and_epilogue, _kernel_bodies

    rng = np.random.default_rng(4)
    g = _conv_and_epilogue("wino_hswish", (24, 16, 12, 16, 3), "hard_swish", rng, shift=0, scales=(1e-4, 3e-4))
    feeds = {"x": rng.integers(0, 256, (1, 24, 12, 16)).astype(np.uint8)}
    ref, ex = _compile_and_check(g, feeds)
    assert len(np.unique(ref["y"])) > 20
    body = "\n".join(_kernel_bodies(llvm_source(ex, "ll"), "qcc_avx2_wino"))
    assert re.search(r"llvm\.arithmetic\.fence\.v\d+f32", body), "the fenced dequantize is scalar"
    assert re.search(r"llvm\.nearbyint\.v\d+f32", body), "the quantize rounds one value at a time"
    with x86_winograd.disabled():
        assert "qcc_avx2_wino" not in lower_for(g, "x86-avx2").script(show_meta=False)
