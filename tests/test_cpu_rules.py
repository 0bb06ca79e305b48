"""The search-free CPU schedule rules (targets/cpu_rules.py).

Per rule: a kernel scheduled by the rule computes what the unscheduled kernel computes
(bit for bit for integers; float within rounding, and bit for bit where the rule keeps
each output's reduction order) and the rule really applied (a parallel / vectorized loop
in the scheduled PrimFunc). Then a whole PP-OCR model: every fused kernel scheduled.
"""
from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import te, topi  # noqa: E402

from qcc.targets import cpu_rules as R  # noqa: E402
from qcc.targets import get_target  # noqa: E402
from qcc.targets.cpu_schedule import InlineElementwise  # noqa: E402
from qcc.targets.exact_fp import FENCE  # noqa: E402

PRESETS = ["host", "x86-avx2", "arm-a76"]


@pytest.fixture(scope="module")
def target():
    return get_target("host").target()


def _func(*tensors):
    """A fused-kernel-like PrimFunc (elementwise stages inlined, as the pipeline does)."""
    f = te.create_prim_func(list(tensors)).with_attr("global_symbol", "main")
    mod = InlineElementwise()(tvm.IRModule({"main": f}))
    return mod["main"]


def _rand(shape, dtype, rng):
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == "int64":
        return rng.integers(0, 16, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def _run(func, target, arrays):
    with target:
        lib = tvm.tirx.build(tvm.IRModule({"main": func}), target=target)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    lib["main"](*args)
    return args[-1].numpy()


def check_rule(rule, func, target, shapes, exact=True, seed=0):
    """Schedule `func` with `rule`, compare with the unscheduled kernel; returns the script."""
    sch = rule.apply(func, target, False)
    assert sch is not None, f"{rule.name} did not apply"
    scheduled = sch.mod["main"]
    rng = np.random.default_rng(seed)
    arrays = [_rand(s, d, rng) for s, d in shapes]
    want = _run(func, target, arrays)
    got = _run(scheduled, target, arrays)
    if exact:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    return scheduled.script()


def _shapes(*ts):
    return [([int(d) for d in t.shape], str(t.dtype)) for t in ts]


# --- kernels like the ones qcc's lowering fuses ------------------------------------------------

def requantize_te(acc, mult, shift, zp, out_dtype="uint8"):
    lo, hi = (0, 255) if out_dtype == "uint8" else (-128, 127)
    return te.compute(acc.shape, lambda n, c, h, w: te.max(te.min(
        ((acc[n, c, h, w].astype("int64") * mult[c]) >> shift[c]) + zp, hi), lo).astype(out_dtype), name="requant")


def qdepthwise(c=24, h=12, w=96, k=3, stride=1):
    x = te.placeholder((1, c, h, w), "uint8", name="x")
    wt = te.placeholder((c, 1, k, k), "int8", name="w")
    mult = te.placeholder((c,), "int64", name="mult")
    shift = te.placeholder((c,), "int64", name="shift")
    xi = te.compute(x.shape, lambda *i: x(*i).astype("int32"), name="xi")
    wi = te.compute(wt.shape, lambda *i: wt(*i).astype("int32"), name="wi")
    acc = topi.nn.group_conv2d_nchw(xi, wi, stride, k // 2, 1, c, out_dtype="int32")
    out = requantize_te(acc, mult, shift, 3)
    return (x, wt, mult, shift, out)


def fconv(ci=16, co=24, h=6, w=80, k=1, stride=1, fenced=True):
    x = te.placeholder((1, ci, h, w), "float32", name="x")
    wt = te.placeholder((co, ci, k, k), "float32", name="w")
    s = te.placeholder((co,), "float32", name="s")
    b = te.placeholder((co,), "float32", name="b")
    acc = topi.nn.conv2d_nchw(x, wt, stride, k // 2, 1)
    if fenced:
        mul = te.compute(acc.shape, lambda n, c, i, j: tvm.tirx.call_llvm_pure_intrin(
            "float32", FENCE, acc[n, c, i, j] * s[c]), name="T_multiply")
    else:
        mul = te.compute(acc.shape, lambda n, c, i, j: acc[n, c, i, j] * s[c], name="T_multiply")
    out = te.compute(acc.shape, lambda n, c, i, j: te.max(mul[n, c, i, j] + b[c], 0.0), name="relu")
    return (x, wt, s, b, out)


def fmatmul(m=40, k=120, n=96):
    a = te.placeholder((1, m, k), "float32", name="a")
    b = te.placeholder((k, n), "float32", name="b")
    r = te.reduce_axis((0, k), name="k")
    return (a, b, te.compute((1, m, n), lambda z, i, j: te.sum(a[z, i, r] * b[r, j], axis=r), name="matmul"))


# --- TiledReduction --------------------------------------------------------------------------

@pytest.mark.parametrize("stride", [1, 2])
def test_tiled_int8_depthwise_is_bit_exact_and_vectorized(target, stride):
    ts = qdepthwise(stride=stride)
    rule = R.TiledReduction(0) if stride == 1 else R.LoopNests(0)
    script = check_rule(rule, _func(*ts), target, _shapes(*ts))
    assert "T.parallel" in script
    if stride == 1:
        # the accumulator tile is a small "global" buffer (on the stack), not a "local" one
        # (TVM 0.27 heap-allocates those through the workspace pool, once per tile)
        assert "T.vectorized" in script and '_global = T.sblock_alloc_buffer' in script
        assert 'scope="local"' not in script


@pytest.mark.parametrize("k,stride", [(1, 1), (3, 1), (3, 2)])
def test_tiled_float_conv_keeps_reduction_order(target, k, stride):
    ts = fconv(k=k, stride=stride, w=160 if stride == 2 else 80)
    script = check_rule(R.TiledReduction(0), _func(*ts), target, _shapes(*ts), exact=True)
    assert "T.parallel" in script and "T.vectorized" in script
    assert FENCE in script  # the fenced epilogue keeps its fence


def test_tiled_conv_fuses_epilogue_per_tile(target):
    ts = fconv(k=1)
    sch = R.TiledReduction(0).apply(_func(*ts), target, False)
    par = [lp for lp in sch.get_loops(sch.get_sblock("relu")) if sch.get(lp).kind == tvm.tirx.ForKind.PARALLEL]
    assert par, "the epilogue is not computed inside the parallel tile loop"


def test_tiled_matmul(target):
    ts = fmatmul()
    script = check_rule(R.TiledReduction(0), _func(*ts), target, _shapes(*ts), exact=True)
    assert "T.vectorized" in script


def test_tiled_pool_and_conv_transpose(target):
    x = te.placeholder((1, 16, 24, 32), "float32", name="x")
    pool = topi.nn.pool2d(x, (2, 2), (1, 1), (1, 1), (0, 0, 1, 1), "max", layout="NCHW")
    script = check_rule(R.TiledReduction(0), _func(x, pool), target, _shapes(x, pool))
    assert "T.vectorized" in script
    w = te.placeholder((16, 8, 2, 2), "float32", name="w")
    y = topi.nn.conv2d_transpose_nchw(x, w, (2, 2), (0, 0, 0, 0), "float32", (0, 0))
    script = check_rule(R.TiledReduction(0), _func(x, w, y), target, _shapes(x, w, y), exact=True)
    assert "T.parallel" in script


def test_tiled_declines_row_reductions(target):
    x = te.placeholder((4, 40, 100), "float32", name="x")
    assert R.TiledReduction(0).apply(_func(x, topi.nn.softmax(x)), target, False) is None


# --- RowReduction ----------------------------------------------------------------------------

def test_row_reduction_softmax_and_layer_norm(target):
    x = te.placeholder((1, 40, 6625), "float32", name="x")
    script = check_rule(R.RowReduction(0), _func(x, topi.nn.softmax(x)), target, _shapes(x, x), exact=True)
    assert "T.parallel" in script
    x = te.placeholder((1, 40, 120), "float32", name="x")
    g = te.placeholder((120,), "float32", name="g")
    b = te.placeholder((120,), "float32", name="b")
    ln = topi.nn.layer_norm(x, g, b, axis=[-1], epsilon=1e-5)
    script = check_rule(R.RowReduction(0), _func(x, g, b, ln), target, _shapes(x, g, b, ln), exact=True)
    assert "T.parallel" in script


def test_row_reduction_with_kept_axis_sums_each_row_once(target):
    """A layer norm as ONNX exporters write it, x - ReduceMean(x, keepdims=1): the sum keeps
    its reduced axis (extent 1) where the subtract has the row's 120. The rows are the 40,
    each summed once before its elements are read; taking the kept axis for a row axis put
    the sum inside the loop over every element (4800 x 120 adds, 70x slower)."""
    import re

    x = te.placeholder((1, 40, 120), "float32", name="x")
    s = topi.sum(x, axis=[-1], keepdims=True)
    y = te.compute(x.shape, lambda n, r, c: x[n, r, c] - s[n, r, 0] / 120.0, name="y")
    script = check_rule(R.RowReduction(0), _func(x, y), target, _shapes(x, y), exact=True)
    assert re.search(r"in T\.parallel\((T\.int64\()?40\)?\):", script), script
    assert "4800" not in script


def test_row_reduction_declines_convolutions(target):
    ts = fconv(k=3)
    assert R.RowReduction(0).apply(_func(*ts), target, False) is None


# --- LoopNests -------------------------------------------------------------------------------

def test_loop_nests_requantize_bit_exact(target):
    acc = te.placeholder((1, 64, 48, 80), "int32", name="acc")
    mult = te.placeholder((64,), "int64", name="mult")
    shift = te.placeholder((64,), "int64", name="shift")
    out = requantize_te(acc, mult, shift, -5, "int8")
    script = check_rule(R.LoopNests(0), _func(acc, mult, shift, out), target, _shapes(acc, mult, shift, out))
    assert "T.parallel" in script


def test_loop_nests_vectorize_fenced_multiply(target):
    x = te.placeholder((1, 32, 24, 160), "float32", name="x")
    s = te.placeholder((32,), "float32", name="s")
    y = te.compute(x.shape, lambda n, c, h, w: tvm.tirx.call_llvm_pure_intrin("float32", FENCE, x[n, c, h, w] * s[c]),
                   name="T_multiply")
    script = check_rule(R.LoopNests(0), _func(x, s, y), target, _shapes(x, s, y))
    assert "T.parallel" in script and "T.vectorized" in script and FENCE in script


@pytest.mark.parametrize("axis, sources", [(1, 3), (3, 3), (1, 12)])
def test_loop_nests_concatenation_cut_per_source(target, axis, sources):
    """A concatenation fused with its consumer reads each value through a select between
    the sources; along an outer axis the loop is cut into one loop per source, the selects
    fold, and LLVM vectorizes each part (with the select it vectorized nothing: mixnet_s's
    concatenated depthwise branches ran at 6.6 ns per value). Along the innermost axis
    nothing is cut. Bit-exact either way."""
    import re

    sizes = (24, 40, 8) if sources == 3 else tuple(8 + 4 * (i % 3) for i in range(sources))
    xs = [te.placeholder((1, c, 10, 10) if axis == 1 else (1, 16, 10, c), "uint8", name=f"x{i}")
          for i, c in enumerate(sizes)]
    cat = topi.concatenate(xs, axis=axis)
    m = te.placeholder((cat.shape[1],), "int32", name="m")
    y = te.compute(cat.shape, lambda n, c, h, w: tvm.tirx.max(tvm.tirx.min(
        ((cat[n, c, h, w].astype("int32") - 7) * m[c]) >> 6, 255), 0).astype("uint8"), name="y")
    func = _func(*xs, m, y)
    assert 'T.sblock("T_concat' not in func.script(), "the concat was not inlined into its elementwise reader"
    script = check_rule(R.LoopNests(0), func, target, _shapes(*xs, m, y))
    assert "T.parallel" in script
    if axis == 3:
        assert "_partition" not in script
        return
    assert script.count("_partition\"") == len(sizes), "one loop per source"
    with target:
        lib = tvm.tirx.build(tvm.IRModule({"main": R.LoopNests(0).apply(func, target, False).mod["main"]}),
                             target=target)
    assert re.findall(r"load <\d+ x i8>", lib.inspect_source("ll")), "the parts are not vectorized"


def test_concatenation_of_many_sources_keeps_its_own_loop_nest(target):
    """A concat of many inputs is a chain of selects; inlined into a consumer that reshapes
    or transposes it (no loop cut per source there), every output value walked the whole
    chain: PP-OCRv2 rec's 160-input LSTM output concat took 200 us. It stays a stage of its
    own; a concat read elementwise is still inlined, whatever its inputs (the test above).
    Bit-exact either way."""
    n = 12
    xs = [te.placeholder((1, 16), "uint8", name=f"x{i}") for i in range(n)]
    cat = topi.concatenate(xs, axis=0)
    y = topi.transpose(topi.reshape(cat, (n // 2, 2, 16)), (1, 0, 2))
    func = _func(*xs, y)
    stages = func.script().split("T.sblock(")[1:]
    assert any(b.startswith('"T_concat') for b in stages), "the concat was inlined"
    consumer = next(b for b in stages if b.startswith('"T_transpose'))
    assert "if_then_else" not in consumer
    check_rule(R.LoopNests(0), func, target, _shapes(*xs, y))


def test_loop_nests_global_pool(target):
    x = te.placeholder((1, 96, 48, 72), "float32", name="x")
    y = topi.nn.global_pool(x, "avg", layout="NCHW")
    script = check_rule(R.LoopNests(0), _func(x, y), target, _shapes(x, y), exact=True)
    assert "T.parallel" in script


def test_rules_never_raise(target):
    """A kernel the rules cannot make sense of gives None or a schedule, never an error."""
    x = te.placeholder((7,), "float32", name="x")
    f = _func(x, te.compute((7,), lambda i: x[6 - i] * 2.0, name="rev"))
    for rule in R.cpu_rules(target):
        rule.apply(f, target, False)
    assert R.TiledReduction(0).apply(f, target, False) is None


@pytest.mark.parametrize("preset", PRESETS)
def test_rules_apply_per_target(preset):
    """Every preset family's vector width gives a valid schedule (ARM: 128-bit NEON)."""
    target = get_target(preset).target()
    ts = qdepthwise()
    sch = R.TiledReduction(0).apply(_func(*ts), target, False)
    assert sch is not None and "T.vectorized" in sch.mod["main"].script()


# --- a whole model ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cls_float_pipeline(ppocr_cls_path):
    """The cls model's IRModule after the strategy's Relax pipeline (float, -O0)."""
    import qcc
    from qcc.targets import strategy_for
    from qcc.targets.builder import lower_for

    g = qcc.import_onnx(ppocr_cls_path, {"x": (1, 3, 48, 192)})
    preset = get_target("host")
    strategy = strategy_for(preset)
    target = preset.target()
    mod = lower_for(g, preset, strategy)
    with target:
        return strategy.relax_pipeline(target)(mod)


def test_ppocr_cls_every_kernel_scheduled(cls_float_pipeline):
    funcs = [f for _, f in cls_float_pipeline.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert funcs
    unscheduled = [f for f in funcs if "tirx.is_scheduled" not in (f.attrs or {})]
    assert not unscheduled, f"{len(unscheduled)} of {len(funcs)} kernels unscheduled"
    scripts = [f.script() for f in funcs]
    assert any("T.parallel" in s for s in scripts)  # the big ones (small ones stay serial)
    # TVM's conv2d where the generic lowering runs, the x86 float kernels where the host has AVX2
    convs = [s for s in scripts if any(k in s for k in ("conv2d_nchw", "qcc_f32x8_conv", "qcc_f32x16_conv",
                                                         "qcc_dw_conv"))]
    assert convs and sum("T.vectorized" in s for s in convs) >= len(convs) // 2


@pytest.mark.slow
def test_ppocr_cls_float_matches_onnxruntime(ppocr_cls_path, tmp_path):
    import onnxruntime as ort

    import qcc

    shape = (1, 3, 48, 192)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    qcc.compile(ppocr_cls_path, tmp_path / "f32", opt_level="O0", input_shapes={"x": shape})
    got = list(qcc.load(tmp_path / "f32").run({"x": x}).values())[0]
    want = ort.InferenceSession(str(ppocr_cls_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape,dtype", [((2, 5, 9, 13), "f32"), ((1, 3, 8, 8), "f32"), ((1, 6, 7, 11), "u8")])
def test_global_average_pool_sums_in_vector_lanes(shape, dtype):
    """Global average pooling on CPU targets sums in 16 interleaved float64 partial sums (a
    vector loop of independent adds, plus a tail when the plane is not a multiple of 16),
    and still equals the interpreter's float64 mean bit for bit."""
    import re

    from qcc.interp import run as interp_run
    from qcc.ir import Graph, TensorType
    from qcc.targets import compile_graph, llvm_source, lower_for, runner_from_executable

    g = Graph("gap")
    x = g.add_input("x", TensorType(shape, dtype))
    g.set_outputs([g.add_node("global_avg_pool", [x], names=["y"]).output])
    assert "interleaved_sum" in lower_for(g, "host").script(show_meta=False)
    ex = compile_graph(g, "host")
    ll = llvm_source(ex, "ll")
    assert re.search(r"fadd <\d+ x double>", ll), "the partial sums are not a vector add"
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal(shape).astype(np.float32) * 50 if dtype == "f32"
             else rng.integers(0, 256, shape).astype(np.uint8)}
    got = runner_from_executable(ex, g).run(feeds)["y"]
    assert np.array_equal(got, interp_run(g, feeds)["y"])


@pytest.mark.parametrize("shape,dtype,interleaved", [((1, 64, 508, 1), "f32", True), ((2, 5, 9, 13), "f32", True),
                                                     ((1, 6, 7, 11), "u8", True), ((1, 3, 67), "i8", True),
                                                     ((1, 4, 5, 5), "f32", False)])
def test_global_max_pool_in_vector_lanes(shape, dtype, interleaved):
    """Global max pooling takes the interleaved partial maxima (a max is the same in any
    order), in vector lanes; the plain reduction was a scalar running max per plane with the
    elementwise stage before it fused in, scalar too (magika's GELU + max over 508 positions:
    0.55 -> 0.11 ms). A plane shorter than four vectors keeps the plain reduction. Equal to
    the interpreter bit for bit, tails and negative values included."""
    from qcc.interp import run as interp_run
    from qcc.ir import Graph, TensorType
    from qcc.targets import compile_graph, lower_for, runner_from_executable
    from qcc.targets.strategy import strategy_for

    g = Graph("gmp")
    x = g.add_input("x", TensorType(shape, dtype))
    y = g.add_node("tanh", [x]).output if dtype == "f32" else x
    g.set_outputs([g.add_node("global_max_pool", [y], names=["y"]).output])
    preset = get_target("host")
    with preset.target() as tgt:
        mod = strategy_for(preset).relax_pipeline(tgt)(lower_for(g, preset))
    kernels = [f.script() for gv, f in mod.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc) and "global_max" in gv.name_hint]
    assert len(kernels) == (1 if interleaved else 0)
    if interleaved:  # the partial maxima (and the tanh before them) run in vector lanes
        assert "T.vectorized" in kernels[0], kernels[0]
    ex = compile_graph(g, "host")
    rng = np.random.default_rng(5)
    info = None if dtype == "f32" else np.iinfo(np.uint8 if dtype == "u8" else np.int8)
    feeds = {"x": rng.standard_normal(shape).astype(np.float32) - 3 if dtype == "f32"
             else rng.integers(info.min, info.max, shape, endpoint=True).astype(info.dtype)}
    got = runner_from_executable(ex, g).run(feeds)["y"]
    want = interp_run(g, feeds)["y"]
    if dtype == "f32":  # tanh is a polynomial in the compiled code
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    else:
        assert np.array_equal(got, want)


@pytest.mark.parametrize("op,keepdims,dtype", [("reduce_mean", 1, "f32"), ("reduce_mean", 0, "f32"),
                                               ("reduce_max", 1, "f32"), ("reduce_max", 0, "i8")])
def test_spatial_reduce_is_a_global_pool(op, keepdims, dtype):
    """A mean or max over every axis after N and C (how exporters write an SE block's
    x.mean((2, 3), keepdim=True)) takes the global pools' interleaved kernel, vectorized;
    TVM's generic reduction took 0.22 ms on PP-OCRv6 det's 32x96x144. Values as the
    interpreter's: bit for bit for the max, the mean's float64 sum rounded once."""
    from qcc.interp import run as interp_run
    from qcc.ir import Graph, TensorType
    from qcc.targets import compile_graph, lower_for, runner_from_executable
    from qcc.targets.strategy import strategy_for

    shape = (1, 12, 17, 23)
    g = Graph("spatial")
    x = g.add_input("x", TensorType(shape, dtype))
    y = g.add_node(op, [x], {"axes": [2, 3], "keepdims": keepdims}, names=["y"]).output
    g.set_outputs([y])
    preset = get_target("host")
    with preset.target() as tgt:
        mod = strategy_for(preset).relax_pipeline(tgt)(lower_for(g, preset))
    name = "global_max" if op == "reduce_max" else "interleaved_sum"
    kernels = [f.script() for gv, f in mod.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc) and name in gv.name_hint]
    assert len(kernels) == 1 and "T.vectorized" in kernels[0], [gv.name_hint for gv, _ in mod.functions_items()]
    rng = np.random.default_rng(3)
    feeds = {"x": (rng.standard_normal(shape) * 3 + 1).astype(np.float32) if dtype == "f32"
             else rng.integers(-128, 128, shape).astype(np.int8)}
    got = runner_from_executable(compile_graph(g, "host"), g).run(feeds)["y"]
    want = interp_run(g, feeds)["y"]
    assert got.shape == want.shape == ((1, 12, 1, 1) if keepdims else (1, 12)) and got.dtype == want.dtype
    assert np.array_equal(got, want)


@pytest.mark.parametrize("rows,n,kind,dtype", [(200, 192, "sum", "float64"), (384, 216, "sum", "float64"),
                                               (40, 6625, "max", "float32"), (3, 70, "sum", "float32")])
def test_partial_reductions_every_stage_per_row(target, rows, n, kind, dtype):
    """lower_math's interleaved row reductions: the partials, their total and the tail are
    all computed inside the one parallel row loop (the generic rules left the total a serial
    loop over every row after it), the lanes vectorized, the order of every addition kept
    (bit-exact against the unscheduled kernel, float32 sums included); a tail that TVM's
    compute_at once gave a negative extent is right."""
    from qcc.targets.lower_math import interleaved_te

    t = te.placeholder((rows, n), "float32", name="t")
    y = interleaved_te(t, kind, 16, dtype)
    func = _func(t, y)
    script = check_rule(R.PartialReductions(0), func, target, _shapes(t, y), exact=True)
    assert script.count("T.parallel") == 1 and "T.vectorized" in script
    sch = R.PartialReductions(0).apply(func, target, False)
    row = sch.get_loops(sch.get_sblock(y.op.name))[0]
    assert sch.get(row).kind == tvm.tirx.ForKind.PARALLEL
    for name in (f"partial_{kind}_update", f"{kind}_of_partials") + (("tail",) if n % 16 else ()):
        assert sch.get(sch.get_loops(sch.get_sblock(name))[0]).same_as(sch.get(row)), name
    assert R.PartialReductions(0).apply(_func(*fmatmul()), target, False) is None


def test_loop_nests_plain_reduction_keeps_its_epilogue_in_the_parallel_loop(target):
    """A reduction scheduled plain (a strided pool: no register tile) computes its elementwise
    epilogue in the same parallel loop; on its own the epilogue was a second launch, or a
    serial loop when too small for one (PP-OCR cls's 2x2 max-pool and float64 cast: 9.3 ->
    2.0 us)."""
    x = te.placeholder((1, 200, 2, 96), "float32", name="x")
    p = topi.nn.pool2d(x, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), "max", layout="NCHW")
    y = te.compute(p.shape, lambda *i: p(*i).astype("float64"), name="cast")
    func = _func(x, y)
    check_rule(R.LoopNests(1 << 14), func, target, _shapes(x, y), exact=True)
    sch = R.LoopNests(1 << 14).apply(func, target, False)
    outer = sch.get(sch.get_loops(sch.get_sblock("cast"))[0])
    assert outer.kind == tvm.tirx.ForKind.PARALLEL
    assert outer.same_as(sch.get(sch.get_loops(sch.get_sblock(p.op.name))[0]))
