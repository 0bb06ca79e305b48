"""One command, every number: `python benchmarks/run.py [--models cls,rec,det] [--threads N]`.

For each PP-OCR model shipped in the rapidocr-onnxruntime wheel it builds, in one
process: qcc int8 (-O2, calibrated on real text crops), qcc float (-O0),
onnxruntime float and onnxruntime int8 (its quantize_static QDQ defaults, per-channel,
same calibration data). Then it times them interleaved — round robin, one run of
each per round — with the same thread count, and prints medians and ratios; then again
with a short burst of back-to-back runs per round ("warm": a serving loop's steady state;
see interleaved_medians). The machine is noisy: only ratios from one interleaved run mean
anything.

After the table: the three largest conv/matmul layers (by MACs) of each qcc int8 build with
their kernel's time and achieved GMAC/s, against the machine's int8 peak (measured with
the multiply-accumulate loop of qcc's kernels, VNNI or AVX2, where the CPU has one, else
computed from the clock, and said so). Depthwise layers reduce four taps, not four
channels, per multiply-accumulate (targets/x86_depthwise.py; float32 multiply-adds on
AVX2) and float layers run as float: their share of the int8 peak is only a yardstick.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

MODELS = {
    "cls": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192)),
    "rec": ("ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320)),
    "det": ("ch_PP-OCRv4_det_infer.onnx", (1, 3, 384, 576)),
}


def model_path(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    return Path(spec.origin).parent / "models" / name  # an absolute name (--model) stays as it is


def text_crops(shape, n, seed=0):
    """Real pixels: crops of scikit-image's bundled text images, normalised like PP-OCR."""
    from skimage import data, transform

    imgs = [data.text(), data.page(), data.astronaut().mean(axis=2), data.coffee().mean(axis=2)]
    rng = np.random.default_rng(seed)
    _, c, h, w = shape
    out = []
    for i in range(n):
        img = imgs[i % len(imgs)].astype(np.float32)
        H, W = img.shape
        ch = int(rng.integers(max(8, H // 8), max(9, H // 2)))
        cw = min(W, int(ch * w / h))
        y, x = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
        crop = transform.resize(img[y:y + ch, x:x + cw], (h, w), anti_aliasing=True, preserve_range=True)
        crop = (crop / 255.0 - 0.5) / 0.5
        out.append(np.broadcast_to(crop, (c, h, w)).astype(np.float32)[None])
    return out


def ort_session(path, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_int8(path, shape, calib, work: Path):
    """onnxruntime's quantize_static with its defaults (QDQ), per-channel weights, on the model
    with its input fixed to `shape` (tests/models.py: ort_quantize_static, as the tests run it)."""
    import onnx

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from models import ort_quantize_static

    m = onnx.load(str(path))
    inp = m.graph.input[0]
    for d, v in zip(inp.type.tensor_type.shape.dim, shape):
        d.dim_value = v
    fixed = work / "fixed.onnx"
    onnx.save(m, str(fixed))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static warns once per initializer it cannot use as a bias
    try:
        return ort_quantize_static(fixed, work / "int8.onnx", inp.name, calib)
    finally:
        root.setLevel(level)


# --- per-layer throughput against the machine's int8 peak ---------------------------------------

_VNNI_LOOP = r"""
/* 12 independent accumulators, each vpdpbusd zmm = 64 u8*s8 multiply-adds: 768 MACs an iteration */
long long qcc_vnni_loop(long long iters) {
  long long n = iters;
  __asm__ volatile(
    "vpxord %%zmm0,%%zmm0,%%zmm0\n\tvpxord %%zmm1,%%zmm1,%%zmm1\n\tvpxord %%zmm2,%%zmm2,%%zmm2\n\t"
    "vpxord %%zmm3,%%zmm3,%%zmm3\n\tvpxord %%zmm4,%%zmm4,%%zmm4\n\tvpxord %%zmm5,%%zmm5,%%zmm5\n\t"
    "vpxord %%zmm6,%%zmm6,%%zmm6\n\tvpxord %%zmm7,%%zmm7,%%zmm7\n\tvpxord %%zmm8,%%zmm8,%%zmm8\n\t"
    "vpxord %%zmm9,%%zmm9,%%zmm9\n\tvpxord %%zmm10,%%zmm10,%%zmm10\n\tvpxord %%zmm11,%%zmm11,%%zmm11\n\t"
    "1:\n\t"
    "vpdpbusd %%zmm12,%%zmm13,%%zmm0\n\tvpdpbusd %%zmm12,%%zmm13,%%zmm1\n\tvpdpbusd %%zmm12,%%zmm13,%%zmm2\n\t"
    "vpdpbusd %%zmm12,%%zmm13,%%zmm3\n\tvpdpbusd %%zmm12,%%zmm13,%%zmm4\n\tvpdpbusd %%zmm12,%%zmm13,%%zmm5\n\t"
    "vpdpbusd %%zmm12,%%zmm13,%%zmm6\n\tvpdpbusd %%zmm12,%%zmm13,%%zmm7\n\tvpdpbusd %%zmm12,%%zmm13,%%zmm8\n\t"
    "vpdpbusd %%zmm12,%%zmm13,%%zmm9\n\tvpdpbusd %%zmm12,%%zmm13,%%zmm10\n\tvpdpbusd %%zmm12,%%zmm13,%%zmm11\n\t"
    "dec %0\n\tjnz 1b\n\t"
    : "+r"(n) : : "zmm0","zmm1","zmm2","zmm3","zmm4","zmm5","zmm6","zmm7","zmm8","zmm9","zmm10","zmm11","cc");
  return iters;
}
"""
_AVX2_LOOP = r"""
/* what qcc's AVX2 int8 kernels issue per 16 products: vpmaddwd (8 lanes x 2 int16 products) and
   a vpaddd into the accumulator; 8 independent accumulators: 128 MACs an iteration */
long long qcc_avx2_loop(long long iters) {
  long long n = iters;
  __asm__ volatile(
    "vpxor %%ymm0,%%ymm0,%%ymm0\n\tvpxor %%ymm1,%%ymm1,%%ymm1\n\tvpxor %%ymm2,%%ymm2,%%ymm2\n\t"
    "vpxor %%ymm3,%%ymm3,%%ymm3\n\tvpxor %%ymm4,%%ymm4,%%ymm4\n\tvpxor %%ymm5,%%ymm5,%%ymm5\n\t"
    "vpxor %%ymm6,%%ymm6,%%ymm6\n\tvpxor %%ymm7,%%ymm7,%%ymm7\n\t"
    "1:\n\t"
    "vpmaddwd %%ymm12,%%ymm13,%%ymm8\n\tvpaddd %%ymm8,%%ymm0,%%ymm0\n\t"
    "vpmaddwd %%ymm12,%%ymm13,%%ymm9\n\tvpaddd %%ymm9,%%ymm1,%%ymm1\n\t"
    "vpmaddwd %%ymm12,%%ymm13,%%ymm10\n\tvpaddd %%ymm10,%%ymm2,%%ymm2\n\t"
    "vpmaddwd %%ymm12,%%ymm13,%%ymm11\n\tvpaddd %%ymm11,%%ymm3,%%ymm3\n\t"
    "vpmaddwd %%ymm12,%%ymm13,%%ymm8\n\tvpaddd %%ymm8,%%ymm4,%%ymm4\n\t"
    "vpmaddwd %%ymm12,%%ymm13,%%ymm9\n\tvpaddd %%ymm9,%%ymm5,%%ymm5\n\t"
    "vpmaddwd %%ymm12,%%ymm13,%%ymm10\n\tvpaddd %%ymm10,%%ymm6,%%ymm6\n\t"
    "vpmaddwd %%ymm12,%%ymm13,%%ymm11\n\tvpaddd %%ymm11,%%ymm7,%%ymm7\n\t"
    "dec %0\n\tjnz 1b\n\t"
    : "+r"(n) : : "ymm0","ymm1","ymm2","ymm3","ymm4","ymm5","ymm6","ymm7","ymm8","ymm9","ymm10","ymm11","cc");
  return iters;
}
"""
_FMA_LOOP = r"""
/* float32 multiply-adds as qcc's float kernels issue them: 10 independent vfmadd231ps
   accumulators of WIDTH lanes: 10 * WIDTH MACs an iteration */
long long qcc_fma_loop(long long iters) {
  long long n = iters;
  __asm__ volatile(
    "vxorps %%REG0,%%REG0,%%REG0\n\tvxorps %%REG1,%%REG1,%%REG1\n\tvxorps %%REG2,%%REG2,%%REG2\n\t"
    "vxorps %%REG3,%%REG3,%%REG3\n\tvxorps %%REG4,%%REG4,%%REG4\n\tvxorps %%REG5,%%REG5,%%REG5\n\t"
    "vxorps %%REG6,%%REG6,%%REG6\n\tvxorps %%REG7,%%REG7,%%REG7\n\tvxorps %%REG8,%%REG8,%%REG8\n\t"
    "vxorps %%REG9,%%REG9,%%REG9\n\t"
    "1:\n\t"
    "vfmadd231ps %%REG12,%%REG13,%%REG0\n\tvfmadd231ps %%REG12,%%REG13,%%REG1\n\t"
    "vfmadd231ps %%REG12,%%REG13,%%REG2\n\tvfmadd231ps %%REG12,%%REG13,%%REG3\n\t"
    "vfmadd231ps %%REG12,%%REG13,%%REG4\n\tvfmadd231ps %%REG12,%%REG13,%%REG5\n\t"
    "vfmadd231ps %%REG12,%%REG13,%%REG6\n\tvfmadd231ps %%REG12,%%REG13,%%REG7\n\t"
    "vfmadd231ps %%REG12,%%REG13,%%REG8\n\tvfmadd231ps %%REG12,%%REG13,%%REG9\n\t"
    "dec %0\n\tjnz 1b\n\t"
    : "+r"(n) : : "REG0","REG1","REG2","REG3","REG4","REG5","REG6","REG7","REG8","REG9","cc");
  return iters;
}
"""
# (cpu flag, C source, symbol, MACs an iteration, what it is) per instruction set, best first
_PEAK_LOOPS = [("avx512_vnni", _VNNI_LOOP, "qcc_vnni_loop", 12 * 64, "vpdpbusd zmm loop"),
               ("avx2", _AVX2_LOOP, "qcc_avx2_loop", 8 * 16, "vpmaddwd+vpaddd ymm loop")]
_FLOAT_PEAK_LOOPS = [("avx512f", _FMA_LOOP.replace("REG", "zmm"), "qcc_fma_loop", 10 * 16, "vfmadd231ps zmm loop"),
                     ("fma", _FMA_LOOP.replace("REG", "ymm"), "qcc_fma_loop", 10 * 8, "vfmadd231ps ymm loop")]


def _cpu_flags():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _measured_peak(loops, threads, rounds, iters):
    """(GMAC/s, how) of the first loop in `loops` the CPU has, or None (no such CPU flag, no C
    compiler): the best of `rounds` bursts on `threads` threads at once -- best, not median,
    because the machine is shared and the peak is what the core can do."""
    import ctypes
    import shutil
    import subprocess
    import threading

    flags = _cpu_flags()
    loop = next((lp for lp in loops if lp[0] in flags), None)
    if loop is None or not shutil.which("cc"):
        return None
    _, src_text, symbol, macs_per_iter, what = loop
    with tempfile.TemporaryDirectory() as td:
        src, so = Path(td) / "peak.c", Path(td) / "peak.so"
        src.write_text(src_text)
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
        f = getattr(ctypes.CDLL(str(so)), symbol)  # ctypes drops the GIL: threads run in parallel
        f.argtypes, f.restype = [ctypes.c_longlong], ctypes.c_longlong
        f(10_000)
        best = 0.0
        for _ in range(rounds):
            ts = [threading.Thread(target=f, args=(iters,)) for _ in range(threads)]
            t0 = time.perf_counter()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            best = max(best, threads * iters * macs_per_iter / (time.perf_counter() - t0) / 1e9)
    return best, f"measured: {what}, {threads} thread{'s' if threads > 1 else ''}, best of {rounds} bursts"


def float_peak(threads, rounds=30, iters=2_000_000):
    """(GMAC/s, how) of float32 FMAs (AVX-512 or AVX2+FMA), or (None, why not): with the int8
    peak, the most int8 can gain over float on layers the multiply-adds bound."""
    return _measured_peak(_FLOAT_PEAK_LOOPS, threads, rounds, iters) or (None, "not measured (no FMA or no C compiler)")


def int8_peak(threads, rounds=30, iters=2_000_000):
    """(GMAC/s, how it was found). With a C compiler and AVX-512 VNNI or AVX2: the best of `rounds`
    bursts of the multiply-accumulate loop qcc's int8 kernels use (independent accumulators) on
    `threads` threads at once. Otherwise computed from the clock (lscpu's max MHz, else
    /proc/cpuinfo) and an assumed ops/cycle, and said so."""
    import subprocess

    measured = _measured_peak(_PEAK_LOOPS, threads, rounds, iters)
    if measured is not None:
        return measured
    flags = _cpu_flags()
    mhz = None
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        mhz = next((float(ln.split(":")[1]) for ln in out.splitlines() if ln.startswith("CPU max MHz")), None)
    except (OSError, ValueError):
        pass
    if mhz is None:
        try:
            mhz = max(float(ln.split(":")[1]) for ln in open("/proc/cpuinfo") if ln.startswith("cpu MHz"))
        except (OSError, ValueError):
            return None, "unknown (no C compiler to measure with, no clock to compute from)"
    per_cycle, how = ((64, "AVX-512 (vpmaddubsw+vpmaddwd, 2 ports)") if "avx512bw" in flags
                      else (32, "AVX2 (vpmaddubsw+vpmaddwd, 2 ports)") if "avx2" in flags
                      else (8, "SSE"))
    return (threads * mhz * 1e6 * per_cycle / 1e9,
            f"computed, not measured: {threads} cores x {mhz:.0f} MHz x {per_cycle} MACs/cycle assumed for {how}")


COMPUTE_KERNELS = ("conv", "matmul", "dense", "gemm")


def _fits(layer, kernel) -> bool:
    """Whether `kernel` (a profile entry) can be `layer`'s: the same output size, the layer's
    input among its arguments, and another argument the size of the layer's weights (or up to
    4x: kernels pack and pad them). A squeeze-excite conv fused into the multiply by the big
    tensor has the big tensor's output size but not the next conv's weights -- and when the
    input happens to be as large as the weights (rec's 480->480 1x1 conv on 6x80), the big
    tensor must not count as both."""
    shapes = kernel["shapes"]
    if not shapes or int(np.prod(shapes[-1])) != layer["size"]:
        return False
    args = [int(np.prod(s)) for s in shapes[:-1]]
    x, w = (layer["operands"] + [0, 0])[:2]
    return any(a == x and any(w <= b < 4 * w for j, b in enumerate(args) if j != i)
               for i, a in enumerate(args))


def _align(layers, kernels):
    """(layer, kernel) pairs: the longest order-preserving matching of the two lists under
    _fits (both follow the graph's order: the VM calls kernels as the lowering emitted them),
    so one kernel without a layer (or layer without a kernel) does not shift every later
    match onto the wrong layer, as a greedy first-fit does."""
    n, m = len(layers), len(kernels)
    best = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            best[i][j] = max(best[i + 1][j], best[i][j + 1],
                             best[i + 1][j + 1] + 1 if _fits(layers[i], kernels[j]) else 0)
    pairs, i, j = [], 0, 0
    while i < n and j < m:
        if _fits(layers[i], kernels[j]) and best[i][j] == best[i + 1][j + 1] + 1:
            pairs.append((layers[i], kernels[j]))
            i, j = i + 1, j + 1
        elif best[i + 1][j] >= best[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


def layer_throughput(artifact: Path, feeds, threads, top=3, repeat=10):
    """The `top` largest (by MACs) layers of the artifact with their kernel's median time: the
    VM's per-call instrument (targets.builder.Runner.profile), kernels matched to layers in call
    order by output size (kernel names carry no layer names; destination-passing kernels take
    their output last). A match above the peak is printed but flagged, not hidden."""
    from qcc.analysis import macs
    from qcc.ir.parser import load as load_qir
    from qcc.report import layer_name
    from qcc.targets import load as load_lib

    graph = load_qir(artifact / "model.qir")
    layers = [{"name": layer_name(n), "op": n.op, "macs": macs(n), "size": int(np.prod(n.outputs[0].shape)),
               "operands": [int(np.prod(v.shape)) for v in n.inputs[:2]],
               "precision": "int" if n.outputs[0].dtype.startswith(("i", "u")) else "float"}
              for n in graph.nodes if macs(n)]
    runner = load_lib(artifact / "model.so", num_threads=threads)
    kernels = [k for k in runner.profile(feeds, repeat=repeat) if any(c in k["kernel"] for c in COMPUTE_KERNELS)]
    for l, k in _align(layers, kernels):
        l.update(kernel=k["kernel"], seconds=k["seconds"])
    timed = [l for l in layers if "seconds" in l]
    return sorted(timed, key=lambda l: -l["macs"])[:top], len(timed), len(layers)


def print_layers(per_model, peak, how, fpeak=None, fhow=""):
    print(f"\nint8 peak {peak:.0f} GMAC/s ({how})" if peak else f"\nint8 peak: {how}")
    if fpeak:
        ratio = f": int8 can be at most {peak / fpeak:.2f}x float's speed on MAC-bound layers" if peak else ""
        print(f"float32 peak {fpeak:.0f} GMAC/s ({fhow}){ratio}")
    print("largest conv/matmul layers of the qcc int8 build (per-kernel median of 10 runs, VM instrument):")
    print(f"{'model':<5} {'layer':<28} {'op':<8} {'MMACs':>7} {'ms':>7} {'GMAC/s':>7} {'of peak':>7}  kernel")
    for key, (rows, matched, total) in per_model.items():
        for l in rows:
            g = l["macs"] / l["seconds"] / 1e9
            share = f"{100 * g / peak:6.1f}%" if peak else "      ?"
            if peak and g > peak:  # impossible: the kernel was matched to the wrong layer
                share = " >peak!"
            print(f"{key:<5} {l['name'][:28]:<28} {l['op']:<8} {l['macs'] / 1e6:7.1f} {l['seconds'] * 1e3:7.3f} "
                  f"{g:7.1f} {share}  {l['kernel'][:60]}")
        if matched < total:
            print(f"{key:<5} ({total - matched} of {total} MAC layers not matched to a kernel)")


def o3_builds(path, tmp: Path, inp, shape, budget):
    """-O3 builds into tmp: untuned (empty database), cold (tunes into tmp/tune-db), warm (from
    it); their compile times in seconds."""
    from qcc.driver import CompileOptions, compile_model

    times = {}
    for name, db in (("untuned", tmp / "empty-db"), ("cold", tmp / "tune-db"), ("warm", tmp / "tune-db")):
        opts = CompileOptions(opt_level="O3", calib=str(tmp / "calib.npz"), input_shapes={inp: shape},
                              tune_budget="0" if name == "untuned" else budget, tune_db=str(db))
        t0 = time.perf_counter()
        compile_model(path, tmp / f"o3-{name}", opts)
        times[name] = time.perf_counter() - t0
    return times


SPEED_COLUMNS = ("qcc int8", "qcc f32", "ort f32", "ort int8")


def cli_build(model, out: Path, level: str, *args: str):
    """`qcc compile MODEL -LEVEL -o OUT --quiet ARGS` as a user runs it, in its own process:
    (seconds, None), or (seconds, the error's last line) when it failed."""
    import subprocess

    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "qcc.cli", "compile", str(model), f"-{level}", "-o", str(out),
                        "--quiet", *args], capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode:
        return dt, f"exit {p.returncode}: {(p.stderr.strip().splitlines() or ['?'])[-1]}"
    return dt, None


def print_speed_table(rows, width: int = 20) -> None:
    """{label: {contender: median ms}} as a table of SPEED_COLUMNS and issue 7's ratios (a
    row missing a contender, whose build failed, is left out)."""
    print(f"{'':<{width}} " + " ".join(f"{c:>9}" for c in SPEED_COLUMNS)
          + f" {'int8/ort-int8':>13} {'int8/ort-f32':>12} {'int8/qcc-f32':>12}")
    for label, med in rows.items():
        if not all(c in med for c in SPEED_COLUMNS):
            continue
        print(f"{label:<{width}} " + " ".join(f"{med[c]:9.2f}" for c in SPEED_COLUMNS)
              + f" {med['qcc int8'] / med['ort int8']:13.2f} {med['qcc int8'] / med['ort f32']:12.2f}"
              f" {med['qcc int8'] / med['qcc f32']:12.2f}")


def interleaved_medians(calls, rounds: int, burst: int = 1):
    """{name: median ms}: `rounds` rounds, each running every contender in turn.

    burst 1: one call each per round, so every call follows the other contenders' work, as
    a single inference in a busy process does (caches, thread pools and the core's clock
    wound down: on this kind of machine a model run after a 20 ms pause takes about twice
    its back-to-back time, one thread or two). burst N: one untimed call, then N timed
    back to back, their median kept: a serving loop's steady state. Interleaving spreads the
    machine's noise over all contenders alike in both. Each round runs them in its own
    (seeded) shuffled order: in a fixed order a contender always ran right after the same
    one (qcc float after qcc int8, whose thread pool was still awake)."""
    times = {k: [] for k in calls}
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        names = list(calls)
        shuffle(names)
        for k in names:
            f = calls[k]
            if burst == 1:
                t0 = time.perf_counter()
                f()
                times[k].append((time.perf_counter() - t0) * 1e3)
                continue
            f()
            inner = []
            for _ in range(burst):
                t0 = time.perf_counter()
                f()
                inner.append((time.perf_counter() - t0) * 1e3)
            times[k].append(statistics.median(inner))
    return {k: statistics.median(v) for k, v in times.items()}


def _input_name(path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="cls,rec,det")
    ap.add_argument("--model", action="append", default=[], metavar="KEY=FILE.onnx:DIMS",
                    help="one more model, its single input fixed to DIMS (e.g. v3rec=rec.onnx:1x3x48x320) and fed "
                         "text crops like the PP-OCR ones; add KEY to --models (repeatable)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--burst", type=int, default=5,
                    help="calls per contender and round in the warm rows (after one untimed call)")
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--no-layers", dest="layers", action="store_false",
                    help="skip the per-layer GMAC/s of the largest layers and the int8 peak")
    ap.add_argument("--o3", metavar="BUDGET",
                    help="also build qcc -O3 with this kernel-tuning budget (64, 10m) into a fresh database, "
                         "cold then warm: its latency joins the rounds; prints compile times of -O2, -O3 cold, warm")
    args = ap.parse_args(argv)
    for spec in args.model:
        key, _, rest = spec.partition("=")
        file, _, dims = rest.rpartition(":")
        if not key or not file or not dims:
            ap.error(f"--model {spec!r}: expected KEY=FILE.onnx:DIMS")
        MODELS[key] = (str(Path(file).resolve()), tuple(int(d) for d in dims.split("x")))
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # its quantizer's chatter is not a result
    import qcc

    print(f"threads {args.threads}, {args.rounds} interleaved rounds, medians in ms; 'warm': each round runs each "
          f"contender {args.burst + 1} times back to back and keeps the median of the last {args.burst}")
    print(f"{'model':<10} {'qcc int8':>9} {'qcc f32':>8} {'ort f32':>8} {'ort int8':>9}   "
          f"{'int8/ort-int8':>13} {'int8/ort-f32':>12} {'int8/qcc-f32':>12}")
    per_model = {}
    compile_s: dict = {}  # model: seconds
    for key in args.models.split(","):
        name, shape = MODELS[key]
        path = model_path(name)
        inp = _input_name(path)
        calib = text_crops(shape, args.calib)
        x = text_crops(shape, 1, seed=99)[0]
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            np.savez(tmp / "calib.npz", **{inp: np.concatenate(calib)})
            t_o2 = time.perf_counter()
            qcc.compile(path, tmp / "q8", opt_level="O2", calib=str(tmp / "calib.npz"), input_shapes={inp: shape})
            t_o2 = time.perf_counter() - t_o2
            qcc.compile(path, tmp / "f32", opt_level="O0", input_shapes={inp: shape})
            runners = {
                "qcc int8": qcc.load(tmp / "q8"),
                "qcc f32": qcc.load(tmp / "f32"),
                "ort f32": ort_session(path, args.threads),
                "ort int8": ort_session(ort_int8(path, shape, calib, tmp), args.threads),
            }
            if args.o3:
                t_o3 = o3_builds(path, tmp, inp, shape, args.o3)
                runners["qcc -O3"] = qcc.load(tmp / "o3-warm")
            calls = {
                k: (lambda r=r: r.run(None, {inp: x})) if k.startswith("ort") else (lambda r=r: r.run({inp: x}))
                for k, r in runners.items()
            }
            for f in calls.values():  # warm up
                f()
            meds = {}
            for mode, burst in (("", 1), (" warm", args.burst)):
                med = meds[mode] = interleaved_medians(calls, args.rounds, burst)
                print(f"{key + mode:<10} {med['qcc int8']:9.2f} {med['qcc f32']:8.2f} {med['ort f32']:8.2f} "
                      f"{med['ort int8']:9.2f}   {med['qcc int8'] / med['ort int8']:13.2f} "
                      f"{med['qcc int8'] / med['ort f32']:12.2f} {med['qcc int8'] / med['qcc f32']:12.2f}")
            if args.o3:
                o3 = " / ".join(f"{m['qcc -O3']:.2f} ms = {m['qcc -O3'] / m['qcc int8']:.2f}x -O2" for m in meds.values())
                print(f"{key:<5} qcc -O3 (tune budget {args.o3}, single / warm) {o3}; compile -O2 {t_o2:.1f} s, "
                      f"-O3 untuned {t_o3['untuned']:.1f} s, cold {t_o3['cold']:.1f} s, warm {t_o3['warm']:.1f} s "
                      f"({t_o3['warm'] / t_o2:.2f}x -O2)")
            sys.stdout.flush()
            compile_s[key] = t_o2
            if args.layers:
                per_model[key] = layer_throughput(tmp / "q8", {inp: x}, args.threads)
    # issue 7's compile goal (det -O2 under 60 s); in this process, so without the CLI's
    # start-up (imports)
    print("\nqcc -O2 compile: " + ", ".join(f"{k} {v:.1f} s" for k, v in compile_s.items()))
    if args.layers:
        print_layers(per_model, *int8_peak(args.threads), *float_peak(args.threads))


if __name__ == "__main__":
    main()
