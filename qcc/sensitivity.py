"""Measure how much quantizing each layer costs at the model's outputs.

A candidate precision assignment is evaluated for real: a copy of the calibrated
graph is quantized by the `quantize` and `fold-requantize` passes with just that
assignment, and run on calibration batches. Only nodes downstream of a change are
recomputed; every other activation is reused from one float run (and from the
search's current assignment), so measuring the sensitivity of all N layers costs
about N half-model runs, not N full ones.
"""
from __future__ import annotations

import hashlib
import threading
import weakref
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from .analysis import output_parts
from .batches import imap_batches, map_batches, workers
from .ir.graph import Graph
from .ir.opdef import opaque_runner


class FloatCache:
    """The float graph's activations on a few batches, and what later runs can reuse.

    Every value is numbered by what computes it -- op, attributes, the numbers of its
    operands, the bytes of a constant -- not by its name, so two graphs that agree up
    to some node share its number and its array. A run looks its values up in the
    float run and in the run `accept()` kept (the search's current assignment), so a
    candidate that changes one layer recomputes only what lies downstream of it.
    """

    def __init__(self, graph: Graph, samples: Sequence[Mapping[str, np.ndarray]]):
        from .interp import Interpreter

        self.samples = list(samples)
        self._ids: Dict[tuple, int] = {}
        self._ids_lock = threading.Lock()  # layer_sensitivity numbers candidates on parallel threads
        self._const_seen: Dict[int, tuple] = {}  # id(array) -> (weak reference, number)
        self.outputs: List[List[np.ndarray]] = []
        self.parts = output_parts(graph)  # each output's concatenated parts, measured too
        keys = self.numbers(graph)
        self.memos: List[List[Dict[int, np.ndarray]]] = [[] for _ in self.samples]
        self.last: Optional[List[Dict[int, np.ndarray]]] = None

        def run(feeds):
            it = Interpreter(graph, keep=True)
            outs = it.run(feeds)
            return {keys[id(v)]: a for v, a in it.env.items()}, list(outs.values())

        for i, (memo, outs) in enumerate(map_batches(run, self.samples)):
            self.memos[i].append(memo)
            self.outputs.append(outs)

    def numbers(self, g: Graph) -> Dict[int, int]:
        """{id(value): its number} for every input and node result of `g`."""
        num: Dict[int, int] = {}
        for v in g.inputs:
            num[id(v)] = self._intern(("input", v.name))

        def of(v):
            if v is None:
                return -1
            if v.is_const:
                return self._const_number(v.data)
            return num[id(v)]

        for n in g.nodes:
            if n.op == "observe" and not n.attrs.get("scale"):
                # an identity: the calibrated graph's float layers read their inputs through
                # observers, a quantized copy's float layers read them directly; both must
                # number alike, or no candidate reuses anything of the float run
                num[id(n.outputs[0])] = of(n.inputs[0])
                continue
            key = (n.op, _freeze(n.attrs), tuple(of(v) for v in n.inputs))
            for k, o in enumerate(n.outputs):
                num[id(o)] = self._intern((key, k))
        return num

    def _const_number(self, data: np.ndarray) -> int:
        """A constant's number, from its bytes; hashed once per array (graph copies share
        their constants' read-only arrays, so each candidate would hash every weight again)."""
        seen = self._const_seen.get(id(data))
        if seen is not None and seen[0]() is data:
            return seen[1]
        a = np.ascontiguousarray(data)
        k = self._intern(("const", a.shape, a.dtype.str, hashlib.blake2b(a.tobytes(), digest_size=16).digest()))
        try:
            self._const_seen[id(data)] = (weakref.ref(data), k)
        except TypeError:  # not weak-referenceable: hash it every time
            pass
        return k

    def _intern(self, key) -> int:
        with self._ids_lock:  # two threads must not hand out the same new number
            return self._ids.setdefault(key, len(self._ids))

    def accept(self) -> None:
        """Keep the last `output_sqnr` run's arrays for later runs to reuse (one kept at a time)."""
        if self.last is not None:
            for i, memo in enumerate(self.last):
                del self.memos[i][1:]
                self.memos[i].append(memo)
            self.last = None


def activation_bytes(g: Graph) -> int:
    """Bytes of every value one run of `g` computes (what FloatCache keeps per batch); an
    observer hands its input on unchanged, so its output is not counted again."""
    return sum(o.type.nbytes for n in g.nodes if n.op != "observe" for o in n.outputs if o.type is not None)


