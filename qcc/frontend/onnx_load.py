"""Reading and checking an ONNX model before import: loading, opset, node order, input types.

Everything here raises FrontendError with a one-line message naming what is wrong
(the file, the opset, the node reading an undefined value, the input whose dims
are dynamic) and what to do about it.
"""
from __future__ import annotations

import heapq
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcc.ir import TensorType
from qcc.ir.types import from_numpy_dtype

from .errors import FrontendError

MIN_OPSET, MAX_OPSET = 7, 21
IR_OPSET = 21  # core op semantics, and the opset opaque onnx.* nodes are run at

# ONNX element type -> IR dtype
_DTYPES = {
    TensorProto.FLOAT: "f32", TensorProto.FLOAT16: "f16", TensorProto.BFLOAT16: "bf16",
    TensorProto.DOUBLE: "f64", TensorProto.INT64: "i64", TensorProto.INT32: "i32",
    TensorProto.INT16: "i16", TensorProto.INT8: "i8", TensorProto.UINT8: "u8",
    TensorProto.BOOL: "bool", TensorProto.INT4: "i4", TensorProto.UINT4: "u4",
}
_ONNX_DTYPES = {v: k for k, v in _DTYPES.items()}


def ir_dtype(elem_type: int, what: str) -> str:
    try:
        return _DTYPES[elem_type]
    except KeyError:
        tname = TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() \
            else str(elem_type)
        raise FrontendError(f"{what} has element type {tname}, which qcc does not support "
                            f"(supported: {', '.join(sorted(set(_DTYPES.values())))})") from None


def onnx_dtype(dtype: str) -> int:
    return _ONNX_DTYPES[dtype]


def array_dtype(array: np.ndarray, what: str) -> Tuple[np.ndarray, str]:
    """An array and its IR dtype (ONNX int4/uint4 arrays become int8/uint8 storage)."""
    name = array.dtype.name
    if name in ("int4", "uint4"):
        return array.astype(np.int8 if name == "int4" else np.uint8), name[0] + "4"
    try:
        return array, from_numpy_dtype(array.dtype)
    except ValueError:
        raise FrontendError(f"{what} has element type {array.dtype}, which qcc does not support") \
            from None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# --- loading and checking --------------------------------------------------------------

def load_model(src) -> onnx.ModelProto:
    if isinstance(src, onnx.ModelProto):
        model, where = src, "model"
    elif isinstance(src, (bytes, bytearray)):
        where = "model bytes"
        try:
            model = onnx.load_model_from_string(bytes(src))
        except Exception as e:
            raise FrontendError(f"{where}: not an ONNX model ({_one_line(e)})") from None
    else:
        where = os.fspath(src)
        if not os.path.exists(where):
            raise FrontendError(f"{where}: no such file")
        if os.path.isdir(where):
            raise FrontendError(f"{where}: is a directory, not an ONNX model file")
        try:
            model = onnx.load(where)
        except Exception as e:
            raise FrontendError(f"{where}: not a readable ONNX model, or a truncated one "
                                f"({_one_line(e)})") from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.output:
        raise FrontendError(f"{where}: not an ONNX model (no ir_version, graph or graph outputs)")
    return model


