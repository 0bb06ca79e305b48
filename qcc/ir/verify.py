"""The IR verifier: the invariants every pass may assume and must keep.

Run after parsing, after import, and after every pass under `--verify-each`
(always on in tests). Each failure names the node, so the pass manager and the
parser can point at the culprit.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .graph import Graph, Node, Value
from .types import INT_INFO, int_range


class VerifyError(Exception):
    def __init__(self, msg: str, node: Optional[Node] = None):
        self.msg, self.node = msg, node
        super().__init__(msg)


def _check_quant(v: Value) -> Optional[str]:
    q = v.quant
    if q is None:
        return None
    if v.dtype not in INT_INFO:
        return f"%{v.name}: has quant params but dtype {v.dtype} is not an integer type"
    if (q.bits, q.signed) != INT_INFO[v.dtype]:
        return f"%{v.name}: quant params say {q.dtype}, the value is {v.dtype}"
    if q.axis is not None:
        if not 0 <= q.axis < v.type.rank:
            return f"%{v.name}: quant axis {q.axis} out of range for rank {v.type.rank}"
        if len(q.scale) != v.shape[q.axis]:
            return (f"%{v.name}: {len(q.scale)} per-channel scales for {v.shape[q.axis]} "
                    f"channels on axis {q.axis}")
    for s in q.scale:
        if not (math.isfinite(s) and s > 0):
            return f"%{v.name}: scale {s} is not a positive finite number"
    lo, hi = int_range(v.dtype)
    for z in q.zero_point:
        if not lo <= z <= hi:
            return f"%{v.name}: zero point {z} outside {v.dtype}'s range {lo}..{hi}"
    return None


def verify(g: Graph) -> None:
    """Raise VerifyError on the first broken invariant."""
    defined = set()
    for v in g.inputs:
        if v.producer is not None or v.is_const:
            raise VerifyError(f"graph input %{v.name} has a producer or data")
        err = _check_quant(v)
        if err:
            raise VerifyError(err)
        defined.add(id(v))
    for c in g.constants.values():
        if c.data is None:
            raise VerifyError(f"constant %{c.name} has no data")
        if tuple(c.data.shape) != c.shape or c.data.dtype != c.type.np_dtype:
            raise VerifyError(f"constant %{c.name}: data is {c.data.dtype}{list(c.data.shape)}, type says {c.type}")
        if c.dtype in ("i4", "u4") and c.data.size:
            lo, hi = int_range(c.dtype)
            if c.data.min() < lo or c.data.max() > hi:
                raise VerifyError(f"constant %{c.name}: values outside {c.dtype} range {lo}..{hi}")
        err = _check_quant(c)
        if err:
            raise VerifyError(err)
        defined.add(id(c))

    for node in g.nodes:
        d = node.opdef
        if d is None:
            raise VerifyError(f"unknown op '{node.op}'", node)
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if id(v) not in defined:
                what = "defined later (not in topological order, or a cycle)" if v.producer is not None \
                    else "not defined in this graph"
                raise VerifyError(f"{node.op} %{node.name}: operand %{v.name} is {what}", node)
            if (node, i) not in v.uses:
                raise VerifyError(f"{node.op} %{node.name}: use list of %{v.name} is out of date", node)
        lo, hi = d.arity()
        n_in = len(node.inputs)
        if n_in < lo or (hi is not None and n_in > hi):
            want = f"{lo}" if lo == hi else f"{lo} to {hi if hi is not None else 'any'}"
            raise VerifyError(f"{node.op} %{node.name}: takes {want} operands, got {n_in}", node)
        for idx, (nm, v) in enumerate(zip(d.inputs, node.inputs)):
            if v is None and not nm.endswith(("?", "*")):
                raise VerifyError(f"{node.op} %{node.name}: operand '{nm}' is required", node)
        err = d.check_attrs(node.attrs)
        if err:
            raise VerifyError(f"{node.op} %{node.name}: {err}", node)
        if not node.outputs:
            raise VerifyError(f"{node.op} has no results", node)
        if not d.opaque:
            try:
                types = list(d.infer([v.type if v is not None else None for v in node.inputs],
                                     d.with_defaults(node.attrs)))
            except Exception as e:  # an op's shape rule rejecting its operands
                raise VerifyError(f"{node.op} %{node.name}: invalid operands: {e}", node) from None
            declared = [o.type for o in node.outputs]
            if types != declared:
                raise VerifyError(f"{node.op} %{node.name}: result type "
                                  f"{', '.join(map(str, declared))} does not match inferred "
                                  f"{', '.join(map(str, types))}", node)
        for o in node.outputs:
            if o.producer is not node:
                raise VerifyError(f"%{o.name}: producer link is broken", node)
            err = _check_quant(o)
            if err:
                raise VerifyError(err, node)
            defined.add(id(o))
    for o in g.outputs:
        if id(o) not in defined:
            raise VerifyError(f"graph output %{o.name} is not defined")
    # every recorded use must point at a live node of this graph
    live = set(id(n) for n in g.nodes)
    for v in g.values():
        for n, i in v.uses:
            if id(n) not in live or n.inputs[i] is not v:
                raise VerifyError(f"%{v.name} has a stale use by {n.op}")
