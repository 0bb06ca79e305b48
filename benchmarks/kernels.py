"""Where an artifact's time goes, kernel by kernel: `python benchmarks/kernels.py OUT [OUT2 ...]`.

Each kernel of the compiled model is timed on its own, warm, on the arguments it got in one
run (targets.builder.Runner.kernel_times): the sum is close to a serving loop's latency
minus the VM's dispatch. With several artifacts (an int8 and a float build of one model,
say) each gets its table, so the kernels where one loses to the other stand out.

    python benchmarks/kernels.py out/det-int8 out/det-f32 --top 15 --threads 2
    python benchmarks/kernels.py out/cls --inputs crops.npz --json

Inputs: random (the artifact's signature, seed 0) unless --inputs names a .npz. Kernel names
are TVM's fused-function names: the ops fused into the kernel, in order (qcc_vnni_conv =
the int8 VNNI conv, qcc_f32x16_conv = a float conv in the same layout, ..._dwconv =
depthwise, requantize, qcc_inexact_* = a polynomial transcendental).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def kernel_table(artifact: Path, feeds=None, threads=None, number: int = 50, repeat: int = 5):
    """{"artifact", "total_ms", "kernels": [{kernel, shapes, dtype, seconds}, ...]}."""
    from qcc.artifact import load as load_artifact
    from qcc.bench import random_inputs, read_inputs

    mod = load_artifact(artifact, threads=threads)
    if feeds is None:
        feeds = random_inputs(mod.inputs)
    elif isinstance(feeds, (str, Path)):
        feeds = read_inputs(feeds)
    times = mod._runner.kernel_times(mod.check_inputs(feeds), number=number, repeat=repeat)
    return {"artifact": str(artifact), "total_ms": 1e3 * sum(k["seconds"] for k in times), "kernels": times}


def print_table(t, top: int) -> None:
    total = t["total_ms"]
    print(f"{t['artifact']}: {len(t['kernels'])} kernel calls, {total:.3f} ms in kernels (each timed alone, warm)")
    # ns per output element: an elementwise or data-movement kernel far above ~1 is doing
    # something wrong (a reduction recomputed per element, a scalar loop)
    print(f"{'ms':>8} {'share':>6} {'ns/out':>7}  {'output':<20} {'dtype':<8} kernel")
    for k in sorted(t["kernels"], key=lambda k: -k["seconds"])[:top]:
        ms = k["seconds"] * 1e3
        out = "x".join(str(d) for d in k["shapes"][-1]) if k["shapes"] else "-"
        n = math.prod(k["shapes"][-1]) if k["shapes"] else 0
        per = f"{k['seconds'] * 1e9 / n:7.2f}" if n else f"{'-':>7}"
        print(f"{ms:8.3f} {100 * ms / total if total else 0:5.1f}% {per}  {out:<20} {k['dtype']:<8} "
              f"{k['kernel'].removeprefix('fused_')[:90]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--inputs", help=".npz with one array per model input (default: random)")
    ap.add_argument("--threads", type=int, help="CPU threads (default: the artifact's)")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="every kernel of every artifact as JSON")
    args = ap.parse_args(argv)
    tables = [kernel_table(a, args.inputs, args.threads) for a in args.artifacts]
    if args.json:
        json.dump(tables, sys.stdout, indent=1)
        print()
        return 0
    for i, t in enumerate(tables):
        if i:
            print()
        print_table(t, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
