"""Print a graph as .qir text: deterministic, and parseable back to the same graph.

Floats are printed with Python's shortest round-trip repr, so every constant and
scale survives print → parse bit for bit. Constants with more than
`INLINE_LIMIT` elements (and long per-channel scale lists) go to a sidecar dict
of arrays, which `save` writes as an `.npz` next to the `.qir`.
"""
from __future__ import annotations

import json
import re
from typing import Dict, List, Optional, Tuple

import numpy as np

from .graph import Graph, Value
from .types import FLOAT_DTYPES, QuantParams, TensorType

INLINE_LIMIT = 16
_SIMPLE = re.compile(r"^[A-Za-z0-9_./\-]+$")


def quote(name: str) -> str:
    return name if _SIMPLE.match(name) else json.dumps(name)


def fmt_float(x: float) -> str:
    x = float(x)
    if x != x:
        return "nan"
    if x in (float("inf"), float("-inf")):
        return "inf" if x > 0 else "-inf"
    return repr(x)


def fmt_scalar(x, dtype: str) -> str:
    if dtype in FLOAT_DTYPES:
        return fmt_float(x)
    if dtype == "bool":
        return "1" if x else "0"
    return str(int(x))


def fmt_type(t: TensorType) -> str:
    return str(t)


class _Printer:
    def __init__(self, graph: Graph, inline_all: bool):
        self.g = graph
        self.inline_all = inline_all
        self.sidecar: Dict[str, np.ndarray] = {}

    def v(self, val: Optional[Value]) -> str:
        return "none" if val is None else "%" + quote(val.name)

    def dense(self, arr: np.ndarray, dtype: str) -> str:
        flat = np.asarray(arr).reshape(-1)
        if dtype == "bf16":
            flat = flat.astype(np.float32)
        return "dense<[" + ", ".join(fmt_scalar(x, dtype) for x in flat.tolist()) + "]>"

    def attr(self, a) -> str:
        if isinstance(a, bool):
            return "true" if a else "false"
        if isinstance(a, (int, np.integer)):
            return str(int(a))
        if isinstance(a, (float, np.floating)):
            return fmt_float(a)
        if isinstance(a, str):
            return json.dumps(a)
        if isinstance(a, np.ndarray):
            t = TensorType.of(a)
            return f"{self.dense(a, t.dtype)} : {t}"
        if isinstance(a, (list, tuple)):
            return "[" + ", ".join(self.attr(x) for x in a) + "]"
        raise TypeError(f"cannot print attribute value {a!r}")

    def numbers(self, key: str, xs: Tuple, is_float: bool) -> str:
        fmt = fmt_float if is_float else str
        if len(xs) == 1:
            return fmt(xs[0])
        if len(xs) > INLINE_LIMIT and not self.inline_all:
            self.sidecar[key] = np.asarray(xs, dtype=np.float64 if is_float else np.int64)
            return "@" + quote(key)
        return "[" + ", ".join(fmt(x) for x in xs) + "]"

    def quant(self, val: Value) -> str:
        q: Optional[QuantParams] = val.quant
        if q is None:
            return ""
        parts = [q.dtype]
        if q.axis is not None:
            parts.append(f"axis={q.axis}")
        parts.append("scale=" + self.numbers(val.name + ".scale", q.scale, True))
        if not q.symmetric:
            parts.append("zp=" + self.numbers(val.name + ".zp", q.zero_point, False))
        if q.range is not None:
            parts.append(f"range=[{fmt_float(q.range[0])}, {fmt_float(q.range[1])}]")
        return " !q<" + " ".join(parts) + ">"

    def typed(self, val: Value) -> str:
        return f"{val.type}{self.quant(val)}"

    def const(self, c: Value) -> str:
        if c.type.size <= INLINE_LIMIT or self.inline_all:
            data = self.dense(c.data, c.dtype)
        else:
            self.sidecar[c.name] = c.data
            data = "@" + quote(c.name)
        return f"  {self.v(c)} = const {data} : {self.typed(c)}"

    def node(self, n) -> str:
        outs = ", ".join(self.v(o) for o in n.outputs)
        op = n.op if "." in n.op else "qcc." + n.op
        ins = ", ".join(self.v(i) for i in n.inputs)
        attrs = ""
        if n.attrs:
            attrs = " {" + ", ".join(f"{k}={self.attr(n.attrs[k])}" for k in sorted(n.attrs)) + "}"
        types = ", ".join(self.typed(o) for o in n.outputs)
        return f"  {outs} = {op}({ins}){attrs} : {types}"

    def run(self) -> str:
        g = self.g
        params = ", ".join(f"{self.v(i)}: {self.typed(i)}" for i in g.inputs)
        lines = [f"graph @{quote(g.name)}({params}) {{"]
        lines += [self.const(c) for c in g.constants.values()]
        lines += [self.node(n) for n in g.nodes]
        lines.append("  return " + ", ".join(self.v(o) for o in g.outputs) if g.outputs else "  return")
        lines.append("}")
        return "\n".join(lines) + "\n"


def node_signature(node) -> str:
    """What a node computes from its inputs, without names: op, attributes and output types,
    quantization and large attributes inline. Two nodes reading the same values compute the
    same thing when their signatures are equal (canonicalize's merge_duplicates)."""
    p = _Printer(node.graph, inline_all=True)
    attrs = ", ".join(f"{k}={p.attr(node.attrs[k])}" for k in sorted(node.attrs))
    return f"{node.op} {{{attrs}}} : {', '.join(p.typed(o) for o in node.outputs)}"


def print_graph(graph: Graph, inline_all: bool = False) -> str:
    """The graph's text. Large constants are shown as `@name` references."""
    return _Printer(graph, inline_all).run()


def print_with_sidecar(graph: Graph, inline_all: bool = False) -> Tuple[str, Dict[str, np.ndarray]]:
    p = _Printer(graph, inline_all)
    return p.run(), p.sidecar


def save(graph: Graph, path) -> None:
    """Write `path` (.qir) and, if any constant is large, `path` with suffix .npz."""
    from pathlib import Path

    path = Path(path)
    text, side = print_with_sidecar(graph)
    path.write_text(text)
    npz = path.with_suffix(".npz")
    if side:
        write_npz(npz, side)
    elif npz.exists():
        npz.unlink()


def write_npz(path, arrays: Dict[str, np.ndarray]) -> None:
    """Deterministic .npz: sorted keys and fixed zip timestamps (np.savez stamps 'now')."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            arr = np.asarray(arrays[key])
            if arr.dtype.kind == "V":  # bf16 and friends: store the raw bits
                arr = arr.view(np.uint16 if arr.dtype.itemsize == 2 else np.uint8)
            elif arr.dtype.name == "bfloat16":
                arr = arr.view(np.uint16)
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue())
