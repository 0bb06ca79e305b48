"""ONNX import: a model of the default domain, opsets 7-21, to a static-shape qcc Graph.

The importer
  * loads and checks the model (opset range, values nothing defines, cycles) and sorts
    its nodes topologically when the file does not;
  * fixes the graph inputs' shapes (from the model or from `input_shapes`);
  * walks the nodes in order, folding every node whose inputs are all constants (and
    Shape/Size of any value, shapes being static) into a constant, so shape
    subgraphs disappear;
  * maps the rest to core ops with normalised attributes (onnx_ops.py), or to opaque
    `onnx.<OpType>` ops (restated at opset 21, the IR's) whose output types come from
    ONNX shape inference or, failing that, from running the reference evaluator on
    zeros (and on ones, to refuse shapes that depend on the data);
  * keeps the scales of a model that arrives quantized: QuantizeLinear/DequantizeLinear
    pairs become `observe` ops with fixed params, integer weights stay integers behind
    a `dequantize` (onnx_qdq.py).

Value names are the ONNX tensor names; constants keep their initializer names.
Every failure is a FrontendError with a one-line message.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qcc.ir import Graph, TensorType, Value

from .errors import FrontendError
from .onnx_load import (IR_OPSET, MAX_OPSET, MIN_OPSET, _dims, _one_line,  # noqa: F401
                        array_dtype, at_supported_opset, attr_value, default_opset, input_types,
                        ir_dtype, load_model, node_label, onnx_dtype, sort_nodes)
from .onnx_qdq import check_forms as check_qdq_forms  # also registers the Q/DQ converters
from . import onnx_rnn  # noqa: F401  registers the LSTM/GRU/RNN converters (unrolled)

# never evaluated at import, even on constant inputs
_NO_FOLD = frozenset({
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
    "Multinomial", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Identity",
    "If", "Loop", "Scan",
})

# --- the importer ----------------------------------------------------------------------

class ONode:
    """An ONNX node being converted: its input Values, output names and parsed attrs."""

    def __init__(self, imp: "Importer", proto: onnx.NodeProto, env: Optional[Dict] = None):
        self.imp = imp
        self.proto = proto
        self.op = proto.op_type
        self.opset = imp.opset
        env = imp.env if env is None else env
        self.inputs: List[Optional[Value]] = [env[x] if x else None for x in proto.input]
        self.outputs: List[str] = list(proto.output)
        self.label = node_label(proto)
        self.attrs = {}
        for a in proto.attribute:
            try:
                self.attrs[a.name] = attr_value(a)
            except FrontendError as e:
                raise FrontendError(f"{self.label}: {e}") from None

    def input(self, i: int) -> Optional[Value]:
        return self.inputs[i] if i < len(self.inputs) else None

    def const(self, i: int, what: str) -> Optional[np.ndarray]:
        """The constant data of input i (None when absent); an error if not constant."""
        v = self.input(i)
        if v is None:
            return None
        if not v.is_const:
            raise self.error(f"its {what} input '{self.proto.input[i]}' must be a constant "
                             "(after folding), but it is computed at run time")
        return v.data

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    def used(self, i: int) -> bool:
        """Whether output i is named and read by anything (a node or the graph outputs)."""
        return i < len(self.outputs) and bool(self.outputs[i]) and \
            self.outputs[i] in self.imp.consumed

    def error(self, msg: str) -> FrontendError:
        return FrontendError(f"{self.label}: {msg}")


# ops that make or read ONNX sequences (lists of tensors), whose values are not tensors
SEQUENCE_OPS = frozenset({"SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceAt",
                          "SequenceErase", "SequenceLength", "SplitToSequence", "ConcatFromSequence",
                          "SequenceMap"})


def _sequence_error(n: ONode) -> FrontendError:
    return n.error("ONNX sequences are not supported unless constant (qcc compiles tensors of "
                   "static shape; export the model with tensors in place of the sequence)")


class Importer:
    def __init__(self, model: onnx.ModelProto, input_shapes=None):
        self.model = model
        self.opset = default_opset(model)
        gp = model.graph
        self.graph = Graph("main")
        self.env: Dict[str, Value] = {}
        inits = {t.name for t in gp.initializer}
        check_qdq_forms(gp, self.opset)
        self.qdq_observers: Dict[int, Value] = {}  # quantize node id -> its QDQ observe
        self.onnx_names = set(inits) | {vi.name for vi in gp.input} | \
            {o for n in gp.node for o in n.output if o}
        self.consumed = {x for n in gp.node for x in n.input if x} | {o.name for o in gp.output}
        types = input_types(gp, inits, input_shapes)
        for vi in gp.input:
            if vi.name in types:
                self.env[vi.name] = self.graph.add_input(vi.name, types[vi.name])
        for t in gp.initializer:
            if t.name in self.env:
                raise FrontendError(f"initializer '{t.name}' is defined twice")
            if t.name not in self.consumed:
                continue  # unused: never read (nor its dtype checked)
            try:
                arr = numpy_helper.to_array(t)
            except Exception as e:
                raise FrontendError(f"initializer '{t.name}' cannot be read ({_one_line(e)})") \
                    from None
            ir_dtype(t.data_type, f"initializer '{t.name}'")
            self.add_const(t.name, arr, f"initializer '{t.name}'")
        self.nodes = sort_nodes(gp, set(self.env))

    # --- building helpers used by the converters ---------------------------------------
    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.onnx_names or self.graph.has_value(name):
            name, i = f"{base}.{i}", i + 1
        return name

    def add_const(self, name: str, array, what: str = "constant") -> Value:
        arr, dtype = array_dtype(np.asarray(array), what)
        if self.graph.has_value(name):
            name = self.fresh(name)
        v = self.graph.add_const(name, arr, dtype, unique=False)
        self.env.setdefault(name, v)
        return v

    def const(self, array, base: str) -> Value:
        """A new helper constant (not an ONNX name)."""
        arr, dtype = array_dtype(np.asarray(array), "constant")
        return self.graph.add_const(self.fresh(base), arr, dtype, unique=False)

    def emit(self, op: str, inputs: Sequence[Optional[Value]], attrs: Dict,
             name: Optional[str] = None) -> Value:
        return self.graph.add_node(op, list(inputs), attrs,
                                   names=[name or self.fresh(op)]).output

    def emit_multi(self, op: str, inputs, attrs, names: Sequence[str],
                   types: Optional[Sequence[TensorType]] = None) -> List[Value]:
        names = [nm or self.fresh(f"{op}.unused") for nm in names]
        node = self.graph.add_node(op, list(inputs), attrs, names=names, types=types)
        return node.outputs

    # --- the walk ----------------------------------------------------------------------
    def run(self) -> Graph:
        from .onnx_ops import CONVERTERS

        for proto in self.nodes:
            self._convert(proto, CONVERTERS)
        outputs = [self.env[o.name] for o in self.model.graph.output]
        self.graph.set_outputs(outputs)
        # an aliased output (Identity, Dropout) takes its ONNX name where it can
        onames = [o.name for o in self.model.graph.output]
        for name, v in zip(onames, outputs):
            if v.name != name and v.name not in onames and v not in self.graph.inputs \
                    and not self.graph.has_value(name):
                self.graph.rename(v, name)
        self.graph.eliminate_dead_code()
        return self.graph

    def _convert(self, proto: onnx.NodeProto, converters) -> None:
        if proto.domain not in ("", "ai.onnx"):
            raise FrontendError(f"{node_label(proto)} is in domain '{proto.domain}'; qcc "
                                "imports only the default ONNX domain")
        if not any(o in self.consumed for o in proto.output if o):
            return  # dead: nothing reads it
        if proto.op_type == "If" and self._inline_if(proto, converters):
            return
        n = ONode(self, proto)
        try:
            outs = self._fold(n)
            if outs is None and n.op in SEQUENCE_OPS:
                raise _sequence_error(n)
            if outs is None:
                conv = converters.get(n.op)
                outs = conv(self, n) if conv is not None else None
                if isinstance(outs, Value):
                    outs = [outs]
            if outs is None:
                outs = self.opaque(n)
        except FrontendError:
            raise
        except Exception as e:
            if n.op in SEQUENCE_OPS:
                raise _sequence_error(n) from e
            raise FrontendError(f"{n.label}: {_one_line(e)}") from e
        for name, v in zip(n.outputs, outs):
            if name and v is not None:
                self.env[name] = v
        for name in n.outputs[len(outs):]:
            if name and name in self.consumed:
                raise n.error(f"output '{name}' is not supported")

    def _inline_if(self, proto: onnx.NodeProto, converters) -> bool:
        """An If whose condition is known at import (exporters write them for shape checks
        that static shapes settle) becomes the nodes of the branch it takes. False when the
        condition is computed at run time: that stays an error (no control flow)."""
        cond = self.env.get(proto.input[0]) if proto.input else None
        if cond is None or not cond.is_const or np.asarray(cond.data).size != 1:
            return False
        key = "then_branch" if bool(np.asarray(cond.data).reshape(())) else "else_branch"
        branch = next((a.g for a in proto.attribute if a.name == key), None)
        if branch is None:
            return False
        for t in branch.initializer:
            self.add_const(t.name, numpy_helper.to_array(t), f"initializer '{t.name}'")
        self.onnx_names |= {o for n in branch.node for o in n.output if o}
        self.consumed |= {x for n in branch.node for x in n.input if x} | {o.name for o in branch.output}
        for inner in sort_nodes(branch, set(self.env)):
            self._convert(inner, converters)
        for name, o in zip(proto.output, branch.output):
            if name:
                if o.name not in self.env:
                    raise FrontendError(f"{node_label(proto)}: its {key} does not define '{o.name}'")
                self.env[name] = self.env[o.name]
        return True

    def _fold(self, n: ONode) -> Optional[List[Value]]:
        """Constant-fold a node when its result is known at import; None if it is not."""
        if n.op == "Constant":
            return [self.add_const(n.outputs[0], self._constant(n), n.label)]
        if n.op in ("Shape", "Size") and n.input(0) is not None:
            shape = n.input(0).shape
            if n.op == "Size":
                arr = np.array(int(np.prod(shape, dtype=np.int64)), np.int64)
            else:
                arr = np.array(shape[slice(n.attr("start", 0), n.attr("end"))], np.int64)
            return [self.add_const(n.outputs[0], arr, n.label)]
        if n.op in _NO_FOLD or not any(v is not None for v in n.inputs):
            return None
        if any(v is not None and not v.is_const for v in n.inputs):
            return None
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in n.proto.attribute):
            return None
        try:
            results = self.evaluate(n, [None if v is None else v.data for v in n.inputs])
        except Exception:
            return None  # the converter or the opaque path will say what is wrong
        return [self.add_const(name, arr, n.label) if name else None
                for name, arr in zip(n.outputs, results)]

    def _constant(self, n: ONode) -> np.ndarray:
        a = n.attrs
        if "value" in a:
            return a["value"]
        if "value_float" in a:
            return np.array(a["value_float"], np.float32)
        if "value_floats" in a:
            return np.array(a["value_floats"], np.float32)
        if "value_int" in a:
            return np.array(a["value_int"], np.int64)
        if "value_ints" in a:
            return np.array(a["value_ints"], np.int64)
        if "sparse_value" in a:
            return self.evaluate(n, [])[0]
        raise n.error(f"unsupported constant ({', '.join(a) or 'no value'})")

    # --- evaluating one node with the ONNX tools ----------------------------------------
    def _one_node_model(self, n: ONode, with_data: bool) -> Tuple[onnx.ModelProto, Dict]:
        ins = [f"in{i}" if x else "" for i, x in enumerate(n.proto.input)]
        outs = [f"out{i}" if x else "" for i, x in enumerate(n.proto.output)]
        node = helper.make_node(n.op, ins, outs, domain=n.proto.domain)
        node.attribute.extend(n.proto.attribute)
        inputs, inits, feeds = [], [], {}
        for name, v in zip(ins, n.inputs):
            if v is None:
                continue
            inputs.append(helper.make_tensor_value_info(name, onnx_dtype(v.dtype), v.shape))
            if v.is_const and with_data:
                inits.append(numpy_helper.from_array(np.asarray(v.data), name))
            feeds[name] = v.data if v.is_const else np.zeros(v.shape, v.type.np_dtype)
        outputs = [helper.make_empty_tensor_value_info(o) for o in outs if o]
        g = helper.make_graph([node], "one_node", inputs, outputs, initializer=inits)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        return model, feeds

    def evaluate(self, n: ONode, arrays: Sequence[Optional[np.ndarray]]) -> List[np.ndarray]:
        """Run one node with the ONNX reference evaluator on the given input arrays."""
        from onnx.reference import ReferenceEvaluator

        model, _ = self._one_node_model(n, with_data=False)
        feeds = {f"in{i}": a for i, a in enumerate(arrays) if a is not None}
        # IEEE results, as onnxruntime gives them, without numpy's warnings: T5's and MPNet's
        # relative-position buckets take log(0) = -inf and cast it to an integer on purpose
        with np.errstate(all="ignore"):
            res = ReferenceEvaluator(model).run(None, feeds)
        return [np.asarray(r) for r in res]

    def opaque_types(self, n: ONode) -> List[TensorType]:
        """Static output types of an opaque node: shape inference, else running it on zeros."""
        model, feeds = self._one_node_model(n, with_data=True)
        named = [i for i, o in enumerate(n.outputs) if o]
        try:
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
            infos = {vi.name: vi for vi in
                     list(inferred.graph.value_info) + list(inferred.graph.output)}
            types = []
            for i in named:
                vi = infos.get(f"out{i}")
                dims = _dims(vi) if vi is not None and vi.type.HasField("tensor_type") else None
                if dims is None or any(not isinstance(d, int) for d in dims):
                    raise ValueError("no static shape")
                types.append(TensorType(tuple(dims), ir_dtype(vi.type.tensor_type.elem_type,
                                                              f"output '{n.outputs[i]}'")))
            return types
        except FrontendError:
            raise
        except Exception:
            pass
        try:
            from onnx.reference import ReferenceEvaluator

            ev = ReferenceEvaluator(model)
            res = ev.run(None, feeds)
            # the shapes must not depend on the data (NonZero's do): try ones as well
            ones = {k: (a if n.inputs[int(k[2:])].is_const else np.ones_like(a))
                    for k, a in feeds.items()}
            res1 = ev.run(None, ones)
        except Exception as e:
            raise n.error(f"no static output type: neither ONNX shape inference nor the reference "
                          f"evaluator gives one ({_one_line(e)})") from None
        if [np.shape(r) for r in res] != [np.shape(r) for r in res1]:
            raise n.error("no static output type: its output shape depends on the input data")
        return [TensorType(np.shape(r), array_dtype(np.asarray(r), f"output '{n.outputs[i]}'")[1])
                for i, r in zip(named, res)]

    def opaque(self, n: ONode) -> List[Value]:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in n.proto.attribute):
            raise n.error("control flow (subgraph attributes) is not supported")
        types = self.opaque_types(n)
        last = max((i for i, o in enumerate(n.outputs) if o), default=-1)
        names = n.outputs[:last + 1]
        it = iter(types)
        full = []
        for nm in names:  # unnamed outputs in the middle get a placeholder type
            full.append(next(it) if nm else TensorType((0,), "f32"))
        op, ins, attrs = self._at_ir_opset(n)
        while ins and ins[-1] is None:
            ins.pop()
        return self.emit_multi(f"onnx.{op}", ins, attrs, names, types=full)

    def _at_ir_opset(self, n: ONode) -> Tuple[str, List[Optional[Value]], Dict]:
        """An opaque node restated at IR_OPSET, the opset opaque nodes are run at.

        Where the op's definition is the same at both opsets the node is kept; else
        the ONNX version converter rewrites the one-node model (attributes that
        became inputs arrive as constants).
        """
        try:
            same = onnx.defs.get_schema(n.op, self.opset).since_version == \
                onnx.defs.get_schema(n.op, IR_OPSET).since_version
        except Exception:
            same = False
        if same or self.opset == IR_OPSET:
            return n.op, list(n.inputs), dict(n.attrs)
        from onnx import version_converter

        model, _ = self._one_node_model(n, with_data=False)
        try:
            conv = version_converter.convert_version(model, IR_OPSET).graph
        except Exception as e:
            raise n.error(f"its definition changed between opset {self.opset} and {IR_OPSET} "
                          f"and the ONNX version converter cannot convert it ({_one_line(e)})") \
                from None
        env = {f"in{i}": v for i, v in enumerate(n.inputs) if v is not None}
        for t in conv.initializer:
            if t.name not in env:
                env[t.name] = self.const(numpy_helper.to_array(t), f"{n.outputs[0]}.{t.name}")
        main = [m for m in conv.node if m.op_type != "Constant"]
        for m in conv.node:
            if m.op_type == "Constant":
                sub = ONode(self, m, env)
                env[m.output[0]] = self.const(self._constant(sub), f"{n.outputs[0]}.const")
        if len(main) != 1:
            raise n.error(f"converting it from opset {self.opset} to {IR_OPSET} gives "
                          f"{len(main)} nodes; qcc keeps opaque ops as single nodes")
        m = main[0]
        attrs = {a.name: attr_value(a) for a in m.attribute}
        return m.op_type, [env[x] if x else None for x in m.input], attrs


def import_onnx(path_or_model, input_shapes: Optional[Dict[str, Sequence[int]]] = None) -> Graph:
    """Import an ONNX model (a path, bytes or a ModelProto) as a static-shape Graph.

    `input_shapes` fixes the shapes of inputs with dynamic dims, {name: (1, 3, 224, 224)}.
    Raises FrontendError, with a one-line message, for anything it cannot import.
    """
    model, note = at_supported_opset(load_model(path_or_model))
    if note:  # `qcc compile` converts first and prints it as one of its warnings
        warnings.warn(note, stacklevel=2)
    if model.functions:  # model-local functions: their bodies are ordinary nodes
        try:
            from onnx import inliner

            model = inliner.inline_local_functions(model)
        except Exception as e:
            raise FrontendError(f"cannot inline the model's local functions ({_one_line(e)})") \
                from None
    return Importer(model, input_shapes).run()
