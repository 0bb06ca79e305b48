"""Compile a qcc graph for a preset, export it, load it back and run it.

    path = build(graph, "host", "out/")        # out/model.so + out/model.json
    runner = load(path)
    outputs = runner.run({"x": x})             # {output name: np.ndarray}

ARM presets link with the preset's cross toolchain when it is on PATH, and
otherwise write `model.tar` (the object files; link it on the device or once
the toolchain is installed). CUDA presets build (the library embeds the CUDA
source) but only load on a machine with a GPU.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np

import tvm
from tvm import relax

from qcc.ir import Graph

from .lower import graph_signature, lower_graph
from .parallel_build import compile_module, export_library, runtime_modules
from .presets import TargetPreset, get_target
from .strategy import LoweringStrategy, strategy_for

PresetLike = Union[str, TargetPreset]


# --- threads ---------------------------------------------------------------------------

_threads_lock = threading.Lock()
_threads_configured: Optional[int] = None  # what was last asked of the pool
_threads_used: int = 0                     # what the pool said it uses then
_threads_default: Optional[int] = None     # $TVM_NUM_THREADS as the user set it, else every core


def default_threads() -> int:
    """The thread count used when none is asked for: $TVM_NUM_THREADS (as set before qcc
    touched it), else every core."""
    global _threads_default
    if _threads_default is None:
        env = os.environ.get("TVM_NUM_THREADS", "").strip()
        _threads_default = int(env) if env.isdigit() and int(env) > 0 else (os.cpu_count() or 1)
    return _threads_default


def configure_threads(num_threads: Optional[int] = None) -> int:
    """Size TVM's CPU thread pool: `num_threads`, else $TVM_NUM_THREADS, else every core.
    Returns the number of threads the pool will use.

    TVM creates its pool once, when it is first used, with $TVM_NUM_THREADS workers (else
    $OMP_NUM_THREADS, else *half* the hardware threads: 1 on a 2-vCPU machine);
    `runtime.config_threadpool` then picks how many of them run, never more. So when the
    user has not set TVM_NUM_THREADS this exports max(every core, num_threads) before the
    pool exists, and then asks for `num_threads`: later calls can move the count up or
    down within that. With TVM_NUM_THREADS set by the user, it is the ceiling.
    """
    global _threads_configured, _threads_used
    with _threads_lock:
        n = max(1, int(num_threads if num_threads is not None else default_threads()))
        if _threads_configured == n:
            return _threads_used
        if not os.environ.get("TVM_NUM_THREADS", "").strip():
            default_threads()  # remember that the user set none
            os.environ["TVM_NUM_THREADS"] = str(max(n, os.cpu_count() or 1))  # read when the pool is created
        f = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
        if f is not None:
            f(0, n)
        used = tvm.get_global_func("runtime.NumThreads", allow_missing=True)
        _threads_configured = n
        _threads_used = int(used()) if used is not None else n
        return _threads_used


# --- compile ---------------------------------------------------------------------------

def lower_for(graph: Graph, preset: PresetLike = "host",
              strategy: Optional[LoweringStrategy] = None) -> tvm.IRModule:
    """The Relax module for `graph` as `preset` lowers it (strategy.prepare applied)."""
    preset = get_target(preset)
    strategy = strategy or strategy_for(preset)
    mod = lower_graph(graph, strategy)
    return strategy.prepare(mod, preset.target())


def compile_graph(graph: Graph, preset: PresetLike = "host", *,
                  strategy: Optional[LoweringStrategy] = None,
                  relax_pipeline: Any = None):
    """tvm.compile the graph for a preset; returns the in-memory executable.

    `relax_pipeline` overrides the strategy's choice (e.g. "default").
    """
    preset = get_target(preset)
    strategy = strategy or strategy_for(preset)
    target = preset.target()
    mod = strategy.prepare(lower_graph(graph, strategy), target)
    pipeline = relax_pipeline if relax_pipeline is not None else strategy.relax_pipeline(target)
    return compile_module(mod, target, pipeline, strategy.tir_pipeline(target))


def _deterministic_tar(output: str, files: List[str], **_kwargs) -> None:
    """TVM's tar export, minus what makes it differ run to run (temp names, mtimes, gzip
    header): an uncompressed tar of the object files by base name, mtime 0."""
    import tarfile

    with tarfile.open(output, "w", format=tarfile.USTAR_FORMAT) as tf:
        for f in sorted(files, key=os.path.basename):
            info = tf.gettarinfo(f, arcname=os.path.basename(f))
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
            with open(f, "rb") as fh:
                tf.addfile(info, fh)


_deterministic_tar.output_format = "tar"  # type: ignore[attr-defined]


def _exporter(preset: TargetPreset):
    """(file name, fcompile) for export_library; fcompile None = TVM's default host cc."""
    if preset.family == "arm" and not _host_is_arm():
        cxx = preset.toolchain
        if cxx and shutil.which(cxx):
            from tvm.support import cc

            # cross_compiler appends to the list it is given: a fresh one every call
            return "model.so", cc.cross_compiler(cxx, options=["-O2"])
        return "model.tar", _deterministic_tar
    return "model.so", None


