"""Mixed precision (issue 5): int4 weights packed two per byte, int16 activations with exact
int32/int64 accumulation, and assign-bitwidths choosing among them under the user's rules and
budgets -- from the pass, the config file and the command line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qcc.analysis import weight_bytes
from qcc.interp import run as interp_run
from qcc.ir import Graph, TensorType
from qcc.ops.quant import accumulator_dtype
from qcc.pass_manager import PassContext, PassManager
from qcc.passes_registry import PassError
from qcc.passes.assign_bitwidths import normalize_choice, parse_error_budget, parse_precision, parse_size
from qcc.quantization import pack_int4, quantize_weights, unpack_int4

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny_cnn.onnx"
TINY_CALIB = ROOT / "examples" / "tiny_cnn_calib.npz"
# the search's tests are written around the tiny net's layer noises with the calibration
# sample's own tails (insert-observers{tail=0}): a modelled tail widens its ranges and moves
# which layer is noisiest, which tests/test_calib_data.py covers on its own
UPTO_BITWIDTHS = "canonicalize,fuse,insert-observers{tail=0},propagate-ranges,assign-bitwidths"


# --- int4 packing ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 101, 4096])
def test_pack_int4_round_trips(n):
    rng = np.random.default_rng(n)
    q = rng.integers(-8, 8, n).astype(np.int8)
    packed = pack_int4(q)
    assert packed.dtype == np.uint8 and packed.size == (n + 1) // 2
    np.testing.assert_array_equal(unpack_int4(packed, (n,)), q)
    u = rng.integers(0, 16, n).astype(np.uint8)
    np.testing.assert_array_equal(unpack_int4(pack_int4(u), (n,), signed=False), u)


def test_pack_int4_layout_and_shapes():
    # element 2j in the low nibble of byte j, 2j+1 in the high one; odd counts pad a 0 nibble
    assert pack_int4(np.array([1, -1, 7], np.int8)).tolist() == [0xF1, 0x07]
    q = np.random.default_rng(0).integers(-7, 8, (5, 3, 3, 3)).astype(np.int8)  # 135 values: odd
    np.testing.assert_array_equal(unpack_int4(pack_int4(q), q.shape), q)


def test_int4_weights_are_symmetric_minus7_to_7():
    w = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)
    q, s = quantize_weights(w, 0, bits=4)
    assert q.dtype == np.int8 and q.min() >= -7 and q.max() <= 7
    assert (np.abs(q).reshape(4, -1).max(axis=1) == 7).all()  # every channel uses its full range
    q16, _ = quantize_weights(w, 0, bits=16)
    assert q16.dtype == np.int16 and np.abs(q16).max() == 32767


# --- choices, sizes, accumulators --------------------------------------------------------------

def test_precision_aliases():
    assert [normalize_choice(t) for t in ("int8", "w8a8", "int4", "W4", "int16", "a16", "w16", "w4a16", "float")] \
        == ["int8", "int8", "w4a8", "w4a8", "w8a16", "w8a16", "w16a8", "w4a16", "float"]
    assert parse_precision("conv_12=int16,*.head.*=float;op:matmul=w4") == \
        [("conv_12", "w8a16"), ("*.head.*", "float"), ("op:matmul", "w4a8")]
    with pytest.raises(ValueError, match="int3"):
        parse_precision("c1=int3")


def test_parse_size():
    assert parse_size("2MB") == 2_000_000 and parse_size("512kB") == 512_000
    assert parse_size("1.5MiB") == 1572864 and parse_size("1234") == 1234 and parse_size(99) == 99
    for bad in ("two MB", "-3", "5 parsecs"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_parse_error_budget():
    assert parse_error_budget("30dB") == 30.0 and parse_error_budget(" 12.5 DB ") == 12.5
    assert parse_error_budget("0.01") == pytest.approx(40.0) and parse_error_budget("") == 0.0
    for bad in ("abc", "xdB", "nandB", "infdB", "1.5", "0", "nan"):
        with pytest.raises(ValueError, match="give dB"):
            parse_error_budget(bad)


def test_accumulator_dtype_from_dtypes_and_k():
    assert accumulator_dtype("u8", 128, "i8", 0, 3 * 3 * 512) == "i32"
    assert accumulator_dtype("i16", 0, "i8", 0, 511) == "i32"  # 511 * 32768 * 128 < 2^31
    assert accumulator_dtype("i16", 0, "i8", 0, 512) == "i64"
    assert accumulator_dtype("i16", 0, "i4", 0, 8191) == "i32"  # 4-bit weights: 16x more terms
    assert accumulator_dtype("i16", 0, "i16", 0, 2) == "i64"


# --- compiled kernels: bit-identical to the interpreter ------------------------------------------

def _compiled_equals_interpreter(g: Graph, feeds):
    pytest.importorskip("tvm")
    from qcc.targets import compile_graph, runner_from_executable

    ref = interp_run(g, feeds)
    got = runner_from_executable(compile_graph(g, "host"), g).run(feeds)
    for k, r in ref.items():
        assert got[k].dtype == r.dtype and got[k].shape == r.shape, k
        np.testing.assert_array_equal(got[k], r, err_msg=k)
    return ref


def _int(rng, shape, dtype):
    lo, hi = {"u8": (0, 255), "i16": (-32768, 32767)}[dtype]
    return rng.integers(lo, hi + 1, shape).astype(np.uint8 if dtype == "u8" else np.int16)


@pytest.mark.parametrize("xdt,wdt,acc,zx", [("u8", "i4", "i32", 100), ("i16", "i4", "i32", 0),
                                            ("i16", "i8", "i64", 0), ("i16", "i16", "i64", 0)])
def test_qconv_int4_weights_and_int16_activations_bit_exact(xdt, wdt, acc, zx):
    rng = np.random.default_rng(7)
    g = Graph(f"qconv_{xdt}_{wdt}")
    x = g.add_input("x", TensorType((1, 64, 6, 7), xdt))
    lim = {"i4": 7, "i8": 127, "i16": 32767}[wdt]
    wv = rng.integers(-lim, lim + 1, (10, 64, 3, 3)).astype(np.int16 if wdt == "i16" else np.int8)
    wv[0] = lim  # channel 0 at full scale: with x at its minimum, a sum past int32 where acc="i64"
    w = g.add_const("w", wv, wdt)
    b = g.add_const("b", rng.integers(-1000, 1000, 10).astype(np.int32), "i32")
    assert accumulator_dtype(xdt, zx, wdt, 0, 64 * 9) == acc
    attrs = {"strides": [1, 1], "pads": [1, 0, 1, 2], "dilations": [1, 1], "group": 1, "x_zero_point": zx,
             **({"acc": acc} if acc != "i32" else {})}
    c = g.add_node("qconv", [x, w, b], attrs).output
    assert c.dtype == acc
    r16 = g.add_node("requantize", [c], {"multiplier": [1 << 30], "shift": [-8], "dtype": "i16"}).output
    r8 = g.add_node("requantize", [c], {"multiplier": [1 << 30] * 10, "shift": [-12] * 10, "axis": 1,
                                        "dtype": "u8", "zero_point": 3}).output
    dq = g.add_node("dequantize", [c], {"scale": [0.001], "zero_point": [0]}).output
    g.set_outputs([c, r16, r8, dq])
    _compiled_equals_interpreter(g, {"x": _int(rng, (1, 64, 6, 7), xdt)})
    lowest = np.full((1, 64, 6, 7), -32768 if xdt == "i16" else 0, np.int16 if xdt == "i16" else np.uint8)
    ref = _compiled_equals_interpreter(g, {"x": lowest})
    if acc == "i64":  # the bound is real: an int32 accumulator would have wrapped
        assert ref["qconv"].min() < -(2 ** 31)


@pytest.mark.parametrize("adt,bdt,acc", [("u8", "i4", "i32"), ("i16", "i4", "i32"), ("i16", "i8", "i64")])
def test_qmatmul_int4_weights_and_int16_activations_bit_exact(adt, bdt, acc):
    rng = np.random.default_rng(3)
    g = Graph(f"qmatmul_{adt}_{bdt}")
    a = g.add_input("a", TensorType((2, 3, 601), adt))
    lim = 7 if bdt == "i4" else 127
    bw = g.add_const("b", rng.integers(-lim, lim + 1, (601, 33)).astype(np.int8), bdt)
    bias = g.add_const("bias", rng.integers(-1000, 1000, 33).astype(np.int32), "i32")
    attrs = {"a_zero_point": 7 if adt == "u8" else 0, **({"acc": "i64"} if acc == "i64" else {})}
    y = g.add_node("qmatmul", [a, bw, bias], attrs).output
    g.set_outputs([y])
    _compiled_equals_interpreter(g, {"a": _int(rng, (2, 3, 601), adt)})


def test_int4_constants_are_packed_in_the_compiled_module():
    """The only weight constant TVM sees is the uint8 packed one, half the size, and the unpack
    runs inside the convolution's kernel (nothing folds it back into an int8 constant)."""
    tvm = pytest.importorskip("tvm")
    from tvm import relax

    from qcc.targets.builder import lower_for
    from qcc.targets.presets import get_target
    from qcc.targets.strategy import strategy_for

    rng = np.random.default_rng(0)
    g = Graph("packed")
    x = g.add_input("x", TensorType((1, 64, 6, 7), "u8"))
    w = g.add_const("w", rng.integers(-7, 8, (64, 64, 3, 3)).astype(np.int8), "i4")
    c = g.add_node("qconv", [x, w, None], {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1],
                                           "group": 1, "x_zero_point": 3}).output
    g.set_outputs([g.add_node("requantize", [c], {"multiplier": [1 << 30], "shift": [-8], "dtype": "u8"}).output])
    preset = get_target("host")
    strategy = strategy_for(preset)
    mod = lower_for(g, preset, strategy)
    pipeline = strategy.relax_pipeline(preset.target())
    with preset.target():
        mod = pipeline(mod) if callable(pipeline) else relax.get_pipeline(pipeline)(mod)
    consts = []

    def visit(e):
        if isinstance(e, tvm.ir.GenericConst) and hasattr(e.value, "numpy"):
            a = e.value.numpy()
            if a.size > 1:
                consts.append((str(a.dtype), a.size))

    for _, f in mod.functions_items():
        if isinstance(f, relax.Function):
            relax.analysis.post_order_visit(f, visit)
    assert consts == [("uint8", 64 * 64 * 9 // 2)]
    kernels = [gv.name_hint for gv, f in mod.functions_items() if "qconv_int4" in gv.name_hint]
    assert kernels and all("unpack" not in k for k in kernels)


# --- the quantize pass with per-layer bits ---------------------------------------------------------

def _calibrated_tiny():
    from qcc.calibrate import load_samples
    from qcc.frontend import import_onnx

    g = import_onnx(TINY, {"input": (1, 3, 32, 32)})
    samples = load_samples(str(TINY_CALIB), g)
    return g, samples


def _sqnr(ref, got):
    r, o = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return 10 * np.log10(np.mean(r ** 2) / np.mean((r - o) ** 2))


def _compile_graph_passes(g, samples, **options):
    ctx = PassContext(options={"calib": samples, **options})
    q = g.copy()
    PassManager("canonicalize,fuse,insert-observers,propagate-ranges,assign-bitwidths,quantize,"
                "fold-requantize,canonicalize", verify_each=True).run(q, ctx)
    return q, ctx


def test_quantize_with_per_layer_bits():
    g, samples = _calibrated_tiny()

    def outputs(graph):  # over every sample: on one, int8 with mse ranges measured 60.7 dB
        return np.concatenate([list(interp_run(graph, f).values())[0] for f in samples])  # (a16: 52.9)

    ref = outputs(g)
    got = {}
    for prec in ("", "*=w4", "*=a16", "*=w16a16", "*=float"):
        q, ctx = _compile_graph_passes(g, samples, precision=prec, min_sqnr=0)
        got[prec] = (_sqnr(ref, outputs(q)), weight_bytes(q), q, ctx)
    int8, w4, a16, w16, flt = (got[p] for p in ("", "*=w4", "*=a16", "*=w16a16", "*=float"))
    # 4-bit weights: the i4 constants, packed, make the model smaller, and noisier
    assert any(c.dtype == "i4" for c in w4[2].constants.values())
    assert w4[1] < int8[1] < flt[1] and w4[0] < int8[0]
    # int16 activations: symmetric, zero point 0; never worse than int8
    qs = [n for n in a16[2].nodes if n.op == "quantize"]
    assert qs and all(n.attrs["dtype"] == "i16" and n.attrs["zero_point"] == [0] for n in qs)
    assert a16[0] >= int8[0] - 0.5
    # 16 x 16 bits: int64 accumulators where the bound needs them, and near-float accuracy
    assert any(n.attrs.get("acc") == "i64" for n in w16[2].nodes if n.op in ("qconv", "qmatmul"))
    assert w16[0] > 80 > int8[0]
    assert not any(n.op in ("qconv", "qmatmul") for n in flt[2].nodes)
    rep = {k: v["bits"] for k, v in w4[3].report["bitwidths"].items()}
    assert set(rep.values()) == {"w4a8"}
    assert all(v["precision"] == "w4a8" and v["weight_bits"] == 4
               for v in w4[3].report["layers_quantized"].values())


def test_the_report_says_where_each_layers_input_range_came_from():
    """input_range_source was read after the rewrite had detached the layer's inputs, and
    was '' for every layer."""
    g, samples = _calibrated_tiny()
    _, ctx = _compile_graph_passes(g, samples)
    sources = {k: l["input_range_source"] for k, l in ctx.report["layers_quantized"].items()}
    assert sources["c1"] == "observer:mse" and sources["dw"] == "previous layer's output", sources
    assert all(sources.values()), sources


def test_16_bit_activations_do_not_clip_inputs_past_the_calibration_extremes():
    """An a16 layer's input range is the calibrated extremes times insert-observers'
    headroom16 (2 by default): an input 1.8 times any calibration sample's loses nothing to
    clipping, where the bare extremes (headroom16=1) clip it."""
    g, samples = _calibrated_tiny()
    held_out = [{k: 1.8 * v for k, v in f.items()} for f in samples]

    def sqnr(observers):
        q, ctx = g.copy(), PassContext(options={"calib": samples, "precision": "*=w16a16"})
        PassManager(f"canonicalize,fuse,{observers},propagate-ranges,assign-bitwidths,quantize,"
                    "fold-requantize,canonicalize").run(q, ctx)
        obs = [n for n in q.nodes if n.op == "quantize" and n.inputs[0] in q.inputs]
        assert obs and all(n.attrs["dtype"] == "i16" for n in obs)
        # the report says where a 16-bit range came from
        sources = {l["input_range_source"] for l in ctx.report["layers_quantized"].values()}
        assert "observer+headroom16" in sources, sources
        assert ctx.report["calibration"]["headroom16"] == (1.0 if "headroom16=1" in observers else 2.0)
        return min(_sqnr(list(interp_run(g, f).values())[0], list(interp_run(q, f).values())[0])
                   for f in held_out)

    widened, bare = sqnr("insert-observers"), sqnr("insert-observers{headroom16=1}")
    assert widened > 60 and bare < 40, (widened, bare)
    with pytest.raises(PassError, match="headroom16 must be at least 1"):
        PassManager("insert-observers{headroom16=0.5}")


# --- assign-bitwidths: overrides and budgets are honoured -------------------------------------------

def _assign(g, samples=None, pipeline=UPTO_BITWIDTHS, **options):
    ctx = PassContext(options={"calib": samples, **options})
    PassManager(pipeline).run(g.copy(), ctx)
    return ctx.options["bitwidths"], ctx


def test_user_rules_win_later_rules_first():
    g, _ = _calibrated_tiny()
    d, ctx = _assign(g, precision="*=float")
    assert set(d.values()) == {"float"}
    d, ctx = _assign(g, precision="op:conv=int4;c1=int16;logits=w16a16")
    assert d == {"c1": "w8a16", "dw": "w4a8", "pw": "w4a8", "logits": "w16a16"}
    assert ctx.report["bitwidths"]["c1"]["why"] == "user rule c1"
    assert ctx.report["bitwidths"]["dw"]["why"] == "user rule op:conv"


def test_size_budget_without_data_narrows_the_largest_layers_first():
    g, _ = _calibrated_tiny()
    d, ctx = _assign(g, size_budget=900)
    assert d == {"c1": "w4a8", "dw": "int8", "pw": "w4a8", "logits": "int8"}  # c1 432, pw 256 weights
    sb = ctx.report["size_budget"]
    assert sb["predicted_bytes"] <= sb["budget_bytes"] == 900
    assert "size budget" in ctx.report["bitwidths"]["c1"]["why"]
    # a pinned layer is left alone even when the budget then cannot be met
    d, ctx = _assign(g, size_budget=300, precision="c1=int8")
    assert d["c1"] == "int8" and all(d[l] == "w4a8" for l in ("dw", "pw", "logits"))
    assert any("size budget 300 bytes not met" in w for w in ctx.warnings)


def test_size_budget_is_met_in_the_quantized_model():
    g, samples = _calibrated_tiny()
    q, ctx = _compile_graph_passes(g, samples, size_budget=900, min_sqnr=0)
    assert weight_bytes(q) <= 900
    assert weight_bytes(q) == ctx.report["size_budget"]["predicted_bytes"]
    # with data, the layers chosen are the ones whose 4-bit weights cost least per byte saved
    by = ctx.report["bitwidths"]
    assert all("w4a8" in by[l]["sensitivity_db_by_choice"] for l in by)


def test_error_budget_raises_sensitive_layers_within_the_int8_floor():
    g, samples = _calibrated_tiny()
    d, ctx = _assign(g, samples, min_sqnr=60.0)
    pred = ctx.report["predicted_output_sqnr_db"]
    assert pred["chosen"] >= 60.0 > pred["all_int8"]
    assert any(c != "int8" for c in d.values())
    # a budget the user gives is met below -O2's own int8 floor (own-floor applies to -O2's own)
    macs = {k: v["macs"] for k, v in ctx.report["bitwidths"].items()}
    assert sum(m for k, m in macs.items() if d[k] == "int8") / sum(macs.values()) < 0.9
    d, ctx = _assign(g, samples, min_sqnr=60.0, min_int8_fraction=0.5)
    macs = {k: v["macs"] for k, v in ctx.report["bitwidths"].items()}
    narrow = sum(m for k, m in macs.items() if d[k] in ("int8", "w4a8"))
    assert narrow / sum(macs.values()) >= 0.5
    assert any("error budget 60 dB not met" in w for w in ctx.warnings)


def test_error_search_raises_weights_to_16_bits_where_the_weights_are_the_error():
    """A layer whose error comes from its weights gains nothing from 16-bit activations: the
    search measures both integer raises and takes the one that leaves less noise."""
    g, samples = _calibrated_tiny()
    d, ctx = _assign(g, samples, min_sqnr=65.0)
    assert "w16a8" not in d.values()  # opt-in
    d, ctx = _assign(g, samples, UPTO_BITWIDTHS.replace("assign-bitwidths", "assign-bitwidths{w16=true}"),
                     min_sqnr=65.0)
    by = ctx.report["bitwidths"]
    w16 = [l for l, c in d.items() if c == "w16a8"]
    assert w16, d
    for l in w16:
        sens = by[l]["sensitivity_db_by_choice"]
        assert sens["w16a8"] > max(sens["int8"], sens["w8a16"]) and "16-bit weights" in by[l]["why"]
    assert ctx.report["predicted_output_sqnr_db"]["chosen"] >= 65.0


def test_error_search_stops_after_raises_in_a_row_that_do_not_pay():
    g, samples = _calibrated_tiny()
    pipe = UPTO_BITWIDTHS.replace("assign-bitwidths", "assign-bitwidths{min-gain-db=100 patience=2 screen=0}")
    d, ctx = _assign(g, samples, pipe, min_sqnr=90.0)

    def undone(ctx):
        return sum("did not pay" in r.get("not_raised", "") for r in ctx.report["bitwidths"].values())

    assert set(d.values()) == {"int8"}
    assert ctx.report["bitwidth_search_stopped"] == "2 raises in a row did not pay"
    assert undone(ctx) == 2
    assert any("stopped after 2 raises in a row" in w for w in ctx.warnings)
    d, ctx = _assign(g, samples, pipe.replace("patience=2", "patience=0"), min_sqnr=90.0)
    assert "bitwidth_search_stopped" not in ctx.report and undone(ctx) > 2


def test_error_search_passes_over_layers_too_quiet_to_matter():
    g, samples = _calibrated_tiny()
    pipe = UPTO_BITWIDTHS.replace("assign-bitwidths", "assign-bitwidths{min-gain-db=3}")
    d, ctx = _assign(g, samples, pipe, min_sqnr=90.0)
    by = ctx.report["bitwidths"]
    quiet = [l for l, r in by.items() if "cannot gain" in r.get("not_raised", "")]
    assert quiet and all(d[l] == "int8" for l in quiet)
    start = ctx.report["predicted_output_sqnr_db"]["all_int8"]
    for l in quiet:
        assert set(by[l]["sensitivity_db_by_choice"]) == {"int8"}  # no candidate was run
        share = 10 ** ((start - by[l]["sensitivity_db"]) / 10)  # of the noise it started with
        assert share < 0.5 * (1 - 10 ** -0.3) * 1.01  # under the screen (the total only falls)
    _, ctx0 = _assign(g, samples, pipe.replace("min-gain-db=3", "min-gain-db=3 screen=0"), min_sqnr=90.0)
    assert not any("cannot gain" in r.get("not_raised", "") for r in ctx0.report["bitwidths"].values())


def test_a16_share_raises_the_layers_noisiest_per_mac_by_their_own_noise():
    """After the error search, up to `a16-share` of the MACs go to 16-bit activations: the
    layers noisiest per MAC, each kept only if it removes a16-min-gain-db of the output noise
    predicted as the sum of every layer's own (the budget of 30 dB is met here, so the error
    search raises nothing), and none whose own noise is over twice the whole model's."""
    g, samples = _calibrated_tiny()

    def share(opts="", **options):
        pipe = UPTO_BITWIDTHS.replace("assign-bitwidths", f"assign-bitwidths{{{opts}}}" if opts else "assign-bitwidths")
        return _assign(g, samples, pipe, **options)

    d, ctx = share("a16-share=1 own-floor=0 a16-min-gain-db=0.1")
    by, spent = ctx.report["bitwidths"], ctx.report["a16_share"]
    model_db = ctx.report["predicted_output_sqnr_db"]["chosen"]
    assert model_db >= 30.0
    assert d == {"c1": "w8a16", "dw": "int8", "pw": "int8", "logits": "int8"}
    assert spent["raised"] == ["c1"] and by["c1"]["why"].startswith("a16 share: ")
    noise = sum(10 ** (-r["sensitivity_db_by_choice"]["int8"] / 10) for r in by.values())
    assert spent["predicted_output_sqnr_db"]["before"] == pytest.approx(-10 * np.log10(noise), abs=0.01)
    assert spent["predicted_output_sqnr_db"]["after"] >= spent["predicted_output_sqnr_db"]["before"] + 0.1
    assert spent["share"] == pytest.approx(by["c1"]["macs"] / sum(r["macs"] for r in by.values()), abs=1e-4)
    # the logits alone are noisier than the whole model: their noise cancels others', not added up
    assert by["logits"]["sensitivity_db"] < model_db - 3.0 and "cancels" in by["logits"]["not_raised"]
    # pw's 16-bit activations remove too little of its noise (its weights are the error)
    sens = by["pw"]["sensitivity_db_by_choice"]
    assert sens["w8a16"] - sens["int8"] < 1.0 and d["pw"] == "int8"
    # within the share: c1 is half the MACs, over the default 10%
    d, ctx = share("a16-min-gain-db=0.1")
    assert set(d.values()) == {"int8"} and ctx.report["a16_share"]["raised"] == []
    # each raise must remove a16-min-gain-db of the predicted noise (c1's gain is under 3 dB);
    # the error search's own min-gain-db does not set it
    gain = spent["predicted_output_sqnr_db"]["after"] - spent["predicted_output_sqnr_db"]["before"]
    assert gain < 3.0
    assert share("a16-share=1 own-floor=0 a16-min-gain-db=3")[1].report["a16_share"]["raised"] == []
    assert share("a16-share=1 own-floor=0 a16-min-gain-db=0.1 min-gain-db=3")[0] == {"c1": "w8a16", "dw": "int8", "pw": "int8",
                                                                          "logits": "int8"}
    d, _ = share("a16-share=1 own-floor=0 a16-min-gain-db=0.1", min_int8_fraction=0.9)  # never under the int8 floor
    assert set(d.values()) == {"int8"}
    # nor, without a user's floor or budget, under -O2's own (own-floor, 90%): c1 is half the MACs
    d, _ = share("a16-share=1 a16-min-gain-db=0.1")
    assert set(d.values()) == {"int8"}
    # off: by the option, and when the user set the error budget (--max-error)
    for d, ctx in (share("a16-share=0 a16-min-gain-db=0.1"), share("a16-min-gain-db=0.1", min_sqnr=30.0)):
        assert set(d.values()) == {"int8"} and "a16_share" not in ctx.report


def _cancelling(path):
    """y = A(x) + B(x) + C(x) with C's weights B's negated: B's and C's errors from x's
    8-bit rounding cancel exactly, so each alone is noisy while the model is not, and
    16-bit activations for one of them (the other left at 8) un-cancel the other's."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    r = np.random.default_rng(11)
    wb = (3 * r.standard_normal((8, 4, 1, 1))).astype(np.float32)
    inits = [numpy_helper.from_array(r.standard_normal((8, 4, 3, 3)).astype(np.float32), "wa"),
             numpy_helper.from_array(wb, "wb"), numpy_helper.from_array(-wb, "wc")]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "wb"], ["b"]), helper.make_node("Conv", ["x", "wc"], ["c"]),
             helper.make_node("Add", ["a", "b"], ["ab"]), helper.make_node("Add", ["ab", "c"], ["y"])]
    g = helper.make_graph(nodes, "cancel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return [{"x": r.standard_normal((4, 4, 8, 8)).astype(np.float32)} for _ in range(4)]


def test_a16_share_leaves_a_raise_that_measures_worse_on_most_samples(tmp_path):
    """The layers' own noises add up only where they do not cancel: b's and c's do (their
    weights are negatives of each other), so raising either alone to 16-bit activations
    leaves the other's error standing. The additive prediction picks them first (noisiest
    per MAC); measured with the rest of the model, each makes every sample's output
    noisier, and stays at int8. a's raise holds up and is kept."""
    from qcc.frontend import import_onnx

    samples = _cancelling(tmp_path / "cancel.onnx")
    g = import_onnx(tmp_path / "cancel.onnx")
    names = {n.inputs[1].name: n.name for n in g.nodes if n.op == "conv"}
    a, b, c = names["wa"], names["wb"], names["wc"]
    pipe = UPTO_BITWIDTHS.replace("assign-bitwidths", "assign-bitwidths{a16-share=1 own-floor=0 a16-min-gain-db=0.1}")
    d, ctx = _assign(g, samples, pipe)
    by = ctx.report["bitwidths"]
    model_db = ctx.report["predicted_output_sqnr_db"]["chosen"]
    for l in (b, c):  # noisier alone than a per MAC, quieter than twice the model: not "cancels" by that rule
        assert by[l]["sensitivity_db"] > model_db - 3.0
        assert by[l]["sensitivity_db"] + 10 * np.log10(by[l]["macs"]) < by[a]["sensitivity_db"] + 10 * np.log10(by[a]["macs"])
    assert d[b] == "int8" and "noisier on 16 of 16 samples" in by[b]["not_raised"]
    assert d[c] == "int8" and "noisier on 16 of 16 samples" in by[c]["not_raised"]
    assert d[a] == "w8a16" and ctx.report["a16_share"]["raised"] == [a]
    assert sorted(ctx.report["a16_share"]["measured_worse"]) == sorted([b, c])


