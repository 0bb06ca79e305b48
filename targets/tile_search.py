"""-O3's tile search: each large int8 conv's register tile measured on this machine.

x86_int8.py picks a conv's register tile (output channels x vectors of pixels) with a
cost model. Meta-schedule cannot revisit that choice: the tile is baked into the packed
weights and the kernel's loop nest when the graph is lowered, before any kernel pass
runs. And the cost model misses by a lot where registers run short: on Zen 3 (AVX2, 16
vector registers) the best tile of PP-OCR rec's 1x1 convs ranged over 4x3, 2x4 and 6x2
by shape, and choosing per conv would have taken the convs' kernels 19.4 -> 16.4 ms on
one thread, 11.0 -> 9.8 on two (each kernel timed alone), where any one tile for all of
them stayed within 8% of the cost model's.

So at -O3, before the build, every distinct int8 conv among the largest (those that
together hold MAC_SHARE of the graph's qconv and qmatmul MACs, at most MAX_CONVS of them;
int8 matmuls by a constant matrix count as convs here, their kernel has a tile too) is
compiled alone with each of its plan's tile_space, the candidates are timed in
interleaved rounds on the build's thread count, and the fastest is kept when it beats
the cost model's tile by MIN_GAIN. The choices go into the tuning database under the
conv's geometry (x86_int8.tile_key), so a rebuild measures nothing, and the build
applies them (x86_int8.tile_choices). The tile changes the schedule, never a sum's
value: every tile gives the same bits.
"""
from __future__ import annotations

import hashlib
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from qcc.analysis import macs
from qcc.ir.graph import Graph, Node

from . import x86_int8, x86_winograd
from .lower import tvm_dtype

MAC_SHARE = 0.9   # the convs searched hold this share of the qconv / qmatmul MACs ...
MAX_CONVS = 16    # ... but no more than this many distinct convs
MIN_GAIN = 0.03   # a measured tile must beat the cost model's by this much to replace it
ROUNDS = 5        # interleaved timing rounds (the minimum of each candidate is kept)


def _plan(node: Node, isa):
    """The int8 kernel's plan (ConvPlan, MatmulPlan) for a qconv or qmatmul node by constant
    weights, or None when that kernel does not take it."""
    if node.op not in ("qconv", "qmatmul") or len(node.inputs) < 2 or not node.inputs[1].is_const \
            or node.attrs.get("acc") == "i64":
        return None
    x, w = node.inputs[0], node.inputs[1]
    if node.op == "qmatmul":
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if w.data.ndim != 2 or (bias is not None and (not bias.is_const or bias.data.ndim > 1)):
            return None
        return x86_int8.matmul_plan(tuple(x.type.shape), tvm_dtype(x.type.dtype), w.data.shape,
                                    int(node.attrs.get("a_zero_point", 0)), isa)
    if len(x.type.shape) != 4 or w.type.dtype != "i8":
        return None
    if x86_winograd.wino_plan(tuple(x.type.shape), tvm_dtype(x.type.dtype), w.data.shape, node.attrs, isa):
        return None  # built as Winograd: no register tile of x86_int8's to choose
    return x86_int8.conv_plan(tuple(x.type.shape), tvm_dtype(x.type.dtype), w.data.shape, node.attrs, isa)


_STOP = frozenset({"conv", "qconv", "gemm", "matmul", "qmatmul", "conv_transpose"})  # the next layer


def _epilogue(graph: Graph, node: Node) -> List[Node]:
    """The nodes after the conv that its kernel computes too: the single-reader chain of ops
    that keep the conv's output shape (requantize, activations, quantize, a residual add),
    as FuseOps puts them in the conv's kernel -- the tile sets how that epilogue is computed
    (per tile), so timing the conv without it chose differently (PP-OCR rec)."""
    chain, v = [], node.outputs[0]
    outs = {id(o) for o in graph.outputs}
    while id(v) not in outs and len(v.users()) == 1:
        n = v.users()[0]
        if n.op in _STOP or len(n.outputs) != 1 or tuple(n.outputs[0].type.shape) != tuple(v.type.shape):
            break
        chain.append(n)
        v = n.outputs[0]
    return chain


