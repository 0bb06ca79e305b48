"""benchmarks/run.py matches profiled kernels to layers for its per-layer GMAC/s table; a
wrong match printed rec's 480->480 1x1 conv at 1800 GMAC/s, over the machine's peak."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench_module():
    spec = importlib.util.spec_from_file_location("qcc_benchmarks_run", ROOT / "benchmarks/run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_squeeze_excite_kernel_is_not_the_conv_whose_input_is_as_large_as_its_weights():
    run = _bench_module()
    # rec's conv2d_201: x [1,480,6,80] (230400 values), w [480,480,1,1] (230400 values)
    conv = {"name": "conv2d_201", "size": 230400, "operands": [230400, 230400]}
    # the squeeze-excite kernel before it: a 120->480 conv on a 1x1 vector, fused with the
    # multiply by the [1,480,6,80] tensor (its output has the conv's size too)
    se = {"kernel": "fused_qcc_avx2_conv13_multiply", "seconds": 7e-5,
          "shapes": [[1, 120, 1, 1], [1, 40, 60, 1, 1, 12, 2], [480], [1, 480, 1, 1], [], [1, 480, 6, 80],
                     [1, 480, 6, 80]]}
    real = {"kernel": "fused_qcc_avx2_conv14", "seconds": 1.6e-3,
            "shapes": [[1, 480, 6, 80], [1, 240, 240, 1, 1, 2, 2], [480], [1, 480, 1, 1], [], [1], [1],
                       [1, 480, 6, 80]]}
    assert not run._fits(conv, se)
    assert run._fits(conv, real)
    assert [(l["name"], k["kernel"]) for l, k in run._align([conv], [se, real])] == \
        [("conv2d_201", "fused_qcc_avx2_conv14")]


def test_peaks_bound_the_int8_gain(capsys):
    """The benchmark measures both peaks with the same loops its kernels issue and prints their
    ratio: the most int8 can gain over float on MAC-bound layers of this CPU."""
    import shutil

    import pytest

    run = _bench_module()
    flags = run._cpu_flags()
    if "fma" not in flags or "avx2" not in flags or not shutil.which("cc"):
        pytest.skip("needs AVX2, FMA and a C compiler")
    fpeak, fhow = run.float_peak(1, rounds=3, iters=200_000)
    ipeak, ihow = run.int8_peak(1, rounds=3, iters=200_000)
    assert fpeak > 1 and ipeak > 1 and "vfmadd231ps" in fhow and "measured" in ihow
    run.print_layers({}, ipeak, ihow, fpeak, fhow)
    out = capsys.readouterr().out
    assert f"int8 can be at most {ipeak / fpeak:.2f}x float's speed" in out


def test_interleaved_rounds_rotate_who_runs_after_whom():
    """A contender timed right after another inherits its state (a thread pool still awake, a
    warm cache): in a fixed order the same pair always met, a bias in the ratios."""
    run = _bench_module()
    order = []
    calls = {k: (lambda k=k: order.append(k)) for k in "abcd"}
    meds = run.interleaved_medians(calls, rounds=20)
    assert set(meds) == set("abcd")
    follows = {}
    for r in range(0, len(order), 4):
        one_round = order[r:r + 4]
        assert sorted(one_round) == list("abcd")
        for prev, cur in zip(one_round, one_round[1:]):
            follows.setdefault(cur, set()).add(prev)
    assert all(follows[k] == set("abcd") - {k} for k in "abcd")
