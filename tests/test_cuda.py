"""CUDA without a GPU: builds for every CUDA preset, `--emit cuda,ptx` writes the device code
(kernels.cu from the build's CUDA module, kernels.ptx from nvcc when it is on PATH), and the
int8 conv/matmul layers run on `__dp4a` (targets/cuda_int8.py): every non-depthwise
qconv/qmatmul of an -O2 build is one kernel whose CUDA source calls `__dp4a` (TVM's choice,
not nvcc's), nvcc accepts the source and its PTX holds `dp4a`. No GPU runs the numerics
here, so (1) the same lowering compiled for the host CPU is checked against qcc.interp bit for
bit, and (2) the generated CUDA source itself is compiled with g++ under a small emulation
header (a host thread per CUDA thread, a barrier for __syncthreads) and run on the CPU.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qcc.driver import CompileOptions, compile_model
from qcc.targets import cuda_emit

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples/tiny_cnn.onnx"
CALIB = ROOT / "examples/tiny_cnn_calib.npz"
SMS = (75, 80, 86, 90)
NVCC = shutil.which("nvcc")


def cli(*args, env=None):
    p = subprocess.run([sys.executable, "-m", "qcc.cli", *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT, env=env)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def require_int8_lowering():
    from qcc.targets import supported_ops

    if not {"qconv", "qmatmul", "requantize"} <= set(supported_ops()):
        pytest.skip("the integer-op lowerings (targets/lower_quant.py) are not available yet")


def check_ptx(ptx: str, sm: int) -> None:
    assert re.search(rf"^\.target sm_{sm}\b", ptx, re.M), ptx[:400]
    assert ".entry" in ptx


_KERNEL = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?([^\s(]+)\([^)]*\)\s*\{')


def kernel_bodies(src: str) -> dict:
    """{kernel name: source up to the next kernel} for every kernel *definition* in kernels.cu."""
    ms = list(_KERNEL.finditer(src))
    return {m.group(1): src[m.end():ms[i + 1].start() if i + 1 < len(ms) else len(src)] for i, m in enumerate(ms)}


def dp4a_kernels(src: str) -> list:
    """Names of the kernels whose source calls __dp4a (the header's declarations do not count)."""
    return sorted(name for name, body in kernel_bodies(src).items() if "__dp4a(" in body)


def dp4a_layers(graph) -> list:
    """The layers the dp4a lowering takes: qconv (not depthwise or grouped) and qmatmul."""
    return [n for n in graph.nodes
            if n.op == "qmatmul" or (n.op == "qconv" and int(n.attrs.get("group", 1)) == 1)]


def assert_valid_kernel_names(src: str) -> None:
    """Every kernel is named by a C identifier (a kernel once was `<lambda>`: an emit_te of a
    Python lambda without primfunc_name_hint; nvcc and NVRTC reject it)."""
    names = list(kernel_bodies(src))
    assert names and all(re.fullmatch(r"[A-Za-z_]\w*", n) for n in names), [n for n in names if "<" in n]


@pytest.mark.slow
@pytest.mark.parametrize("sm", SMS)
def test_float_build_emits_cuda_and_ptx(sm, tmp_path):
    out = tmp_path / f"sm{sm}"
    p = cli("compile", TINY, "--input-shape", "input=1x3x32x32", "-O0", "--target", f"cuda-sm{sm}",
            "--emit", "cuda,ptx", "-o", out)
    assert p.returncode == 0, p.stderr
    src = (out / "kernels.cu").read_text()
    assert "__global__" in src and 'extern "C"' in src
    manifest = json.loads((out / "manifest.json").read_text())
    assert "kernels.cu" in manifest["files"] and manifest["target"]["tvm"]["arch"] == f"sm_{sm}"
    if NVCC:
        check_ptx((out / "kernels.ptx").read_text(), sm)
        assert "kernels.ptx" in manifest["files"]
    else:
        assert not (out / "kernels.ptx").exists()
        assert "nvcc is not on PATH" in p.stderr


def _int8_build(tmp_path, sm, model=TINY, shapes=None, calib=CALIB):
    out = tmp_path / f"int8-sm{sm}"
    # "0dB": no error budget, so every layer that can be int8 is (and no sensitivity search)
    opts = CompileOptions(target=f"cuda-sm{sm}", opt_level="O2", calib=str(calib), max_error="0dB",
                          input_shapes=shapes or {"input": (1, 3, 32, 32)}, emit=("cuda",))
    report = compile_model(model, out, opts)
    return out, report


def _record_features(sm, src, record_property, what):
    feats = cuda_emit.features(src)
    print(f"\n[cuda] {what} sm_{sm}: {feats['__global__']} kernels; __dp4a x{feats['__dp4a']}, "
          f"mma x{feats['mma']}, wmma x{feats['wmma']} in kernels.cu")
    record_property(f"kernels_cu_features[{what} sm_{sm}]", feats)
    return feats


@pytest.mark.slow
@pytest.mark.parametrize("sm", SMS)
def test_int8_build_runs_dp4a(sm, tmp_path, record_property):
    require_int8_lowering()
    import qcc

    out, report = _int8_build(tmp_path, sm)
    assert report["summary"]["int8_mac_fraction"] > 0.5
    src = (out / "kernels.cu").read_text()
    assert "__global__" in src
    _record_features(sm, src, record_property, "tiny int8")
    assert_valid_kernel_names(src)
    layers = dp4a_layers(qcc.load_qir(out / "model.qir"))
    assert len(layers) == 3  # conv 3x3 s2, pointwise conv, matmul (the depthwise conv is dlight's)
    assert len(dp4a_kernels(src)) == len(layers), dp4a_kernels(src)
    if not NVCC:
        pytest.skip("nvcc not on PATH: PTX not checked")
    ptx = cuda_emit.nvcc_ptx(src, sm)
    check_ptx(ptx, sm)
    assert "dp4a" in ptx
    print(f"[cuda] tiny int8 sm_{sm}: dp4a x{ptx.count('dp4a.')} in the PTX")


_PPOCR_BUILDS = {}


def _ppocr_build(ppocr_cls_path, tmp_path_factory, sm):
    """The PP-OCR cls model at -O2 for one arch (built once per session and arch)."""
    if sm not in _PPOCR_BUILDS:
        import numpy as np

        tmp = tmp_path_factory.mktemp(f"ppocr-sm{sm}")
        calib = tmp / "calib.npz"
        np.savez(calib, x=np.random.default_rng(0).uniform(-1, 1, (4, 3, 48, 192)).astype(np.float32))
        _PPOCR_BUILDS[sm] = _int8_build(tmp, sm, ppocr_cls_path, {"x": (1, 3, 48, 192)}, calib)
    return _PPOCR_BUILDS[sm]


@pytest.mark.slow
@pytest.mark.parametrize("sm", (80, 90))
def test_ppocr_int8_layers_run_dp4a(sm, ppocr_cls_path, tmp_path_factory, record_property):
    """A real int8 model: each quantized conv/matmul layer (not depthwise) is a kernel with __dp4a."""
    require_int8_lowering()
    import qcc

    out, report = _ppocr_build(ppocr_cls_path, tmp_path_factory, sm)
    src = (out / "kernels.cu").read_text()
    _record_features(sm, src, record_property, "PP-OCR cls int8")
    assert_valid_kernel_names(src)
    layers = dp4a_layers(qcc.load_qir(out / "model.qir"))
    kernels = dp4a_kernels(src)
    print(f"[cuda] PP-OCR cls sm_{sm}: {len(kernels)} kernels with __dp4a for {len(layers)} "
          f"non-depthwise qconv/qmatmul layers")
    assert len(layers) >= 40 and len(kernels) == len(layers)
    if not NVCC:
        pytest.skip("nvcc not on PATH: PTX not checked")
    ptx = cuda_emit.nvcc_ptx(src, sm)
    check_ptx(ptx, sm)
    assert "dp4a" in ptx
    print(f"[cuda] PP-OCR cls sm_{sm}: dp4a x{ptx.count('dp4a.')} in the PTX")


def _layers_graph(nodes):
    """One graph holding each qconv/qmatmul of `nodes` on its own input (constants copied)."""
    from qcc.ir import Graph

    g = Graph("layers")
    outs = []
    for i, n in enumerate(nodes):
        ins = [g.add_input(f"in{i}", n.inputs[0].type)]
        ins += [None if v is None else g.add_const(f"c{i}", v.data, v.dtype) for v in n.inputs[1:]]
        outs.append(g.add_node(n.op, ins, dict(n.attrs)).output)
    g.set_outputs(outs)
    return g


def _check_dp4a_lowering_on_cpu(g, feeds, expect_kernels: int) -> None:
    """The dp4a lowering (unscheduled, compiled for the host) == qcc.interp, bit for bit."""
    import numpy as np

    from qcc.interp import run as interp_run
    from qcc.targets import compile_graph, get_target, lower_graph, runner_from_executable
    from qcc.targets.cuda_int8 import PREFIX, CUDAInt8Strategy

    strategy = CUDAInt8Strategy(get_target("cuda-sm80"))
    calls = re.findall(rf"call_tir\((?:cls\.)?{PREFIX}_\w+", lower_graph(g, strategy)["main"].script())
    assert len(calls) == expect_kernels  # (equal layers share one PrimFunc: count the calls)
    got = runner_from_executable(compile_graph(g, "host", strategy=strategy), g).run(feeds)
    ref = interp_run(g, feeds)
    for k, r in ref.items():
        assert got[k].dtype == r.dtype and np.array_equal(got[k], r), k


def _int_feeds(g, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = {}
    for v in g.inputs:
        if v.dtype not in ("u8", "i8"):
            continue
        lo, hi, dt = (0, 255, np.uint8) if v.dtype == "u8" else (-128, 127, np.int8)
        a = rng.integers(lo, hi + 1, size=v.shape).astype(dt)
        a.flat[0], a.flat[-1] = lo, hi
        feeds[v.name] = a
    return feeds


@pytest.mark.slow
def test_ppocr_dp4a_lowering_bit_exact_on_cpu(ppocr_cls_path, tmp_path_factory):
    """Every qconv/qmatmul of the PP-OCR cls model through the CUDA lowering (shifted to int8,
    packed by 4 channels, zero point folded into the bias), compiled for the CPU."""
    require_int8_lowering()
    import qcc

    out, _ = _ppocr_build(ppocr_cls_path, tmp_path_factory, 80)
    g = qcc.load_qir(out / "model.qir")
    nodes = [n for n in g.nodes if n.op in ("qconv", "qmatmul")]
    lg = _layers_graph(nodes)
    _check_dp4a_lowering_on_cpu(lg, _int_feeds(lg), len(dp4a_layers(g)))


def _edge_graph():
    """qconv/qmatmul shapes that stress the lowering and the schedule: channels not a multiple
    of 4, strides, dilations, asymmetric pads, one output channel, a batch of 2, 1x1 outputs,
    int8 activations, no bias, zero points at the ends of the range, a requantize epilogue,
    tiles too big for shared memory at first."""
    import numpy as np

    from qcc.ir import Graph, TensorType

    rng = np.random.default_rng(3)
    g = Graph("edges")
    outs = []
    convs = [  # x shape, x dtype, zx, (O, kh, kw), strides, pads, dilations, bias
        ((1, 3, 17, 19), "u8", 255, (8, 3, 3), (2, 2), (1, 0, 2, 1), (1, 1), True),
        ((2, 5, 9, 7), "u8", 0, (6, 3, 1), (1, 1), (1, 0, 1, 0), (2, 1), False),
        ((1, 8, 6, 6), "i8", -128, (1, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), True),
        ((1, 12, 1, 1), "u8", 77, (20, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), True),
        ((1, 16, 4, 40), "i8", 5, (24, 3, 3), (1, 2), (1, 1, 1, 1), (1, 1), True),
        # one pixel from a 7x7 window over 64 channels: the first tiles overflow shared memory
        ((1, 64, 7, 7), "u8", 128, (256, 7, 7), (1, 1), (0, 0, 0, 0), (1, 1), True),
    ]
    for i, (xs, dt, zx, (o, kh, kw), st, pads, dil, bias) in enumerate(convs):
        x = g.add_input(f"x{i}", TensorType(xs, dt))
        w = g.add_const(f"w{i}", rng.integers(-128, 128, (o, xs[1], kh, kw)), "i8")
        b = g.add_const(f"b{i}", rng.integers(-5000, 5000, o), "i32") if bias else None
        acc = g.add_node("qconv", [x, w, b], {"strides": list(st), "pads": list(pads), "dilations": list(dil),
                                              "group": 1, "x_zero_point": zx}).output
        outs.append(acc)
        if i == 0:  # a requantize epilogue (inlined into the dp4a kernel's write-back)
            outs.append(g.add_node("requantize", [acc], {"multiplier": [1 << 30], "shift": [-8], "axis": 1,
                                                         "zero_point": 3, "dtype": "u8"}).output)
    for i, (m, k, n, dt, za) in enumerate([(3, 7, 5, "u8", 200), (1, 64, 2, "i8", -3)]):
        a = g.add_input(f"a{i}", TensorType((m, k), dt))
        b = g.add_const(f"m{i}", rng.integers(-128, 128, (k, n)), "i8")
        bias = g.add_const(f"mb{i}", rng.integers(-900, 900, n), "i32")
        outs.append(g.add_node("qmatmul", [a, b, bias], {"a_zero_point": za}).output)
    g.set_outputs(outs)
    return g, len(convs) + 2


def test_dp4a_lowering_edge_shapes_bit_exact_on_cpu():
    require_int8_lowering()
    g, n = _edge_graph()
    for seed in (0, 1):
        _check_dp4a_lowering_on_cpu(g, _int_feeds(g, seed), n)


@pytest.mark.slow
@pytest.mark.parametrize("sm", SMS)
def test_dp4a_edge_shapes_schedule_for_every_arch(sm):
    """Every edge-case layer gets the tensorized dp4a schedule (none falls back to dlight)."""
    require_int8_lowering()
    from qcc.targets import compile_graph

    g, n = _edge_graph()
    src = cuda_emit.cuda_source(compile_graph(g, f"cuda-sm{sm}"))
    assert len(dp4a_kernels(src)) == n, dp4a_kernels(src)
    if NVCC:
        assert "dp4a" in cuda_emit.nvcc_ptx(src, sm)


# --- the CUDA source itself, run on the CPU ------------------------------------------------

_EMU_PRELUDE = r"""
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <barrier>
#include <functional>
#include <thread>
#include <vector>
typedef unsigned char uchar;
using std::max;
using std::min;
static inline float __fmul_rn(float a, float b) { return a * b; }  // (built with -ffp-contract=off)
#define CUDART_INF_F HUGE_VALF
struct qcc_dim3 { int x = 0, y = 0, z = 0; };
static thread_local qcc_dim3 threadIdx, blockIdx;
static std::barrier<>* qcc_bar;
static inline void __syncthreads() { qcc_bar->arrive_and_wait(); }
static inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i) c += (int)(signed char)(a >> (8 * i)) * (int)(signed char)(b >> (8 * i));
  return c;
}
#define __global__
#define __launch_bounds__(n)
static void qcc_launch(int grid, int ty, int tx, const std::function<void()>& kernel) {
  for (int b = 0; b < grid; ++b) {  // blocks one after another; a block's threads at once
    std::barrier<> bar(ty * tx);
    qcc_bar = &bar;
    std::vector<std::thread> threads;
    for (int y = 0; y < ty; ++y)
      for (int x = 0; x < tx; ++x)
        threads.emplace_back([&, b, y, x] { blockIdx.x = b; threadIdx.y = y; threadIdx.x = x; kernel(); });
    for (auto& t : threads) t.join();
  }
}
"""


def _kernel_definition(src: str, name: str):
    """(the source of kernel `name`, braces matched; its parameter declarations)."""
    m = next(m for m in _KERNEL.finditer(src) if m.group(1) == name)
    params = [p.strip() for p in src[m.start():m.end()].split("(")[-1].rsplit(")", 1)[0].split(",")]
    depth, i = 1, m.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(src[i], 0)
        i += 1
    return src[m.start():i], params


def emulate_kernels(src: str, names, workdir):
    """The named kernels of a CUDA source as CPU functions `run_<name>(grid, ty, tx, *pointers)`:
    one host thread per CUDA thread, a barrier for __syncthreads, function-static arrays for
    __shared__ (blocks run one at a time), a C __dp4a. Built with g++ -std=c++20."""
    import ctypes

    parts = [_EMU_PRELUDE]
    for name in names:
        body, params = _kernel_definition(src, name)
        parts.append(re.sub(r"__shared__ (alignas\(\d+\) )?", r"\1static ", body))
        casts = ", ".join(f"({p.rsplit(' ', 1)[0].replace('__restrict__', '').strip()})a{i}"
                          for i, p in enumerate(params))
        args = ", ".join(f"void* a{i}" for i in range(len(params)))
        parts.append(f'extern "C" void run_{name}(int g, int ty, int tx, {args}) '
                     f'{{ qcc_launch(g, ty, tx, [&] {{ {name}({casts}); }}); }}')
    cpp, so = Path(workdir) / "emu.cpp", Path(workdir) / "emu.so"
    cpp.write_text("\n".join(parts) + "\n")
    p = subprocess.run(["g++", "-std=c++20", "-O1", "-ffp-contract=off", "-w", "-shared", "-fPIC", "-pthread", str(cpp), "-o", str(so)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    return ctypes.CDLL(str(so))


def _epilogue_graph():
    """A conv and a matmul whose requantize FuseOps fuses into the dp4a kernel (run in the
    register write-back): per-channel int64 fixed point, zero points, both output dtypes."""
    import numpy as np

    from qcc.ir import Graph, TensorType

    rng = np.random.default_rng(1)
    g = Graph("epilogues")
    x = g.add_input("x", TensorType((1, 6, 10, 12), "u8"))
    w = g.add_const("w", rng.integers(-128, 128, (16, 6, 3, 3)), "i8")
    b = g.add_const("b", rng.integers(-3000, 3000, 16), "i32")
    acc = g.add_node("qconv", [x, w, b], {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1],
                                          "group": 1, "x_zero_point": 100}).output
    y = g.add_node("requantize", [acc], {"multiplier": [int(m) for m in rng.integers(1 << 30, 1 << 31, 16)],
                                         "shift": [-9] * 16, "axis": 1, "zero_point": 3, "dtype": "u8"}).output
    a = g.add_input("a", TensorType((4, 40), "u8"))
    m = g.add_const("m", rng.integers(-128, 128, (40, 24)), "i8")
    mb = g.add_const("mb", rng.integers(-900, 900, 24), "i32")
    macc = g.add_node("qmatmul", [a, m, mb], {"a_zero_point": 130}).output
    z = g.add_node("requantize", [macc], {"multiplier": [1500000000], "shift": [-6], "zero_point": -5,
                                          "dtype": "i8"}).output
    # squeeze-excite: a 1x1 conv on pooled channels scales an image; the epilogue broadcasts the
    # conv's output, so it runs as a second kernel of the same function
    p = g.add_input("p", TensorType((1, 16, 1, 1), "u8"))
    img = g.add_input("img", TensorType((1, 8, 5, 6), "f32"))
    sw = g.add_const("sw", rng.integers(-128, 128, (8, 16, 1, 1)), "i8")
    sacc = g.add_node("qconv", [p, sw, None], {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1],
                                               "group": 1, "x_zero_point": 7}).output
    gate = g.add_node("dequantize", [sacc], {"scale": [float(s) for s in rng.uniform(1e-4, 1e-3, 8)],
                                             "zero_point": [0] * 8, "axis": 1}).output
    scaled = g.add_node("mul", [img, gate]).output
    q = g.add_node("quantize", [scaled], {"scale": [0.01], "zero_point": [128], "dtype": "u8", "axis": -1}).output
    g.set_outputs([y, z, q])
    return g, 3


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (C++20) to run CUDA source on the CPU")
@pytest.mark.parametrize("which", ["edges", "epilogues"])
def test_dp4a_cuda_source_bit_exact_emulated_on_cpu(which, tmp_path):
    """The kernels.cu TVM generates for dp4a layers (tiles, shared-memory fetches, __syncthreads,
    __dp4a, fused requantize epilogues) compiled for the CPU and run thread by thread, on the
    arguments the Relax program passes them: == qcc.interp, bit for bit."""
    require_int8_lowering()
    import ctypes

    import numpy as np
    import tvm
    from tvm import relax
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.s_tir import dlight

    from qcc.interp import run as interp_run
    from qcc.targets import compile_graph, get_target, lower_graph
    from qcc.targets import cuda_int8 as C

    g, n = _edge_graph() if which == "edges" else _epilogue_graph()
    preset = get_target("cuda-sm80")
    target, strategy = preset.target(), C.CUDAInt8Strategy(preset)
    src = cuda_emit.cuda_source(compile_graph(g, preset, strategy=strategy))
    # the Relax program as the pipeline has it once every kernel is scheduled (calls still call_tir)
    passes = cuda.legalize_passes(target)
    passes.insert(len(passes) - 1, dlight.ApplyDefaultSchedule(C.dp4a_rule()))
    with target:
        mod = tvm.transform.Sequential(cuda.library_dispatch_passes(target) + passes)(lower_graph(g, strategy))
    binds = [b for blk in mod["main"].body.blocks for b in blk.bindings]
    results = [f for b in binds if isinstance(b.value, relax.Tuple) for f in b.value.fields]
    calls = [(b.var, b.value) for b in binds if isinstance(b.value, relax.Call) and b.value.op.name == "relax.call_tir"
             and C.PREFIX in b.value.args[0].name_hint]
    assert len(calls) == n and {c.args[0].name_hint + "_kernel" for _, c in calls} == set(dp4a_kernels(src))
    # a function's kernels: <name>_kernel, then <name>_kernel_1, ... (one per top-level loop nest)
    kernels = {c.args[0].name_hint: sorted((k for k in kernel_bodies(src)
                                            if re.fullmatch(re.escape(c.args[0].name_hint) + r"_kernel(_\d+)?", k)),
                                           key=lambda k: (len(k), k)) for _, c in calls}
    if which == "epilogues":  # the squeeze-excite function is a dp4a kernel and a broadcast kernel
        assert sorted(len(ks) for ks in kernels.values()) == [1, 1, 2], kernels
    lib = emulate_kernels(src, sorted(k for ks in kernels.values() for k in ks), tmp_path)
    feeds = _int_feeds(g, 5)
    feeds.update({v.name: np.random.default_rng(2).uniform(-3, 3, v.shape).astype(np.float32)
                  for v in g.inputs if v.dtype == "f32"})
    ref = interp_run(g, feeds)
    for var, call in calls:
        func = mod[call.args[0]]
        launches = []  # per kernel, in order: {blockIdx.x / threadIdx.y / threadIdx.x: extent}
        for e, tag in re.findall(r'T\.thread_binding\((?:T\.int64\()?(\d+)\)?, thread="(\w+\.\w)"\)', func.script()):
            if tag == "blockIdx.x":
                launches.append({})
            launches[-1][tag] = max(launches[-1].get(tag, 1), int(e))
        assert len(launches) == len(kernels[call.args[0].name_hint])
        # the kernels' parameters: the PrimFunc's buffers (graph inputs, constants, the output)
        # and the global buffers it allocates between its kernels
        arrays = {buf.name: np.ascontiguousarray(feeds[arg.name] if isinstance(arg, relax.Var) else arg.value.numpy())
                  for buf, arg in zip(func.params, call.args[1].fields)}
        for buf in func.body.block.alloc_buffers:
            arrays.setdefault(buf.name, np.zeros([int(d) for d in buf.shape], buf.dtype))
        want = ref[g.outputs[next(i for i, r in enumerate(results) if r.same_as(var))].name]
        got = arrays[func.params[-1].name] = np.zeros(want.shape, want.dtype)
        for name, dims in zip(kernels[call.args[0].name_hint], launches):
            _, params = _kernel_definition(src, name)
            ptrs = [arrays[p.rsplit(" ", 1)[1].removesuffix("_ptr")].ctypes.data_as(ctypes.c_void_p) for p in params]
            getattr(lib, f"run_{name}")(dims.get("blockIdx.x", 1), dims.get("threadIdx.y", 1),
                                        dims.get("threadIdx.x", 1), *ptrs)
        assert np.array_equal(got, want), f"{name} {launches}: {np.count_nonzero(got != want)}/{got.size} differ"


def test_cuda_source_walks_imports():
    class M:
        def __init__(self, kind, imports=(), src=""):
            self.kind, self.imports, self._src = kind, list(imports), src

        def inspect_source(self):
            return self._src

    tree = M("relax.VMExecutable", [M("llvm", [M("cuda", src="__global__ void a() {}")]),
                                    M("cuda", src="__global__ void b() {}\n")])
    src = cuda_emit.cuda_source(tree)
    assert src.index("void a") < src.index("void b")
    with pytest.raises(cuda_emit.EmitError):
        cuda_emit.cuda_source(M("llvm"))


def test_emit_needs_a_cuda_target(tmp_path):
    p = cli("compile", TINY, "--input-shape", "input=1x3x32x32", "--target", "x86-avx2", "--emit", "cuda",
            "-o", tmp_path / "o")
    assert p.returncode == 1 and "needs a cuda target" in p.stderr
    assert not (tmp_path / "o").exists()
    p = cli("compile", TINY, "--emit", "cubin", "-o", tmp_path / "o")
    assert p.returncode == 2 and "unknown kind 'cubin'" in p.stderr


@pytest.mark.slow
def test_ptx_without_nvcc_is_a_warning(tmp_path):
    gxx = shutil.which("g++")
    if not gxx or (NVCC and Path(NVCC).parent == Path(gxx).parent):
        pytest.skip("cannot hide nvcc from PATH while keeping the host compiler")
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep)
                           if d and not (Path(d) / "nvcc").exists())
    out = tmp_path / "o"
    p = cli("compile", TINY, "--input-shape", "input=1x3x32x32", "--target", "cuda-sm80", "--emit", "cuda,ptx",
            "-o", out, env={**os.environ, "PATH": path})
    assert p.returncode == 0, p.stderr
    assert "warning: nvcc is not on PATH" in p.stderr
    assert (out / "kernels.cu").exists() and not (out / "kernels.ptx").exists()
