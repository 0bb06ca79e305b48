"""x86 int8 kernels (targets/x86_int8.py), AVX-512 VNNI and AVX2: bit-identical to
qcc.interp, and really using their instruction.

Random qconv / qmatmul graphs (each followed by per-channel requantizes, as -O2 emits
them) are compiled and compared with the reference interpreter with np.array_equal,
the int32 accumulators included. Each case also checks which lowering it took (the
kernel, or the generic one it must fall back to). AVX2 cases build for the
`x86-avx2` preset (Haswell: runs on every AVX2 machine, VNNI ones included); VNNI
cases build for `host` and skip where the host has no AVX-512 VNNI.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from qcc.interp import run as interp_run
from qcc.ir import Graph, TensorType

tvm = pytest.importorskip("tvm")

from qcc.targets import compile_graph, llvm_source, lower_for, runner_from_executable  # noqa: E402
from qcc.targets.presets import get_target  # noqa: E402
from qcc.targets.strategy import strategy_for  # noqa: E402

HOST = get_target("host")
_HAS = {"vnni": {"vnni", "avx512"} <= HOST.capabilities and HOST.family == "x86",
        "avx2": "avx2" in HOST.capabilities and HOST.family == "x86"}
PRESET = {"vnni": "host", "avx2": "x86-avx2"}
# each ISA's assembly mnemonic of its multiply-accumulate
MNEMONIC = {"vnni": "vpdpbusd", "avx2": "vpmaddwd"}


def _isas(*names):
    return pytest.mark.parametrize("isa", [pytest.param(n, marks=pytest.mark.skipif(
        not _HAS[n], reason=f"the host has no {n.upper()}")) for n in names])


ISAS = _isas("vnni", "avx2")


@pytest.fixture(autouse=True)
def _direct_convs():
    """These tests are about x86_int8's direct kernel: AVX2's 3x3 stride-1 convs would be
    Winograd ones (tests/test_x86_winograd.py)."""
    from qcc.targets import x86_winograd

    with x86_winograd.disabled():
        yield

_BOUNDS = {"u8": (0, 255), "i8": (-128, 127)}


def _feed(rng, shape, dtype):
    lo, hi = _BOUNDS[dtype]
    return rng.integers(lo, hi + 1, size=shape).astype(np.uint8 if dtype == "u8" else np.int8)


def _requantizes(g, acc, oc, axis, seed):
    """Two per-channel requantizes of `acc` (u8 with a relu clamp, i8) and one per tensor."""
    rng = np.random.default_rng(seed)
    m = [int(v) for v in rng.integers(1 << 30, 1 << 31, size=oc)]
    s = [int(v) for v in rng.integers(-14, -8, size=oc)]
    return [
        g.add_node("requantize", [acc], {"multiplier": m, "shift": s, "axis": axis, "zero_point": 10,
                                         "dtype": "u8", "clamp": [10, 255]}, names=["rq_u8"]).output,
        g.add_node("requantize", [acc], {"multiplier": m[::-1], "shift": s, "axis": axis, "zero_point": -3,
                                         "dtype": "i8"}, names=["rq_i8"]).output,
        g.add_node("requantize", [acc], {"multiplier": [m[0]], "shift": [s[0] - 1], "axis": -1,
                                         "zero_point": 5, "dtype": "i8"}, names=["rq_tensor"]).output,
    ]


# name: (x dtype, x shape (N, C, H, W), out channels, kernel (kh, kw), strides, pads, dilations, group,
#        bias, x zero point)
CONV_CASES = {
    "1x1": ("u8", (1, 32, 6, 20), 48, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True, 17),
    "1x1_odd_channels": ("u8", (1, 13, 5, 7), 21, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True, 200),
    "1x1_one_pixel": ("u8", (1, 40, 1, 1), 10, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True, 3),
    "3x3_s1": ("u8", (1, 24, 12, 18), 24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True, 128),
    "3x3_s2_first_layer": ("u8", (1, 3, 17, 30), 8, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, True, 127),
    "3x3_s2_odd": ("u8", (2, 9, 11, 13), 19, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, False, 0),
    "asym_pad_strides": ("u8", (1, 8, 12, 9), 5, (3, 2), (2, 3), (1, 0, 2, 1), (1, 1), 1, True, 255),
    "dilated": ("u8", (1, 8, 13, 12), 6, (3, 2), (1, 1), (2, 3, 2, 3), (2, 3), 1, True, 77),
    "grouped": ("u8", (1, 16, 9, 10), 12, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2, True, 9),
    "grouped_odd": ("u8", (2, 20, 7, 9), 12, (1, 3), (1, 1), (0, 1, 0, 1), (1, 1), 4, True, 4),
    "i8_input": ("i8", (1, 7, 8, 8), 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True, -5),
    "i8_input_zp_min": ("i8", (2, 4, 6, 6), 4, (3, 3), (1, 1), (0, 1, 1, 0), (1, 1), 1, False, -128),
    "batch_1x3_wide": ("u8", (3, 20, 1, 40), 16, (1, 3), (1, 1), (0, 1, 0, 1), (1, 1), 1, True, 60),
    "big_pad": ("u8", (1, 4, 5, 5), 17, (5, 5), (1, 2), (3, 4, 2, 1), (1, 1), 1, True, 31),
}


# depthwise-like convs (<= 4 input channels per group): the exact float32 kernel
DW_CASES = {
    "dw_3x3_s1": ("u8", (1, 16, 12, 18), 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 16, True, 128),
    "dw_3x3_s2": ("u8", (2, 24, 11, 13), 24, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 24, True, 3),
    "dw_5x5_i8": ("i8", (1, 8, 9, 20), 8, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 8, True, -5),
    "dw_5x5_s2_wide": ("u8", (1, 4, 6, 70), 4, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), 4, True, 255),
    "dw_multiplier_2": ("u8", (1, 6, 7, 9), 12, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 6, False, 0),
    "groups_of_3": ("u8", (1, 12, 8, 8), 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 4, True, 60),
    "dw_dilated_asym": ("u8", (1, 5, 10, 11), 5, (3, 2), (1, 2), (2, 0, 1, 1), (2, 1), 5, True, 77),
    "dw_one_pixel": ("i8", (1, 8, 1, 1), 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 8, True, 127),
}


def g_conv(name, seed=0):
    xdt, xshape, oc, (kh, kw), strides, pads, dil, group, bias, zx = {**CONV_CASES, **DW_CASES}[name]
    rng = np.random.default_rng(seed)
    g = Graph(f"vnni_conv_{name}")
    x = g.add_input("x", TensorType(xshape, xdt))
    wv = rng.integers(-128, 128, size=(oc, xshape[1] // group, kh, kw)).astype(np.int8)
    ins = [x, g.add_const("w", wv)]
    if bias:
        ins.append(g.add_const("b", rng.integers(-20000, 20000, size=oc).astype(np.int32)))
    attrs = {"strides": list(strides), "pads": list(pads), "dilations": list(dil), "group": group,
             "x_zero_point": zx}
    acc = g.add_node("qconv", ins, attrs, names=["acc"]).output
    g.set_outputs([acc] + _requantizes(g, acc, oc, 1, seed))
    feeds = {"x": _feed(np.random.default_rng(seed + 1), xshape, xdt)}
    feeds["x"].reshape(-1)[:3] = _BOUNDS[xdt][1], _BOUNDS[xdt][0], _BOUNDS[xdt][1]  # the extremes
    return g, feeds


def check(g, feeds, preset="host"):
    ref = interp_run(g, feeds)
    _assert_outputs(runner_from_executable(compile_graph(g, preset), g).run(feeds), ref)
    return ref


def _assert_outputs(got, ref, float_tol=None):
    """got == ref bit for bit; float outputs within float_tol x their largest magnitude when
    float_tol is given (a float reference sums in its BLAS's order, which depends on the CPU)."""
    assert set(got) == set(ref)
    for k, r in ref.items():
        o = got[k]
        assert o.dtype == r.dtype and o.shape == r.shape, (k, o.dtype, o.shape, r.dtype, r.shape)
        if float_tol is not None and r.dtype.kind == "f":
            np.testing.assert_allclose(o, r, rtol=0, atol=float_tol * np.abs(r).max(), err_msg=k)
            continue
        bad = np.flatnonzero(o != r)
        assert bad.size == 0, f"{k}: {bad.size}/{r.size} differ, first {bad[:5]}: {o.ravel()[bad[:5]]} vs " \
                              f"{r.ravel()[bad[:5]]}"


def _uses(g, isa, preset) -> bool:
    return f"qcc_{isa}" in lower_for(g, preset).script(show_meta=False)


@ISAS
@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_qconv_bit_exact(isa, name):
    g, feeds = g_conv(name)
    assert _uses(g, isa, PRESET[isa])
    ref = check(g, feeds, PRESET[isa])
    assert len(np.unique(ref["rq_u8"])) > 5  # not all clamped: the comparison means something


# 1-D convs (audio, sequences): x (N, C, L), out channels, kernel, stride, pads, dilation,
# group, bias, x zero point; they run as one-row 2-D convs (conv_geometry.conv_kernel_2d)
CONV1D_CASES = {
    "stft_like": ("u8", (1, 1, 640), 18, 256, 128, (0, 0), 1, 1, False, 128),  # Silero VAD's first
    "k3_s1": ("u8", (1, 16, 50), 24, 3, 1, (1, 1), 1, 1, True, 9),
    "k3_s2_asym": ("i8", (2, 12, 33), 8, 3, 2, (1, 0), 1, 1, True, -7),
    "dilated": ("u8", (1, 8, 40), 10, 5, 1, (4, 4), 2, 1, True, 200),
    "depthwise": ("u8", (1, 16, 29), 16, 5, 1, (2, 2), 1, 16, True, 60),
}


def g_conv1d(name, seed=0):
    xdt, xshape, oc, k, stride, pads, dil, group, bias, zx = CONV1D_CASES[name]
    rng = np.random.default_rng(seed)
    g = Graph(f"conv1d_{name}")
    x = g.add_input("x", TensorType(xshape, xdt))
    ins = [x, g.add_const("w", rng.integers(-128, 128, size=(oc, xshape[1] // group, k)).astype(np.int8))]
    if bias:
        ins.append(g.add_const("b", rng.integers(-20000, 20000, size=oc).astype(np.int32)))
    attrs = {"strides": [stride], "pads": list(pads), "dilations": [dil], "group": group, "x_zero_point": zx}
    acc = g.add_node("qconv", ins, attrs, names=["acc"]).output
    g.set_outputs([acc] + _requantizes(g, acc, oc, 1, seed))
    return g, {"x": _feed(np.random.default_rng(seed + 1), xshape, xdt)}


@ISAS
@pytest.mark.parametrize("name", sorted(CONV1D_CASES))
def test_qconv_1d_bit_exact(isa, name):
    """1-D convs take the 2-D kernels (the generic conv1d was unscheduled) and stay exact."""
    g, feeds = g_conv1d(name)
    text = lower_for(g, PRESET[isa]).script(show_meta=False)
    assert f"qcc_{isa}_{'dw' if name == 'depthwise' else ''}conv" in text
    ref = check(g, feeds, PRESET[isa])
    assert len(np.unique(ref["rq_u8"])) > 2


def test_float_conv_1d_kernel():
    """A float 1-D conv takes the float kernel as a one-row 2-D conv, to float rounding."""
    rng = np.random.default_rng(5)
    g = Graph("fconv1d")
    x = g.add_input("x", TensorType((1, 6, 45), "f32"))
    w = g.add_const("w", rng.standard_normal((10, 6, 3)).astype(np.float32))
    y = g.add_node("conv", [x, w], {"strides": [2], "pads": [1, 1], "dilations": [1], "group": 1},
                   names=["y"]).output
    g.set_outputs([y])
    assert "qcc_f32x8_conv" in lower_for(g, "x86-avx2").script(show_meta=False)
    if not _HAS["avx2"]:
        return
    feeds = {"x": rng.standard_normal((1, 6, 45)).astype(np.float32)}
    ref = interp_run(g, feeds)["y"]
    got = runner_from_executable(compile_graph(g, "x86-avx2"), g).run(feeds)["y"]
    assert got.shape == ref.shape == (1, 10, 23)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


@ISAS
@pytest.mark.parametrize("name", sorted(DW_CASES))
def test_depthwise_qconv_bit_exact(isa, name):
    """Depthwise convs run as float32 multiply-adds and still equal the int32 reference."""
    g, feeds = g_conv(name)
    text = lower_for(g, PRESET[isa]).script(show_meta=False)
    if name == "groups_of_3" and isa == "avx2":  # 3 channels a group: AVX2's pairs take it
        assert f"qcc_{isa}_conv" in text
    else:
        assert f"qcc_{isa}_dwconv" in text
    ref = check(g, feeds, PRESET[isa])
    assert len(np.unique(ref["rq_u8"])) > 2


@pytest.mark.parametrize("preset,instruction,least", [("x86-avx2", r"vfmadd\d+ps\s[^\n]*ymm", 16),
                                                      ("x86-avx512", r"vpdpbusd\s[^\n]*zmm", 12)])
def test_depthwise_inner_loop_is_full_width(preset, instruction, least):
    """Built, not run (AVX-512 may be absent): the taps are full-width float multiply-adds
    (AVX2), or four taps a full-width vpdpbusd (AVX-512 VNNI, no float left in the sums)."""
    import re

    g, _ = g_conv("dw_3x3_s1")
    asm = _asm(compile_graph(g, preset))
    found = re.findall(rf"\t{instruction}", asm)
    assert len(found) >= least, f"{len(found)} of {instruction}"
    if "vpdpbusd" in instruction:
        assert not re.search(r"\tvfmadd", asm), "float multiply-adds left in the VNNI depthwise kernel"
        # the taps' words are packed as vectors (LLVM left an 18-wide row's loop scalar)
        assert re.search(r"\tvpmovzxbd\s[^\n]*[yz]mm", asm), "the pack of a short row is scalar"


def _kernel_bodies(ll: str, name: str):
    """The LLVM IR of the kernels whose name matches `name`: each compute function with the
    parallel task bodies TVM emits right after it (a parallel loop's body is a function of
    its own, `__tvm_parallel_lambda*`)."""
    chunks = re.findall(r"^define [^\n]*@([\w.]+)\(.*?^\}", ll, re.S | re.M)
    texts = re.findall(r"^define [^\n]*@[\w.]+\(.*?^\}", ll, re.S | re.M)
    out, owner = [], None
    for fn, text in zip(chunks, texts):
        if fn.endswith("_compute_"):
            owner = re.search(name, fn) is not None
        elif not fn.startswith("__tvm_parallel_lambda"):
            owner = None
        if owner:
            out.append(text)
    return out


@ISAS
@pytest.mark.parametrize("tail", ["add", "quantize"])
@pytest.mark.parametrize("hw", [(12, 16), (6, 28), (14, 14), (7, 7)])
def test_float_epilogue_is_vectorized_and_exact(isa, tail, hw):
    """A kernel's dequantize -> hard_swish -> add (or -> quantize) epilogue, as cls, rec and
    the mobile nets have them: the fenced dequantize product (exact_fp.py) and the quantize's
    rounding (nearbyint) and NaN test run as vectors, not one float at a time (TVM's
    vectorizer gave up on nearbyint and isnan: a 200-channel depthwise kernel took 127 us
    against 25), and the result still equals the interpreter's. Also when a row is no
    whole number of vectors (14 and 7 wide: full vectors and a serial remainder; before,
    such maps had scalar epilogues: mobilenet_v3_small's 1x1 40->240 conv at 14x14 took
    228 us), and a remainder that is a multiple of four in shorter vectors, none of it
    serial (28 wide: 16 + 8 + 4; PP-LCNet's 1x1 64->128 conv at 28x28: 146 -> 44 us)."""
    import re

    rng = np.random.default_rng(4)
    g = Graph("dw_hswish")
    x = g.add_input("x", TensorType((1, 16) + hw, "u8"))
    outs = []
    for group, name in ((16, "dw"), (1, "conv")):
        acc = g.add_node("qconv", [x, g.add_const(f"w_{name}", rng.integers(-128, 128, (16, 16 // group, 3, 3))
                                                 .astype(np.int8))],
                         {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": group,
                          "x_zero_point": 7}).output
        dq = g.add_node("dequantize", [acc], {"axis": 1, "scale": [float(v) for v in rng.uniform(1e-4, 3e-4, 16)],
                                              "zero_point": [0]}).output
        hs = g.add_node("hard_swish", [dq]).output
        if tail == "add":
            outs.append(g.add_node("add", [hs, g.add_const(f"c_{name}", np.array([0.1], np.float32))],
                                   names=[name]).output)
        else:
            outs.append(g.add_node("quantize", [hs], {"axis": -1, "scale": [0.03], "zero_point": [20],
                                                      "dtype": "u8"}, names=[name]).output)
    g.set_outputs(outs)
    assert scalarized_kernels(g, PRESET[isa]) == []
    ex = compile_graph(g, PRESET[isa])
    ll = llvm_source(ex, "ll")
    assert re.search(r"llvm\.arithmetic\.fence\.v\d+f32", ll), "the fenced dequantize is scalar"
    for kind in ("conv", "dwconv"):  # each kernel on its own
        body = "\n".join(_kernel_bodies(ll, rf"qcc_{isa}_{kind}"))
        assert re.search(r"llvm\.arithmetic\.fence\.v\d+f32", body), f"the {kind}'s fenced dequantize is scalar"
    if tail == "quantize":
        assert re.search(r"llvm\.nearbyint\.v\d+f32", ll), "the quantize rounds one value at a time"
        if hw[1] % 4 == 0:  # whole vectors, a remainder in shorter ones: nothing serial
            assert not re.search(r"call float @llvm\.nearbyint\.f32", ll), "a scalar rounding is left"
    ref = check(g, {"x": _feed(rng, (1, 16) + hw, "u8")}, PRESET[isa])
    if tail == "quantize":
        assert all(len(np.unique(v)) > 20 for v in ref.values())  # not all saturated


@ISAS
@pytest.mark.parametrize("kind", ["pointwise", "depthwise"])
def test_epilogue_at_the_outputs_row_pitch_runs_the_whole_map_in_vectors(isa, kind):
    """A 1x1 conv's sums, and the VNNI depthwise kernel's, have the output's own row pitch,
    so the epilogue runs the map as one contiguous run: 14x14 is 196 values, whole vectors
    and a four-lane one, where 14-wide rows each took 8 + 4 lanes and two values one at a
    time (PP-LCNet's 1x1 256->256 conv at 14x14: 60 -> 44 us, 256->512 at 7x7: 72 -> 29
    us; its 5x5 depthwise at 14x14: 39 -> 23 us). Still equal to the interpreter's output."""
    rng = np.random.default_rng(6)
    g = Graph("pw_hswish")
    c, (k, group, oc) = 16, {"pointwise": (1, 1, 32), "depthwise": (3, 16, 16)}[kind]
    x = g.add_input("x", TensorType((1, c, 14, 14), "u8"))
    acc = g.add_node("qconv", [x, g.add_const("w", rng.integers(-128, 128, (oc, c // group, k, k)).astype(np.int8))],
                     {"strides": [1, 1], "pads": [k // 2] * 4, "dilations": [1, 1], "group": group,
                      "x_zero_point": 7}).output
    g.set_outputs([_epilogue(g, acc, oc, "hard_swish", rng, 0, (1e-4, 3e-4))])
    vectors = re.findall(r"for (\w+) in T\.vectorized\(T\.int64\((\d+)\)(?:, T\.int64\((\d+)\))?\)",
                         _kernel_script(g, isa, "conv"))
    fused = [(v, a, b) for v, a, b in vectors if v.startswith("i2_i3_fused")]
    if kind == "depthwise" and isa != "vnni":  # the float32 kernel's sums: the padded phase's pitch
        assert fused == [], vectors
    else:  # the epilogue's: whole vectors over the fused map, then one of four lanes (192..196)
        assert fused in ([("i2_i3_fused0_1", lanes, ""), ("i2_i3_fused1", "192", "196")]
                         for lanes in ("8", "16")), vectors
    ref = check(g, {"x": _feed(rng, (1, c, 14, 14), "u8")}, PRESET[isa])
    assert len(np.unique(ref["y"])) > 20


@ISAS
@pytest.mark.parametrize("name, phases", [("3x3_s1", 1), ("dilated", 1), ("3x3_s2_odd", 2),
                                          ("asym_pad_strides", 3)])
def test_pack_columns_inside_the_image_have_a_loop_of_their_own(isa, name, phases):
    """A conv's pack: the columns every phase reads inside the image run in a loop without
    the padding test, which LLVM vectorizes (with the test it copied one byte at a time:
    YOLOX's 3x3 96->96 convs at 52x52 30 us faster each); a stride-s conv's s column phases
    run inside it, so that it reads input rows in order (one phase a loop, LLVM gathered the
    stride-2 loads byte by byte; PP-OCR det's stem 250 -> 178 us). Exact all the same."""
    g, feeds = g_conv(name)
    script = _kernel_script(g, isa, "conv")
    pieces = re.findall(r'sblock\("qcc_\w+_pack_f_1\d_partition"\)', script)
    assert len(pieces) >= 2, pieces  # inside, and the border(s) the padding makes
    inner = re.findall(r"for f_1\d in range\([^\n]*\):\n\s*for ph_1 in T\.unroll\(T\.int64\((\d+)\)\)", script)
    assert inner == ([str(phases)] * len(pieces) if phases > 1 else []), inner
    check(g, feeds, PRESET[isa])


def _epilogue(g, acc, c, tail, rng, shift: int, scales):
    """`acc`'s epilogue as -O2 writes it: a per-channel requantize to u8, or a dequantize,
    hard-swish and quantize ("hard_swish"); returns its output, named y."""
    if tail == "requantize":
        m = [int(v) for v in rng.integers(1 << 30, 1 << 31, size=c)]
        return g.add_node("requantize", [acc], {"multiplier": m, "shift": [shift] * c, "axis": 1, "zero_point": 10,
                                                "dtype": "u8"}, names=["y"]).output
    dq = g.add_node("dequantize", [acc], {"axis": 1, "scale": [float(v) for v in rng.uniform(*scales, c)],
                                          "zero_point": [0]}).output
    return g.add_node("quantize", [g.add_node("hard_swish", [dq]).output],
                      {"axis": -1, "scale": [0.03], "zero_point": [20], "dtype": "u8"}, names=["y"]).output


def _kernel_script(g, isa, name: str) -> str:
    """The scheduled TIR of the one kernel of `g` whose name holds `name`."""
    import tvm

    preset = get_target(PRESET[isa])
    target = preset.target()
    with target:
        mod = strategy_for(preset).relax_pipeline(target)(lower_for(g, preset))
    [text] = [f.script() for gv, f in mod.functions_items()
              if isinstance(f, tvm.tirx.PrimFunc) and name in gv.name_hint]
    return text


def _check_on_two_threads_and_one(g, feeds, isa, float_tol=None):
    """check() of one build run with the pool at two threads, then at one (the runner sets
    the pool to its own count on every call: one without a count would run on every core),
    the two runs' outputs also bit-identical; returns the reference outputs."""
    from qcc.targets.builder import configure_threads

    ref = interp_run(g, feeds)
    ex = compile_graph(g, PRESET[isa])
    try:
        runs = [runner_from_executable(ex, g, num_threads=threads).run(feeds) for threads in (2, 1)]
    finally:
        configure_threads(None)
    for got in runs:
        _assert_outputs(got, ref, float_tol)
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in ref)
    return ref


@ISAS
@pytest.mark.parametrize("tail", ["requantize", "hard_swish"])
def test_depthwise_stages_run_channel_block_by_block(isa, tail):
    """A depthwise kernel's pack, multiply-adds and epilogue run one block of channels after
    another (one merged parallel loop: the packed plane and the sums stay in cache), not
    each stage over the whole tensor; still bit-exact, on two threads and on one."""
    rng = np.random.default_rng(6)
    c, h, w = 96, 48, 72  # 3 M multiply-adds: parallel
    g = Graph("dw_blocks")
    x = g.add_input("x", TensorType((1, c, h, w), "u8"))
    acc = g.add_node("qconv", [x, g.add_const("w", rng.integers(-128, 128, (c, 1, 3, 3)).astype(np.int8))],
                     {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": c,
                      "x_zero_point": 9}).output
    g.set_outputs([_epilogue(g, acc, c, tail, rng, shift=-12, scales=(1e-4, 3e-4))])
    text = _kernel_script(g, isa, "dwconv")
    assert len(re.findall(r"for \w+_m in T\.parallel", text)) == 1, "the stages are not merged per channel block"
    ref = _check_on_two_threads_and_one(g, {"x": _feed(rng, (1, c, h, w), "u8")}, isa)
    assert len(np.unique(ref["y"])) > 20


@_isas("vnni")
def test_depthwise_kernel_stays_exact_under_the_generic_rules(isa, monkeypatch):
    """When the x86 rule cannot schedule a depthwise kernel, the generic CPU rules take it,
    and it stays exact on two threads: their per-tile epilogue must not take the epilogue
    reading the flat accumulator at oh * W + ow (the box covering a tile's part of a row
    was whole rows, written from sums not made yet: half the outputs wrong)."""
    from qcc.targets import x86_int8

    def fail(*_args, **_kwargs):
        raise RuntimeError("a shape the depthwise schedule does not take")

    monkeypatch.setattr(x86_int8, "_schedule_depthwise", fail)
    rng = np.random.default_rng(8)
    c, h, w = 32, 48, 72
    g = Graph("dw_generic")
    x = g.add_input("x", TensorType((1, c, h, w), "u8"))
    acc = g.add_node("qconv", [x, g.add_const("w", rng.integers(-128, 128, (c, 1, 3, 3)).astype(np.int8))],
                     {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": c,
                      "x_zero_point": 9}, names=["acc"]).output
    g.set_outputs([acc])
    with pytest.warns(UserWarning, match="schedule failed"):
        _check_on_two_threads_and_one(g, {"x": _feed(rng, (1, c, h, w), "u8")}, isa)


def _conv_and_epilogue(name, shape, tail, rng, shift: int, scales):
    """A u8 qconv (same padding, zero point 9, int32 bias) and its epilogue (_epilogue);
    shape = (cin, cout, h, w, k[, stride])."""
    cin, c, h, w, k, *stride = shape
    s = stride[0] if stride else 1
    g = Graph(name)
    x = g.add_input("x", TensorType((1, cin, h, w), "u8"))
    wv = rng.integers(-128, 128, (c, cin, k, k)).astype(np.int8)
    acc = g.add_node("qconv", [x, g.add_const("w", wv), g.add_const("b", rng.integers(-9999, 9999, c).astype(np.int32))],
                     {"strides": [s, s], "pads": [k // 2] * 4, "dilations": [1, 1], "group": 1,
                      "x_zero_point": 9}).output
    g.set_outputs([_epilogue(g, acc, c, tail, rng, shift=shift, scales=scales)])
    return g


@ISAS
@pytest.mark.parametrize("shape", [(96, 192, 12, 12, 1), (64, 100, 12, 12, 3), (48, 40, 14, 14, 3)])
@pytest.mark.parametrize("tail", ["requantize", "hard_swish"])
def test_small_conv_runs_channel_block_by_block(isa, tail, shape):
    """A conv whose sums fit in cache runs its tiles and its epilogue one block of output
    channels after another, in one parallel loop (the epilogue is not a second pass over
    the whole output, nor a second parallel launch); still bit-exact on two threads and on
    one, with the channel count a multiple of the tile's rows or not."""
    cin, _, h, w, _ = shape
    rng = np.random.default_rng(7)
    g = _conv_and_epilogue("conv_blocks", shape, tail, rng, shift=-14, scales=(2e-5, 6e-5))
    text = _kernel_script(g, isa, f"qcc_{isa}_conv")
    assert len(re.findall(r"for \w+_m in T\.parallel", text)) == 1, "conv and epilogue are not merged per block"
    assert len(re.findall(r"^    for ", text, re.M)) == 2, "the epilogue has a loop of its own"  # pack, blocks
    ref = _check_on_two_threads_and_one(g, {"x": _feed(rng, (1, cin, h, w), "u8")}, isa)
    assert len(np.unique(ref["y"])) > 20


@ISAS
@pytest.mark.parametrize("dtype", ["u8", "f32"])
def test_pack_of_a_one_thread_conv_runs_on_one_thread(isa, dtype):
    """A conv too small to split (1x1 256->8 at 3x96: 590 k multiply-adds) leaves its pack,
    big enough to split (74 kB of int8, 295 kB of float), on one thread too: packed by two
    cores and read by one, half the pack crossed between the cores' caches on every call
    (PP-OCR cls float, 2 threads: 1x1 88->16 at 3x96 15.1 -> 7.1 us, the stem 28.8 -> 13.8).
    Exact on two threads and on one."""
    from qcc.targets import x86_int8

    cin, c, h, w = 256, 8, 3, 96
    rng = np.random.default_rng(12)
    if dtype == "u8":
        g = _conv_and_epilogue("conv_serial", (cin, c, h, w, 1), "requantize", rng, shift=-14, scales=(2e-5, 6e-5))
        kernel = f"qcc_{isa}_conv"
        feeds = {"x": _feed(rng, (1, cin, h, w), "u8")}
    else:
        g = Graph("fconv_serial")
        x = g.add_input("x", TensorType((1, cin, h, w), "f32"))
        wv = g.add_const("w", rng.standard_normal((c, cin, 1, 1)).astype(np.float32))
        g.set_outputs([g.add_node("conv", [x, wv, None], {"strides": [1, 1], "pads": [0] * 4, "dilations": [1, 1],
                                                          "group": 1}, names=["y"]).output])
        kernel = {"vnni": "qcc_f32x16_conv", "avx2": "qcc_f32x8_conv"}[isa]
        feeds = {"x": rng.standard_normal((1, cin, h, w)).astype(np.float32)}
    assert c * cin * h * w < x86_int8._PAR_MACS
    text = _kernel_script(g, isa, kernel)
    assert "pack" in text and "T.parallel" not in text
    # float: the reference's sums run in OpenBLAS's order, which depends on the CPU (on Zen 3
    # most outputs differ from this conv's in the last bit)
    _check_on_two_threads_and_one(g, feeds, isa, float_tol=None if dtype == "u8" else 1e-4)


@ISAS
@pytest.mark.parametrize("shape", [(16, 32, 96, 144, 1, 1, -11), (24, 40, 180, 62, 3, 1, -13),
                                   (16, 32, 33, 509, 1, 1, -11), (3, 16, 192, 288, 3, 2, -9)])
@pytest.mark.parametrize("tail", ["requantize", "hard_swish"])
def test_large_conv_runs_band_by_band(isa, tail, shape):
    """A conv whose sums do not fit in cache runs its tiles and its epilogue one block of
    output channels x band of output rows after another, in one parallel loop (not the
    whole output's int32 sums written to memory and read back by a second pass); still
    bit-exact on two threads and on one, for a 1x1 and a padded 3x3 (row pitch 64, not 62).
    At 33x509, and for the stride-2 stem (row pitch ceil(290 / 2) = 145), no band of rows
    would end on VNNI's register tiles: the row pitch is rounded up to whole vectors (512,
    160), and the padded columns are computed and dropped."""
    from qcc.targets import x86_int8

    *shape, shift = shape
    cin, _, h, w, k, stride = shape
    rng = np.random.default_rng(9)
    g = _conv_and_epilogue("conv_bands", shape, tail, rng, shift=shift, scales=(2e-4, 6e-4))
    text = _kernel_script(g, isa, f"qcc_{isa}_conv")
    [flat] = re.findall(r'_conv = T.sblock_alloc_buffer\(\(T.int64\(1\), T.int64\(1\), T.int64\(\d+\), T.int64\((\d+)\)', text)
    mr = int(re.search(r'"qcc_x86_mr": (\d+)', text).group(1))
    assert mr * int(flat) * 4 > x86_int8._BLOCK_ACC_BYTES, "a block's sums fit in cache: not a band test"
    pitch = -(-(w + 2 * (k // 2)) // stride)
    lanes = x86_int8.ISAS[isa].lanes
    # padded exactly where no band would end on a tile: the odd 509 pitch on both ISAs, the
    # stem's 145 on VNNI's 16-lane tiles (AVX2's 8-lane ones already allow its bands)
    padded = w == 509 or (stride == 2 and isa == "vnni")
    assert int(flat) == (h // stride) * (-(-pitch // lanes) * lanes if padded else pitch)
    assert len(re.findall(r"for \w+_m in T\.parallel", text)) == 1, "conv and epilogue are not merged per band"
    assert len(re.findall(r"^    for ", text, re.M)) == 2, "the epilogue has a loop of its own"  # pack, bands
    ref = _check_on_two_threads_and_one(g, {"x": _feed(rng, (1, cin, h, w), "u8")}, isa)
    assert len(np.unique(ref["y"])) > 20


def test_magnitude_bound_follows_integers_through_float_ops():
    """qcc.analysis.magnitude_bound: from a dequantized int32 (its range times the scale)
    through hard-swish and a constant multiply; nothing for a model input or a bound past
    1e30."""
    from qcc.analysis import magnitude_bound

    g = Graph("bounds")
    acc = g.add_input("acc", TensorType((1, 4, 2, 2), "i32"))
    dq = g.add_node("dequantize", [acc], {"axis": 1, "scale": [1e-3, 2e-3, 1e-3, 1e-3], "zero_point": [0]}).output
    hs = g.add_node("hard_swish", [dq]).output
    y = g.add_node("mul", [hs, g.add_const("k", np.full((1, 4, 1, 1), -3.0, np.float32))]).output
    x = g.add_input("x", TensorType((1, 4, 2, 2), "f32"))
    big = g.add_node("dequantize", [acc], {"axis": -1, "scale": [1e25], "zero_point": [0]}).output
    g.set_outputs([y, g.add_node("add", [y, x]).output, big])
    assert magnitude_bound(dq) == pytest.approx(2 ** 31 * 2e-3)
    assert magnitude_bound(y) == pytest.approx(3 * 2 ** 31 * 2e-3)
    assert magnitude_bound(x) is None and magnitude_bound(g.outputs[1]) is None
    assert magnitude_bound(big) is None


@ISAS
def test_quantize_checks_for_nan_only_where_nan_can_arrive(isa):
    """A conv's dequantize -> hard-swish -> quantize epilogue cannot see NaN (its sums are
    integers): no NaN select in the kernel, and still bit-exact. A quantize of the float
    model input keeps it (NaN -> the zero point)."""
    rng = np.random.default_rng(11)
    g = _conv_and_epilogue("nan_free", (16, 32, 24, 32, 1), "hard_swish", rng, shift=-11, scales=(2e-4, 6e-4))
    assert "isnan" not in _kernel_script(g, isa, f"qcc_{isa}_conv")
    check(g, {"x": _feed(rng, (1, 16, 24, 32), "u8")}, PRESET[isa])
    f = Graph("float_in")
    x = f.add_input("x", TensorType((1, 8, 16, 16), "f32"))
    f.set_outputs([f.add_node("quantize", [x], {"axis": -1, "scale": [0.1], "zero_point": [3], "dtype": "u8"},
                              names=["y"]).output])
    assert "isnan" in _kernel_script(f, isa, "rint_saturate")
    xs = rng.standard_normal((1, 8, 16, 16)).astype(np.float32)
    xs[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    check(f, {"x": xs}, PRESET[isa])


@ISAS
def test_qconv_fallbacks_stay_exact(isa):
    """A depthwise conv whose sums could pass 2^24 (float32 would round them) takes the
    generic lowering on AVX2 and VNNI's integer taps otherwise; i16 activations with a zero
    point far from 0 take the int16 kernels. All stay exact."""
    rng = np.random.default_rng(5)
    g = Graph("fallbacks")
    x = g.add_input("x", TensorType((1, 2, 24, 24), "u8"))
    big = np.where(rng.random((2, 1, 23, 23)) < 0.5, -128, 127).astype(np.int8)  # 255 * 128 * 529 > 2^24
    dw = g.add_node("qconv", [x, g.add_const("wd", big)],
                    {"strides": [1, 1], "pads": [11, 11, 11, 11], "dilations": [1, 1], "group": 2,
                     "x_zero_point": 0}, names=["dw"]).output
    x16 = g.add_input("x16", TensorType((1, 3, 5, 5), "i16"))
    c16 = g.add_node("qconv", [x16, g.add_const("w16", rng.integers(-128, 128, (4, 3, 1, 1)).astype(np.int8))],
                     {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 1,
                      "x_zero_point": -300}, names=["c16"]).output
    g.set_outputs([dw, c16])
    text = lower_for(g, PRESET[isa]).script(show_meta=False)
    assert (f"qcc_{isa}_dwconv" in text) == (isa == "vnni")
    assert {"vnni": "qcc_vnni16_conv", "avx2": "qcc_avx2_conv"}[isa] in text
    check(g, {"x": np.full((1, 2, 24, 24), 255, np.uint8), "x16": rng.integers(-999, 999, (1, 3, 5, 5)).astype(np.int16)},
          PRESET[isa])


def g_matmuls(seed=3):
    rng = np.random.default_rng(seed)
    g = Graph("vnni_mm")
    outs = []
    # rec-like: [1, 40, 120] x [120, 360], per-channel requantize along the last axis
    a = g.add_input("a", TensorType((1, 40, 120), "u8"))
    w = rng.integers(-128, 128, size=(120, 360)).astype(np.int8)
    acc = g.add_node("qmatmul", [a, g.add_const("w", w), g.add_const("b", rng.integers(-9999, 9999, 360).astype(np.int32))],
                     {"a_zero_point": 95}, names=["mm"]).output
    outs += [acc] + _requantizes(g, acc, 360, 2, seed)
    # odd sizes, i8 activations, 2-D
    a2 = g.add_input("a2", TensorType((7, 13), "i8"))
    outs.append(g.add_node("qmatmul", [a2, g.add_const("w2", rng.integers(-128, 128, (13, 21)).astype(np.int8))],
                           {"a_zero_point": -7}, names=["mm_odd"]).output)
    # batched activations times one matrix; u8 weights with a zero point that centres them into int8
    a3 = g.add_input("a3", TensorType((2, 3, 5, 8), "u8"))
    w3 = rng.integers(0, 256, size=(8, 17)).astype(np.uint8)
    outs.append(g.add_node("qmatmul", [a3, g.add_const("w3", w3), g.add_const("b3", rng.integers(-99, 99, 17).astype(np.int32))],
                           {"a_zero_point": 0, "b_zero_point": 128}, names=["mm_batched"]).output)
    # a vector times a matrix
    v = g.add_input("v", TensorType((33,), "u8"))
    outs.append(g.add_node("qmatmul", [v, g.add_const("w4", rng.integers(-128, 128, (33, 16)).astype(np.int8))],
                           {"a_zero_point": 250}, names=["mm_vec"]).output)
    g.set_outputs(outs)
    feeds = {i.name: _feed(rng, i.shape, i.dtype) for i in g.inputs}
    return g, feeds


@ISAS
def test_qmatmul_bit_exact(isa):
    g, feeds = g_matmuls()
    text = lower_for(g, PRESET[isa]).script(show_meta=False)
    assert text.count(f"qcc_{isa}_matmul") >= 4, "every qmatmul here takes the kernel"
    ref = check(g, feeds, PRESET[isa])
    assert len(np.unique(ref["rq_u8"])) > 5


@ISAS
def test_qmatmul_two_activations_falls_back(isa):
    rng = np.random.default_rng(8)
    g = Graph("mm_act")
    a = g.add_input("a", TensorType((2, 5, 16), "u8"))
    b = g.add_input("b", TensorType((2, 16, 6), "u8"))
    g.set_outputs([g.add_node("qmatmul", [a, b], {"a_zero_point": 3, "b_zero_point": 120}).output])
    assert not _uses(g, isa, PRESET[isa])
    check(g, {"a": _feed(rng, (2, 5, 16), "u8"), "b": _feed(rng, (2, 16, 6), "u8")}, PRESET[isa])


def _asm(ex) -> str:
    return llvm_source(ex, "asm")


@ISAS
def test_instruction_in_generated_code(isa):
    g, feeds = g_conv("3x3_s1")
    asm = _asm(compile_graph(g, PRESET[isa]))
    assert asm.count(MNEMONIC[isa]) >= 8, f"the conv's inner loop is {isa}"


@ISAS
@pytest.mark.parametrize("hw", [(80, 120), (20, 24)])
def test_no_workspace_allocation_inside_parallel_tiles(isa, hw):
    """The accumulator tile lives on the stack: no parallel task body (where the tiles run)
    calls TVMBackendAllocWorkspace. TVM 0.27 makes a workspace of every "local" buffer and
    of a global one of 1 kB or more, once per tile; cpu_tir_passes.py keeps the tiles of more
    than 16 AVX-512 accumulators (asserted: this one's is larger) and a small map's
    per-block sums (20x24: the conv runs block by block) on the stack. Results exact."""
    import re

    rng = np.random.default_rng(2)
    g = Graph("big_1x1")
    x = g.add_input("x", TensorType((1, 64) + hw, "u8"))  # >= 3M MACs: parallel
    w = g.add_const("w", rng.integers(-128, 128, (96, 64, 1, 1)).astype(np.int8))
    g.set_outputs([g.add_node("qconv", [x, w], {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1],
                                               "group": 1, "x_zero_point": 3}).output])
    from qcc.targets.x86_int8 import ISAS as KERNEL_ISAS

    script = _kernel_script(g, isa, f"qcc_{isa}_conv")
    mr, nr = (int(v) for v in re.search(r'"qcc_x86_mr": (\d+), "qcc_x86_nr": (\d+)', script).groups())
    if isa == "vnni" and hw == (80, 120):
        assert mr * nr * KERNEL_ISAS[isa].lanes * 4 > 1024, (mr, nr)
    if hw == (20, 24):
        assert re.search(r"for \w+_m in T\.parallel", script), "the small map does not run block by block"
    ex = compile_graph(g, PRESET[isa])
    ll = llvm_source(ex, "ll")
    lambdas = re.findall(r"^define [^\n]*@__tvm_parallel_lambda[^\n]*\{\n(.*?)^\}", ll, re.S | re.M)
    assert lambdas, "the kernel has parallel tasks"
    assert not any("TVMBackendAllocWorkspace" in body for body in lambdas)
    check(g, {"x": _feed(rng, (1, 64) + hw, "u8")}, PRESET[isa])


def test_avx2_tile_fits_the_register_file():
    """No accumulator spills: an AVX2 tile leaves room in 16 ymm registers for its loaded
    pixel vectors, the broadcast weights and vpmaddwd's product, and loads at most two
    vectors (wider tiles spilled inside the reduction loop: x86_int8.AVX2)."""
    from qcc.targets.x86_int8 import AVX2, _pick_tile

    for rows, vecs in [(24, 200), (96, 1500), (8, 3), (5, 40), (3, 1)]:
        mr, nr = _pick_tile(AVX2, rows, vecs)
        assert mr * nr <= AVX2.max_acc and mr * nr + nr + 2 <= 16 and nr <= 2, (rows, vecs, mr, nr)
    assert _pick_tile(AVX2, 24, 200) == (6, 2)


def test_each_preset_takes_its_best_kernel():
    """x86-avx512 builds VNNI kernels, x86-avx2 AVX2 ones, an x86 preset with neither the
    generic lowering; all stay exact where they run."""
    from qcc.targets.presets import TargetPreset

    plain = TargetPreset("x86-sse-test", {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64"},
                         "x86", None, frozenset(), "x86-64 without AVX2")
    g, feeds = g_conv("1x1_odd_channels")
    assert _uses(g, "avx2", "x86-avx2") and not _uses(g, "vnni", "x86-avx2")
    assert _uses(g, "vnni", "x86-avx512") and not _uses(g, "avx2", "x86-avx512")
    assert not _uses(g, "avx2", plain) and not _uses(g, "vnni", plain)
    avx2 = get_target("x86-avx2")
    rules = [type(r).__name__ for r in strategy_for(avx2).schedule_rules(avx2.target())]
    assert "AVX2Rule" in rules and "VNNIRule" not in rules
    assert not any(n in ("AVX2Rule", "VNNIRule") for n in
                   (type(r).__name__ for r in strategy_for(plain).schedule_rules(plain.target())))
    check(g, feeds, plain)
    if _HAS["avx2"]:
        check(g, feeds, "x86-avx2")


def test_avx512_preset_builds_vnni_for_cascadelake():
    """x86-avx512 (cascadelake) emits the same VNNI kernels (built, not run: Zen 4 runs them too)."""
    g, feeds = g_conv("grouped")
    ex = compile_graph(g, "x86-avx512")
    assert "vpdpbusd" in _asm(ex)
    if not _HAS["vnni"]:
        return
    got = runner_from_executable(ex, g).run(feeds)
    ref = interp_run(g, feeds)
    assert all(np.array_equal(got[k], ref[k]) for k in ref)


@pytest.mark.slow
@ISAS
def test_ppocr_cls_o2_bit_exact(isa, tmp_path, ppocr_cls_path):
    """The PP-OCR direction classifier at -O2: every output identical to the interpreter,
    and its pointwise convs run as the ISA's kernels."""
    import qcc
    from qcc.ir.parser import load as load_qir
    from test_targets_int import assert_bit_equal, inexact_values

    shape = (1, 3, 48, 192)
    rng = np.random.default_rng(0)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rng.uniform(-1, 1, (4,) + shape[1:]).astype(np.float32))
    qcc.compile(ppocr_cls_path, tmp_path / "cls", target=PRESET[isa], opt_level="O2", calib=calib,
                input_shapes={"x": shape})
    g = load_qir(tmp_path / "cls" / "model.qir")
    assert f"qcc_{isa}_conv" in lower_for(g, PRESET[isa]).script(show_meta=False)
    assert scalarized_kernels(g, PRESET[isa]) == []
    runner = qcc.load(tmp_path / "cls")
    loose = inexact_values(g)  # downstream of softmax: 1e-6
    for _ in range(2):
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        ref = interp_run(g, {"x": x})
        assert_bit_equal(runner.run({"x": x}), ref, {k: 1e-6 for k in ref if k in loose})


def scalarized_kernels(g, preset_name) -> list:
    """The kernels in which TVM's VectorizeLoop gave a vectorized loop up and made it scalar
    (it names the loop `<var>_s`): it does so silently for any op it cannot vectorize, as it
    did for every quantize's nearbyint and isnan (an epilogue 5x slower)."""
    import tvm
    from tvm import s_tir, tirx

    preset = get_target(preset_name)
    target = preset.target()
    with target:
        mod = strategy_for(preset).relax_pipeline(target)(lower_for(g, preset))
    passes = tvm.ir.transform.Sequential([  # the s_tir pipeline up to VectorizeLoop
        s_tir.transform.CanonicalizeLoop(), s_tir.transform.LowerInitBlock(),
        s_tir.transform.PlanAndUpdateBufferAllocationLocation(), s_tir.transform.ConvertBlocksToOpaque(),
        s_tir.transform.CompactBufferAllocation(), s_tir.transform.LowerMatchBuffer(),
        s_tir.transform.StmtSimplify(), s_tir.transform.LowerOpaqueBlock(), tirx.transform.FlattenBuffer(),
        tirx.transform.NarrowDataType(32), s_tir.transform.LoopPartition(), tirx.transform.VectorizeLoop(True)])
    bad = []
    for gv, f in mod.functions_items():
        if isinstance(f, tvm.tirx.PrimFunc):
            with target:
                lowered = passes(tvm.IRModule({"main": f.with_attr("target", target)}))
            if re.search(r"for \w+_s in", lowered.script()):
                bad.append(gv.name_hint)
    return bad


@ISAS
def test_int64_accumulators_take_the_generic_lowering(isa):
    """A node that asks for an int64 accumulator (`acc="i64"`: its product and bias bound can
    pass int32) must not go through the int32 kernels; the generic lowering stays exact."""
    rng = np.random.default_rng(11)
    g = Graph("acc_i64")
    x = g.add_input("x", TensorType((1, 8, 5, 5), "u8"))
    c = g.add_node("qconv", [x, g.add_const("w", rng.integers(100, 128, (16, 8, 3, 3)).astype(np.int8)),
                             g.add_const("b", np.full(16, 2_146_000_000, np.int64).astype(np.int32))],
                   {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1,
                    "x_zero_point": 0, "acc": "i64"}, names=["c"]).output
    a = g.add_input("a", TensorType((4, 32), "u8"))
    m = g.add_node("qmatmul", [a, g.add_const("wm", rng.integers(-128, 128, (32, 16)).astype(np.int8))],
                   {"a_zero_point": 0, "acc": "i64"}, names=["m"]).output
    g.set_outputs([c, m])
    assert c.dtype == "i64" and m.dtype == "i64"
    assert not _uses(g, isa, PRESET[isa])
    ref = check(g, {"x": np.full((1, 8, 5, 5), 255, np.uint8), "a": _feed(rng, (4, 32), "u8")}, PRESET[isa])
    assert ref["c"].max() > np.iinfo(np.int32).max  # the case int32 would have wrapped


# float convs left in a model (x shape, out channels, kernel, strides, pads, dilations, group)
FLOAT_CONV_CASES = {
    "1x1": ((1, 24, 6, 20), 40, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "3x3_s2": ((2, 5, 11, 13), 9, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    "grouped": ((1, 16, 7, 9), 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2),
    "depthwise_5x5": ((1, 12, 9, 20), 12, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 12),
    "depthwise_s2_dilated": ((1, 6, 13, 14), 6, (3, 3), (2, 1), (2, 2, 2, 1), (2, 2), 6),
}


@pytest.mark.parametrize("name", sorted(FLOAT_CONV_CASES))
def test_float_conv_kernel(name):
    """Float convs take the same kernel layout as float32 multiply-adds (x86_int8's float Isa,
    depthwise ones x86_depthwise's) and agree with the interpreter to float rounding."""
    xshape, oc, (kh, kw), strides, pads, dil, group = FLOAT_CONV_CASES[name]
    rng = np.random.default_rng(7)
    g = Graph(f"fconv_{name}")
    x = g.add_input("x", TensorType(xshape, "f32"))
    w = g.add_const("w", rng.standard_normal((oc, xshape[1] // group, kh, kw)).astype(np.float32))
    b = g.add_const("b", rng.standard_normal(oc).astype(np.float32))
    y = g.add_node("conv", [x, w, b], {"strides": list(strides), "pads": list(pads), "dilations": list(dil),
                                       "group": group}, names=["y"]).output
    g.add_node("relu", [y], names=["r"])
    g.set_outputs([y, g.nodes[-1].output])
    kernel = "qcc_f32x8_dwconv" if group == xshape[1] else "qcc_f32x8_conv"
    assert kernel in lower_for(g, "x86-avx2").script(show_meta=False)
    assert kernel.replace("x8", "x16") in lower_for(g, "x86-avx512").script(show_meta=False)
    if not _HAS["avx2"]:
        return
    feeds = {"x": rng.standard_normal(xshape).astype(np.float32)}
    ref = interp_run(g, feeds)
    got = runner_from_executable(compile_graph(g, "x86-avx2"), g).run(feeds)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5 * float(np.abs(ref[k]).max()))


# float matmuls by a constant matrix: a shape, weight shape, op ("matmul" or gemm's trans_b)
FLOAT_MATMUL_CASES = {
    "tokens_4d": ((1, 7, 9, 24), (24, 40), "matmul"),  # convnext's pointwise MLP on NHWC
    "batch_3d": ((2, 5, 33), (33, 17), "matmul"),
    "vector": ((33,), (33, 10), "matmul"),
    "gemm_trans_b": ((3, 50), (12, 50), "gemm"),  # a classifier: weights stored [out, in]
    "heads_4d": ((2, 4, 13, 32), (32, 9), "matmul"),  # attention-shaped: 4 heads of 13 tokens
}


@pytest.mark.parametrize("name", sorted(FLOAT_MATMUL_CASES))
def test_float_matmul_kernel(name):
    """Float matmuls and gemms by a constant matrix take the int8 kernel's layout as float32
    multiply-adds (TVM's own schedule: 26 GMAC/s on convnext's MLPs), and so does a product of
    two activations with the same batch dims (attention's Q.K^T: ~18 GMAC/s before), packed at
    run time; all agree with the interpreter to float rounding."""
    ashape, wshape, op = FLOAT_MATMUL_CASES[name]
    rng = np.random.default_rng(8)
    g = Graph(f"fmm_{name}")
    a = g.add_input("a", TensorType(ashape, "f32"))
    w = g.add_const("w", rng.standard_normal(wshape).astype(np.float32))
    if op == "gemm":
        c = g.add_const("c", rng.standard_normal(wshape[0]).astype(np.float32))
        y = g.add_node("gemm", [a, w, c], {"trans_b": 1, "alpha": 0.5}, names=["y"]).output
    else:
        y = g.add_node("matmul", [a, w], names=["y"]).output
    outs = [y]
    if len(ashape) >= 2:  # a product of two activations: no constant, no kernel
        other = g.add_input("b", TensorType(ashape[:-2] + (ashape[-1], 3), "f32"))
        outs.append(g.add_node("matmul", [a, other], names=["z"]).output)
    g.set_outputs(outs)
    script = lower_for(g, "x86-avx2").script(show_meta=False)
    assert script.count("qcc_f32x8_matmul") >= 1 and "qcc_f32x16_matmul" in lower_for(g, "x86-avx512").script(show_meta=False)
    assert ("qcc_f32x8_batch_matmul" in script) == (len(outs) > 1) and "R.matmul" not in script
    if not _HAS["avx2"]:
        return
    feeds = {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in g.inputs}
    ref = interp_run(g, feeds)
    got = runner_from_executable(compile_graph(g, "x86-avx2"), g).run(feeds)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5 * float(np.abs(ref[k]).max()))


@ISAS
@pytest.mark.parametrize("zx", [0, -1234])
def test_qconv_16bit_activations_bit_exact(isa, zx):
    """w8a16 layers (the bit-width search's a16 raise) run through an int16 multiply-
    accumulate (vpdpwssd on VNNI, vpmaddwd on AVX2), not the generic lowering (PP-OCR cls's
    a16 stem: 24 GMAC/s there), and equal the reference bit for bit, extremes included."""
    rng = np.random.default_rng(9)
    g = Graph("a16")
    outs = []
    for name, (shape, oc, k, s) in {"stem": ((1, 3, 20, 28), 8, 3, 2), "pw": ((1, 16, 10, 12), 24, 1, 1)}.items():
        x = g.add_input(f"x_{name}", TensorType(shape, "i16"))
        acc = g.add_node("qconv", [x, g.add_const(f"w_{name}", rng.integers(-127, 128, (oc, shape[1], k, k)).astype(np.int8)),
                                   g.add_const(f"b_{name}", rng.integers(-99999, 99999, oc).astype(np.int32))],
                         {"strides": [s, s], "pads": [k // 2] * 4, "dilations": [1, 1], "group": 1,
                          "x_zero_point": zx}, names=[name]).output
        outs.append(acc)
    g.set_outputs(outs)
    text = lower_for(g, PRESET[isa]).script(show_meta=False)
    kernel = "qcc_vnni16_conv" if isa == "vnni" else "qcc_avx2_conv"
    assert text.count(kernel) >= 2, f"16-bit activations did not take {kernel}"
    if isa == "vnni":
        assert "vpdpwssd" in _asm(compile_graph(g, PRESET[isa]))
    feeds = {f"x_{n}": rng.integers(-32768, 32768, shape).astype(np.int16)
             for n, shape in (("stem", (1, 3, 20, 28)), ("pw", (1, 16, 10, 12)))}
    feeds["x_stem"].reshape(-1)[:4] = [32767, -32768, 32767, -32768]
    check(g, feeds, PRESET[isa])


@ISAS
@pytest.mark.parametrize("za", [0, -1234])
def test_qmatmul_16bit_activations_bit_exact(isa, za):
    """w8a16 matmuls (a transformer's sensitive fc layers: all-MiniLM-L6-v2's FFN ran at
    ~21 GMAC/s through the generic lowering, its int8 ones at ~41-55 in the kernel) take the
    int16 multiply-accumulate, and equal the reference bit for bit, extremes and a long
    reduction included (int32 wraps alike in both)."""
    rng = np.random.default_rng(10)
    g = Graph("mm_a16")
    outs = []
    for name, (shape, n) in {"tokens": ((1, 32, 96), 40), "long": ((3, 1536), 24), "vec": ((70,), 16)}.items():
        a = g.add_input(f"a_{name}", TensorType(shape, "i16"))
        outs.append(g.add_node("qmatmul", [a, g.add_const(f"w_{name}", rng.integers(-127, 128, (shape[-1], n)).astype(np.int8)),
                                           g.add_const(f"b_{name}", rng.integers(-99999, 99999, n).astype(np.int32))],
                               {"a_zero_point": za}, names=[name]).output)
    g.set_outputs(outs)
    text = lower_for(g, PRESET[isa]).script(show_meta=False)
    kernel = "qcc_vnni16_matmul" if isa == "vnni" else "qcc_avx2_matmul"
    assert text.count(kernel) >= 3, f"16-bit activations did not take {kernel}"
    feeds = {f"a_{n}": rng.integers(-32768, 32768, shape).astype(np.int16)
             for n, shape in (("tokens", (1, 32, 96)), ("long", (3, 1536)), ("vec", (70,)))}
    feeds["a_long"][0] = 32767  # a row at the extreme: its sums wrap int32 in both
    feeds["a_long"][1] = -32768
    check(g, feeds, PRESET[isa])


@ISAS
@pytest.mark.parametrize("zx", [0, -1234, 32767])
def test_16bit_depthwise_runs_as_two_byte_convs_bit_exact(isa, zx):
    """w8a16 depthwise convs (PP-OCR det's 5x5s: 9 GMAC/s through the generic lowering)
    run as two uint8 depthwise convs, one per byte of x + 32768, summed as 256 * high + low;
    the result is the int32 reference bit for bit, the extremes and padding included."""
    rng = np.random.default_rng(17)
    g = Graph("a16_dw")
    outs = []
    for name, (shape, k, s, pads) in {"k3": ((1, 16, 12, 18), 3, 1, [1, 1, 1, 1]),
                                      "k5s2": ((2, 24, 11, 13), 5, 2, [2, 1, 2, 3])}.items():
        x = g.add_input(f"x_{name}", TensorType(shape, "i16"))
        w = np.where(rng.random((shape[1], 1, k, k)) < 0.5, -128, 127).astype(np.int8)  # sums at full scale
        acc = g.add_node("qconv", [x, g.add_const(f"w_{name}", w),
                                   g.add_const(f"b_{name}", rng.integers(-99999, 99999, shape[1]).astype(np.int32))],
                         {"strides": [s, s], "pads": pads, "dilations": [1, 1], "group": shape[1],
                          "x_zero_point": zx}, names=[name]).output
        outs.append(acc)
    g.set_outputs(outs + _requantizes(g, outs[0], 16, 1, 3))
    text = lower_for(g, PRESET[isa]).script(show_meta=False)
    assert text.count(f"qcc_{isa}_dwconv") >= 4 and "int16_byte" in text, "the a16 depthwise took the generic lowering"
    feeds = {}
    for name, shape in (("k3", (1, 16, 12, 18)), ("k5s2", (2, 24, 11, 13))):
        f = rng.integers(-32768, 32768, shape).astype(np.int16)
        f.reshape(-1)[:6] = [32767, -32768, 32767, -32768, 32767, 32767]
        feeds[f"x_{name}"] = f
    check(g, feeds, PRESET[isa])


@ISAS
def test_a16_conv_over_a_long_reduction_keeps_int32_and_the_int16_kernel(isa):
    """quantize sizes the accumulator from the layer's own weights: an a16 3x3 conv of 96
    channels (K = 864, past the dtypes' int32 bound of 511) whose weights' bound fits gets
    int32 and the int16 kernel (PP-OCR det's head: 9 ms as int64 through the generic
    lowering, 1.4 ms here), exact at the inputs' extremes; weights at full scale still get
    int64, as their sums can pass int32."""
    from qcc.ir.types import QuantParams
    from qcc.passes_registry import load_builtins

    load_builtins()  # the passes in the registry's order: quantize and round_weights import each other
    from qcc.passes.quantize import _accumulator

    rng = np.random.default_rng(13)
    qx = QuantParams(16, True, np.array([0.01]), 0)
    mild = rng.integers(-12, 13, (24, 96, 3, 3)).astype(np.int8)
    assert _accumulator("conv", qx, mild, 8, None) == "i32"
    assert _accumulator("conv", qx, np.full((24, 96, 3, 3), 127, np.int8), 8, None) == "i64"
    g = Graph("a16_long_k")
    x = g.add_input("x", TensorType((1, 96, 6, 20), "i16"))
    acc = g.add_node("qconv", [x, g.add_const("w", mild), g.add_const("b", rng.integers(-9999, 9999, 24).astype(np.int32))],
                     {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1, "x_zero_point": 0},
                     names=["c"]).output
    g.set_outputs([acc])
    assert acc.dtype == "i32"
    assert ("qcc_vnni16_conv" if isa == "vnni" else "qcc_avx2_conv") in lower_for(g, PRESET[isa]).script(show_meta=False)
    feeds = {"x": np.where(rng.random((1, 96, 6, 20)) < 0.5, -32768, 32767).astype(np.int16)}
    # output channel 0 at row 2, column 5 reaches its bound: each tap's input has its weight's sign
    feeds["x"][0, :, 1:4, 4:7] = np.where(mild[0] < 0, -32767, 32767)
    ref = check(g, feeds, PRESET[isa])
    bound = 32767 * int(np.abs(mild[0].astype(np.int64)).sum())
    assert abs(int(ref["c"][0, 0, 2, 5])) >= bound - 9999 > 2 ** 27  # the sum the bound allows, exact


def test_vnni_presets_keep_the_int16_dot_product_fused():
    """LLVM's machine combiner would split each vpdpwssd of the w8a16 kernels into vpmaddwd +
    vpaddd (two instructions for the same products; det's 3x3 96->24 a16 conv 1.45 ms that
    way, 1.04 fused): the VNNI presets tell it the fused one is fast (presets._VNNI_MATTR)."""
    rng = np.random.default_rng(3)
    g = Graph("a16_fused")
    x = g.add_input("x", TensorType((1, 96, 24, 36), "i16"))
    acc = g.add_node("qconv", [x, g.add_const("w", rng.integers(-12, 13, (24, 96, 3, 3)).astype(np.int8))],
                     {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1, "x_zero_point": 0},
                     names=["c"]).output
    g.set_outputs([acc])
    for preset in ("x86-avx512", "host") if _HAS["vnni"] else ("x86-avx512",):
        asm = _asm(compile_graph(g, preset))
        assert "vpdpwssd" in asm and "vpmaddwd" not in asm, preset


def test_avx512_presets_vectorize_epilogues_sixteen_lanes_wide():
    """An epilogue left to LLVM's loop vectorizer (dequantize -> relu -> quantize: no fenced
    product for vectorize_fenced_row) runs in 512-bit vectors on the AVX-512 presets: LLVM's
    Intel CPU models prefer 256-bit ones, which ran it eight lanes at a time beside 512-bit
    kernels (presets._AVX512_MATTR; PP-OCR cls's 1x1 8->8 conv at 24x96: 7.9 -> 4.2 us)."""
    import re

    rng = np.random.default_rng(5)
    g = Graph("relu_epilogue")
    x = g.add_input("x", TensorType((1, 8, 24, 96), "u8"))
    acc = g.add_node("qconv", [x, g.add_const("w", rng.integers(-128, 128, (8, 8, 1, 1)).astype(np.int8))],
                     {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 1,
                      "x_zero_point": 3}).output
    dq = g.add_node("dequantize", [acc], {"axis": 1, "scale": [float(v) for v in rng.uniform(1e-4, 3e-4, 8)],
                                          "zero_point": [0]}).output
    r = g.add_node("relu", [dq]).output
    g.set_outputs([g.add_node("quantize", [r], {"axis": -1, "scale": [0.02], "zero_point": [0], "dtype": "u8"},
                              names=["y"]).output])
    for preset in ("x86-avx512", "host") if _HAS["vnni"] else ("x86-avx512",):
        asm = _asm(compile_graph(g, preset))
        converts = re.findall(r"vcvtdq2ps\s+%?([xyz])mm", asm)
        assert converts and set(converts) == {"z"}, (preset, converts)
    if _HAS["vnni"]:
        ref = check(g, {"x": _feed(rng, (1, 8, 24, 96), "u8")}, "x86-avx512")
        assert len(np.unique(ref["y"])) > 20


@ISAS
@pytest.mark.parametrize("name", ["3x3_s1", "grouped"])
def test_every_tile_the_search_may_choose_is_bit_exact(isa, name):
    """-O3's tile search (targets/tile_search.py) may give a conv any tile of its plan's
    tile_space, wider ones than the cost model allows included: each computes the same bits."""
    from qcc.targets import x86_int8
    from qcc.targets.tile_search import _plan

    g, feeds = g_conv(name)
    plan = _plan(next(n for n in g.nodes if n.op == "qconv"), x86_int8.isa_for(get_target(PRESET[isa])))
    space = plan.tile_space
    assert len(space) >= 3 and len(set(space)) == len(space)
    assert max(nr for _, nr in space) == 4  # past AVX2's max_vecs too
    for tile in space:
        with x86_int8.tile_choices({x86_int8.tile_key(plan): tile}):
            assert _plan(next(n for n in g.nodes if n.op == "qconv"), plan.isa).tile == tile
            check(g, feeds, PRESET[isa])


@ISAS
def test_every_matmul_tile_the_search_may_choose_is_bit_exact(isa):
    """The int8 matmul kernel takes any tile of its plan's tile_space too (the search treats
    matmuls by a constant matrix like convs): the i-th candidate of every matmul at once."""
    from qcc.targets import x86_int8
    from qcc.targets.tile_search import _plan

    g, feeds = g_matmuls()
    isa_obj = x86_int8.isa_for(get_target(PRESET[isa]))
    plans = [p for p in (_plan(n, isa_obj) for n in g.nodes) if p is not None]
    assert len(plans) == 4
    for i in range(max(len(p.tile_space) for p in plans)):
        pick = {x86_int8.tile_key(p): p.tile_space[min(i, len(p.tile_space) - 1)] for p in plans}
        with x86_int8.tile_choices(pick):
            assert [_plan(n, isa_obj).tile for n in g.nodes if _plan(n, isa_obj) is not None] == list(pick.values())
            check(g, feeds, PRESET[isa])