def test_measured_worse_asks_most_samples_and_with_two_the_whole_change():
    from qcc.passes.assign_bitwidths import _measured_worse

    before = np.ones(8)
    assert _measured_worse(before, before + 0.1, 0.25)  # every sample noisier
    one_bad = before.copy()
    one_bad[0] = 40.0  # one sample much noisier, the rest a little better: a draw, not a trend
    assert not _measured_worse(before, one_bad * np.r_[1, [0.95] * 7], 0.25)
    assert not _measured_worse(before, before * 0.5, 0.25)
    assert _measured_worse(np.ones(2), np.full(2, 1.1), 0.25)  # 2 samples: -0.41 dB, past 0.25
    assert not _measured_worse(np.ones(2), np.full(2, 1.05), 0.25)  # -0.21 dB


def _boxes_and_scores(path):
    """A detector head in miniature: one output joining box coordinates (hundreds of pixels)
    and sigmoid scores in [0, 1] along axis 1, like YOLOv8's [1, 4 + classes, anchors]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    r = np.random.default_rng(5)
    inits = [numpy_helper.from_array((r.standard_normal((4, 8, 1, 1)) * 40).astype(np.float32), "wb"),
             numpy_helper.from_array(np.full(4, 600, np.float32), "bb"),
             numpy_helper.from_array((r.standard_normal((4, 8, 3, 3)) * 0.5).astype(np.float32), "ws")]
    nodes = [helper.make_node("Conv", ["x", "wb", "bb"], ["boxes"]),
             helper.make_node("Conv", ["x", "ws"], ["logits"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["logits"], ["scores"]),
             helper.make_node("Concat", ["boxes", "scores"], ["y"], axis=1)]
    g = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return [{"x": r.standard_normal((1, 8, 6, 6)).astype(np.float32)} for _ in range(8)]


def test_each_part_of_a_concatenated_output_is_measured(tmp_path):
    """The boxes' energy would hide the scores' noise in one SQNR over the whole output: the
    search's measure and the report take each concatenated part too, the worst one counting."""
    import qcc
    from qcc.analysis import output_parts
    from qcc.sensitivity import FloatCache, output_sqnr, quantized_copy

    samples = _boxes_and_scores(tmp_path / "det.onnx")
    g = qcc.import_onnx(tmp_path / "det.onnx")
    assert [label for label, _ in output_parts(g)[0]] == ["y[:, 0:4]", "y[:, 4:8]"]
    ctx = PassContext(options={"calib": samples})
    PassManager("canonicalize,fuse,insert-observers,propagate-ranges", verify_each=True).run(g, ctx)
    assert [label for label, _ in output_parts(g)[0]] == ["y[:, 0:4]", "y[:, 4:8]"]  # past the observer
    cache = FloatCache(g, samples)
    q = quantized_copy(g, {})
    worst = output_sqnr(cache, q)
    ref = np.concatenate([cache.outputs[i][0] for i in range(len(samples))])
    got = np.concatenate([next(iter(interp_run(q, s).values())) for s in samples])
    assert worst == pytest.approx(_sqnr(ref[:, 4:], got[:, 4:]), abs=0.01)
    assert _sqnr(ref, got) > worst + 10  # the whole output's SQNR is the boxes'

    np.savez(tmp_path / "calib.npz", x=np.concatenate([s["x"] for s in samples]))
    report = qcc.compile(tmp_path / "det.onnx", tmp_path / "out", opt_level="O2",
                         calib=str(tmp_path / "calib.npz"))
    outs = report["summary"]["output_sqnr_db"]
    assert set(outs) == {"y", "y[:, 0:4]", "y[:, 4:8]"}
    assert outs["y"] > outs["y[:, 4:8]"] + 10


