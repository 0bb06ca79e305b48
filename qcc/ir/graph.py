"""The graph IR: nodes in topological order over single-assignment values.

The graph is the storage of record. Every value knows its producer and its uses,
so "replace all uses" is one call and dead-code elimination is a use-count check.
All mutation goes through the methods here, which keep those lists right; a pass
never edits `node.inputs` or `value.uses` directly.

Constants are values that carry an array (`value.data`) and have no producer.
Graph inputs are values with neither. `value.meta` is scratch space for analyses
and is never printed or saved.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .opdef import get_op
from .types import QuantParams, TensorType


class Value:
    __slots__ = ("name", "type", "quant", "producer", "uses", "data", "meta")

    def __init__(self, name: str, type: TensorType, quant: Optional[QuantParams] = None,
                 data: Optional[np.ndarray] = None):
        self.name = name
        self.type = type
        self.quant = quant
        self.producer: Optional[Node] = None
        self.uses: List[Tuple[Node, int]] = []  # (consumer, input index)
        self.data = data
        self.meta: Dict[str, Any] = {}

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    def users(self) -> List["Node"]:
        """Distinct consuming nodes, in the order they use this value."""
        seen: Dict[int, Node] = {}
        for n, _ in self.uses:
            seen.setdefault(id(n), n)
        return list(seen.values())

    def replace_all_uses_with(self, other: "Value") -> None:
        for node, i in list(self.uses):
            node.set_input(i, other)

    def __repr__(self) -> str:
        return f"Value(%{self.name}: {self.type})"


class Node:
    __slots__ = ("op", "inputs", "outputs", "attrs", "graph", "_prev", "_next")

    def __init__(self, op: str, attrs: Optional[Dict[str, Any]] = None):
        self.op = op
        self.inputs: List[Optional[Value]] = []
        self.outputs: List[Value] = []
        self.attrs: Dict[str, Any] = dict(attrs or {})
        self.graph: Optional[Graph] = None
        self._prev: Optional[Node] = None  # the graph's order (Graph keeps the ends)
        self._next: Optional[Node] = None

    @property
    def opdef(self):
        return get_op(self.op)

    @property
    def name(self) -> str:
        """A node is known by its first output (the report's layer name)."""
        return self.outputs[0].name if self.outputs else f"<{self.op}>"

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise ValueError(f"{self.op} has {len(self.outputs)} outputs")
        return self.outputs[0]

    def set_input(self, i: int, value: Optional[Value]) -> None:
        old = self.inputs[i]
        if old is not None:
            old.uses.remove((self, i))
        self.inputs[i] = value
        if value is not None:
            value.uses.append((self, i))

    def __repr__(self) -> str:
        ins = ", ".join("none" if v is None else f"%{v.name}" for v in self.inputs)
        outs = ", ".join(f"%{v.name}" for v in self.outputs)
        return f"Node({outs} = {self.op}({ins}))"


class Graph:
    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: List[Value] = []
        self.outputs: List[Value] = []
        self.constants: Dict[str, Value] = {}
        # The nodes' order is a doubly linked list through the nodes, so that inserting next to
        # a node and removing one take constant time: with a list, each was a scan comparing
        # every node before it (24 ns each), and quantizing an unrolled LSTM's 10k-node graph
        # (its observers removed one by one) spent 0.39 of 0.83 s in them, once per layer
        # the bit-width search measures. Read in order through _ordered(), cached until the
        # next change (appending keeps the cache).
        self._head: Optional[Node] = None
        self._tail: Optional[Node] = None
        self._count = 0
        self._order: Optional[List[Node]] = []
        self._values: Dict[str, Value] = {}

    # --- reading ------------------------------------------------------------------
    @property
    def nodes(self) -> List[Node]:
        """Nodes in topological order (a copy: safe to mutate the graph while iterating)."""
        return list(self._ordered())

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return self._count

    def _ordered(self) -> List[Node]:
        """The nodes in order (the cache itself: callers must not change it)."""
        if self._order is None:
            order, n = [], self._head
            while n is not None:
                order.append(n)
                n = n._next
            self._order = order
        return self._order

    def value(self, name: str) -> Value:
        return self._values[name]

    def has_value(self, name: str) -> bool:
        return name in self._values

    def values(self) -> List[Value]:
        return list(self._values.values())

    def index(self, node: Node) -> int:
        return self._ordered().index(node)

    # --- naming -------------------------------------------------------------------
    def unique_name(self, base: str) -> str:
        if base not in self._values:
            return base
        stem = re.sub(r"\.\d+$", "", base)
        i = 1
        while f"{stem}.{i}" in self._values:
            i += 1
        return f"{stem}.{i}"

    def _register(self, v: Value) -> Value:
        if v.name in self._values:
            raise ValueError(f"value %{v.name} is defined twice")
        self._values[v.name] = v
        return v

    # --- building -----------------------------------------------------------------
    def add_input(self, name: str, type: TensorType, quant: Optional[QuantParams] = None) -> Value:
        v = self._register(Value(name, type, quant))
        self.inputs.append(v)
        return v

    def add_const(self, name: str, array: np.ndarray, dtype: Optional[str] = None,
                  quant: Optional[QuantParams] = None, unique: bool = True) -> Value:
        """A constant value; `dtype` overrides the numpy one (i4/u4 arrays are int8/uint8)."""
        array = np.asarray(array)
        t = TensorType.of(array, dtype)
        if array.dtype != t.np_dtype:
            array = array.astype(t.np_dtype)
        if array.flags.writeable or not array.flags.c_contiguous or array.shape != t.shape:
            array = np.ascontiguousarray(array).reshape(t.shape)  # (ascontiguousarray makes 0-d 1-d)
            array.flags.writeable = False
        # else another constant's array, shared as it is: a graph copy's constants are the
        # same objects, so what is keyed by them (the search's FloatCache hashes each
        # constant once per array) carries over to the copy
        v = Value(self.unique_name(name) if unique else name, t, quant, data=array)
        self._register(v)
        self.constants[v.name] = v
        return v

    def add_node(self, op: str, inputs: Sequence[Optional[Value]], attrs: Optional[Dict] = None,
                 *, names: Optional[Sequence[str]] = None, types: Optional[Sequence[TensorType]] = None,
                 num_outputs: Optional[int] = None, before: Optional[Node] = None,
                 after: Optional[Node] = None) -> Node:
        """Create a node, infer its output types if not given, and insert it.

        By default the node goes at the end; `before`/`after` place it next to an
        existing node (a rewrite inserts next to the node it replaces).
        """
        node = Node(op, attrs)
        for v in inputs:
            node.inputs.append(None)
            node.set_input(len(node.inputs) - 1, v)
        if types is None:
            types = self.infer_types(node)
        if num_outputs is not None and len(types) != num_outputs:
            raise ValueError(f"{op}: expected {num_outputs} outputs, inferred {len(types)}")
        base = names or [f"{op.split('.')[-1]}"] * len(types)
        for nm, t in zip(base, types):
            out = self._register(Value(self.unique_name(nm), t))
            out.producer = node
            node.outputs.append(out)
        for anchor in (before, after):
            if anchor is not None and anchor.graph is not self:
                raise ValueError(f"cannot insert next to {anchor!r}: it is not in the graph")
        node.graph = self
        self._link(node, before._prev if before is not None else after if after is not None else self._tail)
        return node

    def _link(self, node: Node, prev: Optional[Node]) -> None:
        """Put `node` right after `prev` (None: first)."""
        nxt = self._head if prev is None else prev._next
        self._join(prev, node)
        self._join(node, nxt)
        self._count += 1
        if self._order is not None:
            if nxt is None:
                self._order.append(node)
            else:
                self._order = None

    def _unlink(self, node: Node) -> None:
        self._join(node._prev, node._next)
        node._prev = node._next = None
        self._count -= 1
        self._order = None

    def _join(self, a: Optional[Node], b: Optional[Node]) -> None:
        """Make `b` follow `a` (None on either side: that end of the order)."""
        if a is None:
            self._head = b
        else:
            a._next = b
        if b is None:
            self._tail = a
        else:
            b._prev = a

    def infer_types(self, node: Node) -> List[TensorType]:
        d = node.opdef
        if d is None:
            raise ValueError(f"unknown op '{node.op}'")
        if d.opaque:
            raise ValueError(f"opaque op '{node.op}' needs its output types given")
        attrs = d.with_defaults(node.attrs)
        return list(d.infer([v.type if v is not None else None for v in node.inputs], attrs))

    def set_outputs(self, values: Sequence[Value]) -> None:
        self.outputs = list(values)

    # --- rewriting ----------------------------------------------------------------
    def remove_node(self, node: Node) -> None:
        """Remove a node whose outputs are no longer used."""
        if node.graph is not self:
            raise ValueError(f"cannot remove {node!r}: it is not in the graph")
        for out in node.outputs:
            if out.uses or out in self.outputs:
                raise ValueError(f"cannot remove {node.op} %{out.name}: it is still used")
        for i in range(len(node.inputs)):
            node.set_input(i, None)
        for out in node.outputs:
            del self._values[out.name]
            out.producer = None
        self._unlink(node)
        node.graph = None

    def replace_value(self, old: Value, new: Value) -> None:
        """Every use of `old`, graph outputs included, now reads `new`."""
        old.replace_all_uses_with(new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def remove_const(self, v: Value) -> None:
        if v.uses or v in self.outputs:
            raise ValueError(f"cannot remove constant %{v.name}: it is still used")
        del self.constants[v.name]
        del self._values[v.name]

    def rename(self, v: Value, new_name: str) -> None:
        if new_name == v.name:
            return
        if new_name in self._values:
            raise ValueError(f"value %{new_name} already exists")
        del self._values[v.name]
        if v.name in self.constants:
            self.constants = {(new_name if k == v.name else k): c for k, c in self.constants.items()}
        v.name = new_name
        self._values[new_name] = v

    def eliminate_dead_code(self, roots: Optional[Sequence[Node]] = None) -> bool:
        """Drop nodes and constants nothing reaches from the outputs. True if any went.

        With `roots` (the producers of values a rewrite just replaced), only those nodes and
        what their removal leaves unused are looked at: time in proportion to what dies, not
        to the graph (quantize ran the whole-graph scan once per layer it rewrote: on an
        unrolled LSTM's 10k nodes, 57% of the bit-width search's time)."""
        if roots is not None:
            return self._eliminate_from(roots)
        changed = False
        for node in reversed(self.nodes):
            if all(not o.uses and o not in self.outputs for o in node.outputs):
                self.remove_node(node)
                changed = True
        for v in list(self.constants.values()):
            if not v.uses and v not in self.outputs:
                self.remove_const(v)
                changed = True
        return changed

    def _eliminate_from(self, roots: Sequence[Node]) -> bool:
        outputs = {id(v) for v in self.outputs}
        changed, work = False, [n for n in roots if n is not None]
        while work:
            node = work.pop()
            if node.graph is not self or any(o.uses or id(o) in outputs for o in node.outputs):
                continue
            inputs = [v for v in node.inputs if v is not None]
            self.remove_node(node)
            changed = True
            for v in inputs:
                if v.uses or id(v) in outputs:
                    continue
                if v.is_const:
                    if self.constants.get(v.name) is v:
                        self.remove_const(v)
                elif v.producer is not None:
                    work.append(v.producer)
        return changed

    def topo_sort(self) -> None:
        """Restore topological order after out-of-order insertion (stable otherwise)."""
        placed = set(id(v) for v in self.inputs) | set(id(v) for v in self.constants.values())
        order, pending = [], self.nodes
        while pending:
            progress = False
            rest = []
            for n in pending:
                if all(v is None or id(v) in placed for v in n.inputs):
                    order.append(n)
                    placed.update(id(o) for o in n.outputs)
                    progress = True
                else:
                    rest.append(n)
            if not progress:
                raise ValueError("graph has a cycle")
            pending = rest
        self._set_order(order)

    def _set_order(self, order: Sequence[Node]) -> None:
        """The nodes, all of them, in this order."""
        self._head = self._tail = None
        self._count, self._order = 0, []
        for n in order:
            self._link(n, self._tail)

    # --- views --------------------------------------------------------------------
    def nx(self):
        """A networkx DiGraph over nodes (edges carry the value) for analyses."""
        import networkx as nx

        g = nx.MultiDiGraph()
        for n in self._ordered():
            g.add_node(n)
        for n in self._ordered():
            for v in n.inputs:
                if v is not None and v.producer is not None:
                    g.add_edge(v.producer, n, value=v)
        return g

    def copy(self) -> "Graph":
        """A structural deep copy; constant arrays are shared (they are read-only).

        Built directly, not through add_input/add_const/add_node: the names are already
        unique and the types known, and the bit-width search copies the whole graph once
        per layer it measures (an unrolled LSTM's 10k nodes: 0.21 -> 0.08 s a copy)."""
        out = Graph(self.name)
        m: Dict[int, Value] = {}

        def clone(v: Value, data=None) -> Value:
            nv = Value(v.name, v.type, v.quant, data)  # (meta, analyses' scratch, not copied)
            out._values[v.name] = nv
            m[id(v)] = nv
            return nv

        out.inputs = [clone(v) for v in self.inputs]
        out.constants = {k: clone(c, c.data) for k, c in self.constants.items()}
        order = []
        for n in self._ordered():
            nn = Node(n.op, n.attrs)
            ins = nn.inputs
            for i, v in enumerate(n.inputs):
                if v is None:
                    ins.append(None)
                else:
                    nv = m[id(v)]
                    ins.append(nv)
                    nv.uses.append((nn, i))
            for o in n.outputs:
                no = clone(o)
                no.producer = nn
                nn.outputs.append(no)
            nn.graph = out
            order.append(nn)
        out._set_order(order)
        out.outputs = [m[id(v)] for v in self.outputs]
        return out

    def __str__(self) -> str:
        from .printer import print_graph

        return print_graph(self)