def _probe(graph: Graph, node: Node) -> Tuple[Graph, Dict[str, np.ndarray]]:
    """A graph of just this qconv (its weights, bias and attributes) and its epilogue, every
    non-constant input a parameter; random feeds for them."""
    g = Graph("tile_probe")
    rng = np.random.default_rng(0)
    feeds: Dict[str, np.ndarray] = {}
    mapped: Dict[int, object] = {}

    def value(v):
        if v is None:
            return None
        if id(v) not in mapped:
            if v.is_const:
                mapped[id(v)] = g.add_const(f"c{len(mapped)}", v.data)
            else:
                name = f"in{len(feeds)}"
                mapped[id(v)] = g.add_input(name, v.type)
                feeds[name] = _random(rng, v)
        return mapped[id(v)]

    last = None
    for n in [node, *_epilogue(graph, node)]:
        last = g.add_node(n.op, [value(v) for v in n.inputs], dict(n.attrs))
        mapped[id(n.outputs[0])] = last.output
    g.set_outputs([last.output])
    return g, feeds


def _random(rng, v) -> np.ndarray:
    dt = np.dtype(tvm_dtype(v.type.dtype))
    if dt.kind == "f":
        return rng.standard_normal(v.type.shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, size=v.type.shape, endpoint=True).astype(dt)


def _workload(key: str) -> str:
    return "tile-" + hashlib.sha256(key.encode()).hexdigest()[:24]


def search_tiles(graph: Graph, preset, db, *, measure: bool, threads: Optional[int] = None,
                 log: Callable[[str], None] = lambda s: None) -> Tuple[Dict[str, Tuple[int, int]], Dict]:
    """({tile_key: tile}, report) for the graph's large int8 convs: the database's records,
    and (when `measure`) new measurements for the convs it lacks. `db`: a tune.TuneDB. The
    int8 matmuls by constant matrices take part the same way (their plans have tiles too)."""
    isa = x86_int8.isa_for(preset)
    if isa is None:
        return {}, {}
    convs: Dict[str, Tuple[Node, object, int]] = {}
    total = 0
    for n in graph.nodes:
        p = _plan(n, isa)
        if p is None:
            continue
        m = macs(n)
        total += m
        key = x86_int8.tile_key(p)
        if key in convs:
            convs[key] = (convs[key][0], p, convs[key][2] + m)
        else:
            convs[key] = (n, p, m)
    chosen: Dict[str, Tuple[int, int]] = {}
    report: Dict[str, Dict] = {}
    covered = 0
    for key, (node, plan, m) in sorted(convs.items(), key=lambda kv: -kv[1][2])[:MAX_CONVS]:
        if covered >= MAC_SHARE * total:
            break
        covered += m
        rec = db.get(_workload(key))
        if rec is None and measure and len(plan.tile_space) > 1:
            log(f"tiles: measuring {len(plan.tile_space)} tiles of {node.name}")
            rec = _measure(graph, node, plan, preset, threads)
            db.put(_workload(key), rec)
        if rec is None:
            continue
        tile = tuple(rec["tile"])
        if tile != tuple(plan.tile_space[0]):
            chosen[key] = tile
        report[node.name] = {"tile": list(tile), "cost_model": list(plan.tile_space[0])}
    return chosen, report


def _measure(graph: Graph, node: Node, plan, preset, threads: Optional[int]) -> Dict:
    """Each candidate tile's kernel compiled alone and timed, interleaved; the record. A
    candidate whose output differs from the cost model's tile's in any bit is dropped (the
    tiles only reorder independent integer sums: none should)."""
    from .builder import compile_graph, runner_from_executable

    g, feeds = _probe(graph, node)
    key = x86_int8.tile_key(plan)
    runners, ref = [], None
    for tile in plan.tile_space:
        try:
            with x86_int8.tile_choices({key: tile}):
                ex = compile_graph(g, preset)
            r = runner_from_executable(ex, g, num_threads=threads)
            out = list(r.run(feeds).values())
        except Exception:  # noqa: BLE001 - a candidate TVM cannot build is just not a candidate
            if ref is None:  # the cost model's own tile did not build alone: nothing to compare with
                return {"conv": key, "tile": list(plan.tile_space[0]), "ms": {},
                        "measured": time.strftime("%Y-%m-%d")}
            runners.append(None)
            continue
        ref = out if ref is None else ref
        runners.append(r if all(np.array_equal(a, b, equal_nan=True) for a, b in zip(out, ref)) else None)
    best = [float("inf")] * len(runners)
    for _ in range(ROUNDS):
        for i, r in enumerate(runners):
            if r is not None:
                best[i] = min(best[i], r.time(feeds, number=5, repeat=2))
    default, fastest = best[0], min(range(len(best)), key=best.__getitem__)
    win = fastest if best[fastest] < (1 - MIN_GAIN) * default else 0
    return {"conv": key, "tile": list(plan.tile_space[win]),
            "ms": {f"{mr}x{nr}": round(t * 1e3, 4) for (mr, nr), t in zip(plan.tile_space, best) if t < float("inf")},
            "measured": time.strftime("%Y-%m-%d")}