def test_measurements_use_fewer_batches_when_inputs_are_large():
    from qcc.pass_manager import PassContext
    from qcc.passes.assign_bitwidths import AssignBitwidths
    from qcc.sensitivity import activation_bytes

    g, _ = _calibrated_tiny()
    batches = [{"x": np.zeros((1, 3, 384, 576), np.float32)} for _ in range(6)]
    ctx = PassContext()
    assert len(AssignBitwidths()._measurement_batches(g, batches, ctx)) == 2  # 663k values each
    assert len(AssignBitwidths(sample_values=10)._measurement_batches(g, batches, ctx)) == 1
    small = [{"x": np.zeros((1, 3, 48, 192), np.float32)} for _ in range(6)]
    assert len(AssignBitwidths()._measurement_batches(g, small, ctx)) == 4
    assert ctx.report["bitwidth_search_batches"] == {"measured": 4, "of": 6, "limited_by": "samples"}
    # ... and when the activations the search keeps (three sets per batch) would pass cache-bytes
    act = activation_bytes(g)
    assert act > 0
    few = AssignBitwidths(cache_bytes=3 * act * 2)._measurement_batches(g, small, ctx)
    assert len(few) == 2 and ctx.report["bitwidth_search_batches"]["measured"] == 2
    assert ctx.report["bitwidth_search_batches"]["limited_by"].startswith("cache-bytes")
    assert len(AssignBitwidths(cache_bytes=1)._measurement_batches(g, small, PassContext())) == 1


