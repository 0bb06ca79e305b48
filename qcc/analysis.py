"""Facts about graphs that reports and bit-width decisions share (MACs, sizes, output parts)."""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from .ir.graph import Graph, Node

MAC_OPS = ("conv", "conv_transpose", "gemm", "matmul", "qconv", "qmatmul", "qgemm")


def macs(node: Node) -> int:
    """Multiply-accumulates of one node (0 for ops that do none worth counting)."""
    op = node.op
    if op in ("conv", "qconv"):
        w = node.inputs[1].shape  # O, I/g, k...
        return int(np.prod(node.output.shape, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if op == "conv_transpose":
        x, w = node.inputs[0].shape, node.inputs[1].shape  # w: I, O/g, k...
        return int(np.prod(x, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if op in ("gemm", "qgemm"):
        a = node.inputs[0].shape
        k = a[0] if node.attrs.get("trans_a", 0) else a[1]
        return int(np.prod(node.output.shape, dtype=np.int64) * k)
    if op in ("matmul", "qmatmul"):
        a = node.inputs[0].shape
        return int(np.prod(node.output.shape, dtype=np.int64) * a[-1])
    return 0


def total_macs(g: Graph) -> int:
    return sum(macs(n) for n in g.nodes)


def weight_bytes(g: Graph) -> int:
    """Bytes of constant data as the artifact stores it (sub-byte ints packed)."""
    total = 0
    for c in g.constants.values():
        if c.dtype in ("i4", "u4"):
            total += (c.type.size + 1) // 2
        else:
            total += c.type.nbytes
    return total


# ops whose output is no larger in magnitude than their largest input (hard_swish: |x| times
# a gate in [0, 1]; clip, min, max: a choice among values already bounded)
_NO_LARGER = frozenset({"relu", "hard_swish", "neg", "abs", "clip", "min", "max", "max_pool", "avg_pool",
                        "reshape", "transpose", "concat"})
_AT_MOST_ONE = frozenset({"sigmoid", "tanh", "hard_sigmoid"})
_FINITE_LIMIT = 1e30  # far below float32's 3.4e38: no product or sum of two such values is inf


def magnitude_bound(value, _depth: int = 0):
    """An upper bound on |x| over every element `value` can take, whatever the inputs, or
    None when none is known below 1e30. Computed back to integers (dequantize: the integer
    type's range times the scale) and constants, through the elementwise and data-movement
    ops above, add/sub (sums of bounds) and mul (products).

    Why: a float value bounded so cannot be NaN or inf, so a quantize of it needs no NaN
    check (its epilogue is one vector select and compare shorter per 16 outputs)."""
    from .ir.types import int_range

    if _depth > 64:
        return None
    if value.data is not None:
        data = np.asarray(value.data, dtype=np.float64)
        m = float(np.max(np.abs(data))) if data.size else 0.0
        return m if np.isfinite(m) and m < _FINITE_LIMIT else None
    node = value.producer
    if node is None:
        return None
    if node.op == "dequantize":
        lo, hi = int_range(node.inputs[0].dtype)
        zp = max((abs(int(z)) for z in node.attrs.get("zero_point") or [0]), default=0)
        scale = max((abs(float(s)) for s in node.attrs["scale"]), default=0.0)
        bound = (max(abs(lo), abs(hi)) + zp) * scale
    elif node.op in _AT_MOST_ONE:
        return 1.0
    elif node.op in _NO_LARGER or node.op in ("add", "sub", "mul"):
        bounds = [magnitude_bound(v, _depth + 1) for v in node.inputs if v is not None]
        if not bounds or any(b is None for b in bounds):
            return None
        bound = float(np.prod(bounds)) if node.op == "mul" else sum(bounds) if node.op in ("add", "sub") else max(bounds)
    else:
        return None
    return bound if bound < _FINITE_LIMIT else None


def output_parts(g: Graph) -> List[List[Tuple[str, Tuple[slice, ...]]]]:
    """Per graph output, its parts: [(label, index)] when a concat makes it, else [].

    A detector's one output often joins things of different scale and meaning: YOLOv8's
    [1, 4 + classes, anchors] is box coordinates in pixels (up to the image size) next to
    class scores in [0, 1]. An SQNR over the whole tensor is the boxes' alone -- the scores
    could be noise and it would not move -- so error budgets and reports measure each part
    too (label: the output's name and its index, "output0[:, 4:22]")."""
    parts: List[List[Tuple[str, Tuple[slice, ...]]]] = []
    for v in g.outputs:
        node = v.producer
        while node is not None and node.op == "observe":  # a calibrated graph's output observer
            node = node.inputs[0].producer
        if node is None or node.op != "concat" or len(node.inputs) < 2:
            parts.append([])
            continue
        axis = int(node.attrs["axis"]) % len(v.shape)
        out, start = [], 0
        for x in node.inputs:
            stop = start + int(x.shape[axis])
            label = ", ".join([":"] * axis + [f"{start}:{stop}"])  # named by the concat's value,
            out.append((f"{node.output.name}[{label}]",  # not an output observer's ".obs"
                        (slice(None),) * axis + (slice(start, stop),)))
            start = stop
        parts.append(out)
    return parts
