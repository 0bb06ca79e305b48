"""qcc Graph -> Relax IRModule.

`lower_graph(graph)` builds one Relax function `main`: its parameters are the
graph inputs (static shapes and dtypes), constants are embedded with
`relax.const`, and every node becomes one or a few Relax bindings, emitted by
the lowering registered for its op (`@lowering("conv")` in `lower_nn.py`,
`lower_math.py`, `lower_tensor.py`, the integer ops in `lower_quant.py`;
`onnx.*` ops in `lower_opaque.py`).
`main` always returns a tuple, one field per graph output, in order.

A lowering is `fn(cx, node, inputs, attrs) -> relax.Expr | list[relax.Expr]`
where `inputs` are the Relax values of the node's inputs (None when absent)
and `attrs` are the node's attributes with the op's defaults filled in. After
each node the Relax-inferred shape and dtype are checked against the node's
output types, so a lowering that drifts from the op contract fails loudly.

Target-specific choices go through the `LoweringStrategy` (targets/strategy.py).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

import tvm
from tvm import relax

from qcc.ir import Graph, Node

from .strategy import LoweringStrategy

# IR dtype -> TVM dtype. Sub-byte integers live one per byte, as in the IR, except
# constants: those are stored packed two per byte (lower_quant.packed_int4).
TVM_DTYPES = {
    "f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64",
    "i64": "int64", "i32": "int32", "i16": "int16", "i8": "int8", "u8": "uint8",
    "i4": "int8", "u4": "uint8", "bool": "bool",
}

# TVM 0.27's loop vectorizer turns a vectorized loop back into a scalar one when its body
# calls an op not marked TVectorizable, and these four are not, though LLVM has vector forms
# of each (llvm.nearbyint.v16f32, an unordered compare). Every float -> integer rounding of
# qcc's quantize and requantize is a nearbyint and every saturation tests isnan: an int8
# depthwise conv with a hard-swish and a quantize in its epilogue ran that epilogue one
# value at a time (127 us against 21 us with a relu; tests/test_x86_int8.py checks the
# vector form). Marking them changes no result: the same rounding, lane by lane.
for _op in ("tirx.nearbyint", "tirx.isnan", "tirx.isinf", "tirx.isfinite"):
    if tvm.ir.Op.get(_op).get_attr("TVectorizable") is None:
        tvm.ir.register_op_attr(_op, "TVectorizable", True)

LowerFn = Callable[..., Any]
_LOWERINGS: Dict[str, LowerFn] = {}


class LoweringError(Exception):
    """A node could not be lowered (unsupported op, attribute or type)."""


def tvm_dtype(ir_dtype: str) -> str:
    try:
        return TVM_DTYPES[ir_dtype]
    except KeyError:
        raise LoweringError(f"dtype '{ir_dtype}' has no TVM equivalent") from None


def lowering(*ops: str):
    """Register a lowering for one or more op names."""

    def deco(fn: LowerFn) -> LowerFn:
        for op in ops:
            if op in _LOWERINGS:
                raise ValueError(f"op '{op}' has two lowerings")
            _LOWERINGS[op] = fn
        return fn

    return deco


def registered_lowerings() -> Dict[str, LowerFn]:
    _load_lowerings()
    return dict(_LOWERINGS)


def supported_ops() -> List[str]:
    """Core op names with a lowering (opaque `onnx.*` ops go through the ONNX frontend)."""
    return sorted(registered_lowerings())


def _load_lowerings() -> None:
    from . import lower_math, lower_nn, lower_opaque, lower_quant, lower_tensor  # noqa: F401


def _ident(name: str) -> str:
    s = re.sub(r"\W", "_", name)
    return s if s and (s[0].isalpha() or s[0] == "_") else f"v_{s}"


class LowerContext:
    """What a lowering sees: the block builder, the graph, the strategy, helpers."""

    def __init__(self, bb: relax.BlockBuilder, graph: Graph, strategy: LoweringStrategy):
        self.bb = bb
        self.graph = graph
        self.strategy = strategy
        self.node: Optional[Node] = None  # the node being lowered

    # --- emitting --------------------------------------------------------------
    def emit(self, expr, name: str = "") -> relax.Var:
        """Bind `expr`; a constant, or an unnamed Var, is returned as it is: a var-to-var
        binding would sit between a kernel and its epilogue and stop FuseOps fusing them."""
        if isinstance(expr, tvm.ir.GenericConst) or (isinstance(expr, relax.Var) and not name):
            return expr
        return self.bb.emit(expr, name_hint=_ident(name) if name else "")

    def emit_te(self, fn, *args, **kwargs) -> relax.Var:
        return self.bb.emit_te(fn, *args, **kwargs)

    # --- constants ---------------------------------------------------------------
    def const(self, value, dtype: Optional[str] = None) -> tvm.ir.GenericConst:
        """A constant; `dtype` is a TVM dtype ("float32"); scalars become 0-d tensors."""
        arr = np.asarray(value)
        if dtype is not None:
            arr = arr.astype(_np_dtype(dtype))
        return relax.const(np.array(arr, order="C", copy=True), str(arr.dtype) if dtype is None else dtype)

    def scalar(self, value, like) -> tvm.ir.GenericConst:
        """A 0-d constant with the dtype of the Relax value `like`."""
        return self.const(np.array(value), self.dtype_of(like))

    # --- type queries ------------------------------------------------------------
    def type_of(self, expr):
        if isinstance(expr, (relax.Var, tvm.ir.GenericConst)):
            return expr.ty
        return self.bb.normalize(expr).ty

    def shape_of(self, expr) -> tuple:
        ty = self.type_of(expr)
        if not isinstance(ty, relax.TensorType) or ty.shape is None:
            raise LoweringError(f"expected a tensor of known shape, got {ty}")
        return tuple(int(d) for d in ty.shape.values)

    def dtype_of(self, expr) -> str:
        return str(self.type_of(expr).dtype)

    def cast(self, expr, dtype: str):
        return expr if self.dtype_of(expr) == dtype else relax.op.astype(expr, dtype)

    # --- constant-folding helpers (weights are rearranged in numpy, not at run time) ---
    @staticmethod
    def const_value(expr) -> Optional[np.ndarray]:
        """The array of a Relax constant, else None."""
        if isinstance(expr, tvm.ir.GenericConst):
            return expr.value.numpy()
        return None

    def permute(self, expr, axes):
        axes = [int(a) for a in axes]
        if axes == list(range(len(axes))):
            return expr
        c = self.const_value(expr)
        if c is not None:
            return self.const(np.transpose(c, axes), self.dtype_of(expr))
        return relax.op.permute_dims(expr, axes)

    def reshape(self, expr, shape):
        shape = [int(d) for d in shape]
        if list(self.shape_of(expr)) == shape:
            return expr
        c = self.const_value(expr)
        if c is not None:
            return self.const(c.reshape(shape), self.dtype_of(expr))
        return relax.op.reshape(expr, shape)


def _np_dtype(tvm_dt: str):
    if tvm_dt == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(tvm_dt)


def _const_for(value) -> tvm.ir.GenericConst:
    arr = np.array(value.data, order="C", copy=True)
    dt = tvm_dtype(value.dtype)
    if str(arr.dtype) != dt and dt != "bfloat16":
        arr = arr.astype(dt)
    return relax.const(arr, dt)


def _check_types(node: Node, results: Sequence) -> None:
    if len(results) != len(node.outputs):
        raise LoweringError(f"{node.op} %{node.name}: lowering gave {len(results)} results, "
                            f"the node has {len(node.outputs)} outputs")
    for out, r in zip(node.outputs, results):
        ty = r.ty
        want_shape = tuple(out.shape)
        want_dtype = tvm_dtype(out.dtype)
        if not isinstance(ty, relax.TensorType):
            raise LoweringError(f"{node.op} %{out.name}: lowered to {ty}, expected a tensor")
        if ty.shape is not None and not all(isinstance(d, tvm.tirx.IntImm) for d in ty.shape.values):
            raise LoweringError(f"{node.op} %{out.name}: its output shape {list(ty.shape.values)} "
                                "depends on the data; qcc compiles static shapes only")
        got_shape = tuple(int(d) for d in ty.shape.values) if ty.shape is not None else None
        if got_shape != want_shape or str(ty.dtype) != want_dtype:
            raise LoweringError(
                f"{node.op} %{out.name}: lowering produced {ty.dtype}{list(got_shape or [])}, "
                f"the graph says {out.type}")


def lower_node(cx: LowerContext, node: Node, inputs: List[Optional[relax.Expr]]) -> List[relax.Expr]:
    """Lower one node; returns one Relax value per node output."""
    _load_lowerings()
    fn = cx.strategy.lowering_for(node.op)
    if fn is None:
        if "." in node.op and not node.op.startswith("qcc."):
            from .lower_opaque import lower_opaque

            fn = lower_opaque
        else:
            fn = _LOWERINGS.get(node.op)
    if fn is None:
        raise LoweringError(f"no lowering for op '{node.op}' (%{node.name}); "
                            f"supported: {', '.join(supported_ops())}")
    d = node.opdef
    attrs = d.with_defaults(node.attrs) if d is not None and not d.opaque else dict(node.attrs)
    cx.node = node
    try:
        out = fn(cx, node, inputs, attrs)
    except LoweringError:
        raise
    except Exception as e:  # add the node to whatever TVM said
        raise LoweringError(f"lowering {node.op} %{node.name} failed: {type(e).__name__}: {e}") from e
    results = list(out) if isinstance(out, (list, tuple)) else [out]
    names = [o.name for o in node.outputs]
    results = [r if isinstance(r, (relax.Var, tvm.ir.GenericConst)) else cx.emit(r, nm)
               for r, nm in zip(results, names)] + results[len(names):]  # extras: _check_types
    _check_types(node, results)
    return results


def lower_graph(graph: Graph, strategy: Optional[LoweringStrategy] = None, *,
                func_name: str = "main") -> tvm.IRModule:
    """Build the Relax module for `graph`; `main(*graph.inputs) -> tuple(graph.outputs)`.

    The graph is verified first: one built through the Python API with, say, a dequantize
    missing its zero_point gets the verifier's sentence, not a KeyError from a lowering."""
    from qcc.ir.verify import VerifyError, verify

    try:
        verify(graph)
    except VerifyError as e:
        raise LoweringError(f"invalid graph: {e}") from None
    strategy = strategy or LoweringStrategy()
    bb = relax.BlockBuilder()
    params = [relax.Var(_ident(v.name), relax.TensorType(list(v.shape), tvm_dtype(v.dtype)))
              for v in graph.inputs]
    env: Dict[int, relax.Expr] = {id(v): p for v, p in zip(graph.inputs, params)}
    cx = LowerContext(bb, graph, strategy)

    def value_of(v):
        if v is None:
            return None
        e = env.get(id(v))
        if e is None:
            if v.is_const and v.dtype in ("i4", "u4"):  # stored packed, two per byte
                from .lower_quant import unpacked_int4

                e = env[id(v)] = unpacked_int4(cx, v)
            elif v.is_const:
                e = env[id(v)] = _const_for(v)
            else:
                raise LoweringError(f"value %{v.name} is used before it is defined")
        return e

    try:
        with bb.function(func_name, params):
            with bb.dataflow():
                for node in graph.nodes:
                    results = lower_node(cx, node, [value_of(v) for v in node.inputs])
                    for o, r in zip(node.outputs, results):
                        env[id(o)] = r
                outs = [value_of(v) for v in graph.outputs]
                gv = bb.emit_output(relax.Tuple(outs))
            bb.emit_func_output(gv)
    except BaseException:
        # the dataflow scope reopens a binding block on its way out; left open, the
        # builder's destructor prints a TVM warning after qcc's one-line error
        try:
            bb._end_block()
        except Exception:
            pass
        raise
    mod = bb.get()
    mod = relax.transform.DeadCodeElimination([func_name])(mod)
    return mod


def graph_signature(graph: Graph) -> Dict[str, Any]:
    """Names, shapes and dtypes of the graph's inputs and outputs (saved next to model.so)."""

    def sig(vs):
        return [{"name": v.name, "shape": list(v.shape), "dtype": v.dtype} for v in vs]

    return {"inputs": sig(graph.inputs), "outputs": sig(graph.outputs)}
