"""`qcc bench OUT`: how fast an artifact runs, how much memory it takes, with how many threads.

    result = qcc.bench.bench("out/", repeat=200, threads=2)
    print(format_result(result))

What is measured, and where:

- **latency**: each of `repeat` calls of the model (after `warmup` untimed ones), inputs
  staged on the device once and outputs left there — what a serving loop pays per call,
  VM dispatch included, input conversion not. min, p50, p90, p99, mean, max.
- **throughput**: calls per second back to back in one stream (1 / mean latency), times the
  batch size for samples per second. No concurrent streams.
- **peak memory** (host and qemu only): the process's resident-set high-water mark (VmHWM)
  while loading and running the model, minus its resident set just before loading. The mark is
  reset first (`/proc/self/clear_refs`), so the number covers loading model.so (its pages that
  were touched), the VM's buffers, staged inputs, intermediates and outputs — and not the Python
  interpreter or the TVM runtime, which are loaded before. Without the reset it is an upper bound.
- **where**: on this machine for artifacts it can run; under qemu-aarch64 for ARM artifacts
  on other machines (emulated — the times are not the device's); on a board through TVM's
  RPC tracker with `rpc=HOST:PORT, rpc_key=KEY` (the board's own timer; memory not measured).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from .artifact import ArtifactError

Progress = Callable[[int, int], None]
EMULATED = "emulated — not device timing"


class BenchError(ArtifactError):
    """A benchmark that cannot run; one line."""


# --- inputs ------------------------------------------------------------------------------

def random_inputs(specs: List[Dict], seed: int = 0) -> Dict[str, np.ndarray]:
    """Inputs of the artifact's signature: floats ~ N(0, 1), integers in [0, 10), bools 50/50.
    (The kernels qcc emits do the same work whatever the values; small integers keep index
    inputs in range.)"""
    from .ir.types import to_numpy_dtype

    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        dt = np.dtype(to_numpy_dtype(spec["dtype"]))
        shape = tuple(spec["shape"])
        if dt.kind == "f":
            out[spec["name"]] = rng.standard_normal(shape).astype(dt)
        elif dt.kind == "b":
            out[spec["name"]] = rng.integers(0, 2, shape).astype(dt)
        else:
            out[spec["name"]] = rng.integers(0, 10, shape).astype(dt)
    return out


def read_inputs(path) -> Dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise BenchError(f"{path}: cannot read inputs ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None


# --- memory --------------------------------------------------------------------------------

def _status() -> Dict[str, int]:
    """VmRSS / VmHWM of this process in bytes ({} where /proc is missing)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def _reset_hwm() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _MemoryProbe:
    def __enter__(self):
        self.reset = _reset_hwm()
        self.before = _status().get("VmRSS")
        if self.before is None:  # no /proc: getrusage's max RSS (kB on Linux), never reset
            import resource

            self.before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, *exc):
        st = _status()
        if st:
            self.hwm, self.after = st["VmHWM"], st["VmRSS"]
        else:
            import resource

            self.hwm = self.after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.reset = False
        return False


def _memory(before, hwm, after, reset, where: str) -> Dict:
    covers = ("loading model.so and running it (VM buffers, staged inputs, intermediates, outputs); "
              "not the interpreter or the TVM runtime, loaded before")
    if where == "qemu":
        covers += "; the qemu process's own, so the emulator's code cache is in it"
    return {"peak_delta_bytes": max(0, int(hwm) - int(before)) if hwm is not None and before is not None else None,
            "rss_before_bytes": before, "peak_bytes": hwm, "rss_after_bytes": after,
            "method": "VmHWM after the runs - VmRSS before loading" + (", VmHWM reset before loading" if reset
                                                                        else " (VmHWM not resettable: an upper bound)"),
            "covers": covers}


# --- the measurement ----------------------------------------------------------------------------

