"""Artifacts a build system can trust: `--depfile` (Make/Ninja read it and rebuild when an
input changes), byte-identical artifacts from repeated compiles (an ARM one too: model.so
cross-linked), and several targets compiled from one process without state leaking
between them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from qcc.driver import CompileOptions, depfile_inputs, depfile_text

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples/tiny_cnn.onnx"
CALIB = ROOT / "examples/tiny_cnn_calib.npz"
PLUGIN = ROOT / "examples/my_passes.py"


def cli(*args, cwd=ROOT, env=None):
    p = subprocess.run([sys.executable, "-m", "qcc.cli", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, env=env)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for f in names:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f"{f} differs between {a} and {b}"


# --- the depfile ---------------------------------------------------------------------------------

def test_depfile_escapes_like_make():
    assert depfile_text("out dir/manifest.json", ["my models/a b.onnx", "c#1.npz", "p$.py", "x\\ y"]) == (
        "out\\ dir/manifest.json: my\\ models/a\\ b.onnx c\\#1.npz p$$.py x\\\\\\ y\n")


def test_depfile_lists_calib_folder_files(tmp_path):
    d = tmp_path / "calib"
    d.mkdir()
    for n in ("b.npz", "a.npy", "notes.txt"):
        (d / n).write_bytes(b"")
    opts = CompileOptions(calib=str(d), plugins=("p.py",))
    assert depfile_inputs("m.onnx", opts) == ["m.onnx", str(d), str(d / "a.npy"), str(d / "b.npz"), "p.py"]


@pytest.fixture
def spaced(tmp_path):
    """The model, calibration data and a plugin under paths with spaces."""
    src = tmp_path / "my models"
    src.mkdir()
    shutil.copy(TINY, src / "tiny cnn.onnx")
    shutil.copy(CALIB, src / "calib data.npz")
    shutil.copy(PLUGIN, src / "my passes.py")
    return tmp_path


def test_compile_writes_depfile(spaced):
    p = cli("compile", "my models/tiny cnn.onnx", "--input-shape", "input=1x3x32x32", "-O2",
            "--calib", "my models/calib data.npz", "--plugin", "my models/my passes.py",
            "--depfile", "deps/tiny.d", "-o", "build/tiny", cwd=spaced)
    assert p.returncode == 0, p.stderr
    assert (spaced / "deps/tiny.d").read_text() == (
        "build/tiny/manifest.json: my\\ models/tiny\\ cnn.onnx my\\ models/calib\\ data.npz "
        "my\\ models/my\\ passes.py\n")
    assert "tiny.d" not in (spaced / "build/tiny/manifest.json").read_text()  # not part of the artifact


def _age(paths, seconds=100):
    """Set mtimes in the past, so a later `touch` is surely newer (coarse file system clocks)."""
    t = time.time() - seconds
    for p in paths:
        os.utime(p, (t, t))


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("make"), reason="make not installed")
def test_make_reads_the_depfile(spaced):
    qcc_cmd = f"{sys.executable} -m qcc.cli"
    (spaced / "Makefile").write_text(textwrap.dedent(f"""\
        build/tiny/manifest.json:
        \t{qcc_cmd} compile "my models/tiny cnn.onnx" --input-shape input=1x3x32x32 -O2 \\
        \t  --calib "my models/calib data.npz" --plugin "my models/my passes.py" --depfile tiny.d -o build/tiny -q
        -include tiny.d
        """))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    make = ["make", "-s", "build/tiny/manifest.json"]
    assert subprocess.run(make, cwd=spaced, env=env).returncode == 0
    inputs = [spaced / "my models" / n for n in ("tiny cnn.onnx", "calib data.npz", "my passes.py")]
    _age(inputs)
    # up to date: every dependency (paths with spaces) was found and is older
    assert subprocess.run(["make", "-q", "build/tiny/manifest.json"], cwd=spaced, env=env).returncode == 0
    for f in inputs:
        _age(inputs)
        os.utime(f)  # now
        q = subprocess.run(["make", "-q", "build/tiny/manifest.json"], cwd=spaced, env=env)
        assert q.returncode == 1, f"make does not see {f.name} as a dependency"


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("ninja"), reason="ninja not installed")
def test_ninja_reads_the_depfile(spaced):
    (spaced / "build.ninja").write_text(textwrap.dedent(f"""\
        rule qcc
          command = {sys.executable} -m qcc.cli compile "my models/tiny cnn.onnx" --input-shape input=1x3x32x32 -O2 --calib "my models/calib data.npz" --plugin "my models/my passes.py" --depfile $out.d -o build/tiny -q
          depfile = $out.d
          deps = gcc
        build build/tiny/manifest.json: qcc
        """))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def ninja():
        p = subprocess.run(["ninja", "-d", "explain"], cwd=spaced, env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout + p.stderr

    assert "qcc" in ninja()
    assert "no work to do" in ninja()
    inputs = [spaced / "my models" / n for n in ("tiny cnn.onnx", "calib data.npz", "my passes.py")]
    for f in inputs:
        os.utime(f, (time.time() + 5, time.time() + 5))
        log = ninja()
        assert "no work to do" not in log and f.name in log, log


# --- determinism ------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("aarch64-linux-gnu-g++"), reason="aarch64-linux-gnu-g++ not installed")
def test_arm_artifacts_are_byte_identical(tmp_path):
    args = ["--input-shape", "input=1x3x32x32", "-O2", "--calib", CALIB, "--target", "arm-a72"]
    for name in ("one", "two"):
        p = cli("compile", TINY, *args, "-o", tmp_path / name)
        assert p.returncode == 0, p.stderr
    assert (tmp_path / "one/model.so").read_bytes()[:4] == b"\x7fELF"
    same_files(tmp_path / "one", tmp_path / "two")


_MULTI = """
import sys
from pathlib import Path
import qcc
from qcc.driver import CompileOptions, compile_model
tiny, calib, base = sys.argv[1], sys.argv[2], Path(sys.argv[3])
kw = dict(opt_level="O2", calib=calib, input_shapes={"input": (1, 3, 32, 32)})
qcc.compile(tiny, base / "x86-first", target="x86-avx2", **kw)
qcc.compile(tiny, base / "arm", target="arm-a72", **kw)
compile_model(tiny, base / "cuda", CompileOptions(target="cuda-sm80", emit=("cuda",), **kw))
qcc.compile(tiny, base / "x86-again", target="x86-avx2", **kw)
"""


@pytest.mark.slow
def test_targets_from_one_process_do_not_leak(tmp_path):
    p = subprocess.run([sys.executable, "-c", _MULTI, str(TINY), str(CALIB), str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    fresh = tmp_path / "x86-fresh"
    p = cli("compile", TINY, "--input-shape", "input=1x3x32x32", "-O2", "--calib", CALIB, "--target", "x86-avx2",
            "-o", fresh)
    assert p.returncode == 0, p.stderr
    same_files(tmp_path / "x86-again", fresh)
    same_files(tmp_path / "x86-first", fresh)
    assert (tmp_path / "cuda/kernels.cu").exists()
    if shutil.which("aarch64-linux-gnu-g++"):
        arm_fresh = tmp_path / "arm-fresh"
        p = cli("compile", TINY, "--input-shape", "input=1x3x32x32", "-O2", "--calib", CALIB,
                "--target", "arm-a72", "-o", arm_fresh)
        assert p.returncode == 0, p.stderr
        same_files(tmp_path / "arm", arm_fresh)
