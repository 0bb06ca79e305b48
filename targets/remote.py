"""Timing a model.so somewhere other than this process: under qemu, or on a board through TVM's RPC.

    timing = bench_emulated("out/model.so", "cortex-a72", [x], warmup=5, repeat=50)
    timing = bench_rpc("out/model.so", [x], tracker="10.0.0.2:9190", key="rk3399", repeat=100)
    timing["times"]      # seconds of each timed call of main

Both leave the outputs on the device and stage the inputs once, like Runner.time_each.

Under qemu the times are the emulator's, not the core's: good for "does it run, with how many
threads, how much memory", useless as a device number. Through RPC they are the board's own
(`time_evaluator` runs on the remote side; the network is not in them). A board serves RPC with
TVM's runtime: `python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`, registered at a
tracker started with `python -m tvm.exec.rpc_tracker` (which needs `tornado`).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from qcc.artifact import ArtifactError

Progress = Callable[[int, int], None]


class RemoteError(ArtifactError):
    """A remote or emulated measurement that cannot go on; one line."""


# --- under qemu ----------------------------------------------------------------------------

# Runs in the aarch64 guest (TVM runtime only: no tvm.relax). Prints "progress K N" lines on
# stderr and one JSON line on stdout. Memory is the qemu process's own (/proc/self/status is
# the host's view of the emulator), so it includes qemu's translated-code cache.
_GUEST_BENCH = r'''
import json, os, sys, time
import numpy as np
import tvm
from tvm.runtime import vm as _vm

lib, inp, warmup, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def status():
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out

with np.load(inp, allow_pickle=False) as z:
    arrays = [np.ascontiguousarray(z["arg%d" % i]) for i in range(len(z.files))]
reset = True
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    reset = False
rss0 = status().get("VmRSS")
dev = tvm.cpu()
n = tvm.get_global_func("runtime.NumThreads")()
machine = _vm.VirtualMachine(tvm.runtime.load_module(lib), dev)
main = machine["main"]
args = [tvm.runtime.tensor(a, dev) for a in arrays]
total = warmup + repeat
step = max(1, total // 20)
times = []
for i in range(total):
    t0 = time.perf_counter()
    main(*args)
    dt = time.perf_counter() - t0
    if i >= warmup:
        times.append(dt)
    if (i + 1) % step == 0 or i + 1 == total:
        print("progress %d %d" % (i + 1, total), file=sys.stderr, flush=True)
st = status()
print(json.dumps({"times": times, "threads": n, "rss_before": rss0, "hwm": st.get("VmHWM"),
                  "rss_after": st.get("VmRSS"), "hwm_reset": reset}))
'''


def bench_emulated(lib, cpu: str, arrays: Sequence[np.ndarray], *, warmup: int, repeat: int,
                   threads: Optional[int] = None, log=None, progress: Optional[Progress] = None) -> Dict:
    """Time `main` of an aarch64 model.so under qemu-aarch64 -cpu `cpu` (one qemu process)."""
    from . import emulate

    lib = Path(lib).resolve()
    rt = emulate.ensure_runtime(log)
    with tempfile.TemporaryDirectory(prefix="qcc-qemu-bench-") as td:
        td = Path(td)
        (td / "bench.py").write_text(_GUEST_BENCH)
        np.savez(td / "in.npz", **{f"arg{i}": np.ascontiguousarray(a) for i, a in enumerate(arrays)})
        env = rt.env()
        if threads or not env.get("TVM_NUM_THREADS", "").strip():  # else the user's setting
            env["TVM_NUM_THREADS"] = str(threads or os.cpu_count() or 1)
        cmd = rt.command(cpu, str(td / "bench.py"), str(lib), str(td / "in.npz"), str(warmup), str(repeat))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        errs: List[str] = []
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "progress":
                if progress is not None:
                    progress(int(parts[1]), int(parts[2]))
            elif line.strip():
                errs.append(line.strip())
        out = proc.stdout.read()
        code = proc.wait()
    if code != 0:
        if code in (-emulate.SIGILL, 128 + emulate.SIGILL):
            raise RemoteError(f"{lib.name} stopped on an illegal instruction under {emulate.QEMU} -cpu {cpu} "
                              f"(SIGILL): it uses an instruction the {cpu} does not have")
        raise RemoteError(f"benchmarking {lib.name} under {emulate.QEMU} -cpu {cpu} failed (exit {code}): "
                          f"{errs[-1] if errs else '(no output)'}")
    res = json.loads(out.strip().splitlines()[-1])
    return {"times": res["times"], "threads": res["threads"],
            "memory": {"rss_before": res["rss_before"], "hwm": res["hwm"], "rss_after": res["rss_after"],
                       "hwm_reset": res["hwm_reset"]}}


# --- through TVM's RPC tracker ---------------------------------------------------------------

def parse_address(text: str, what: str = "--rpc") -> tuple:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RemoteError(f"{what} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


def bench_rpc(lib, arrays: Sequence[np.ndarray], *, tracker: str, key: str, warmup: int, repeat: int,
              threads: Optional[int] = None, session_timeout: int = 600, priority: int = 1,
              device: str = "cpu", progress: Optional[Progress] = None) -> Dict:
    """Upload model.so to a board the tracker at `tracker` (HOST:PORT) serves under `key`,
    and time `main` there with time_evaluator (one call per sample; the network is not in
    the times). Returns {"times", "threads", "remote"}."""
    import tvm
    from tvm import rpc
    from tvm.runtime import vm as _vm

    import logging
    import socket

    lib = Path(lib)
    host, port = parse_address(tracker)
    try:  # TVM's own connect retries for a minute, logging each try: ask once first
        socket.create_connection((host, port), timeout=10).close()
    except OSError as e:
        raise RemoteError(f"cannot reach the RPC tracker at {host}:{port} ({e.strerror or e})") from None
    logging.getLogger("RPCServer").setLevel(logging.ERROR)
    try:
        client = rpc.connect_tracker(host, port)
    except Exception as e:  # noqa: BLE001 - TVM raises plain RuntimeError/OSError
        raise RemoteError(f"cannot reach the RPC tracker at {host}:{port} ({_first_line(e)})") from None
    try:
        queue = client.summary().get("queue_info", {})
    except Exception as e:  # noqa: BLE001
        raise RemoteError(f"{host}:{port} does not answer as an RPC tracker ({_first_line(e)})") from None
    if key not in queue:
        have = ", ".join(sorted(queue)) or "none"
        raise RemoteError(f"the tracker at {host}:{port} has no device with key '{key}' (keys: {have})")
    try:
        sess = client.request(key, priority=priority, session_timeout=session_timeout)
    except Exception as e:  # noqa: BLE001
        raise RemoteError(f"cannot get a '{key}' session from {host}:{port} ({_first_line(e)})") from None
    try:
        sess.upload(str(lib))
        rlib = sess.load_module(lib.name)
    except Exception as e:  # noqa: BLE001
        raise RemoteError(f"the '{key}' device cannot load {lib.name} ({_first_line(e)}); "
                          "was the artifact compiled for its architecture?") from None
    dev = sess.cuda(0) if device == "cuda" else sess.cpu()
    if device == "cuda" and not dev.exist:
        raise RemoteError(f"the '{key}' device has no CUDA GPU")
    if threads is not None:
        sess.get_function("runtime.config_threadpool")(0, int(threads))
    used = int(sess.get_function("runtime.NumThreads")())  # host-side threads (CPU kernels)
    vm = _vm.VirtualMachine(rlib, dev)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
    vm.save_function("main", "qcc_bench_main", *args)  # bound arguments: no per-call transfer
    if warmup > 0:
        vm.time_evaluator("qcc_bench_main", dev, number=warmup, repeat=1)()
    times: List[float] = []
    chunk = max(1, repeat // 10)
    while len(times) < repeat:
        n = min(chunk, repeat - len(times))
        res = vm.time_evaluator("qcc_bench_main", dev, number=1, repeat=n)()
        times += [float(t) for t in res.results]
        if progress is not None:
            progress(warmup + len(times), warmup + repeat)
    return {"times": times, "threads": used, "remote": {"tracker": f"{host}:{port}", "key": key}}


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


# --- an emulated board ----------------------------------------------------------------------------

# TVM's `python -m tvm.exec.rpc_server` starts its server through a PopenWorker, which needs
# cloudpickle (not in the guest runtime); the server state it would create there is enough.
_GUEST_SERVER = r'''
import sys
from tvm.rpc.server import PopenRPCServerState

host, port, port_end, tracker, key = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
thost, tport = tracker.rsplit(":", 1)
state = PopenRPCServerState(host, port, port_end, tracker_addr=(thost, int(tport)), key=key, silent=True)
print("serving on %s:%d as %s" % (host, state.port, key), flush=True)
state.thread.join()
'''


def emulated_server_command(cpu: str, tracker: str, key: str, *, host: str = "127.0.0.1", port: int = 9090,
                            port_end: int = 9199, threads: Optional[int] = None, log=None):
    """(argv, env) that start a TVM RPC server under qemu-aarch64 -cpu `cpu`, registered at
    `tracker` as `key`: a stand-in for an aarch64 board (its times are the emulator's)."""
    from . import emulate

    parse_address(tracker, "tracker")
    rt = emulate.ensure_runtime(log)
    script = rt.path / "rpc_server.py"
    if not script.is_file() or script.read_text() != _GUEST_SERVER:
        script.write_text(_GUEST_SERVER)
    env = {**rt.env(), "TVM_NUM_THREADS": str(threads or os.cpu_count() or 1)}
    return rt.command(cpu, str(script), host, str(port), str(port_end), tracker, key), env