def test_size_budget_wins_over_the_error_budget():
    g, samples = _calibrated_tiny()
    d, ctx = _assign(g, samples, size_budget=900, min_sqnr=45.0)
    assert ctx.report["size_budget"]["predicted_bytes"] <= 900
    assert any("error budget" in w for w in ctx.warnings)


# --- config file ----------------------------------------------------------------------------------

def test_config_file(tmp_path):
    from qcc.config import ConfigError, load_config

    f = tmp_path / "qcc.toml"
    f.write_text('[precision]\n"c1" = "int16"\n"*.head.*" = "float"\n[precision.ops]\nmatmul = "w4"\n'
                 '[budget]\nmax-error = "35dB"\nsize-budget = "2MB"\nmin-int8-fraction = 0.5\n'
                 '[calib]\ndata = "calib.npz"\nmethod = "minmax"\n')
    cfg = load_config(f)
    assert cfg.precision_text() == "op:matmul=w4a8;c1=w8a16;*.head.*=float"
    assert (cfg.max_error, cfg.size_budget, cfg.min_int8_fraction) == ("35dB", "2MB", 0.5)
    assert cfg.calib == str(tmp_path / "calib.npz") and cfg.calib_method == "minmax"
    for text, msg in (('[precision]\nc1 = "int3"\n', "int3"), ('[budget]\nsize = 3\n', "no key 'size'"),
                      ('[precison]\n', "unknown section"), ('[budget]\nsize-budget = "lots"\n', "size-budget"),
                      ('[calib]\nmethod = "best"\n', "method")):
        f.write_text(text)
        with pytest.raises(ConfigError, match=msg):
            load_config(f)


