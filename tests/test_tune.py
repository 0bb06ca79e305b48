"""`-O3` kernel tuning (targets/tune.py): a tiny budget writes the database, a rebuild reuses
it without measuring and gives the same bytes, another target's records are not read, and
tuned kernels stay bit-exact with the reference interpreter."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

from qcc.driver import CompileError, CompileOptions, compile_model  # noqa: E402
from qcc.targets import tune  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples/tiny_cnn.onnx"
CALIB = ROOT / "examples/tiny_cnn_calib.npz"
SHAPES = {"input": (1, 3, 32, 32)}


def _opts(level="O3", **kw):
    return CompileOptions(target="host", opt_level=level, input_shapes=SHAPES, calib=str(CALIB), **kw)


def _compile(out, opts):
    log = []
    t0 = time.perf_counter()
    compile_model(TINY, out, opts, log=log.append)
    return time.perf_counter() - t0, log


def _files(out):
    return {p.name: p.read_bytes() for p in sorted(Path(out).iterdir())}


def _manifest(out):
    return json.loads((Path(out) / "manifest.json").read_text())


# --- options and keys ---------------------------------------------------------------------

@pytest.mark.parametrize("text,want", [("64", tune.Budget(trials=64)), ("0", tune.Budget(trials=0)),
                                       ("10m", tune.Budget(seconds=600.0)), ("90s", tune.Budget(seconds=90.0)),
                                       ("1.5h", tune.Budget(seconds=5400.0))])
def test_parse_budget(text, want):
    assert tune.parse_budget(text) == want


@pytest.mark.parametrize("text", ["", "ten", "-1", "1.5", "10x"])
def test_parse_budget_rejects(text):
    with pytest.raises(tune.TuneError, match="--tune-budget"):
        tune.parse_budget(text)


def test_db_key_depends_on_target_and_versions(tmp_path, monkeypatch):
    host = {"kind": "llvm", "mcpu": "znver4", "mtriple": "x86_64-linux-gnu", "num-cores": 2}
    a = tune.TuneDB(tmp_path, host)
    assert a.dir == tune.TuneDB(tmp_path, dict(host)).dir
    assert a.dir != tune.TuneDB(tmp_path, {**host, "mcpu": "skylake-avx512"}).dir
    monkeypatch.setattr(tune, "_versions", lambda: {"tvm": "0.28.0", "tvm_ffi": "0.1.14.post1"})
    assert a.dir != tune.TuneDB(tmp_path, host).dir


def test_default_db_dir_follows_qcc_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("QCC_CACHE_DIR", str(tmp_path))
    assert tune.default_db_dir() == tmp_path / "tune-db"


def test_bad_budget_is_one_line_exit_1(tmp_path):
    p = subprocess.run([sys.executable, "-m", "qcc.cli", "compile", str(TINY), "-O3", "--tune-budget", "lots",
                        "-o", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1 and "--tune-budget" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()


# --- tune, rebuild, reuse -------------------------------------------------------------------

@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """-O2, then -O3 with 8 trials into a fresh database (every candidate that is bit-exact
    is allowed to win, so the tuned-schedule path is taken), then -O3 again from it."""
    tmp = tmp_path_factory.mktemp("tune")
    db = tmp / "db"
    t_o2, _ = _compile(tmp / "o2", _opts("O2"))
    mp = pytest.MonkeyPatch()
    mp.setattr(tune, "MIN_TRIALS", 8)  # one kernel, 8 trials: quick
    try:
        with pytest.MonkeyPatch.context() as win:
            win.setattr(tune, "MIN_GAIN", -1e9)
            t_cold, log_cold = _compile(tmp / "cold", _opts(tune_budget="8", tune_db=str(db)))
        t_warm, log_warm = _compile(tmp / "warm", _opts(tune_budget="8", tune_db=str(db)))
    finally:
        mp.undo()
    return {"tmp": tmp, "db": db, "t_o2": t_o2, "t_cold": t_cold, "t_warm": t_warm,
            "log_cold": log_cold, "log_warm": log_warm}


@pytest.mark.slow
def test_tuning_writes_the_database(tuned):
    records = [json.loads(p.read_text()) for p in tuned["db"].glob("*/*.json")
               if p.name != "key.json" and p.parent.name != "recipes"]  # recipes/: -O3's recipe choices
    assert records and all(r["trials"] >= 8 for r in records)
    assert any(r["winner"] == "tuned" and r["trace"] for r in records)
    assert any("tuning: kernel 1/" in m for m in tuned["log_cold"])
    m = _manifest(tuned["tmp"] / "cold")["tuning"]
    assert m["tuned"] >= 1 and m["kernels"] == m["tuned"] + m["rules"] + m["no_record"] + m["failed"]
    assert "tuning" not in _manifest(tuned["tmp"] / "o2")


@pytest.mark.slow
def test_rebuild_reuses_the_database_without_measuring(tuned, tmp_path):
    assert not any("tuning: kernel" in m or "measured" in m for m in tuned["log_warm"])
    assert _files(tuned["tmp"] / "warm") == _files(tuned["tmp"] / "cold")  # byte-identical artifact
    t_apply, log = _compile(tmp_path / "apply", _opts(tune_budget="0", tune_db=str(tuned["db"])))
    assert _files(tmp_path / "apply")["model.so"] == _files(tuned["tmp"] / "cold")["model.so"]
    # replaying traces costs about nothing: the warm build is close to the untuned one
    # (generous bound here: the cores are shared; benchmarks/run.py measures it properly)
    assert tuned["t_warm"] < 1.5 * tuned["t_o2"] + 2.0, (tuned["t_warm"], tuned["t_o2"])


@pytest.mark.slow
def test_tuned_kernels_are_bit_exact(tuned, tmp_path):
    """The tuned artifact computes exactly what the untuned one (same graph, qcc's own
    schedules) computes, and what the reference interpreter computes up to the float
    rounding of the final softmax (TVM's exp is not numpy's)."""
    import qcc
    from qcc.interp import run as interp_run
    from qcc.ir.parser import load as load_qir

    cold = tuned["tmp"] / "cold"
    _compile(tmp_path / "untuned", _opts(tune_budget="0", tune_db=str(tmp_path / "empty-db")))
    assert _files(tmp_path / "untuned")["model.qir"] == _files(cold)["model.qir"]
    assert _files(tmp_path / "untuned")["model.so"] != _files(cold)["model.so"]  # a tuned kernel is in
    graph = load_qir(cold / "model.qir")
    tuned_mod, plain_mod = qcc.load(cold), qcc.load(tmp_path / "untuned")
    rng = np.random.default_rng(1)
    for _ in range(4):
        x = {"input": rng.normal(0, 1, SHAPES["input"]).astype(np.float32)}
        got, plain, ref = tuned_mod.run(x), plain_mod.run(x), interp_run(graph, x)
        for k in ref:
            np.testing.assert_array_equal(got[k], plain[k])
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_another_targets_database_is_not_used(tuned):
    from qcc import targets
    from qcc.ir.parser import load as load_qir
    from qcc.targets.tune import Budget, TuningPass

    preset = targets.get_target("host")
    other = preset.with_cores(int(preset.target_dict().get("num-cores", 1)) + 1)
    graph = load_qir(tuned["tmp"] / "cold" / "model.qir")
    found = {}
    for name, p in (("same", preset), ("other", other)):
        strategy = targets.strategy_for(p)
        tp = TuningPass(strategy, p, budget=Budget(trials=0), db_dir=tuned["db"])
        strategy.kernel_passes = (tp.as_pass(),)
        targets.compile_graph(graph, p, strategy=strategy)
        found[name] = tp.stats
    assert found["same"].tuned >= 1
    assert found["other"].tuned == 0 and found["other"].rules == 0
    assert found["other"].no_record == found["other"].kernels


def test_tune_db_flag_without_o3_applies_nothing_by_default(tmp_path):
    """No -O3 and no --tune-budget: no database, no manifest entry."""
    assert _opts("O2").tuning_budget() is None
    assert _opts("O3").tuning_budget() == tune.DEFAULT_BUDGET
    assert _opts("O2", tune_budget="0").tuning_budget() == "0"


def test_budget_zero_on_an_empty_database_builds_untuned(tmp_path):
    with pytest.raises(CompileError):
        compile_model(TINY, tmp_path / "x", _opts(tune_budget="soon"))
    _compile(tmp_path / "o3", _opts(tune_budget="0", tune_db=str(tmp_path / "db")))
    m = _manifest(tmp_path / "o3")["tuning"]
    assert m["tuned"] == 0 and m["no_record"] == m["kernels"] > 0
    assert not (tmp_path / "db").exists()  # applying never writes


def test_a_preset_this_machine_can_run_is_timed_here_even_for_another_cpu():
    """`--target x86-avx512 -O3` on an AVX-512 machine whose LLVM cpu name is not the
    preset's mcpu tunes (the same instructions run here), and says which cpu timed it; a
    preset whose code cannot run here is applied from the database only, with the reason."""
    from qcc import targets
    from qcc.targets.presets import _host_capabilities
    from qcc.targets.tune import TuningPass

    host = targets.get_target("host")
    runnable = [p for p in map(targets.get_target, ("x86-avx2", "x86-avx512")) if p.host_runnable]
    if host.family != "x86" or not runnable:
        pytest.skip("needs an x86 host with AVX2")
    other_cpu = runnable[-1].with_target(mcpu="not-" + str(host.target_dict().get("mcpu")))
    tp = TuningPass(None, other_cpu)
    assert tp.cannot_measure() is None
    assert any("timing" in n and "not-" in n for n in tp.stats.notes)

    arm = TuningPass(None, targets.get_target("arm-a72"))
    assert "cannot be timed on this x86_64 machine" in arm.cannot_measure()
    lacking = [p for p in map(targets.get_target, ("x86-avx2", "x86-avx512")) if not p.host_runnable]
    for p in lacking:  # on an AVX2-only host: the AVX-512 preset, and the capabilities it lacks
        why = TuningPass(None, p).cannot_measure()
        assert why and all(c in why for c in p.capabilities - _host_capabilities())
