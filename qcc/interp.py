"""The reference interpreter: run a graph node by node through the ops' numpy kernels.

Shaped like torch.fx's Interpreter: an environment maps values to arrays, each
node's kernel reads its operands from it and writes its results, and
subclasses hook in by overriding methods -- `on_value` sees every value as it is
produced (calibration observers collect ranges there), `run_node` can replace
how a node is evaluated (fake-quant simulation, tracing).

It is also the executable form of the op contract, so it checks what a pass
might get wrong: every kernel result must have exactly the shape and dtype the
graph declares for it, and the error names the node. Values are freed after
their last use, so a 224x224 network runs in the memory of its widest layer,
unless `keep=True` asks to keep every intermediate (for debugging and reports).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from qcc.ir.graph import Graph, Node, Value
from qcc.ir.opdef import opaque_runner
from qcc.ir.types import int_range


class InterpError(RuntimeError):
    """A node could not be run or produced something other than its declared type."""

    def __init__(self, msg: str, node: Optional[Node] = None):
        self.node = node
        super().__init__(msg)


def _node_label(node: Node) -> str:
    return f"{node.op} %{node.name}"


class Interpreter:
    """Runs `graph`; `run(feeds)` returns the outputs by value name.

    With `keep=True` every value's array stays in `self.env` after the run
    (graph inputs and node results; constants are read from the graph).
    `self.peak_live` is the most arrays held at once during the last run.
    """

    def __init__(self, graph: Graph, keep: bool = False):
        self.graph = graph
        self.keep = keep
        self.env: Dict[Value, np.ndarray] = {}
        self.peak_live = 0

    # --- planning -----------------------------------------------------------------
    def _plan(self) -> None:
        """For each node index, the values whose last use it is (freed after it runs)."""
        nodes = self.graph.nodes
        last: Dict[Value, int] = {}
        for i, n in enumerate(nodes):
            for v in n.inputs:
                if v is not None and not v.is_const:
                    last[v] = i
        keep = set(self.graph.outputs)
        self._nodes = nodes
        self._free_after: List[List[Value]] = [[] for _ in nodes]
        for v, i in last.items():
            if v not in keep:
                self._free_after[i].append(v)
        # results nobody reads go right after they are produced (and observed)
        for i, n in enumerate(nodes):
            for o in n.outputs:
                if o not in last and o not in keep:
                    self._free_after[i].append(o)

    # --- hooks --------------------------------------------------------------------
    def on_value(self, value: Value, array: np.ndarray) -> None:
        """Called for each graph input and each node result as it is produced."""

    def run_node(self, node: Node, inputs: Sequence[Optional[np.ndarray]]) -> List[np.ndarray]:
        """Evaluate one node; returns one array per output."""
        d = node.opdef
        if d is None:
            raise InterpError(f"{_node_label(node)}: unknown op", node)
        if d.opaque:
            runner = opaque_runner(node.op)
            if runner is None:
                raise InterpError(f"{_node_label(node)}: no runner for the "
                                  f"'{node.op.split('.', 1)[0]}' dialect", node)
            return list(runner(node, list(inputs)))
        args = list(inputs)
        while args and args[-1] is None:  # trailing absent optionals take the kernel default
            args.pop()
        out = d.kernel(*args, **d.with_defaults(node.attrs))
        return list(out) if isinstance(out, (tuple, list)) else [out]

    # --- running ------------------------------------------------------------------
    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        """ValueError with a one-line message for a missing, unknown or mistyped input."""
        names = {v.name for v in self.graph.inputs}
        for k in feeds:
            if k not in names:
                raise ValueError(f"feed '{k}' is not a graph input (inputs: {', '.join(sorted(names))})")
        for v in self.graph.inputs:
            if v.name not in feeds:
                raise ValueError(f"missing feed for input %{v.name} ({v.type})")
            a = feeds[v.name]
            if not isinstance(a, np.ndarray):
                raise ValueError(f"input %{v.name}: expected a numpy array, got {type(a).__name__}")
            if tuple(a.shape) != v.shape:
                raise ValueError(f"input %{v.name}: expected shape {list(v.shape)}, got {list(a.shape)}")
            if a.dtype != v.type.np_dtype:
                raise ValueError(f"input %{v.name}: expected dtype {v.dtype} ({v.type.np_dtype}), "
                                 f"got {a.dtype}")
            if v.dtype in ("i4", "u4") and a.size:
                lo, hi = int_range(v.dtype)
                if a.min() < lo or a.max() > hi:
                    raise ValueError(f"input %{v.name}: values outside the {v.dtype} range {lo}..{hi}")

    def _check_result(self, node: Node, outs: List[np.ndarray]) -> List[np.ndarray]:
        if len(outs) != len(node.outputs):
            raise InterpError(f"{_node_label(node)}: kernel produced {len(outs)} results, "
                              f"the node declares {len(node.outputs)}", node)
        checked = []
        for i, (a, v) in enumerate(zip(outs, node.outputs)):
            a = np.asarray(a)
            if tuple(a.shape) != v.shape or a.dtype != v.type.np_dtype:
                got = f"{a.dtype}[{','.join(map(str, a.shape))}]"
                raise InterpError(f"{_node_label(node)}: result {i} %{v.name} is declared "
                                  f"{v.type} ({v.type.np_dtype}) but the kernel produced {got}", node)
            if v.dtype in ("i4", "u4") and a.size:  # stored in a byte: nothing else keeps it in range
                lo, hi = int_range(v.dtype)
                if a.min() < lo or a.max() > hi:
                    raise InterpError(f"{_node_label(node)}: result {i} %{v.name} has values "
                                      f"outside the {v.dtype} range {lo}..{hi}", node)
            checked.append(a)
        return checked

    def _read(self, v: Optional[Value]) -> Optional[np.ndarray]:
        if v is None:
            return None
        if v.is_const:
            return v.data
        return self.env[v]

    def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        self.check_feeds(feeds)
        self._plan()  # the graph may have changed since the last run
        env = self.env = {}
        self.peak_live = 0
        for v in self.graph.inputs:
            env[v] = feeds[v.name]
            self.on_value(v, env[v])
        for v in self.graph.inputs:  # inputs nothing reads (and not outputs)
            if not v.uses and v not in self.graph.outputs and not self.keep:
                del env[v]
        for i, node in enumerate(self._nodes):
            ins = [self._read(v) for v in node.inputs]
            try:
                outs = self.run_node(node, ins)
            except InterpError:
                raise
            except Exception as e:
                e.add_note(f"while running {_node_label(node)}")
                raise
            outs = self._check_result(node, outs)
            for v, a in zip(node.outputs, outs):
                env[v] = a
                self.on_value(v, a)
            self.peak_live = max(self.peak_live, len(env))
            if not self.keep:
                for v in self._free_after[i]:
                    env.pop(v, None)
        return {v.name: self._read(v) for v in self.graph.outputs}

    def array(self, name: str) -> np.ndarray:
        """The array of value `name` from the last run (intermediates need keep=True)."""
        v = self.graph.value(name)
        if v.is_const:
            return v.data
        if v not in self.env:
            raise KeyError(f"%{name} is not held (freed after its last use; run with keep=True)")
        return self.env[v]

    def live_count(self) -> int:
        """Arrays currently held in the environment."""
        return len(self.env)


def run(graph: Graph, feeds: Mapping[str, np.ndarray], keep: bool = False) -> Dict[str, np.ndarray]:
    """Run `graph` on `feeds` (by input name); the outputs by output value name."""
    return Interpreter(graph, keep=keep).run(feeds)