def _stats(times: List[float]) -> Dict[str, float]:
    ms = np.asarray(times, dtype=np.float64) * 1e3
    return {"min": float(ms.min()), "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "max": float(ms.max())}


def _check_counts(warmup: int, repeat: int, threads: Optional[int]) -> None:
    if not isinstance(warmup, int) or warmup < 0:
        raise BenchError(f"warmup must be a non-negative integer, not {warmup!r}")
    if not isinstance(repeat, int) or repeat < 1:
        raise BenchError(f"repeat must be a positive integer, not {repeat!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise BenchError(f"threads must be a positive integer, not {threads!r}")


def bench(artifact, *, inputs=None, warmup: int = 10, repeat: int = 100, threads: Optional[int] = None,
          rpc: Optional[str] = None, rpc_key: Optional[str] = None, seed: int = 0,
          progress: Optional[Progress] = None, log=None) -> Dict:
    """Benchmark the artifact folder `artifact`. `inputs`: a .npz path or {name: array}
    (default: random inputs of the artifact's signature); `threads`: default the artifact's
    (`qcc compile --threads`), else every core. Returns a JSON-able dict (see format_result)."""
    import json

    from .artifact import manifest_threads

    _check_counts(warmup, repeat, threads)
    path = Path(artifact)
    mf = path / "manifest.json"
    if not mf.is_file():
        raise BenchError(f"{path}: not a qcc artifact (no manifest.json)")
    try:
        manifest = json.loads(mf.read_text())
        specs, lib = manifest["inputs"], path / manifest["library"]
    except (ValueError, KeyError) as e:
        raise BenchError(f"{mf}: unreadable manifest ({e})") from None
    if isinstance(inputs, (str, os.PathLike)):
        feeds, source = read_inputs(inputs), os.fspath(inputs)
    elif inputs is not None:
        feeds, source = dict(inputs), "given"
    else:
        feeds, source = random_inputs(specs, seed), f"random (seed {seed})"
    want_threads = threads if threads is not None else manifest_threads(manifest)
    result = {"artifact": os.fspath(path), "target": manifest["target"]["preset"], "inputs": source,
              "warmup": warmup, "repeat": repeat,
              "threads": {"requested": want_threads, "used": None},
              "batch": int(specs[0]["shape"][0]) if specs and specs[0]["shape"] else 1}
    if rpc_key and not rpc:
        raise BenchError("--rpc-key needs --rpc HOST:PORT (the tracker)")
    if rpc:
        if not rpc_key:
            raise BenchError("--rpc needs --rpc-key KEY (the device key the board registered with the tracker)")
        from .artifact import Module
        from .targets import remote

        if not lib.is_file():
            raise BenchError(f"{path}: the library {lib.name} is missing")
        if lib.suffix != ".so":
            raise BenchError(f"{path}: {lib.name} holds unlinked objects; link it (compile with the target's "
                             "toolchain installed) before sending it to a board")
        args = _ordered(Module(path, manifest, None), feeds)
        family = (manifest["target"].get("tvm") or {}).get("kind")
        res = remote.bench_rpc(lib, args, tracker=rpc, key=rpc_key, warmup=warmup, repeat=repeat,
                               threads=want_threads, device="cuda" if family == "cuda" else "cpu",
                               progress=progress)
        result.update(where=f"rpc {res['remote']['tracker']} key {rpc_key}", timing="remote device",
                      memory=None, memory_note="not measured over RPC")
    else:
        from . import targets
        from .artifact import Module, _runs_on_host, load

        try:
            preset = targets.get_target(manifest["target"]["preset"])
        except ValueError as e:
            raise BenchError(str(e)) from None
        if _runs_on_host(preset):
            from .targets import builder  # noqa: F401 - TVM's runtime loads here, before the memory baseline

            checked = Module(path, manifest, None).check_inputs(feeds)  # input errors before anything runs
            with _MemoryProbe() as probe:
                mod = load(path, threads=threads, log=log)
                times = mod._runner.time_each(checked, warmup=warmup, repeat=repeat, progress=progress)
                used = mod._runner.threads()
            res = {"times": times, "threads": used}
            result.update(where="host", timing="device",
                          memory=_memory(probe.before, probe.hwm, probe.after, probe.reset, "host"))
        else:
            mod = load(path, threads=threads, log=log)  # an ARM artifact here: under qemu, or an error
            from .targets import remote

            runner = mod._runner
            res = remote.bench_emulated(runner.lib, runner.cpu, _ordered(mod, feeds), warmup=warmup,
                                        repeat=repeat, threads=want_threads, log=log, progress=progress)
            m = res["memory"]
            result.update(where=f"qemu-aarch64 -cpu {runner.cpu}", timing=EMULATED,
                          memory=_memory(m["rss_before"], m["hwm"], m["rss_after"], m["hwm_reset"], "qemu"))
    result["threads"]["used"] = res["threads"]
    lat = _stats(res["times"])
    result["latency_ms"] = lat
    result["throughput"] = {"inferences_per_s": 1e3 / lat["mean"], "samples_per_s": result["batch"] * 1e3 / lat["mean"]}
    return result


def _ordered(mod, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
    checked = mod.check_inputs(feeds)
    return [checked[s["name"]] for s in mod.inputs]


# --- output ------------------------------------------------------------------------------

def _mb(n: Optional[int]) -> str:
    return "?" if n is None else f"{n / 2**20:.1f} MiB"


def format_result(r: Dict) -> str:
    """A few lines for a terminal."""
    lat, thr, th = r["latency_ms"], r["throughput"], r["threads"]
    where = r["where"] + ("" if r["timing"] == "device" else f"  ({r['timing']})")
    threads = f"{th['used']} thread{'s' if th['used'] != 1 else ''}"
    if th["requested"] is not None and th["requested"] != th["used"]:
        threads += f" (asked for {th['requested']}: the runtime's pool caps it; see TVM_NUM_THREADS)"
    lines = [f"{r['artifact']}  {r['target']}  on {where}",
             f"  {threads}, {r['repeat']} runs after {r['warmup']} warm-up, inputs {r['inputs']}",
             f"  latency ms   p50 {lat['p50']:.3f}  p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f}  "
             f"min {lat['min']:.3f}  mean {lat['mean']:.3f}",
             f"  throughput   {thr['inferences_per_s']:.1f} inferences/s"
             + (f" ({thr['samples_per_s']:.1f} samples/s, batch {r['batch']})" if r["batch"] > 1 else "")
             + " (one stream)"]
    m = r.get("memory")
    if m:
        lines.append(f"  peak memory  +{_mb(m['peak_delta_bytes'])} loading and running "
                     f"(RSS {_mb(m['rss_before_bytes'])} before, peak {_mb(m['peak_bytes'])})"
                     + ("" if "reset" in m["method"] and "not" not in m["method"] else ", an upper bound"))
    else:
        lines.append(f"  peak memory  {r.get('memory_note', 'not measured')}")
    return "\n".join(lines)
