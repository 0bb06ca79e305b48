"""`qcc.load(OUT)`: an artifact folder as a callable module (on the host; ARM ones under qemu).

Inputs are checked against the manifest before they reach TVM, so a wrong
name, shape or dtype is one clear error instead of a crash inside the runtime.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np


class ArtifactError(Exception):
    """A folder that is not a loadable artifact, or inputs that do not fit it."""


class Module:
    def __init__(self, path: Path, manifest: Dict, runner):
        self.path = path
        self.manifest = manifest
        self._runner = runner

    @property
    def threads(self) -> Optional[int]:
        """The CPU thread count this module runs with (None: the default, every core)."""
        return getattr(self._runner, "num_threads", None)

    @property
    def emulated(self) -> bool:
        """True when runs go through qemu (an ARM artifact on another machine)."""
        return getattr(self._runner, "cpu", None) is not None

    @property
    def inputs(self) -> List[Dict]:
        return self.manifest["inputs"]

    @property
    def outputs(self) -> List[Dict]:
        return self.manifest["outputs"]

    def check_inputs(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        from .ir.types import to_numpy_dtype

        names = [i["name"] for i in self.inputs]
        extra = sorted(set(feeds) - set(names))
        if extra:
            raise ArtifactError(f"unknown input '{extra[0]}' (the model's inputs: {', '.join(names)})")
        out = {}
        for spec in self.inputs:
            name = spec["name"]
            if name not in feeds:
                raise ArtifactError(f"missing input '{name}' ({spec['dtype']}{spec['shape']})")
            a = np.asarray(feeds[name])
            if list(a.shape) != spec["shape"]:
                raise ArtifactError(f"input '{name}' has shape {list(a.shape)}, the model expects {spec['shape']}")
            want = to_numpy_dtype(spec["dtype"])
            if a.dtype != want:
                raise ArtifactError(f"input '{name}' has dtype {a.dtype}, the model expects {want} ({spec['dtype']})")
            out[name] = np.ascontiguousarray(a)
        return out

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return self._runner.run(self.check_inputs(feeds))

    __call__ = run


def _runs_on_host(preset) -> bool:
    import platform

    machine = platform.machine().lower()
    if preset.family == "x86":
        return machine in ("x86_64", "amd64")
    if preset.family == "arm":
        return machine in ("aarch64", "arm64")
    return False


def manifest_threads(manifest: Dict) -> Optional[int]:
    """The thread count `qcc compile --threads N` recorded (None: every core)."""
    n = (manifest.get("execution") or {}).get("threads")
    return int(n) if isinstance(n, int) and n > 0 else None


def load(path, *, threads: Optional[int] = None, log=None) -> Module:
    """The artifact at `path` as a Module. ARM artifacts on a non-ARM machine run under
    qemu-aarch64 with the preset's exact core (qcc.targets.emulate; the first run prepares an
    aarch64 runtime once, printing progress through `log`, default stderr).

    `threads`: CPU threads to run with; default the count the artifact was compiled with
    (`qcc compile --threads`, recorded in manifest.json), else every core."""
    from . import targets

    path = Path(path)
    mf = path / "manifest.json"
    if not mf.is_file():
        raise ArtifactError(f"{path}: not a qcc artifact (no manifest.json)")
    try:
        manifest = json.loads(mf.read_text())
        lib = path / manifest["library"]
    except (ValueError, KeyError) as e:
        raise ArtifactError(f"{mf}: unreadable manifest ({e})") from None
    if not lib.is_file():
        raise ArtifactError(f"{path}: the library {lib.name} is missing")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ArtifactError(f"threads must be a positive integer, not {threads!r}")
    threads = threads if threads is not None else manifest_threads(manifest)
    preset = targets.get_target(manifest["target"]["preset"])
    if not _runs_on_host(preset):
        if preset.family == "arm":
            return _emulated(path, manifest, lib, preset, log, threads)
        raise ArtifactError(f"{path} was compiled for {preset.name}, which this machine cannot run directly")
    return Module(path, manifest, targets.load(lib, num_threads=threads))


def _emulated(path: Path, manifest: Dict, lib: Path, preset, log, threads: Optional[int] = None) -> Module:
    """An aarch64 artifact on another machine: each run goes through qemu-aarch64."""
    from .targets import emulate

    if lib.suffix != ".so":
        raise ArtifactError(f"{path}: {lib.name} holds unlinked aarch64 objects (no cross toolchain at compile "
                            f"time): install {preset.toolchain or 'aarch64-linux-gnu-g++'} (Debian: "
                            "g++-aarch64-linux-gnu) and compile again")
    emulate.require_tools()
    cpu = emulate.qemu_cpu_for(manifest["target"].get("tvm") or preset.target_dict())
    runner = emulate.EmulatedRunner(lib, cpu, manifest["inputs"], manifest["outputs"], log=log)
    runner.num_threads = threads  # the guest's TVM_NUM_THREADS (qemu runs guest threads on host threads)
    return Module(path, manifest, runner)
