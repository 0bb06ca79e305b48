"""`qcc bench` and `--threads`: what a user measures with, and what it says when it cannot.

- the Python API and the CLI on a host artifact: percentiles in order, peak memory, JSON, exit codes
- `compile --threads N` recorded in manifest.json and used by run/bench/qcc.load unless overridden;
  the thread pool moves both ways within one process
- `--rpc`: a TVM RPC tracker and server on loopback (subprocesses), the artifact uploaded and timed there
- slow: an ARM artifact under qemu (emulated, labelled so), and an aarch64 RPC server under qemu
  standing in for a board
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import qcc
from qcc.bench import BenchError, bench, format_result

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples/tiny_cnn.onnx"
SHAPE = {"input": (1, 3, 32, 32)}


def cli(*args, env=None, timeout=300):
    p = subprocess.run([sys.executable, "-m", "qcc.cli", *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=timeout)
    assert "Traceback" not in p.stderr, p.stderr
    return p


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny"
    qcc.compile(TINY, out, opt_level="O2", calib=str(ROOT / "examples/tiny_cnn_calib.npz"), input_shapes=SHAPE)
    return out


@pytest.fixture(scope="module")
def tiny_1thread(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny1"
    p = cli("compile", TINY, "--input-shape", "input=1x3x32x32", "-O0", "-o", out, "-q", "--threads", "1")
    assert p.returncode == 0, p.stderr
    return out


def _check_result(r, repeat):
    lat = r["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert r["repeat"] == repeat and r["threads"]["used"] >= 1
    assert r["throughput"]["inferences_per_s"] == pytest.approx(1e3 / lat["mean"])


def test_bench_api_host(tiny):
    r = bench(tiny, warmup=2, repeat=30)
    _check_result(r, 30)
    assert r["where"] == "host" and r["timing"] == "device" and r["inputs"].startswith("random")
    m = r["memory"]
    assert m["peak_delta_bytes"] >= 0 and m["peak_bytes"] >= m["rss_before_bytes"]
    assert "VmHWM" in m["method"] and "model.so" in m["covers"]
    text = format_result(r)
    assert "p50" in text and "inferences/s" in text and "peak memory" in text and len(text.splitlines()) <= 6


def test_bench_given_inputs_and_errors(tiny):
    x = np.load(ROOT / "examples/tiny_cnn_input.npz")["input"]
    r = bench(tiny, inputs={"input": x}, warmup=0, repeat=5)
    _check_result(r, 5)
    with pytest.raises(BenchError, match="repeat must be"):
        bench(tiny, repeat=0)
    with pytest.raises(qcc.artifact.ArtifactError, match="has shape"):
        bench(tiny, inputs={"input": x[:, :2]})
    with pytest.raises(BenchError, match="--rpc needs --rpc-key"):
        bench(tiny, rpc="127.0.0.1:9")


def test_bench_cli_text_and_json(tiny):
    p = cli("bench", tiny, "--repeat", "20", "--warmup", "2")
    assert p.returncode == 0, p.stderr
    assert "p50" in p.stdout and "inferences/s" in p.stdout and p.stderr == ""  # no progress off a terminal
    p = cli("bench", tiny, "--repeat", "20", "--json", "--threads", "1",
            "--inputs", ROOT / "examples/tiny_cnn_input.npz")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    _check_result(r, 20)
    assert r["threads"] == {"requested": 1, "used": 1} and r["inputs"].endswith("tiny_cnn_input.npz")
    assert cli("bench", tiny, "--repeat", "3", "-q").stdout == ""
    p = cli("bench", tiny, "--repeat", "40", "-v")
    assert "timing: 50/50 runs" in p.stderr


@pytest.mark.parametrize("args,code,msg", [
    (["nosuch"], 1, "not a qcc artifact"),
    (["{tiny}", "--repeat", "0"], 2, "expected a positive integer"),
    (["{tiny}", "--warmup", "x"], 2, "expected an integer"),
    (["{tiny}", "--threads", "0"], 2, "expected a positive integer"),
    (["{tiny}", "--inputs", "nosuch.npz"], 1, "cannot read inputs"),
    (["{tiny}", "--inputs", "examples/tiny_cnn_calib.npz"], 1, "the model expects [1, 3, 32, 32]"),
    (["{tiny}", "--rpc", "127.0.0.1:1"], 1, "--rpc needs --rpc-key"),
    (["{tiny}", "--rpc-key", "k"], 1, "--rpc-key needs --rpc"),
    (["{tiny}", "--rpc", "nohost", "--rpc-key", "k"], 1, "expected HOST:PORT"),
    (["{tiny}", "--rpc", "127.0.0.1:1", "--rpc-key", "k"], 1, "cannot reach the RPC tracker"),
])
def test_bench_cli_errors(tiny, args, code, msg):
    p = cli("bench", *[a.format(tiny=tiny) for a in args], timeout=120)
    assert p.returncode == code, p.stderr
    assert msg in p.stderr
    if code == 1:
        assert p.stderr.count("\n") == 1, p.stderr


# --- threads --------------------------------------------------------------------------------

def test_compile_threads_recorded_and_used(tiny_1thread, tiny):
    m = json.loads((tiny_1thread / "manifest.json").read_text())
    assert m["execution"] == {"threads": 1}
    assert m["target"]["tvm"]["num-cores"] == 1  # the TVM target the kernels were built for says so too
    assert json.loads((tiny / "manifest.json").read_text())["execution"] == {"threads": None}
    assert qcc.load(tiny_1thread).threads == 1 and qcc.load(tiny_1thread, threads=2).threads == 2
    assert qcc.load(tiny).threads is None
    r = json.loads(cli("bench", tiny_1thread, "--repeat", "5", "--json").stdout)
    assert r["threads"] == {"requested": 1, "used": 1}
    if (os.cpu_count() or 1) >= 2:
        r = json.loads(cli("bench", tiny_1thread, "--repeat", "5", "--json", "--threads", "2").stdout)
        assert r["threads"] == {"requested": 2, "used": 2}
    p = cli("run", tiny_1thread, "--input", ROOT / "examples/tiny_cnn_input.npz", "--threads", "2")
    assert p.returncode == 0 and "probs" in p.stdout, p.stderr


_POOL_SCRIPT = """
from qcc.targets import configure_threads
print(configure_threads(1), configure_threads(2), configure_threads(), configure_threads(1))
"""


def test_thread_pool_moves_both_ways():
    """TVM sizes its pool once; qcc makes it big enough that a later, larger count still works."""
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", _POOL_SCRIPT], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    cores = os.cpu_count() or 1
    assert [int(v) for v in out] == [1, min(2, cores), cores, 1]


def test_profile_kernels(tiny):
    from qcc.targets import load

    runner = load(tiny / "model.so")
    prof = runner.profile({"input": np.zeros((1, 3, 32, 32), np.float32)}, repeat=3)
    assert prof and all(p["seconds"] > 0 and not p["kernel"].startswith("vm.builtin") for p in prof)
    assert any("conv" in p["kernel"] for p in prof)
    assert prof[-1]["shapes"][-1] == [1, 10]  # destination-passing: the output is the last argument


def test_kernel_times(tiny, capsys):
    """Each kernel timed alone on the arguments it got in one run: the same calls as the
    VM instrument sees, every time positive; benchmarks/kernels.py prints them."""
    import importlib.util

    from qcc.targets import load

    runner = load(tiny / "model.so")
    feeds = {"input": np.zeros((1, 3, 32, 32), np.float32)}
    kt = runner.kernel_times(feeds, number=3, repeat=2)
    assert [k["kernel"] for k in kt] == [p["kernel"] for p in runner.profile(feeds, repeat=1)]
    assert all(k["seconds"] > 0 for k in kt) and kt[-1]["shapes"][-1] == [1, 10]
    spec = importlib.util.spec_from_file_location("qcc_benchmarks_kernels", ROOT / "benchmarks/kernels.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(tiny), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "ms in kernels" in out and len([ln for ln in out.splitlines() if "%" in ln]) == 3
    assert "ns/out" in out  # time per output element: what finds a kernel doing redundant work


# --- RPC on loopback ----------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc, seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


def _wait_key(port: int, key: str, seconds: float = 120) -> None:
    from tvm import rpc

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            if key in rpc.connect_tracker("127.0.0.1", port).summary().get("queue_info", {}):
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no server registered '{key}' at the tracker")


@pytest.fixture(scope="module")
def tracker():
    """`python -m tvm.exec.rpc_tracker` on loopback (needs tornado); yields its port."""
    pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                             str(port), "--port-end", str(port + 1), "--silent"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_port(port, proc)
        yield port
    finally:
        _stop(proc)


def _stop(proc) -> None:
    """End a tracker/server and the worker process it forked (its own process group)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _start_server(cmd, env, tracker_port, key):
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _wait_key(tracker_port, key)
    except BaseException:
        _stop(proc)
        err = proc.stderr.read() if proc.stderr else ""
        pytest.fail(f"RPC server '{key}' did not come up: {err.strip().splitlines()[-1:] if err else ''}")
    return proc