def _host_is_arm() -> bool:
    import platform

    return platform.machine().lower() in ("aarch64", "arm64")


def build(graph: Graph, preset: PresetLike, out_dir: Union[str, os.PathLike], *,
          strategy: Optional[LoweringStrategy] = None, relax_pipeline: Any = None) -> Path:
    """Compile `graph` for `preset` into `out_dir`; returns the path of model.so (model.tar
    for a cross target without its toolchain). Writes model.json (signature, target) beside it."""
    preset = get_target(preset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ex = compile_graph(graph, preset, strategy=strategy, relax_pipeline=relax_pipeline)
    name, fcompile = _exporter(preset)
    path = out / name
    export_library(ex, str(path), fcompile)
    meta = {
        "format": "qcc-tvm-1",
        "library": name,
        "preset": preset.name,
        "family": preset.family,
        "target": preset.target_dict(),
        "tvm_version": tvm.__version__,
        **graph_signature(graph),
    }
    (out / "model.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return path


# --- run -------------------------------------------------------------------------------

def _to_numpy(t) -> np.ndarray:
    """A copy of a VM result that numpy owns (an output may be one of the model's constants,
    or memory the VM reuses), through DLPack: ~0.5 us against ~5 us for `.numpy()`, which
    stays the way for dtypes numpy cannot view (bfloat16, a CPU-less device)."""
    try:
        return np.from_dlpack(t).copy()
    except Exception:  # noqa: BLE001 - any refusal: the general conversion
        return t.numpy()


class Runner:
    """A loaded model: `run({input name: array}) -> {output name: array}`.

    `num_threads` is the size of TVM's CPU pool this model runs with (None: the default,
    every core); it is applied before each call, so models loaded with different counts
    can share a process (the pool is per process: one count at a time)."""

    def __init__(self, module, signature: Optional[Dict[str, Any]] = None, device=None,
                 num_threads: Optional[int] = None):
        self.device = device if device is not None else tvm.cpu()
        self.module = module
        self.vm = relax.VirtualMachine(module, self.device)
        self._main = self.vm["main"]
        self.signature = signature
        self.inputs: Optional[List[Dict[str, Any]]] = signature["inputs"] if signature else None
        self.outputs: Optional[List[Dict[str, Any]]] = signature["outputs"] if signature else None
        self.num_threads = num_threads
        # One call at a time: the VM runs every call in the same planned memory (two threads
        # in it at once crashed in StorageObj::AllocTensor), and shares the input staging
        # tensors (_staged). Callers on several threads take turns; the kernels themselves
        # run on TVM's thread pool.
        self._lock = threading.Lock()
        self._staging: Any = False  # not made yet

    @property
    def input_names(self) -> Optional[List[str]]:
        return [i["name"] for i in self.inputs] if self.inputs is not None else None

    @property
    def output_names(self) -> Optional[List[str]]:
        return [o["name"] for o in self.outputs] if self.outputs is not None else None

    def threads(self) -> int:
        """Apply this model's thread count to the pool (CPU only); returns the count in use."""
        if self.device.dlpack_device_type() != tvm.cpu().dlpack_device_type():
            return 1
        return configure_threads(self.num_threads)

    def _checked(self, feeds: Dict[str, np.ndarray]):
        """[(array, the dtype the model wants)] in the model's input order: names and shapes
        checked, and dtypes (one numpy casts to the model's "same_kind" is taken)."""
        from qcc.ir.types import to_numpy_dtype

        missing = [i["name"] for i in self.inputs if i["name"] not in feeds]
        extra = sorted(set(feeds) - {i["name"] for i in self.inputs})
        if missing or extra:
            raise ValueError(f"feeds: missing {missing}, unexpected {extra}; "
                             f"the model takes {self.input_names}")
        out = []
        for spec in self.inputs:
            a = np.asarray(feeds[spec["name"]])
            want = np.dtype(to_numpy_dtype(spec["dtype"]))
            if tuple(a.shape) != tuple(spec["shape"]):
                raise ValueError(f"input {spec['name']}: shape {list(a.shape)}, "
                                 f"the model wants {spec['shape']}")
            if a.dtype != want and not np.can_cast(a.dtype, want, "same_kind"):
                raise ValueError(f"input {spec['name']}: dtype {a.dtype}, the model wants {want}")
            out.append((a, want))
        return out

    def _args(self, feeds: Dict[str, np.ndarray]):
        """New TVM tensors holding the feeds (the timing helpers stage inputs once)."""
        if self.inputs is None:
            return [tvm.runtime.tensor(np.require(a, requirements="C"), self.device) for a in feeds.values()]
        return [tvm.runtime.tensor(np.require(a.astype(want, copy=False), requirements="C"), self.device)
                for a, want in self._checked(feeds)]

    def _staged(self):
        """The input tensors, allocated on first use, each with a numpy view of its memory:
        [(tensor, view, spec)], or None where that cannot be (no signature, not a CPU
        device, a dtype numpy cannot view). Used under self._lock.

        Why: a fresh TVM tensor per input and call (`tvm.runtime.tensor`) costs ~12 us of
        Python and allocation before the copy, an output's `.numpy()` ~5 us; on a small
        model called once per audio chunk or text line that was most of the call (Silero
        VAD, 2 threads: 137 us through `run` against 52 us in the VM). numpy copies into
        the view (0.3 us for a small input; a large one costs its memcpy either way: TVM
        will not take numpy's memory without a copy, as numpy's buffers are not 64-byte
        aligned)."""
        staged = self._staging
        if staged is not False:
            return staged
        staged = None
        if self.inputs is not None and self.device.dlpack_device_type() == tvm.cpu().dlpack_device_type():
            from qcc.ir.types import to_numpy_dtype

            try:
                staged = []
                for spec in self.inputs:
                    want = np.dtype(to_numpy_dtype(spec["dtype"]))
                    t = tvm.runtime.empty(tuple(spec["shape"]), str(want), self.device)
                    view = np.from_dlpack(t)
                    if view.dtype != want or list(view.shape) != list(spec["shape"]) or not view.flags.writeable:
                        raise TypeError("not a writable view")
                    staged.append((t, view, spec))
            except (TypeError, ValueError, RuntimeError, BufferError):
                staged = None
        self._staging = staged
        return staged

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        with self._lock:
            return self._run(feeds)

    def _run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        self.threads()
        staged = self._staged()
        if staged is None:
            args = self._args(feeds)
        else:
            for (_, view, _), (a, _) in zip(staged, self._checked(feeds)):
                np.copyto(view, a, casting="same_kind")
            args = [t for t, _, _ in staged]
        res = self._main(*args)
        arrays = [_to_numpy(r) for r in (res if not hasattr(res, "numpy") else [res])]
        names = self.output_names or [f"output{i}" for i in range(len(arrays))]
        return dict(zip(names, arrays))

    __call__ = run

    def time(self, feeds: Dict[str, np.ndarray], number: int = 10, repeat: int = 3) -> float:
        """Best mean seconds per run (inputs staged once)."""
        self.threads()
        args = self._args(feeds)
        f = self.vm.time_evaluator("main", self.device, number=number, repeat=repeat)
        return float(min(f(*args).results))

    def time_each(self, feeds: Dict[str, np.ndarray], *, warmup: int = 10, repeat: int = 100,
                  progress: Optional[Callable[[int, int], None]] = None) -> List[float]:
        """Seconds of each of `repeat` calls of main (after `warmup` untimed ones): inputs staged
        on the device once, outputs left there — what a serving loop pays per inference,
        VM dispatch included. `progress(done, total)` is called now and then."""
        import time

        self.threads()
        args = self._args(feeds)
        total = warmup + repeat
        step = max(1, total // 50)
        times: List[float] = []
        clock = time.perf_counter
        for i in range(total):
            t0 = clock()
            self._main(*args)
            dt = clock() - t0
            if i >= warmup:
                times.append(dt)
            if progress is not None and (i + 1) % step == 0:
                progress(i + 1, total)
        if progress is not None:
            progress(total, total)
        return times

    def profile(self, feeds: Dict[str, np.ndarray], *, repeat: int = 10) -> List[Dict[str, Any]]:
        """Per-kernel times, from the VM's instrument hook (0.27's Relax VM has no profiler):
        one entry per kernel call of `main`, in call order, with its symbol, the shapes of its
        tensor arguments (the last is the output: kernels are destination-passing) and the
        median seconds over `repeat` runs. VM builtins (allocation, shape checks) are left out;
        the hook's own cost (~1 us a call) is not in the times."""
        import time

        self.threads()
        args = self._args(feeds)
        calls: List[Dict[str, Any]] = []
        state = {"i": 0, "t0": 0.0}

        def instrument(func, symbol, before, ret, *a):
            if str(symbol).startswith("vm.builtin."):
                return 0
            if before:
                state["t0"] = time.perf_counter()
                return 0
            dt = time.perf_counter() - state["t0"]
            i = state["i"]
            state["i"] += 1
            if i == len(calls):
                calls.append({"kernel": str(symbol), "shapes": [list(x.shape) for x in a if hasattr(x, "shape")],
                              "times": []})
            calls[i]["times"].append(dt)
            return 0

        def before_run():
            state["i"] = 0

        self._instrumented(args, instrument, max(1, repeat), before_run)
        return [{"kernel": c["kernel"], "shapes": c["shapes"], "seconds": float(np.median(c["times"]))}
                for c in calls]

    def _instrumented(self, args, hook, runs: int = 1, before_run: Optional[Callable[[], None]] = None) -> None:
        """One uninstrumented warm-up run of main, then `runs` runs with the VM calling
        `hook(func, symbol, before, ret, *args)` around every call (kernels and builtins)."""
        self._main(*args)
        self.vm.set_instrument(hook)
        try:
            for _ in range(runs):
                if before_run is not None:
                    before_run()
                self._main(*args)
        finally:
            self.vm.set_instrument(None)


    def kernel_times(self, feeds: Dict[str, np.ndarray], *, number: int = 50,
                     repeat: int = 5) -> List[Dict[str, Any]]:
        """Each kernel of `main` timed on its own, warm: one run records every kernel call
        with copies of its arguments, then each call is repeated `number` times in a row
        (TVM's time evaluator), the median of `repeat` such means kept. Unlike `profile`,
        no Python runs between the timed calls, so the figures are a serving loop's, and
        one kernel's time does not include the thread pool waking up after the hook.
        Entries as `profile`'s, in call order, plus the output's dtype."""
        self.threads()
        args = self._args(feeds)
        calls: List[Any] = []

        def instrument(func, symbol, before, ret, *a):
            if not before and not str(symbol).startswith("vm.builtin."):
                calls.append((str(symbol), [tvm.runtime.tensor(x.numpy(), self.device) for x in a
                                            if hasattr(x, "shape")]))
            return 0

        self._instrumented(args, instrument)
        libs = list(runtime_modules(self.module))
        out = []
        for sym, targs in calls:
            lib = next((m for m in libs if m.implements_function(sym)), None)
            if lib is None:
                continue
            f = lib.time_evaluator(sym, self.device, number=number, repeat=repeat)
            out.append({"kernel": sym, "shapes": [list(t.shape) for t in targs], "dtype": str(targs[-1].dtype),
                        "seconds": float(np.median(f(*targs).results))})
        return out


def load(path: Union[str, os.PathLike], *, num_threads: Optional[int] = None) -> Runner:
    """Load a model.so written by build() (its model.json supplies the names). `num_threads`:
    TVM's CPU pool size for this model (default every core, or $TVM_NUM_THREADS)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.so"
    if path.suffix == ".tar":
        raise ValueError(f"{path} holds unlinked objects (no cross toolchain at build time); "
                         "link it with the target's toolchain first")
    meta_path = path.parent / "model.json"
    signature = json.loads(meta_path.read_text()) if meta_path.exists() else None
    if signature is not None and signature.get("family") == "cuda":
        device = tvm.cuda()
        if not device.exist:
            raise RuntimeError(f"{path} was built for {signature.get('preset')}; this machine has no GPU")
    else:
        device = tvm.cpu()
        configure_threads(num_threads)
    module = tvm.runtime.load_module(str(path))
    return Runner(module, signature, device, num_threads=num_threads)


def runner_from_executable(ex, graph: Optional[Graph] = None, *,
                           num_threads: Optional[int] = None) -> Runner:
    """A Runner over an in-memory executable (no export), for tests and tools."""
    configure_threads(num_threads)
    return Runner(ex, graph_signature(graph) if graph is not None else None, num_threads=num_threads)