def _opset_of(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise FrontendError("the model imports no opset of the default ONNX domain")
    return versions[0]


def default_opset(model: onnx.ModelProto) -> int:
    v = _opset_of(model)
    if not MIN_OPSET <= v <= MAX_OPSET:
        raise FrontendError(f"the model uses opset {v} of the default ONNX domain; qcc imports "
                            f"opsets {MIN_OPSET}-{MAX_OPSET} (convert it with "
                            f"onnx.version_converter.convert_version)")
    return v


def at_supported_opset(model: onnx.ModelProto) -> Tuple[onnx.ModelProto, Optional[str]]:
    """The model at an opset the importer reads, and a note when it had to be converted.

    Models exported years ago (opset 6 and older: the pytorch-1.0 era model zoos) and by
    the newest exporters (opset 22 and up, which mostly widen ops' types) are converted
    with onnx's own version converter to the nearest opset qcc imports, rather than turned
    away: the user would have to run the same converter by hand. Two forms of the old
    opsets that the converter gets wrong are rewritten first (_legacy_forms)."""
    v = _opset_of(model)
    if MIN_OPSET <= v <= MAX_OPSET:
        return model, None
    to = MIN_OPSET if v < MIN_OPSET else MAX_OPSET
    if v < MIN_OPSET:
        model = _legacy_forms(model)
    try:
        from onnx import version_converter

        converted = version_converter.convert_version(model, to)
    except Exception as e:
        raise FrontendError(f"the model uses opset {v} of the default ONNX domain; qcc imports "
                            f"opsets {MIN_OPSET}-{MAX_OPSET}, and onnx.version_converter could not "
                            f"convert it to opset {to} ({_one_line(e)})") from None
    return converted, (f"the model uses opset {v} of the default ONNX domain: converted to opset "
                       f"{to} with onnx.version_converter")


def _legacy_forms(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy in which the forms of opsets before 7 that onnx's converter gets wrong read as
    their numpy-broadcasting equivalents: PRelu slopes of shape [C] (one per channel, axis 1)
    become [C, 1, ...]; a binary op's `broadcast=1, axis=k` operand B (aligned at axis k, the
    Caffe2 exports' bias form) gets trailing ones instead of the axis (the converter makes
    [C] into [C, 1, 1, 1] for a rank-4 A at axis 1: four of them, not three)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    ranks = _ranks(model)
    inits = {t.name: t for t in model.graph.initializer}
    def rank_of(name):
        return len(inits[name].dims) if name in inits else ranks.get(name)

    nodes: list = []
    made: Dict[Tuple[str, int], str] = {}
    for n in model.graph.node:
        attrs = {a.name: a for a in n.attribute}
        if n.op_type == "PRelu" and len(n.input) > 1 and n.input[1] in inits \
                and len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1 \
                and (ranks.get(n.input[0]) or 0) > 2:
            n.input[1] = _with_trailing_ones(model, inits, n.input[1], 1, ranks[n.input[0]] - 2, nodes, made)
        elif "axis" in attrs and "broadcast" in attrs and attrs["broadcast"].i == 1 and len(n.input) == 2:
            ra, rb = rank_of(n.input[0]), rank_of(n.input[1])
            if ra is None or rb is None:
                nodes.append(n)
                continue
            axis = attrs["axis"].i + (ra if attrs["axis"].i < 0 else 0)
            if ra - axis - rb > 0:
                n.input[1] = _with_trailing_ones(model, inits, n.input[1], rb, ra - axis - rb, nodes, made)
            n.attribute.remove(attrs["axis"])
        nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _with_trailing_ones(model, inits, name: str, rank: int, ones: int, nodes: list, made: dict) -> str:
    """The name of `name` (of rank `rank`) with `ones` more trailing dims of 1: an
    initializer for a constant, else an Unsqueeze (opset-1 form) appended to `nodes`;
    made once per name and count (`made`)."""
    if (name, ones) in made:
        return made[(name, ones)]
    new = made[(name, ones)] = f"{name}.aligned{ones}"
    if name in inits:
        arr = numpy_helper.to_array(inits[name])
        t = numpy_helper.from_array(arr.reshape(arr.shape + (1,) * ones), new)
        model.graph.initializer.append(t)
        if any(i.name == name for i in model.graph.input):  # IR < 4: initializers are inputs too
            model.graph.input.append(helper.make_tensor_value_info(new, t.data_type, t.dims))
    else:
        nodes.append(helper.make_node("Unsqueeze", [name], [new], axes=list(range(rank, rank + ones))))
    return new


def _ranks(model: onnx.ModelProto) -> Dict[str, int]:
    """The ranks onnx's shape inference finds for the model's values (none if it fails)."""
    try:
        known = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - a model inference cannot read: no ranks known
        return {}
    return {vi.name: len(vi.type.tensor_type.shape.dim)
            for vi in list(known.graph.value_info) + list(known.graph.input)
            if vi.type.tensor_type.HasField("shape")}


def node_label(node: onnx.NodeProto) -> str:
    name = node.name or next((o for o in node.output if o), "?")
    return f"{node.op_type} node '{name}'"


def sort_nodes(gp: onnx.GraphProto, known: set) -> List[onnx.NodeProto]:
    """The nodes in a topological order (file order where it already is one)."""
    nodes = list(gp.node)
    producer: Dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if not o:
                continue
            if o in producer or o in known:
                raise FrontendError(f"{node_label(n)} defines '{o}', which is already defined "
                                    "(ONNX values are assigned once)")
            producer[o] = i
    deps: List[set] = []
    for n in nodes:
        d = set()
        for x in n.input:
            if not x:
                continue
            if x in producer:
                d.add(producer[x])
            elif x not in known:
                raise FrontendError(f"{node_label(n)} reads '{x}', which nothing in the graph "
                                    "defines (not an input, initializer or node output)")
        deps.append(d)
    for o in gp.output:
        if o.name not in producer and o.name not in known:
            raise FrontendError(f"graph output '{o.name}' is not defined by any node, input or "
                                "initializer")
    users: Dict[int, List[int]] = {i: [] for i in range(len(nodes))}
    indeg = [len(d) for d in deps]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    ready = [i for i, k in enumerate(indeg) if k == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for u in users[i]:
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        stuck = [node_label(nodes[i]) for i, k in enumerate(indeg) if k > 0]
        more = f" and {len(stuck) - 3} more" if len(stuck) > 3 else ""
        raise FrontendError(f"the graph has a cycle (nodes cannot be sorted topologically): "
                            f"{', '.join(stuck[:3])}{more}")
    return order


def _dims(vi: onnx.ValueInfoProto) -> Optional[List]:
    """A value's dims as ints (static) and strs (symbolic or unknown); None if no shape."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    out = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            out.append(d.dim_param)
        else:
            out.append("?")
    return out


def _example_shape(dims: Sequence) -> str:
    ex = [str(d) if isinstance(d, int) else ("1" if i == 0 else "224") for i, d in enumerate(dims)]
    return "x".join(ex) if ex else "1"


def model_inputs(gp: onnx.GraphProto) -> List[onnx.ValueInfoProto]:
    """The graph's real inputs (older exporters also list initializers as inputs)."""
    inits = {t.name for t in gp.initializer}
    return [vi for vi in gp.input if vi.name not in inits]


def resolve_input_shapes(src, given: Optional[Dict[str, Sequence[int]]] = None,
                         examples: Optional[Dict[str, Sequence[int]]] = None):
    """Shapes for the model's inputs with dynamic dims that `given` leaves open, and one
    line per choice: ({name: shape}, notes).

    A model exported with a dynamic batch (or, like PP-OCR's, dynamic height and width)
    cannot compile as it is, yet the user has usually shown the shape already: the
    calibration arrays (`examples`: {input: an array's shape}, samples along axis 0) have
    it. The batch is 1 unless the model fixes it; other dynamic dims come from the
    examples. Without an example, a dynamic batch alone still becomes 1. Anything else
    stays open, for input_types to report with the --input-shape it needs."""
    gp = load_model(src).graph
    given, examples = dict(given or {}), examples or {}
    out, notes = {}, []
    for vi in model_inputs(gp):
        if vi.name in given or not vi.type.HasField("tensor_type"):
            continue
        dims = _dims(vi)
        if dims is None or all(isinstance(d, int) for d in dims) or not dims:
            continue
        ex = list(examples.get(vi.name, ()))
        if len(ex) == len(dims) + 1:  # batches stacked on a leading axis
            ex = ex[1:]
        shape, source = None, ""
        if len(ex) == len(dims):
            cand = [d if isinstance(d, int) else (1 if i == 0 else int(e))
                    for i, (d, e) in enumerate(zip(dims, ex))]
            if all(not isinstance(d, int) or d == e or i == 0 for i, (d, e) in enumerate(zip(dims, ex))):
                shape, source = cand, "the calibration data"
        if shape is None and all(isinstance(d, int) for d in dims[1:]):
            shape, source = [1] + [int(d) for d in dims[1:]], "a batch of 1"
        if shape is None:
            continue
        out[vi.name] = tuple(shape)
        notes.append(f"input '{vi.name}' has dynamic dims [{', '.join(map(str, dims))}]: compiled as "
                     f"{'x'.join(map(str, shape))} from {source} (--input-shape "
                     f"{vi.name}=... to choose)")
    return out, notes


def input_types(gp: onnx.GraphProto, inits: set,
                input_shapes: Optional[Dict[str, Sequence[int]]]) -> Dict[str, TensorType]:
    shapes = dict(input_shapes or {})
    inputs = model_inputs(gp)
    names = [vi.name for vi in inputs]
    for k in shapes:
        if k not in names:
            if k in inits:
                raise FrontendError(f"input shape given for '{k}', which is an initializer "
                                    "(a constant), not an input of the model")
            raise FrontendError(f"input shape given for '{k}', which is not an input of the "
                                f"model (inputs: {', '.join(names) or 'none'})")
    types = {}
    for vi in inputs:
        if not vi.type.HasField("tensor_type"):
            raise FrontendError(f"input '{vi.name}' is not a tensor")
        dtype = ir_dtype(vi.type.tensor_type.elem_type, f"input '{vi.name}'")
        dims = _dims(vi)
        if vi.name in shapes:
            given = shapes[vi.name]
            try:
                given = [int(d) for d in given]
            except (TypeError, ValueError):
                raise FrontendError(f"input shape for '{vi.name}' must be a sequence of ints, "
                                    f"got {given!r}") from None
            if any(d < 0 for d in given):
                raise FrontendError(f"input shape for '{vi.name}' has a negative dim: {given}")
            if dims is not None:
                if len(given) != len(dims):
                    raise FrontendError(
                        f"input shape for '{vi.name}' has rank {len(given)}, but the model's input "
                        f"has rank {len(dims)} ({'x'.join(map(str, dims)) or 'scalar'})")
                for i, (g, d) in enumerate(zip(given, dims)):
                    if isinstance(d, int) and d != g:
                        raise FrontendError(
                            f"input shape for '{vi.name}' sets dim {i} to {g}, but the model "
                            f"fixes it to {d} (shape {'x'.join(map(str, dims))})")
            types[vi.name] = TensorType(tuple(given), dtype)
            continue
        if dims is None:
            raise FrontendError(f"input '{vi.name}' has no shape in the model; give one, e.g. "
                                f"--input-shape {vi.name}=1x3x224x224")
        dynamic = [d for d in dims if not isinstance(d, int)]
        if dynamic:
            raise FrontendError(
                f"input '{vi.name}' has dynamic dims ({', '.join(map(str, dynamic))}) in shape "
                f"[{', '.join(map(str, dims))}]; fix them with e.g. "
                f"--input-shape {vi.name}={_example_shape(dims)}")
        types[vi.name] = TensorType(tuple(dims), dtype)
    return types


def attr_value(a: onnx.AttributeProto):
    """An ONNX attribute as a Python value (str for strings, np.ndarray for tensors)."""
    A = onnx.AttributeProto
    if a.ref_attr_name:
        raise FrontendError(f"attribute '{a.name}' refers to a function attribute")
    if a.type == A.STRING:
        return a.s.decode("utf-8", "replace")
    if a.type == A.STRINGS:
        return [s.decode("utf-8", "replace") for s in a.strings]
    if a.type == A.TENSOR:
        return numpy_helper.to_array(a.t)
    if a.type == A.TENSORS:
        return [numpy_helper.to_array(t) for t in a.tensors]
    if a.type == A.INTS:
        return [int(v) for v in a.ints]
    if a.type == A.FLOATS:
        return [float(v) for v in a.floats]
    if a.type == A.INT:
        return int(a.i)
    if a.type == A.FLOAT:
        return float(a.f)
    return helper.get_attribute_value(a)