def _server_args(tracker_port, key):
    port = _free_port()
    return ["-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port), "--port-end",
            str(port + 50), "--tracker", f"127.0.0.1:{tracker_port}", "--key", key, "--silent"]


@pytest.fixture(scope="module")
def x86_server(tracker):
    env = {**os.environ, "TVM_NUM_THREADS": str(os.cpu_count() or 1)}
    proc = _start_server([sys.executable, *_server_args(tracker, "qcc-x86")], env, tracker, "qcc-x86")
    yield "qcc-x86"
    _stop(proc)


def test_bench_over_rpc(tiny, tracker, x86_server):
    p = cli("bench", tiny, "--rpc", f"127.0.0.1:{tracker}", "--rpc-key", x86_server, "--repeat", "30",
            "--threads", "1", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    _check_result(r, 30)
    assert r["where"] == f"rpc 127.0.0.1:{tracker} key qcc-x86" and r["timing"] == "remote device"
    assert r["threads"]["used"] == 1 and r["memory"] is None
    text = cli("bench", tiny, "--rpc", f"127.0.0.1:{tracker}", "--rpc-key", x86_server, "--repeat", "5").stdout
    assert "on rpc 127.0.0.1" in text and "not measured over RPC" in text
    p = cli("bench", tiny, "--rpc", f"127.0.0.1:{tracker}", "--rpc-key", "nokey", "--repeat", "5")
    assert p.returncode == 1 and "no device with key 'nokey'" in p.stderr and "qcc-x86" in p.stderr


# --- ARM: under qemu, and qemu standing in for a board ----------------------------------------------

_missing = [t for t in ("qemu-aarch64", "aarch64-linux-gnu-g++") if not shutil.which(t)]
needs_arm_tools = pytest.mark.skipif(bool(_missing), reason=f"{' and '.join(_missing)} not installed")


@pytest.fixture(scope="module")
def tiny_arm(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny_arm"
    qcc.compile(TINY, out, target="arm-a72", opt_level="O0", input_shapes=SHAPE)
    return out


@pytest.mark.slow
@needs_arm_tools
def test_bench_arm_emulated(tiny_arm):
    p = cli("bench", tiny_arm, "--repeat", "10", "--warmup", "1", "--threads", "1", "--json", timeout=900)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    _check_result(r, 10)
    assert r["timing"] == "emulated — not device timing" and r["where"] == "qemu-aarch64 -cpu cortex-a72"
    assert r["threads"]["used"] == 1 and "qemu" in r["memory"]["covers"]
    # the terminal form of the same result (a second qemu run would cost ~25 s for it)
    from qcc.bench import format_result

    assert "(emulated — not device timing)" in format_result(r).splitlines()[0]


@pytest.mark.slow
@needs_arm_tools
def test_bench_arm_board_over_rpc(tiny_arm, tracker):
    """An aarch64 TVM RPC server under qemu-aarch64 -cpu cortex-a72, registered at the tracker like a
    board: the artifact is uploaded to it, loaded by the aarch64 runtime and timed there."""
    from qcc.targets.remote import emulated_server_command

    port = _free_port()
    cmd, env = emulated_server_command("cortex-a72", f"127.0.0.1:{tracker}", "qcc-a72", port=port,
                                       port_end=port + 50, threads=1)
    proc = _start_server(cmd, env, tracker, "qcc-a72")
    try:
        p = cli("bench", tiny_arm, "--rpc", f"127.0.0.1:{tracker}", "--rpc-key", "qcc-a72", "--repeat", "5",
                "--warmup", "1", "--json", timeout=600)
        assert p.returncode == 0, p.stderr
        r = json.loads(p.stdout)
        _check_result(r, 5)
        assert r["target"] == "arm-a72" and r["where"].endswith("key qcc-a72")
    finally:
        _stop(proc)
