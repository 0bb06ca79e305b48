"""Opaque `onnx.<OpType>` nodes: lowered by TVM's own ONNX frontend.

The node is rebuilt as the one-node ONNX model the interpreter evaluates
(`qcc.ops.onnx_opaque.node_model`), its inputs already bound to
the Relax values of the node's inputs (constants stay constants, so inputs an
ONNX converter needs to be static, like CumSum's axis or TopK's k, are), and the
frontend's converter emits straight into our block builder: no second module,
no call boundary, and its TE kernels land in the same IRModule.
"""
from __future__ import annotations

from typing import Any, Dict

import tvm
from tvm import relax

from .lower import LoweringError, tvm_dtype


def lower_opaque(cx, node, ins, attrs: Dict[str, Any]):
    if not node.op.startswith("onnx."):
        raise LoweringError(f"opaque op '{node.op}' has no lowering (only onnx.* ops do)")
    from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter

    from qcc.ops.onnx_opaque import OPSET, node_model

    # the same one-node model the interpreter evaluates (inputs in<i>, outputs out<i>)
    try:
        model = node_model(node)
    except Exception as e:
        raise LoweringError(f"{node.op} %{node.name}: cannot rebuild the ONNX node: {e}") from e
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    in_names = [f"in{i}" if v is not None else "" for i, v in enumerate(node.inputs)]
    out_names = [f"out{i}" for i in range(len(node.outputs))]

    imp = ONNXGraphImporter({}, {}, keep_params_in_input=False)
    imp.bb = cx.bb
    imp.opset = opset
    for n, e in zip(in_names, ins):
        if n:
            imp._nodes[n] = e
    try:
        imp._check_for_unsupported_ops(graph)
    except Exception as e:
        raise LoweringError(f"{node.op} %{node.name}: TVM's ONNX frontend has no converter "
                            f"for {graph.node[0].op_type}") from e
    try:
        imp._construct_nodes(graph)
    except (NotImplementedError, Exception) as e:  # the frontend raises many kinds
        raise LoweringError(f"{node.op} %{node.name}: TVM's ONNX frontend could not convert it "
                            f"(opset {opset}): {type(e).__name__}: {e}") from e
    results = []
    for n, v in zip(out_names, node.outputs):
        r = imp._nodes[n]
        if not isinstance(r, (relax.Var, tvm.ir.GenericConst)):
            r = cx.emit(r, v.name)
        r = cx.cast(r, tvm_dtype(v.dtype))
        results.append(r)
    return results