# --- end to end: the command line, the artifact ----------------------------------------------------

def _mlp(path: Path):
    """x[1,512] -> fc1 (512x256) -> relu -> fc2 (256x10): fc1 holds almost all the weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((512, 256)) / 20).astype(np.float32)
    w2 = (rng.standard_normal((256, 10)) / 16).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2")]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.full(256, 0.1, np.float32), "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.zeros(10, np.float32), "b2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    np.savez(path.with_suffix(".calib.npz"), x=rng.standard_normal((16, 512)).astype(np.float32))
    np.savez(path.with_suffix(".input.npz"), x=rng.standard_normal((1, 512)).astype(np.float32))


def _qcc(*args):
    p = subprocess.run([sys.executable, "-m", "qcc.cli", *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def test_cli_rejects_bad_precision_and_budget(tmp_path):
    p = _qcc("compile", TINY, "-o", tmp_path / "o", "--precision", "c1=int3")
    assert p.returncode == 1 and "int3" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = _qcc("compile", TINY, "-o", tmp_path / "o", "--size-budget", "lots")
    assert p.returncode == 1 and "size" in p.stderr
    p = _qcc("compile", TINY, "-o", tmp_path / "o", "--max-error", "lots")
    assert p.returncode == 1 and "--max-error lots: give dB" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    (tmp_path / "bad.toml").write_text("[precision]\nc1 = 3\n")
    p = _qcc("compile", TINY, "-o", tmp_path / "o", "--config", tmp_path / "bad.toml")
    assert p.returncode == 1 and "bad.toml" in p.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_int4_artifact_is_smaller_and_bit_exact(tmp_path):
    """fc1 with 4-bit weights (from a config file, through the CLI): the library shrinks by
    about half of fc1's int8 weights, and runs bit-identical to the interpreter on its IR."""
    import qcc
    from qcc.ir.parser import load as load_qir

    model = tmp_path / "mlp.onnx"
    _mlp(model)
    calib = model.with_suffix(".calib.npz")
    # layers are named after their output values (fc1 computes %h)
    (tmp_path / "qcc.toml").write_text('[precision]\n"h" = "int4"\n[calib]\ndata = "mlp.calib.npz"\n')
    common = ["-O2", "--input-shape", "x=1x512", "--max-error", "10dB", "--json"]
    p8 = _qcc("compile", model, "-o", tmp_path / "int8", "--calib", calib, *common)
    assert p8.returncode == 0, p8.stderr
    p4 = _qcc("compile", model, "-o", tmp_path / "w4", "--config", tmp_path / "qcc.toml",
              "--depfile", tmp_path / "w4.d", *common)
    assert p4.returncode == 0, p4.stderr
    report = json.loads((tmp_path / "w4" / "report.json").read_text())
    assert report["bitwidths"]["h"]["bits"] == "w4a8" and report["bitwidths"]["y"]["bits"] == "int8"
    fc1 = next(l for l in report["layers"] if l["name"] == "h")
    assert fc1["weight_bits"] == 4 and fc1["activation_bits"] == 8
    assert report["summary"]["mac_fraction_by_precision"]["w4a8"] > 0.9
    assert "#72b7b2" in (tmp_path / "w4" / "layers.svg").read_text()  # the w4 layer's colour
    assert "qcc.toml" in (tmp_path / "w4.d").read_text() and "mlp.calib.npz" in (tmp_path / "w4.d").read_text()
    s8 = (tmp_path / "int8" / "model.so").stat().st_size
    s4 = (tmp_path / "w4" / "model.so").stat().st_size
    half_fc1 = 512 * 256 // 2
    assert s8 - s4 >= 0.8 * half_fc1, (s8, s4)  # (less a little: the .so is laid out in pages)
    # the compiled library computes exactly what the interpreter computes on the final IR
    with np.load(model.with_suffix(".input.npz")) as z:
        feeds = {"x": z["x"]}
    got = qcc.load(tmp_path / "w4").run(feeds)
    ref = interp_run(load_qir(tmp_path / "w4" / "model.qir"), feeds)
    for (k, r), o in zip(ref.items(), got.values()):
        np.testing.assert_array_equal(o, r, err_msg=k)


