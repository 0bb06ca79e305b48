"""CUDA without a GPU: builds for every CUDA preset, `--emit cuda,ptx` writes the device code
(kernels.cu from the build's CUDA module, kernels.ptx from nvcc when it is on PATH), and what
the int8 kernels contain is recorded (`__dp4a` is TVM's choice; issue 7 adds dp4a schedules,
so its absence is reported, not failed).
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
def test_int8_build_emits_cuda_and_reports_dp4a(sm, tmp_path, record_property):
    require_int8_lowering()
    out, report = _int8_build(tmp_path, sm)
    assert report["summary"]["int8_mac_fraction"] > 0.5
    src = (out / "kernels.cu").read_text()
    assert "__global__" in src
    _record_features(sm, src, record_property, "tiny int8")  # __dp4a recorded, not required (issue 7)
    if not NVCC:
        pytest.skip("nvcc not on PATH: PTX not checked")
    if "<lambda>" in src:
        pytest.xfail("kernels.cu has a kernel named after a Python lambda ('<lambda>' from an emit_te in the "
                     "lowering, e.g. targets/lower_math.rint): not a valid CUDA identifier, nvcc and NVRTC reject it")
    ptx = cuda_emit.nvcc_ptx(src, sm)
    check_ptx(ptx, sm)
    print(f"[cuda] tiny int8 sm_{sm}: dp4a x{ptx.count('dp4a')} in the PTX (nvcc's choice or TVM's)")


@pytest.mark.slow
def test_ppocr_int8_cuda_kernels(ppocr_cls_path, tmp_path, record_property):
    """A real int8 model for one arch: what the default GPU schedule makes of its layers."""
    require_int8_lowering()
    import numpy as np

    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).uniform(-1, 1, (4, 3, 48, 192)).astype(np.float32))
    out, report = _int8_build(tmp_path, 80, ppocr_cls_path, {"x": (1, 3, 48, 192)}, calib)
    src = (out / "kernels.cu").read_text()
    feats = _record_features(80, src, record_property, "PP-OCR cls int8")
    assert feats["__global__"] > 10


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
