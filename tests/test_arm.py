"""ARM artifacts checked by execution: cross-linked with aarch64-linux-gnu-g++, run under
`qemu-aarch64 -cpu <the preset's core>` with the aarch64 runtime qcc prepares itself
(qcc.targets.emulate), and compared with the x86 build of the same graph.

- float (-O0): the tiny CNN on a Cortex-A72 and a Cortex-A76 within 1e-5 of x86
- int8 (-O2): PP-OCR's text-direction classifier bit-identical to x86 on both cores
- disassembly: `sdot` in the A76 int8 build, none in the A72 one; the share of int8 MACs
  run in sdot kernels (every conv but the depthwise ones)
- the int8 kernels (targets/arm_int8.py) case by case: bit-identical to qcc.interp on both cores
- emulating the exact core: an `sdot` library runs on the A76 and stops with SIGILL on the A72

The one-time runtime set-up (about a minute) is a session fixture; timings are printed
(pytest -s shows them, and they are attached to the report as properties).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import qcc
from qcc.targets import emulate

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples/tiny_cnn.onnx"
TINY_SHAPE = {"input": (1, 3, 32, 32)}
PP_SHAPE = {"x": (1, 3, 48, 192)}
CORES = {"arm-a72": "cortex-a72", "arm-a76": "cortex-a76"}
X86 = "x86-avx2"

_missing = [t for t in ("qemu-aarch64", "aarch64-linux-gnu-g++") if not shutil.which(t)]
needs_arm_tools = pytest.mark.skipif(
    bool(_missing), reason=f"{' and '.join(_missing)} not installed (Debian: qemu-user, g++-aarch64-linux-gnu; "
                           "scripts/setup.sh installs them as root)")


def cli(*args, env=None):
    p = subprocess.run([sys.executable, "-m", "qcc.cli", *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT, env=env)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def objdump(lib: Path) -> str:
    return subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(lib)], capture_output=True, text=True,
                          check=True).stdout


def count_insn(disasm: str, mnemonic: str) -> int:
    return sum(1 for ln in disasm.splitlines() if ln.split("\t")[2:3] and ln.split("\t")[2].strip() == mnemonic)


@pytest.fixture(scope="session")
def aarch64_runtime():
    """The guest runtime, prepared once (about a minute the first time, then cached)."""
    t0 = time.monotonic()
    rt = emulate.ensure_runtime()
    print(f"\n[arm] aarch64 runtime at {rt.path}: ready in {time.monotonic() - t0:.1f} s")
    return rt


def _timed_run(mod, feeds, what, record=None):
    t0 = time.monotonic()
    out = mod.run(feeds)
    dt = time.monotonic() - t0
    print(f"[arm] {what}: {dt:.1f} s")
    if record:
        record(f"run_seconds[{what}]", round(dt, 2))
    return out


# --- float: the tiny CNN --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_builds(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    outs = {}
    for t in (X86, *CORES):
        t0 = time.monotonic()
        qcc.compile(TINY, base / t, target=t, opt_level="O0", input_shapes=TINY_SHAPE)
        print(f"\n[arm] compile tiny -O0 for {t}: {time.monotonic() - t0:.1f} s")
        outs[t] = base / t
    return outs


@pytest.mark.slow
@needs_arm_tools
@pytest.mark.parametrize("preset", list(CORES))
def test_float_tiny_cnn_under_qemu_matches_x86(preset, tiny_builds, aarch64_runtime, tmp_path, record_property):
    x = np.load(ROOT / "examples/tiny_cnn_input.npz")["input"]
    ref = qcc.load(tiny_builds[X86]).run({"input": x})["probs"]
    so = tiny_builds[preset] / "model.so"
    assert so.read_bytes()[:4] == b"\x7fELF" and objdump(so)  # cross-linked aarch64 code
    mod = qcc.load(tiny_builds[preset])
    assert mod._runner.cpu == CORES[preset]
    # each qemu start costs ~12 s, so one way in per core: the command line on the first, the
    # API's qcc.load(...).run on the others (both end in the same emulate.run_library)
    if preset == next(iter(CORES)):
        t0 = time.monotonic()
        p = cli("run", tiny_builds[preset], "--input", ROOT / "examples/tiny_cnn_input.npz", "-o", tmp_path / "y.npz")
        print(f"[arm] qcc run tiny ({preset}, -cpu {CORES[preset]}): {time.monotonic() - t0:.1f} s")
        assert p.returncode == 0, p.stderr
        with np.load(tmp_path / "y.npz") as z:
            got = z["probs"]
    else:
        got = _timed_run(mod, {"input": x}, f"qcc.load().run tiny {preset}", record_property)["probs"]
    assert got.dtype == np.float32 and got.shape == (1, 10)
    assert np.abs(got - ref).max() <= 1e-5, np.abs(got - ref).max()


# --- int8: PP-OCR's classifier, bit for bit ----------------------------------------------------

def _pp_inputs(n):
    rng = np.random.default_rng(2024)
    return [rng.uniform(-1, 1, (1, 3, 48, 192)).astype(np.float32) for _ in range(n)]


def require_int8_lowering():
    from qcc.targets import supported_ops

    if not {"qconv", "qmatmul", "requantize"} <= set(supported_ops()):
        pytest.skip("the integer-op lowerings (targets/lower_quant.py) are not available yet")


@pytest.fixture(scope="module")
def ppocr_builds(ppocr_cls_path, tmp_path_factory):
    require_int8_lowering()
    base = tmp_path_factory.mktemp("ppocr")
    rng = np.random.default_rng(0)  # a few deterministic calibration inputs in the model's [-1, 1] range
    calib = base / "calib.npz"
    np.savez(calib, x=rng.uniform(-1, 1, (4, 3, 48, 192)).astype(np.float32))
    outs = {}
    for t in (X86, *CORES):
        t0 = time.monotonic()
        # "0dB": no error budget, so every layer that can be int8 is (the integer graph under test)
        qcc.compile(ppocr_cls_path, base / t, target=t, opt_level="O2", calib=str(calib), input_shapes=PP_SHAPE,
                    max_error="0dB")
        print(f"\n[arm] compile PP-OCR cls -O2 for {t}: {time.monotonic() - t0:.1f} s")
        outs[t] = base / t
    return outs


def _int8_graph(artifact: Path) -> bool:
    import json

    s = json.loads((artifact / "report.json").read_text())["summary"]
    return s["int8_mac_fraction"] > 0.5


@pytest.mark.slow
@needs_arm_tools
@pytest.mark.parametrize("preset", list(CORES))
def test_ppocr_int8_under_qemu_is_bit_identical_to_x86(preset, ppocr_builds, aarch64_runtime, record_property):
    assert _int8_graph(ppocr_builds[X86])
    # the same integer graph: quantization does not depend on the target here
    assert (ppocr_builds[preset] / "model.qir").read_bytes() == (ppocr_builds[X86] / "model.qir").read_bytes()
    assert (ppocr_builds[preset] / "model.npz").read_bytes() == (ppocr_builds[X86] / "model.npz").read_bytes()
    ref_mod, arm_mod = qcc.load(ppocr_builds[X86]), qcc.load(ppocr_builds[preset])
    # one input: every kernel meets all of its 27k values; each further input is a qemu start (~17 s)
    for i, x in enumerate(_pp_inputs(1)):
        ref = ref_mod.run({"x": x})
        got = _timed_run(arm_mod, {"x": x}, f"PP-OCR cls int8 {preset} input {i}", record_property)
        assert list(got) == list(ref)
        for k in ref:
            assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape
            assert got[k].tobytes() == ref[k].tobytes(), (
                f"{preset} output {k} differs from x86: max |diff| {np.abs(got[k] - ref[k]).max()}")


def _sdot_macs(artifact: Path):
    """(int8 MACs of the qconv/qmatmul nodes whose compiled kernel contains sdot, all of
    them, {node name: sdot count of its kernels}). Each node lowers to one `qcc_sdot_*`
    PrimFunc (structurally equal ones shared); the fused functions of model.so are named
    after the PrimFuncs they contain."""
    import re

    from qcc.ir.parser import load as load_qir
    from qcc.targets import lower_for
    from tvm import relax

    g = load_qir(artifact / "model.qir")
    mod = lower_for(g, "arm-a76")
    kernels = [b.value.args[0].name_hint for blk in mod["main"].body.blocks for b in blk.bindings
               if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == "relax.call_tir"
               and b.value.args[0].name_hint.startswith("qcc_sdot")]
    nodes = [n for n in g.nodes if n.op in ("qconv", "qmatmul")]
    assert len(kernels) == len(nodes), "every qconv/qmatmul of the cls model takes the int8 dot lowering"
    per_fn, fn = {}, None
    for ln in objdump(artifact / "model.so").splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", ln)
        if m:
            fn = m.group(1)
        elif fn and ln.split("\t")[2:3] and ln.split("\t")[2].strip() == "sdot":
            per_fn[fn] = per_fn.get(fn, 0) + 1
    counts, hit, total = {}, 0, 0
    for n, k in zip(nodes, kernels):
        out, w = n.outputs[0].shape, n.inputs[1].shape
        macs = int(np.prod(out)) * (int(np.prod(w[1:])) if n.op == "qconv" else int(w[0]))
        counts[n.name] = sum(c for f, c in per_fn.items() if re.search(re.escape(k) + r"(_|$)", f))
        total += macs
        hit += macs if counts[n.name] else 0
    return hit, total, counts, g


@pytest.mark.slow
@needs_arm_tools
def test_ppocr_int8_disassembly_sdot(ppocr_builds, record_property):
    """The A76 build (+dotprod) runs the int8 convs as sdot kernels, the A72 one has none;
    every conv but the depthwise ones (no contiguous reduction) and a few single-pixel
    squeeze-excite convs of a few hundred MACs has sdot."""
    counts = {p: count_insn(objdump(ppocr_builds[p] / "model.so"), "sdot") for p in CORES}
    print(f"\n[arm] sdot in PP-OCR cls int8 model.so: {counts}")
    record_property("sdot_counts", counts)
    assert counts["arm-a72"] == 0, "the Cortex-A72 has no dot product instructions"
    assert counts["arm-a76"] > 0, "no sdot in the A76 int8 build"
    hit, total, per_node, g = _sdot_macs(ppocr_builds["arm-a76"])
    print(f"[arm] int8 MACs in sdot kernels (A76): {hit}/{total} = {hit / total:.1%}")
    record_property("sdot_mac_fraction", round(hit / total, 3))
    for n in g.nodes:
        if n.name in per_node:
            depthwise = n.op == "qconv" and n.inputs[1].shape[1] == 1 and int(n.attrs.get("group", 1)) > 1
            if depthwise:
                assert per_node[n.name] == 0, n.name
            elif n.op != "qconv" or int(np.prod(n.outputs[0].shape[2:])) > 1:  # one pixel: LLVM's choice varies
                assert per_node[n.name] > 0, n.name
    assert hit / total > 0.6


# --- the int8 kernels one by one (targets/arm_int8.py), bit for bit under qemu -----------------

# name: (x dtype, x shape (N, C, H, W), out channels, kernel (kh, kw), strides, pads, dilations, group,
#        bias, x zero point)
ARM_CONV_CASES = {
    "stem_3x3_s2": ("u8", (1, 3, 17, 30), 8, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, True, 127),
    "pw_8": ("u8", (1, 8, 3, 20), 8, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True, 0),
    "pw_odd": ("u8", (1, 13, 5, 7), 21, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True, 200),
    "pw_200": ("u8", (1, 200, 2, 9), 32, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True, 131),
    "one_pixel": ("u8", (1, 40, 1, 1), 10, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True, 3),
    "asym_pad_strides": ("u8", (1, 8, 12, 9), 5, (3, 2), (2, 3), (1, 0, 2, 1), (1, 1), 1, True, 255),
    "dilated": ("u8", (1, 8, 13, 12), 6, (3, 2), (1, 1), (2, 3, 2, 3), (2, 3), 1, True, 77),
    "grouped_odd": ("u8", (2, 20, 7, 9), 12, (1, 3), (1, 1), (0, 1, 0, 1), (1, 1), 4, True, 4),
    "i8_zp_min": ("i8", (2, 4, 6, 6), 4, (3, 3), (1, 1), (0, 1, 1, 0), (1, 1), 1, False, -128),
    "i8": ("i8", (1, 7, 8, 8), 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True, 5),
    "depthwise_5x5_s21": ("u8", (1, 24, 6, 19), 24, (5, 5), (2, 1), (2, 2, 2, 2), (1, 1), 24, True, 17),
    "depthwise_dilated": ("u8", (1, 8, 9, 10), 8, (3, 3), (1, 2), (2, 2, 2, 2), (2, 2), 8, False, 0),
    # 16-bit activations (the bit-width search's w8a16 layers): int16 packs, symmetric
    "i16_3x3": ("i16", (1, 6, 7, 9), 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True, 0),
    "i16_pw_odd": ("i16", (1, 21, 3, 11), 7, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True, 0),
    "i16_depthwise_5x5_s2": ("i16", (1, 12, 9, 10), 12, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), 12, True, 0),
}
_BOUNDS = {"u8": (0, 255), "i8": (-128, 127), "i16": (-32768, 32767)}
_NP = {"u8": np.uint8, "i8": np.int8, "i16": np.int16}


def g_arm_kernels(seed=0):
    """One graph holding every case above and three qmatmuls, each from its own input, each
    accumulator an output and requantized (per channel, u8 with a relu clamp)."""
    from qcc.ir import Graph, TensorType

    rng = np.random.default_rng(seed)
    g = Graph("arm_int8_kernels")
    outs, feeds = [], {}

    def feed(name, shape, dt):
        lo, hi = _BOUNDS[dt]
        v = rng.integers(lo, hi + 1, size=shape).astype(_NP[dt])
        v.reshape(-1)[:3] = hi, lo, hi  # the extremes
        feeds[name] = v
        return g.add_input(name, TensorType(shape, dt))

    def requantize(acc, oc, axis, name):
        m = [int(v) for v in rng.integers(1 << 30, 1 << 31, size=oc)]
        s = [int(v) for v in rng.integers(-14, -8, size=oc)]
        return g.add_node("requantize", [acc], {"multiplier": m, "shift": s, "axis": axis, "zero_point": 10,
                                                "dtype": "u8", "clamp": [10, 255]}, names=[f"{name}_rq"]).output

    for name, (xdt, xshape, oc, (kh, kw), strides, pads, dil, group, bias, zx) in ARM_CONV_CASES.items():
        x = feed(f"x_{name}", xshape, xdt)
        ins = [x, g.add_const(f"w_{name}", rng.integers(-128, 128, (oc, xshape[1] // group, kh, kw)).astype(np.int8))]
        if bias:
            ins.append(g.add_const(f"b_{name}", rng.integers(-20000, 20000, size=oc).astype(np.int32)))
        acc = g.add_node("qconv", ins, {"strides": list(strides), "pads": list(pads), "dilations": list(dil),
                                        "group": group, "x_zero_point": zx}, names=[name]).output
        outs += [acc, requantize(acc, oc, 1, name)]
    # a 1-D conv (audio, sequences): a one-row 2-D conv to the kernel
    x = feed("x_conv1d", (1, 12, 37), "u8")
    acc = g.add_node("qconv", [x, g.add_const("w_conv1d", rng.integers(-128, 128, (10, 12, 3)).astype(np.int8))],
                     {"strides": [2], "pads": [1, 0], "dilations": [1], "group": 1, "x_zero_point": 99},
                     names=["conv1d"]).output
    outs += [acc, requantize(acc, 10, 1, "conv1d")]
    for name, ashape, adt, (k, n), za, zb in [("mm", (1, 40, 120), "u8", (120, 36), 95, 0),
                                               ("mm_vec", (33,), "u8", (33, 16), 250, 0),
                                               ("mm_u8w", (2, 3, 8), "i8", (8, 17), -7, 128),
                                               ("mm_i16", (2, 5, 24), "i16", (24, 9), 0, 0)]:
        a = feed(f"a_{name}", ashape, adt)
        wdt = np.uint8 if zb else np.int8
        w = rng.integers(0 if zb else -128, 256 if zb else 128, size=(k, n)).astype(wdt)
        acc = g.add_node("qmatmul", [a, g.add_const(f"w_{name}", w),
                                     g.add_const(f"b_{name}", rng.integers(-9999, 9999, n).astype(np.int32))],
                         {"a_zero_point": za, "b_zero_point": zb}, names=[name]).output
        outs += [acc, requantize(acc, n, len(ashape) - 1, name)]
    g.set_outputs(outs)
    return g, feeds


def test_int8_kernels_take_the_dot_lowering():
    """Every case of g_arm_kernels lowers to the dot kernels on both cores; a 16-bit
    activation with a zero point keeps the generic lowering (arm_int8._zero_point_in_domain)."""
    from qcc.ir import Graph, TensorType
    from qcc.targets import lower_for

    g, _ = g_arm_kernels()
    n = len(ARM_CONV_CASES) + 1 + 4  # the 1-D conv and the qmatmuls too
    for preset in CORES:
        text = lower_for(g, preset).script(show_meta=False)
        assert text.count("R.call_tir(cls.qcc_sdot_") == n, preset
    g16 = Graph("i16")
    x = g16.add_input("x", TensorType((1, 3, 5, 5), "i16"))
    g16.set_outputs([g16.add_node("qconv", [x, g16.add_const("w", np.ones((4, 3, 1, 1), np.int8))],
                                  {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 1,
                                   "x_zero_point": -300}).output])
    assert "qcc_sdot" not in lower_for(g16, "arm-a76").script(show_meta=False)


@pytest.mark.slow
@needs_arm_tools
@pytest.mark.parametrize("preset", list(CORES))
def test_int8_kernels_bit_exact_under_qemu(preset, aarch64_runtime, tmp_path):
    """Each kernel (accumulator and requantized output) equals qcc.interp bit for bit on the
    emulated core; sdot in the A76 library, none in the A72 one."""
    from qcc.interp import run as interp_run
    from qcc.targets.builder import build

    g, feeds = g_arm_kernels()
    so = build(g, preset, tmp_path)
    n = count_insn(objdump(so), "sdot")
    print(f"\n[arm] sdot in the int8 kernel library ({preset}): {n}")
    assert (n > 0) == (preset == "arm-a76")
    ref = interp_run(g, feeds)
    got = emulate.run_library(so, CORES[preset], [feeds[v.name] for v in g.inputs])
    assert len(got) == len(g.outputs)
    for v, o in zip(g.outputs, got):
        r = ref[v.name]
        assert o.dtype == r.dtype and o.shape == r.shape, (v.name, o.dtype, o.shape, r.dtype, r.shape)
        bad = np.flatnonzero(o != r)
        assert bad.size == 0, f"{v.name}: {bad.size}/{r.size} differ"
    assert all(len(np.unique(ref[f"{c}_rq"])) > 3 for c in [*ARM_CONV_CASES, "conv1d"])  # not all clamped


# --- emulating the exact core ----------------------------------------------------------------

def _int8_dot_library(preset: str, path: Path) -> Path:
    """An int8 x int8 -> int32 matmul with a contiguous reduction (the pattern LLVM turns into
    sdot with +dotprod), exported for `preset`."""
    import tvm
    from tvm import relax, te
    from tvm.script import relax as R
    from tvm.support import cc

    def mm(a, b):
        k = te.reduce_axis((0, a.shape[1]), "k")
        return te.compute((a.shape[0], b.shape[0]),
                          lambda i, j: te.sum(a[i, k].astype("int32") * b[j, k].astype("int32"), axis=k), name="qmm")

    bb = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor((16, 256), "int8"))
    w = relax.Var("w", R.Tensor((32, 256), "int8"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit_output(bb.emit_te(mm, x, w, primfunc_name_hint="qmm"))
        bb.emit_func_output(y)
    target = qcc.targets.get_target(preset).target()
    ex = tvm.compile(bb.get(), target=target,
                     relax_pipeline=relax.backend.cpu_generic.get_default_pipeline(target))
    ex.export_library(str(path), fcompile=cc.cross_compiler("aarch64-linux-gnu-g++", options=["-O2"]))
    return path


@pytest.mark.slow
@needs_arm_tools
def test_exact_core_catches_instructions_the_core_lacks(aarch64_runtime, tmp_path):
    lib = _int8_dot_library("arm-a76", tmp_path / "dot.so")
    n = count_insn(objdump(lib), "sdot")
    print(f"\n[arm] sdot in the A76 int8 matmul: {n}")
    assert n > 0
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (16, 256), dtype=np.int8)
    b = rng.integers(-128, 128, (32, 256), dtype=np.int8)
    (y,) = emulate.run_library(lib, "cortex-a76", [a, b])
    assert np.array_equal(y, a.astype(np.int32) @ b.astype(np.int32).T)
    with pytest.raises(emulate.EmulationError, match="illegal instruction.*SIGILL"):
        emulate.run_library(lib, "cortex-a72", [a, b])


# --- errors that say what to install -----------------------------------------------------------

@pytest.mark.skipif(not shutil.which("aarch64-linux-gnu-g++"), reason="aarch64-linux-gnu-g++ not installed")
def test_run_without_qemu_says_what_to_install(tmp_path):
    out = tmp_path / "a72"
    qcc.compile(TINY, out, target="arm-a72", opt_level="O0", input_shapes=TINY_SHAPE)
    empty = tmp_path / "bin"
    empty.mkdir()
    p = cli("run", out, "--input", ROOT / "examples/tiny_cnn_input.npz", env={**os.environ, "PATH": str(empty)})
    assert p.returncode == 1
    assert "qemu-aarch64 is not installed" in p.stderr and "qemu-user" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_not_root_without_arm64_apt_says_what_to_run(monkeypatch):
    monkeypatch.setattr(emulate, "_is_root", lambda: False)
    monkeypatch.setattr(emulate.shutil, "which", lambda t: f"/usr/bin/{t}")

    def fake_run(cmd, what, **kw):
        return subprocess.CompletedProcess(cmd, 0, stdout="i386\n", stderr="")

    monkeypatch.setattr(emulate, "_run", fake_run)
    with pytest.raises(emulate.EmulationError, match=r"dpkg --add-architecture arm64 && apt-get update"):
        emulate._ensure_arm64_apt(lambda m: None)


def test_cache_dir_follows_qcc_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("QCC_CACHE_DIR", str(tmp_path / "c"))
    assert emulate.runtime_dir() == tmp_path / "c" / "aarch64-runtime"
    monkeypatch.delenv("QCC_CACHE_DIR")
    assert emulate.runtime_dir() == Path.home() / ".cache" / "qcc" / "aarch64-runtime"


def test_guest_wheels_are_pinned():
    reqs = emulate.wheel_requirements()
    assert "apache-tvm==0.27.0.post1" in reqs and "apache-tvm-ffi==0.1.14.post1" in reqs
    assert all("==" in r for r in reqs)  # numpy & co. at the host's versions


def test_runtime_is_prepared_once_under_a_lock(monkeypatch, tmp_path):
    """Two processes (here: threads, each with its own lock file handle) asking at once: one
    prepares, the other waits and then finds it ready."""
    import threading

    monkeypatch.setenv("QCC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(emulate, "require_tools", lambda: None)
    calls, logs = [], []

    def fake_prepare(rt, say):
        calls.append(rt.path)
        time.sleep(0.5)
        rt.python.parent.mkdir(parents=True, exist_ok=True)
        rt.python.write_text("")
        (rt.path / "READY").write_text(__import__("json").dumps(emulate._spec()))

    monkeypatch.setattr(emulate, "_prepare", fake_prepare)
    results = []
    threads = [threading.Thread(target=lambda: results.append(emulate.ensure_runtime(logs.append)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2 and all(r.ready() for r in results)
    assert any("waiting for another qcc process" in m for m in logs)
    # a stale stamp (e.g. other pinned versions) means prepare again
    (tmp_path / "aarch64-runtime" / "READY").write_text("{}")
    emulate.ensure_runtime(logs.append)
    assert len(calls) == 2