@pytest.mark.slow
def test_cli_overrides_and_size_budget_are_honoured(tmp_path):
    common = [TINY, "--input-shape", "input=1x3x32x32", "-O2", "--calib", TINY_CALIB, "--json"]
    p = _qcc("compile", *common, "-o", tmp_path / "float", "--precision", "*=float")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["int8_mac_fraction"] == 0.0 and s["mac_fraction_by_precision"] == {"float": 1.0}
    p = _qcc("compile", *common, "-o", tmp_path / "small", "--size-budget", "900", "--max-error", "10dB")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    report = json.loads((tmp_path / "small" / "report.json").read_text())
    assert s["size_bytes_quantized"] <= 900 == report["size_budget"]["budget_bytes"]
    assert {v["bits"] for v in report["bitwidths"].values()} == {"int8", "w4a8"}
    # the budget is part of what the artifact was built from
    manifest = json.loads((tmp_path / "small" / "manifest.json").read_text())
    assert manifest["options"]["size_budget"] == "900"


def test_python_api_takes_the_same_budgets_and_config(tmp_path):
    """qcc.compile() (build systems) honours --size-budget and --config like the command,
    and lists the config in its depfile: same report and manifest as the CLI test above."""
    import qcc

    (tmp_path / "qcc.toml").write_text('[precision]\n"*" = "float"\n')
    out = tmp_path / "api"
    report = qcc.compile(TINY, out, opt_level="O2", calib=str(TINY_CALIB), input_shapes={"input": (1, 3, 32, 32)},
                         config=str(tmp_path / "qcc.toml"), depfile=str(tmp_path / "api.d"))
    assert {v["bits"] for v in report["bitwidths"].values()} == {"float"}
    assert str(tmp_path / "qcc.toml") in (tmp_path / "api.d").read_text()
    report = qcc.compile(TINY, tmp_path / "small", opt_level="O2", calib=str(TINY_CALIB),
                         input_shapes={"input": (1, 3, 32, 32)}, size_budget="900", max_error="10dB")
    assert report["summary"]["size_bytes_quantized"] <= 900
    assert json.loads((tmp_path / "small" / "manifest.json").read_text())["options"]["size_budget"] == "900"


