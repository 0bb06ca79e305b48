"""Measure how much quantizing each layer costs at the model's outputs.

A candidate precision assignment is evaluated for real: a copy of the calibrated
graph is quantized by the `quantize` and `fold-requantize` passes with just that
assignment, and run on calibration batches. Only nodes downstream of a change are
recomputed; every other activation is reused from one float run, so measuring
the sensitivity of all N layers costs about N half-model runs, not N full ones.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .ir.graph import Graph
from .ir.opdef import opaque_runner


class FloatCache:
    """The float graph's activations on a few batches, by value name."""

    def __init__(self, graph: Graph, samples: Sequence[Mapping[str, np.ndarray]]):
        from .interp import Interpreter

        self.samples = list(samples)
        self.ops = {o.name: n.op for n in graph.nodes for o in n.outputs}
        self.consts = {name: _identity(c.data) for name, c in graph.constants.items()}
        self.envs: List[Dict[str, np.ndarray]] = []
        self.outputs: List[List[np.ndarray]] = []
        it = Interpreter(graph, keep=True)
        for feeds in self.samples:
            outs = it.run(feeds)
            self.envs.append({v.name: a for v, a in it.env.items()})
            self.outputs.append(list(outs.values()))


def run_reusing(g: Graph, cache: FloatCache, i: int) -> List[np.ndarray]:
    """Outputs of `g` on batch i, recomputing only what differs from the float run."""
    base = cache.envs[i]
    env: Dict[int, np.ndarray] = {}
    dirty = set()
    for v in g.inputs:
        env[id(v)] = base[v.name]

    def read(v):
        return None if v is None else (v.data if v.is_const else env[id(v)])

    for n in g.nodes:
        if _reusable(n, cache, base, dirty):
            for o in n.outputs:
                env[id(o)] = base[o.name]
            continue
        args = [read(v) for v in n.inputs]
        d = n.opdef
        if d.opaque:
            outs = opaque_runner(n.op)(n, args)
        else:
            while args and args[-1] is None:
                args.pop()
            outs = d.kernel(*args, **d.with_defaults(n.attrs))
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for o, a in zip(n.outputs, outs):
            env[id(o)] = np.asarray(a)
            dirty.add(id(o))
    return [read(v) for v in g.outputs]


def _identity(a: np.ndarray):
    """Same buffer, shape and dtype: graph copies share constant arrays through views."""
    return a.__array_interface__["data"][0], a.shape, a.dtype.str


def _reusable(n, cache: FloatCache, base, dirty) -> bool:
    """Same op, same result names, same constants and clean operands as in the float run."""
    for o in n.outputs:
        if cache.ops.get(o.name) != n.op or o.name not in base:
            return False
    for v in n.inputs:
        if v is None:
            continue
        if v.is_const:
            if cache.consts.get(v.name) != _identity(v.data):
                return False
        elif id(v) in dirty or v.name not in base:
            return False
    return True


def output_sqnr(cache: FloatCache, g: Graph) -> float:
    """The worst output's SQNR (dB) of `g` against float over the cached batches."""
    refs: Dict[int, List[np.ndarray]] = {}
    gots: Dict[int, List[np.ndarray]] = {}
    for i in range(len(cache.samples)):
        outs = run_reusing(g, cache, i)
        for k, (r, o) in enumerate(zip(cache.outputs[i], outs)):
            refs.setdefault(k, []).append(np.asarray(r, np.float64).ravel())
            gots.setdefault(k, []).append(np.asarray(o, np.float64).ravel())
    worst = float("inf")
    for k in refs:
        r, o = np.concatenate(refs[k]), np.concatenate(gots[k])
        noise = float(np.mean((r - o) ** 2))
        if noise > 0:
            worst = min(worst, float(10 * np.log10(max(float(np.mean(r ** 2)), 1e-30) / noise)))
    return worst


def quantized_copy(g: Graph, decisions: Dict[str, str], quantize_opts: Optional[Dict] = None) -> Graph:
    """A copy of the calibrated graph `g` quantized with the given per-layer decisions."""
    from .pass_manager import PassContext, PassManager

    c = g.copy()
    ctx = PassContext(options={"bitwidths": decisions})
    ctx.properties.add("ranged")
    opts = " ".join(f"{k}={v}" for k, v in (quantize_opts or {}).items())
    PassManager(f"quantize{{{opts}}},fold-requantize" if opts else "quantize,fold-requantize").run(c, ctx)
    return c


def layer_sensitivity(g: Graph, cache: FloatCache, layers: Sequence[str],
                      progress: Optional[Callable[[str], None]] = None, choice: str = "int8") -> Dict[str, float]:
    """Output SQNR (dB) when only that layer is quantized, at `choice` ("int8", "w4a8",
    "w8a16", ...; see assign-bitwidths), every other layer in float (higher = less sensitive)."""
    out = {}
    every = [n.name for n in g.nodes if n.op in ("conv", "gemm", "matmul", "conv_transpose")]
    for k, name in enumerate(layers):
        decisions = {l: (choice if l == name else "float") for l in every}
        out[name] = output_sqnr(cache, quantized_copy(g, decisions))
        if progress:
            progress(f"sensitivity: {k + 1}/{len(layers)} layers")
    return out
