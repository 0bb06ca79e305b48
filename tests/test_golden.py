"""Golden pass tests, our FileCheck: tests/golden/<pass>/<case>.qir in, .expected.qir out.

Each file starts with `// passes: PIPELINE`; cases are split by `// -----`; the
expected file holds the printed output of every case, split the same way.
`pytest --update-goldens` rewrites the expected files (then read the diff).
Every case is also checked numerically: the interpreter gives the same outputs
before and after the pipeline (within float rounding). `// calib-grid: A STEP LEVELS` gives
the pipeline calibration data (4 batches) and the check its feeds on that grid: every float
input holds A + k * STEP, k a random integer in [0, LEVELS) -- 8-bit data, as images are.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from qcc.ir.parser import parse
from qcc.ir.printer import print_graph
from qcc.pass_manager import PassManager

GOLDEN = Path(__file__).parent / "golden"
SEP = "// -----"
CASES = sorted(p for p in GOLDEN.rglob("*.qir") if not p.name.endswith(".expected.qir"))


def split_cases(text: str):
    return [c.strip() + "\n" for c in text.split(SEP) if c.strip()]


def pipeline_of(path: Path) -> str:
    m = re.search(r"^// passes:(.*)$", path.read_text(), re.M)
    assert m, f"{path} has no '// passes:' header"
    return m.group(1).strip()


def tolerance_of(path: Path) -> float:
    """`// tolerance: T`: max abs error allowed, relative to each output's range (quantizing
    passes change numerics by design); default: float rounding only."""
    m = re.search(r"^// tolerance:(.*)$", path.read_text(), re.M)
    return float(m.group(1)) if m else 0.0


def calib_grid_of(path: Path):
    m = re.search(r"^// calib-grid:(.*)$", path.read_text(), re.M)
    if not m:
        return None
    a, step, levels = m.group(1).split()
    return float(a), float(step), int(levels)


def random_feeds(g, seed=0, grid=None):
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in g.inputs:
        if v.dtype.startswith("f") and grid is not None:
            a, step, levels = grid
            feeds[v.name] = (a + step * rng.integers(0, levels, v.shape)).astype(v.type.np_dtype)
        elif v.dtype.startswith("f"):
            feeds[v.name] = rng.standard_normal(v.shape).astype(v.type.np_dtype)
        else:
            lo, hi = (0, 255) if v.dtype == "u8" else (-100, 100)
            feeds[v.name] = rng.integers(lo, hi, v.shape).astype(v.type.np_dtype)
    return feeds


@pytest.mark.parametrize("path", CASES, ids=lambda p: str(p.relative_to(GOLDEN)))
def test_golden(path: Path, update_goldens):
    from qcc.interp import run
    from qcc.pass_manager import PassContext

    pipeline = pipeline_of(path)
    grid = calib_grid_of(path)
    outputs = []
    for i, case in enumerate(split_cases(path.read_text())):
        g = parse(case, f"{path.name}#{i}")
        before = run(g, feeds := random_feeds(g, grid=grid))
        calib = None if grid is None else [random_feeds(g, seed, grid) for seed in range(1, 5)]
        PassManager(pipeline, verify_each=True).run(g, PassContext(options={"calib": calib}))
        after = run(g, feeds)
        assert len(before) == len(after)
        after = dict(zip(before, after.values()))  # outputs are positional
        tol = tolerance_of(path)
        for k in before:
            if tol:
                span = float(before[k].max() - before[k].min()) or 1.0
                err = float(np.abs(after[k].astype(np.float64) - before[k]).max())
                assert err <= tol * span, f"case {i} output {k}: error {err:.4g} > {tol} x range {span:.4g}"
            else:
                np.testing.assert_allclose(after[k], before[k], rtol=1e-5, atol=1e-6)
        outputs.append(print_graph(g, inline_all=True))
    got = f"\n{SEP}\n\n".join(outputs)
    expected_path = path.with_suffix(".expected.qir")
    if update_goldens or not expected_path.exists():
        expected_path.write_text(got)
        if not update_goldens:
            pytest.fail(f"wrote missing {expected_path.name}; read it and commit it")
    assert got == expected_path.read_text()
    # every expected output is itself valid, round-tripping IR
    for case in split_cases(expected_path.read_text()):
        assert print_graph(parse(case), inline_all=True) == case
