"""The runner for opaque `onnx.<OpType>` nodes: ONNX's own reference evaluator.

Ops qcc does not model (NonMaxSuppression, Einsum, CumSum, ...) are carried
through the IR with their ONNX attributes as imported and their output types
fixed at import. To interpret them, a one-node ONNX model is built from the
node and evaluated by `onnx.reference.ReferenceEvaluator`. Building the
evaluator is the slow part (milliseconds), and calibration runs the same node
on many batches, so evaluators are cached by the serialised model.

Models are built at opset `OPSET`, the opset docs/ops.md fixes for the IR.
A few ops whose reference kernel is wrong run a numpy kernel instead (`_KERNELS`).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcc.ir.opdef import register_opaque_dialect
from qcc.ir.types import to_numpy_dtype

OPSET = 21
_CACHE_SIZE = 128
_cache: "OrderedDict[bytes, object]" = OrderedDict()

ONNX_DTYPES = {
    "f32": TensorProto.FLOAT, "f16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16,
    "f64": TensorProto.DOUBLE, "i64": TensorProto.INT64, "i32": TensorProto.INT32,
    "i16": TensorProto.INT16, "i8": TensorProto.INT8, "u8": TensorProto.UINT8,
    "bool": TensorProto.BOOL,
}


def _onnx_dtype(dtype: str, what: str) -> int:
    try:
        return ONNX_DTYPES[dtype]
    except KeyError:
        raise NotImplementedError(f"{what}: dtype {dtype} cannot be passed to the ONNX "
                                  "reference evaluator") from None


def to_attribute(key: str, value) -> onnx.AttributeProto:
    """An ONNX attribute from an IR attribute value (ints, floats, strings, lists, tensors)."""
    if isinstance(value, np.ndarray):
        return helper.make_attribute(key, numpy_helper.from_array(value))
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)):
        items = [v.item() if isinstance(v, np.generic) else v for v in value]
        if not items:
            return helper.make_attribute(key, [], attr_type=onnx.AttributeProto.INTS)
        if isinstance(items[0], np.ndarray):
            items = [numpy_helper.from_array(v) for v in items]
        return helper.make_attribute(key, items)
    return helper.make_attribute(key, value)


def node_model(node) -> onnx.ModelProto:
    """The one-node ONNX model computing an `onnx.<OpType>` node."""
    op_type = node.op.split(".", 1)[1]
    what = f"{node.op} %{node.name}"
    in_names = ["" if v is None else f"in{i}" for i, v in enumerate(node.inputs)]
    out_names = [f"out{i}" for i in range(len(node.outputs))]
    onode = helper.make_node(op_type, in_names, out_names, name=node.name)
    onode.attribute.extend(to_attribute(k, v) for k, v in sorted(node.attrs.items()))
    inputs = [helper.make_tensor_value_info(n, _onnx_dtype(v.dtype, what), list(v.shape))
              for n, v in zip(in_names, node.inputs) if v is not None]
    outputs = [helper.make_tensor_value_info(n, _onnx_dtype(v.dtype, what), list(v.shape))
               for n, v in zip(out_names, node.outputs)]
    graph = helper.make_graph([onode], op_type, inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _evaluator(model: onnx.ModelProto):
    from onnx.reference import ReferenceEvaluator

    key = model.SerializeToString()
    ev = _cache.get(key)
    if ev is None:
        ev = ReferenceEvaluator(model)
        _cache[key] = ev
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
    return ev


def _gather_elements(node, data, indices):
    # onnx 1.23's kernel uses np.choose, which takes at most 64 choices; beyond that its
    # fallback returns one element per row (RoBERTa's position ids index a [1,128] table)
    axis = node.attrs.get("axis", 0)
    indices = np.asarray(indices).astype(np.int64)
    indices = np.where(indices < 0, indices + data.shape[axis], indices)
    return [np.take_along_axis(data, indices, axis=axis)]


# ops whose ONNX reference kernel gives wrong results: (node, *inputs) -> outputs
_KERNELS = {"GatherElements": _gather_elements}


def run_onnx_node(node, inputs) -> List[np.ndarray]:
    """Evaluate an opaque ONNX node on numpy inputs; outputs cast to the declared dtypes."""
    kernel = _KERNELS.get(node.op.split(".", 1)[1])
    if kernel is not None:
        results = kernel(node, *[np.asarray(a) for a in inputs])
    else:
        ev = _evaluator(node_model(node))
        feeds = {f"in{i}": np.asarray(a) for i, a in enumerate(inputs) if a is not None}
        results = ev.run(None, feeds)
    return [np.asarray(r).astype(to_numpy_dtype(v.dtype), copy=False)
            for r, v in zip(results, node.outputs)]


register_opaque_dialect("onnx", run_onnx_node)