def release_memory() -> None:
    """Collect garbage and return the C heap's free memory to the system (glibc's
    malloc_trim; elsewhere only the collection): freed numpy arrays of a few hundred kB
    stay in the process's heap otherwise, and count in its resident size."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _freeze(v):
    """Attributes as a hashable key."""
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, np.ndarray):
        return ("array", v.shape, v.dtype.str, v.tobytes())
    try:
        hash(v)
        return v
    except TypeError:
        return repr(v)


def run_reusing(g: Graph, cache: FloatCache, i: int, numbers: Optional[Dict[int, int]] = None,
                store: Optional[Dict[int, np.ndarray]] = None) -> List[np.ndarray]:
    """Outputs of `g` on batch i, computing only the values no cached run has (into `store`)."""
    num = numbers if numbers is not None else cache.numbers(g)
    memos = cache.memos[i]
    env: Dict[int, np.ndarray] = {}

    def cached(key):
        for m in memos:
            a = m.get(key)
            if a is not None:
                return a
        return None

    def read(v):
        return None if v is None else (v.data if v.is_const else env[id(v)])

    for v in g.inputs:
        env[id(v)] = cached(num[id(v)])
    for n in g.nodes:
        hits = [cached(num[id(o)]) for o in n.outputs]
        if all(a is not None for a in hits):
            for o, a in zip(n.outputs, hits):
                env[id(o)] = a
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
            if store is not None:
                store[num[id(o)]] = env[id(o)]
    return [read(v) for v in g.outputs]


def output_sqnr(cache: FloatCache, g: Graph, keep: bool = False, parallel: bool = True) -> float:
    """The worst output's SQNR (dB) of `g` against float over the cached batches (and of
    each part of a concatenated output, analysis.output_parts); with `keep`, its arrays
    stay as `cache.last` for `cache.accept()`. The batches run side by side unless not
    `parallel` (the caller already runs candidates so)."""
    refs, gots = _outputs_against_float(cache, g, keep, parallel)
    worst = float("inf")
    for k in refs:
        r, o = np.concatenate([a.ravel() for a in refs[k]]), np.concatenate([a.ravel() for a in gots[k]])
        noise = float(np.mean((r - o) ** 2))
        if noise > 0:
            worst = min(worst, float(10 * np.log10(max(float(np.mean(r ** 2)), 1e-30) / noise)))
    return worst


def sample_noise(cache: FloatCache, g: Graph, keep: bool = False) -> np.ndarray:
    """Each sample's output noise against float (the rows of every output along its first
    axis), each output (and concatenated part) as a share of its mean signal power, summed:
    what a paired comparison of two candidates across samples needs, where output_sqnr
    gives one number that a few samples can set."""
    refs, gots = _outputs_against_float(cache, g, keep, True)
    per_key = []  # per output key: [per batch: each row's noise / the key's signal power]
    for k in refs:
        signal = max(float(np.mean(np.concatenate([a.ravel() for a in refs[k]]) ** 2)), 1e-30)
        per_key.append([np.mean(((r - o) ** 2).reshape(max(len(r) if r.ndim else 1, 1), -1), axis=1) / signal
                        for r, o in zip(refs[k], gots[k])])
    if not per_key:
        return np.zeros(0)
    if len({tuple(len(b) for b in batches) for batches in per_key}) > 1:
        # outputs whose first axes differ (a sequence and its final state): one unit per batch
        per_key = [[np.array([float(np.mean(b))]) for b in batches] for batches in per_key]
    return sum(np.concatenate(batches) for batches in per_key)


def _outputs_against_float(cache: FloatCache, g: Graph, keep: bool, parallel: bool):
    """{output key: [float array per batch]}, {output key: [g's array per batch]}; keys are
    each output's index and (index, part label) for its concatenated parts."""
    refs: Dict[object, List[np.ndarray]] = {}
    gots: Dict[object, List[np.ndarray]] = {}
    numbers = cache.numbers(g)
    cache.last = [{} for _ in cache.samples] if keep else None
    def run(i):
        return run_reusing(g, cache, i, numbers, cache.last[i] if keep else None)

    runs = map_batches(run, range(len(cache.samples))) if parallel else [run(i) for i in range(len(cache.samples))]
    for i, outs in enumerate(runs):
        for k, (r, o) in enumerate(zip(cache.outputs[i], outs)):
            r, o = np.asarray(r, np.float64), np.asarray(o, np.float64)
            for key, index in [(k, ())] + [((k, label), index) for label, index in cache.parts[k]]:
                refs.setdefault(key, []).append(r[index])
                gots.setdefault(key, []).append(o[index])
    return refs, gots


def quantized_copy(g: Graph, decisions: Dict[str, str], quantize_opts: Optional[Dict] = None,
                   rounded: Optional[Dict] = None) -> Graph:
    """A copy of the calibrated graph `g` quantized with the given per-layer decisions (and
    the weight roundings round-weights{defer=true} chose, `rounded`)."""
    from .pass_manager import PassContext, PassManager

    c = g.copy()
    ctx = PassContext(options={"bitwidths": decisions, "rounded_weights": rounded or {}})
    ctx.properties.add("ranged")
    opts = " ".join(f"{k}={v}" for k, v in (quantize_opts or {}).items())
    PassManager(f"quantize{{{opts}}},fold-requantize" if opts else "quantize,fold-requantize").run(c, ctx)
    return c


def layer_sensitivity(g: Graph, cache: FloatCache, layers: Sequence[str],
                      progress: Optional[Callable[[str], None]] = None, choice: str = "int8",
                      rounded: Optional[Dict] = None,
                      members: Optional[Mapping[str, Sequence[str]]] = None) -> Dict[str, float]:
    """Output SQNR (dB) when only that layer is quantized, at `choice` ("int8", "w4a8",
    "w8a16", ...; see assign-bitwidths), every other layer in float (higher = less sensitive).
    A name in `members` stands for its group of layers, all quantized together."""
    every = [n.name for n in g.nodes if n.op in ("conv", "gemm", "matmul", "conv_transpose")]
    members = members or {}

    def one(name: str, parallel: bool = True) -> float:
        chosen = set(members.get(name, [name]))
        decisions = {l: (choice if l in chosen else "float") for l in every}
        return output_sqnr(cache, quantized_copy(g, decisions, rounded=rounded), parallel=parallel)

    # Several layers: the candidates side by side, each on its batches in turn. Each one's
    # quantized copy is built in Python, serially under the GIL; one candidate's copy is
    # then built while another computes (PP-OCR det: those copies were ~4 s of idle cores
    # in a 21 s search, with the batches side by side instead).
    across = len(layers) > 1 and workers() > 1
    results = imap_batches(lambda name: one(name, parallel=False), layers, ahead=len(layers)) \
        if across else map(one, layers)  # (any may start: a result is one number)
    out = {}
    for k, (name, db) in enumerate(zip(layers, results)):
        out[name] = db
        if progress:
            progress(f"sensitivity: {k + 1}/{len(layers)} layers")
    return out