def test_matmul_of_two_activations_is_float_and_not_measured():
    """Attention's Q.K^T: quantize rewrites layers with constant weights only, so the search
    must not report it int8 nor spend a model run measuring it."""
    rng = np.random.default_rng(4)
    g = Graph("attn")
    x = g.add_input("x", TensorType((1, 8, 16), "f32"))
    q = g.add_node("matmul", [x, g.add_const("wq", rng.normal(0, 0.3, (16, 16)).astype(np.float32))], names=["q"])
    kt = g.add_node("transpose", [q.output], {"perm": [0, 2, 1]}, names=["kt"])
    s = g.add_node("matmul", [q.output, kt.output], names=["scores"])
    g.set_outputs([s.output])
    samples = [{"x": rng.normal(0, 1, (1, 8, 16)).astype(np.float32)} for _ in range(4)]
    d, ctx = _assign(g, samples, min_sqnr=200.0)  # a budget no int8 layer meets: every layer is measured
    by = ctx.report["bitwidths"]
    assert d["scores"] == "float" and "activations" in by["scores"]["why"]
    assert "sensitivity_db" not in by["scores"]
    assert "sensitivity_db" in by["q"]
    assert "all_int8" in ctx.report["predicted_output_sqnr_db"]  # every layer quantize can take was


