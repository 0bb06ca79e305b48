"""Run ARM (aarch64) artifacts on an x86 machine: qemu user-mode with the exact core.

    runner = EmulatedRunner("out/model.so", cpu="cortex-a76", inputs=[...], outputs=[...])
    outputs = runner.run({"x": x})          # each call starts one qemu process (~3 s)

The guest side is an aarch64 Python 3.11 with the TVM *runtime* (numpy, ml_dtypes,
typing_extensions beside it) that qcc prepares itself, once, in a cache folder:

    $QCC_CACHE_DIR/aarch64-runtime   (default ~/.cache/qcc/aarch64-runtime)
      root/   Debian's arm64 python3.11 + the C/C++ libraries it needs, unpacked with
              `dpkg -x` (nothing is installed: the host's own python3 stays as it is)
      site/   the aarch64 wheels, `pip install --target`ed (libtvm_compiler.so removed)
      READY   what was prepared (a JSON stamp); written last

Preparing needs qemu-aarch64 (Debian: qemu-user), apt-get/dpkg with the arm64
architecture known to apt (`dpkg --add-architecture arm64 && apt-get update`, which
qcc does itself when it runs as root), and pip access to PyPI. It takes about a
minute, is serialised by a lock file (two qcc processes never prepare it twice) and
prints progress. Each run then is `qemu-aarch64 -cpu <core> -L root root/usr/bin/python3.11
runner.py model.so in.npz out.npz` with TVM_USE_RUNTIME_LIB=1: the runner uses only
`tvm.runtime.load_module` and `tvm.runtime.vm.VirtualMachine` (tvm.relax needs the
compiler library). Emulating the exact core means an instruction the core lacks
(e.g. `sdot` on a Cortex-A72) stops the run with SIGILL, as it would on the device.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from qcc.artifact import ArtifactError

Log = Callable[[str], None]

PYTHON = "3.11"  # Debian bookworm's python3, which the deb list below belongs to
DEBS = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libgcc-s1",
        "libstdc++6", "libexpat1", "zlib1g", "libffi8", "libbz2-1.0", "liblzma5", "libcrypt1", "libuuid1",
        "libssl3")
TVM_WHEELS = ("apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1")
OTHER_WHEELS = ("numpy", "ml_dtypes", "typing_extensions")  # pinned to the host's versions
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux2014_aarch64")
LAYOUT = 1  # bump when the layout of the runtime folder changes: old ones are rebuilt
QEMU = "qemu-aarch64"

SIGILL = 4


class EmulationError(ArtifactError):
    """Emulation cannot go on (a tool missing, setup failed, the guest crashed); one line."""


# --- the cache ---------------------------------------------------------------------------

def cache_root() -> Path:
    """$QCC_CACHE_DIR, else ~/.cache/qcc."""
    env = os.environ.get("QCC_CACHE_DIR", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qcc"


def runtime_dir() -> Path:
    return cache_root() / "aarch64-runtime"


def _host_version(dist: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def wheel_requirements() -> List[str]:
    """The guest's wheels: TVM pinned as qcc pins it, the rest at the host's versions."""
    reqs = list(TVM_WHEELS)
    for dist in OTHER_WHEELS:
        v = _host_version(dist)
        reqs.append(f"{dist}=={v}" if v else dist)
    return reqs


def _spec() -> Dict:
    return {"layout": LAYOUT, "python": PYTHON, "debs": list(DEBS), "wheels": wheel_requirements()}


class Runtime:
    """A prepared guest: `root` (the unpacked debs) and `site` (the wheels)."""

    def __init__(self, path: Path):
        self.path = path
        self.root = path / "root"
        self.site = path / "site"
        self.python = self.root / "usr" / "bin" / f"python{PYTHON}"

    def ready(self) -> bool:
        try:
            return json.loads((self.path / "READY").read_text()) == _spec() and self.python.is_file()
        except (OSError, ValueError):
            return False

    def env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYTHON", "LD_")) and k not in ("QEMU_LD_PREFIX", "QEMU_CPU")}
        env.update(PYTHONPATH=str(self.site), PYTHONNOUSERSITE="1", TVM_USE_RUNTIME_LIB="1",
                   PYTHONDONTWRITEBYTECODE="1")
        return env

    def command(self, cpu: str, *args: str) -> List[str]:
        return [QEMU, "-cpu", cpu, "-L", str(self.root), str(self.python), *args]


def _stderr_log(msg: str) -> None:
    print(f"qcc: {msg}", file=sys.stderr, flush=True)


def require_tools() -> None:
    """Raise EmulationError naming what to install when qemu-aarch64 is missing."""
    if not shutil.which(QEMU):
        raise EmulationError(f"{QEMU} is not installed: running ARM artifacts on this machine needs it "
                             "(Debian: apt-get install qemu-user, or run scripts/setup.sh as root)")


def ensure_runtime(log: Optional[Log] = None) -> Runtime:
    """The prepared aarch64 runtime, preparing it first if needed (once; serialised by a lock)."""
    require_tools()
    rt = Runtime(runtime_dir())
    if rt.ready():
        return rt
    say = log or _stderr_log
    rt.path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(rt.path.parent / "aarch64-runtime.lock", say):
        if rt.ready():  # another process prepared it while we waited
            return rt
        t0 = time.monotonic()
        say(f"preparing the aarch64 runtime for qemu in {rt.path} (once; about a minute)")
        _prepare(rt, say)
        say(f"aarch64 runtime ready ({time.monotonic() - t0:.0f} s)")
    return rt


@contextlib.contextmanager
def _locked(path: Path, say: Log):
    import fcntl

    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another qcc process preparing the aarch64 runtime ({path})")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: Sequence[str], what: str, **kw) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(list(cmd), capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise EmulationError(f"{what}: {cmd[0]} not found") from None
    if p.returncode != 0:
        lines = [ln.strip() for ln in (p.stderr or p.stdout).splitlines() if ln.strip()]
        errs = [ln for ln in lines if ln.startswith(("E:", "ERROR", "error"))] or lines
        raise EmulationError(f"{what} failed (exit {p.returncode}): {errs[-1] if errs else '(no output)'}")
    return p


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


_APT_HELP = ("as root: dpkg --add-architecture arm64 && apt-get update (this installs nothing; "
             "qcc then only downloads arm64 .debs and unpacks them into its cache)")


def _ensure_arm64_apt(say: Log) -> None:
    for tool in ("apt-get", "dpkg"):
        if not shutil.which(tool):
            raise EmulationError(f"preparing the aarch64 runtime needs Debian's {tool} (not found); "
                                 f"or point QCC_CACHE_DIR at a cache with a prepared aarch64-runtime")
    archs = _run(["dpkg", "--print-foreign-architectures"], "dpkg --print-foreign-architectures").stdout.split()
    if "arm64" in archs:
        return
    if not _is_root():
        raise EmulationError(f"apt does not know the arm64 architecture and qcc is not root: {_APT_HELP}")
    say("  dpkg --add-architecture arm64 && apt-get update")
    _run(["dpkg", "--add-architecture", "arm64"], "dpkg --add-architecture arm64")
    _run(["apt-get", "update", "-qq"], "apt-get update")


def _download_debs(dest: Path, say: Log) -> List[Path]:
    names = [f"{d}:arm64" for d in DEBS]
    cmd = ["apt-get", "download", "-q", *names]
    try:
        _run(cmd, "apt-get download", cwd=dest)
    except EmulationError as e:
        if not _is_root():
            raise EmulationError(f"{e} ({_APT_HELP})") from None
        say("  apt-get update (the arm64 package lists look stale)")
        _run(["apt-get", "update", "-qq"], "apt-get update")
        _run(cmd, "apt-get download", cwd=dest)
    debs = sorted(dest.glob("*.deb"))
    if len(debs) < len(DEBS):
        raise EmulationError(f"apt-get download fetched {len(debs)} of {len(DEBS)} arm64 packages")
    return debs


def _prepare(rt: Runtime, say: Log) -> None:
    if rt.path.exists():
        shutil.rmtree(rt.path)
    rt.path.mkdir(parents=True)
    work = rt.path / "download"
    (work / "debs").mkdir(parents=True)
    (work / "wheels").mkdir()
    # apt drops privileges to _apt for downloads: let it write there
    os.chmod(work / "debs", 0o777)
    steps, t0 = 5, time.monotonic()
    say0 = say

    def say(msg: str) -> None:  # noqa: F811 - the same log, with the time since the start
        say0(f"{msg}  (+{time.monotonic() - t0:.0f} s)" if msg.startswith("  [") else msg)

    say(f"  [1/{steps}] Debian arm64 packages: python{PYTHON} and its libraries")
    _ensure_arm64_apt(say)
    debs = _download_debs(work / "debs", say)
    for deb in debs:
        _run(["dpkg", "-x", str(deb), str(rt.root)], f"dpkg -x {deb.name}")

    reqs = wheel_requirements()
    say(f"  [2/{steps}] aarch64 wheels: {' '.join(reqs)}")
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", PYTHON, *plat,
          "-d", str(work / "wheels"), *reqs], "pip download (aarch64 wheels)")
    wheels = sorted(str(w) for w in (work / "wheels").glob("*.whl"))
    say(f"  [3/{steps}] pip install --target {rt.site}")
    _run([*pip, "install", "--no-deps", "--no-index", "--target", str(rt.site), *plat, "--python-version",
          PYTHON, "--only-binary=:all:", *wheels], "pip install --target (aarch64 wheels)")
    # the guest only needs the runtime; the compiler library is 240 MB
    for big in rt.site.glob("tvm/lib/libtvm_compiler*.so*"):
        big.unlink()
    shutil.rmtree(work)

    say(f"  [4/{steps}] byte-compiling the guest's Python under qemu")
    env = rt.env()
    env.pop("PYTHONDONTWRITEBYTECODE")
    _run([*rt.command("max", "-m", "compileall", "-q", "-j", "0",
                      str(rt.root / "usr" / "lib" / f"python{PYTHON}"), str(rt.site))],
         "byte-compiling under qemu", env=env)

    say(f"  [5/{steps}] checking: import tvm, numpy under qemu")
    p = _run(rt.command("max", "-c", "import tvm, numpy; print(tvm.__version__, numpy.__version__)"),
             "importing tvm under qemu", env=rt.env())
    (rt.path / "READY").write_text(json.dumps(_spec(), indent=1, sort_keys=True) + "\n")
    say(f"  guest: Python {PYTHON}, tvm/numpy {p.stdout.strip()}")


# --- running -------------------------------------------------------------------------------

_RUNNER = r'''
import sys
import numpy as np
import tvm
from tvm.runtime import vm as _vm

lib, inp, outp = sys.argv[1:4]
dev = tvm.cpu()
machine = _vm.VirtualMachine(tvm.runtime.load_module(lib), dev)
with np.load(inp, allow_pickle=False) as z:
    args = [tvm.runtime.tensor(np.ascontiguousarray(z["arg%d" % i]), dev) for i in range(len(z.files))]
res = machine["main"](*args)
outs = [res.numpy()] if hasattr(res, "numpy") else [r.numpy() for r in res]
np.savez(outp, **{"out%d" % i: a for i, a in enumerate(outs)})
'''


def qemu_cpus() -> List[str]:
    """The -cpu names qemu-aarch64 knows."""
    require_tools()
    p = subprocess.run([QEMU, "-cpu", "help"], capture_output=True, text=True)
    return [ln.split()[0] for ln in p.stdout.splitlines()[1:] if ln.strip()]


def qemu_cpu_for(target: Dict) -> str:
    """The qemu -cpu for a TVM target dict: its mcpu (cortex-a72, neoverse-n1, ...)."""
    mcpu = str(target.get("mcpu") or "")
    if not mcpu:
        return "max"
    if mcpu not in qemu_cpus():
        raise EmulationError(f"{QEMU} does not emulate the core '{mcpu}' (see `{QEMU} -cpu help`)")
    return mcpu


def run_library(lib, cpu: str, args: Sequence[np.ndarray], *, log: Optional[Log] = None,
                num_threads: Optional[int] = None) -> List[np.ndarray]:
    """Call `main` of an aarch64 model.so under qemu-aarch64 -cpu `cpu`; positional in, list out.
    `num_threads`: the guest's TVM_NUM_THREADS (default: $TVM_NUM_THREADS, else every host core)."""
    lib = Path(lib).resolve()
    rt = ensure_runtime(log)
    with tempfile.TemporaryDirectory(prefix="qcc-qemu-") as td:
        td = Path(td)
        (td / "runner.py").write_text(_RUNNER)
        np.savez(td / "in.npz", **{f"arg{i}": np.ascontiguousarray(a) for i, a in enumerate(args)})
        cmd = rt.command(cpu, str(td / "runner.py"), str(lib), str(td / "in.npz"), str(td / "out.npz"))
        env = rt.env()
        if num_threads or not env.get("TVM_NUM_THREADS", "").strip():  # else the user's setting
            env["TVM_NUM_THREADS"] = str(num_threads or os.cpu_count() or 1)
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            if p.returncode in (-SIGILL, 128 + SIGILL):
                raise EmulationError(f"{lib.name} stopped on an illegal instruction under {QEMU} -cpu {cpu} "
                                     f"(SIGILL): it uses an instruction the {cpu} does not have")
            lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
            raise EmulationError(f"running {lib.name} under {QEMU} -cpu {cpu} failed (exit {p.returncode}): "
                                 f"{lines[-1].strip() if lines else '(no output)'}")
        with np.load(td / "out.npz", allow_pickle=False) as z:
            return [z[f"out{i}"] for i in range(len(z.files))]


class EmulatedRunner:
    """Runs an aarch64 artifact's model.so under qemu; the Runner interface of targets.builder."""

    def __init__(self, lib, cpu: str, inputs: List[Dict], outputs: List[Dict], *, log: Optional[Log] = None):
        self.lib = Path(lib)
        self.cpu = cpu
        self.inputs = inputs
        self.outputs = outputs
        self.log = log
        self.num_threads: Optional[int] = None  # the guest's TVM_NUM_THREADS; None = every core

    @property
    def input_names(self) -> List[str]:
        return [i["name"] for i in self.inputs]

    @property
    def output_names(self) -> List[str]:
        return [o["name"] for o in self.outputs]

    def prepare(self) -> "EmulatedRunner":
        """Prepare the guest runtime now rather than on the first run."""
        ensure_runtime(self.log)
        return self

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        arrays = run_library(self.lib, self.cpu, [feeds[n] for n in self.input_names], log=self.log,
                             num_threads=self.num_threads)
        names = self.output_names
        if len(arrays) != len(names):
            raise EmulationError(f"{self.lib.name} returned {len(arrays)} outputs, the manifest lists {len(names)}")
        return dict(zip(names, arrays))

    __call__ = run
