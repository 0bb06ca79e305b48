"""-O3's recipes (qcc/driver.py, _choose_recipe): each is fitted on 3/4 of the calibration
batches and measured on the rest (every fourth batch), the most accurate is kept and run on all of them,
and the choice is stored in the tuning database, so a rebuild runs one pipeline and writes
the same bytes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

from qcc import pipelines  # noqa: E402
from qcc.driver import CompileOptions, compile_model, held_out_split, replaces  # noqa: E402
from qcc.pass_manager import PassManager  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples/tiny_cnn.onnx"
CALIB = ROOT / "examples/tiny_cnn_calib.npz"  # 16 samples: 12 batches fitted, 4 held out


def _compile(out, db, calib=str(CALIB), budget="0"):
    log = []
    opts = CompileOptions(target="host", opt_level="O3", input_shapes={"input": (1, 3, 32, 32)}, calib=calib,
                          tune_budget=budget, tune_db=str(db))
    compile_model(TINY, out, opts, log=log.append)
    return json.loads((Path(out) / "report.json").read_text()), log


def _runs(log):
    return sum(line.startswith("running ") for line in log)


def test_o3_keeps_the_recipe_closest_to_float_on_held_out_batches(tmp_path, monkeypatch):
    """Listed first, a recipe with int8 activations; second, one that stays float (-O0):
    the second is exactly float on the held-out batches, so it is the one built, and the
    report says what each measured."""
    int8 = "canonicalize,fuse,insert-observers{method=minmax},propagate-ranges,quantize,fold-requantize,canonicalize"
    monkeypatch.setitem(pipelines.RECIPES, "O3", (int8, pipelines.PIPELINES["O0"]))
    report, log = _compile(tmp_path / "a", tmp_path / "db")
    rec = report["recipes"]
    assert [c["pipeline"] for c in rec["candidates"]] == [PassManager(int8).pipeline, "canonicalize"]
    assert (rec["fitted_batches"], rec["held_out_batches"]) == (12, 4)
    sqnr = [c["held_out_output_sqnr_db"] for c in rec["candidates"]]
    assert 30 < sqnr[0] < float("inf") and sqnr[1] == float("inf"), sqnr
    per = [c["held_out_batch_sqnr_db"] for c in rec["candidates"]]  # what the sign test read
    assert len(per[0]) == 4 and all(30 < v < float("inf") for v in per[0]) and per[1] == [float("inf")] * 4, per
    assert min(per[0]) <= sqnr[0] <= max(per[0])  # the pooled figure lies among the batches'
    assert [c["int8_mac_fraction"] for c in rec["candidates"]] == [1.0, 0.0]
    assert rec["chosen"] == 1 and report["pipeline"] == "canonicalize"
    assert report["summary"]["int8_mac_fraction"] == 0.0
    assert _runs(log) == 3  # two trials, then the winner on every batch


def test_held_out_batches_are_spread_over_the_calibration_set():
    """Every fourth batch, not the tail: an ordered set (text pages, then photos) must not
    be judged on its last kind alone. A quarter held out, the rest fitted, none in both."""
    assert held_out_split(8) == ([0, 1, 2, 4, 5, 6], [3, 7])
    assert held_out_split(2) == ([0], [1]) and held_out_split(3) == ([0, 1], [2])
    for n in range(2, 40):
        fit, held = held_out_split(n)
        assert sorted(fit + held) == list(range(n)) and len(held) == max(1, n // 4)
        if n >= 8:  # both halves of the set are measured
            assert min(held) < n // 2 <= max(held)


def test_a_recipe_replaces_the_first_only_beyond_chance():
    """One-sided sign test at 10% over the held-out batches: 2 or 3 batches can never
    overturn the level's own recipe, 4 must all win, 8 need 7; ties and unmeasured
    outputs (None) count against the challenger."""
    assert not replaces([30.0, 31.0], [10.0, 11.0])  # however large, two batches prove nothing
    assert not replaces([30.0, 31.0, 32.0], [10.0, 11.0, 12.0])
    assert replaces([20.0] * 4, [19.9] * 4)
    assert not replaces([20.0, 20.0, 20.0, 19.0], [19.5] * 4)
    assert replaces([21.0] * 7 + [5.0], [20.0] * 8) and not replaces([21.0] * 6 + [5.0] * 2, [20.0] * 8)
    assert not replaces([20.0] * 4, [20.0] * 4) and not replaces([None] * 4, [1.0] * 4)
    assert replaces([float("inf")] * 4, [40.0] * 4) and replaces([1.0] * 4, [None] * 4)
    assert not replaces([], [])


def test_o3_rebuild_runs_the_stored_recipe_only(tmp_path):
    """The shipped -O3 recipes: a tuning build stores the choice in the database; a rebuild
    from it (--tune-budget 0) runs one pipeline and gives byte-identical files (report
    included). --tune-budget 0 on its own measures the recipes but stores nothing."""
    db = tmp_path / "db"
    report, log = _compile(tmp_path / "a", db, budget="2")
    assert _runs(log) == 3
    assert [c["pipeline"] for c in report["recipes"]["candidates"]] == [PassManager(t).pipeline
                                                                        for t in pipelines.RECIPES["O3"]]
    [stored] = (db / "recipes").iterdir()
    assert json.loads(stored.read_text()) == report["recipes"]
    again, log = _compile(tmp_path / "b", db)
    assert _runs(log) == 1 and any("choice stored in" in line for line in log)
    for f in sorted((tmp_path / "a").iterdir()):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name
    _, log = _compile(tmp_path / "c", tmp_path / "empty")
    assert _runs(log) == 3 and not (tmp_path / "empty").exists()


def test_o3_with_one_calibration_batch_runs_its_first_recipe(tmp_path):
    """Nothing to hold out: no trials, no record, -O3's own recipe."""
    one = tmp_path / "one.npz"
    np.savez(one, input=np.load(CALIB)["input"][:1])
    report, log = _compile(tmp_path / "a", tmp_path / "db", calib=str(one))
    assert "recipes" not in report and _runs(log) == 1
    assert report["pipeline"] == PassManager(pipelines.RECIPES["O3"][0]).pipeline
    assert not (tmp_path / "db").exists()


def test_o3_terminal_summary_names_the_recipe_kept(tmp_path):
    import re
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "qcc.cli", "compile", str(TINY), "-O3", "--calib", str(CALIB),
                        "--tune-budget", "0", "--tune-db", str(tmp_path / "db"), "-o", str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    kept = re.search(r"recipe (\d) of 2 kept \(held-out output SQNR ([\d.]+) dB, ([\d.]+) dB", p.stdout)
    assert kept and int(kept.group(1)) == report["recipes"]["chosen"] + 1, p.stdout