def _unrolled_rnn(steps=6, n=16, seed=0):
    """h = tanh(x_t W + h R) over `steps` steps, then a head: the shape an RNN has once the
    frontend unrolls it, every step's two matmuls reading the same W and R."""
    rng = np.random.default_rng(seed)
    g = Graph("rnn")
    xs = [g.add_input(f"x{t}", TensorType((1, n), "f32")) for t in range(steps)]
    w = g.add_const("W", rng.normal(size=(n, n)).astype(np.float32) / np.float32(np.sqrt(n)))
    r = g.add_const("R", rng.normal(size=(n, n)).astype(np.float32) / np.float32(np.sqrt(n)))
    head = g.add_const("head", rng.normal(size=(n, 4)).astype(np.float32) / np.float32(np.sqrt(n)))
    h = None
    for t, x in enumerate(xs):
        a = g.add_node("matmul", [x, w], names=[f"xw{t}"]).output
        if h is not None:
            a = g.add_node("add", [a, g.add_node("matmul", [h, r], names=[f"hr{t}"]).output]).output
        h = g.add_node("tanh", [a]).output
    g.set_outputs([g.add_node("matmul", [h, head], names=["logits"]).output])
    samples = [{x.name: rng.normal(size=(1, n)).astype(np.float32) for x in xs} for _ in range(4)]
    return g, samples


def test_layers_sharing_weights_are_one_choice_measured_once():
    """An unrolled RNN's steps share W and R: the search measures each shared weight once
    (all its layers quantized) and gives all its layers one precision."""
    g, samples = _unrolled_rnn()
    said = []
    ctx = PassContext(options={"calib": samples, "min_sqnr": 60.0}, log=said.append)
    PassManager(UPTO_BITWIDTHS).run(g.copy(), ctx)
    d, rep = ctx.options["bitwidths"], ctx.report["bitwidths"]
    xw, hr = [f"xw{t}" for t in range(6)], [f"hr{t}" for t in range(1, 6)]
    assert len({d[l] for l in xw}) == 1 and len({d[l] for l in hr}) == 1
    assert rep["xw3"]["tied"] == {"layers": 6, "first": "xw0"} and rep["hr2"]["tied"] == {"layers": 5, "first": "hr1"}
    assert "tied" not in rep["logits"]
    # three units measured (W's group, R's group, the head), not 12 layers
    assert "measuring 3 layers at int8 (12 with the layers tied to them)" in said
    assert len({rep[l]["sensitivity_db"] for l in xw}) == 1
    # the budget forced raises: whatever moved, moved as a whole group
    assert any(c != "int8" for c in d.values())
    assert all(rep[l].get("why") == rep["xw0"].get("why") for l in xw)


def test_a_weight_many_layers_share_counts_once_in_the_size_budget():
    """The artifact holds an unrolled RNN's W once, however many steps read it: the search's
    size prediction must too, or a budget the int8 model meets narrows it to 4 bits."""
    g, samples = _unrolled_rnn(n=64)  # W, R 64x64 and a 64x4 head: 8448 bytes at int8
    for budget, narrowed in ((10000, False), (6000, True)):
        q, ctx = _compile_graph_passes(g, samples, size_budget=budget, min_sqnr=0)
        assert weight_bytes(q) == ctx.report["size_budget"]["predicted_bytes"] <= budget
        bits = {k: v["bits"] for k, v in ctx.report["bitwidths"].items()}
        assert any(b == "w4a8" for b in bits.values()) == narrowed, bits
        assert len({bits[f"xw{t}"] for t in range(6)}) == 1


def test_a_shared_weight_in_two_precisions_counts_twice_in_the_size_budget():
    """A rule that pins some of the layers sharing a weight leaves the artifact with two
    copies of it (float or 16-bit for those, int8 for the rest): the prediction counts both
    (it had counted the weight once, at the first layer's precision: 20736 of 24832 bytes)."""
    g, samples = _unrolled_rnn(n=64)
    for rule in ("xw0=float", "xw0=w16", "xw0=float;hr1=w4", "logits=float;xw5=a16"):
        q, ctx = _compile_graph_passes(g, samples, size_budget=100000, min_sqnr=0, precision=rule)
        assert weight_bytes(q) == ctx.report["size_budget"]["predicted_bytes"], rule


def test_a16_share_through_the_cli_prints_its_line_and_its_prediction_holds(tmp_path):
    """The a16 share as a user meets it: one terminal line, report.json's `a16_share`, and an
    additive prediction that the report's own error batches (which the search did not see)
    bear out: higher than without the share, and within a few dB of the prediction."""
    from qcc.pipelines import PIPELINES

    built = {}
    for share in (0, 1):
        pipe = PIPELINES["O2"].replace("assign-bitwidths,", f"assign-bitwidths{{a16-share={share} a16-min-gain-db=0.1}},")
        p = _qcc("compile", TINY, "--passes", pipe, "--calib", TINY_CALIB, "-o", tmp_path / f"s{share}")
        assert p.returncode == 0, p.stderr
        report = json.loads((tmp_path / f"s{share}" / "report.json").read_text())
        built[share] = (p.stdout, report, next(iter(report["summary"]["output_sqnr_db"].values())))
    out0, report0, db0 = built[0]
    out1, report1, db1 = built[1]
    assert "a16_share" not in report0 and "16-bit activations for" not in out0
    spent = report1["a16_share"]
    assert spent["raised"] and all(report1["bitwidths"][l]["bits"] == "w8a16" for l in spent["raised"])
    pred = spent["predicted_output_sqnr_db"]
    assert f"16-bit activations for the {len(spent['raised'])} layer" in out1
    assert f"predicts {pred['before']:.1f} dB -> {pred['after']:.1f} dB at the output" in out1
    assert db1 > db0 + 1.0 and abs(db1 - pred["after"]) < 3.0, (db0, db1, pred)


def test_a16_raises_measured_worse_are_said_in_the_terminal_line(tmp_path):
    """The raises the whole-model check undid are part of the choice: the summary line
    counts them and report.json names them."""
    from qcc.pipelines import PIPELINES

    samples = _cancelling(tmp_path / "cancel.onnx")
    np.savez(tmp_path / "calib.npz", x=np.concatenate([s["x"] for s in samples]))
    pipe = PIPELINES["O2"].replace("assign-bitwidths,", "assign-bitwidths{a16-share=1 own-floor=0 a16-min-gain-db=0.1},")
    p = _qcc("compile", tmp_path / "cancel.onnx", "--passes", pipe, "--calib", tmp_path / "calib.npz",
             "-o", tmp_path / "out")
    assert p.returncode == 0, p.stderr
    spent = json.loads((tmp_path / "out" / "report.json").read_text())["a16_share"]
    assert len(spent["measured_worse"]) == 2 and spent["raised"]
    assert "; 2 more made the whole model noisier and stay 8-bit; report.json \"a16_share\")" in p.stdout
