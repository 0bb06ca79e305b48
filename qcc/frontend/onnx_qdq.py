"""QuantizeLinear / DequantizeLinear: importing a model that arrives already quantized.

A QDQ model (onnxruntime's quantize_static in QDQ format, PyTorch, NNCF) marks each
quantized tensor with a QuantizeLinear -> DequantizeLinear pair and stores weights
and biases as integer constants behind a DequantizeLinear. The importer keeps the
scales the model was quantized with, so calibration leaves those tensors alone and
the same passes compile the model to integer code:

  * an activation pair Q(x) -> DQ with one per-tensor u8/i8 scale and zero point
    becomes one `observe(x) {method="qdq", source="qdq", range, scale, zero_point,
    dtype}` (fixed params), whose float result replaces the DequantizeLinear output;
    every DequantizeLinear of that Q with the same params reads the same observe;
  * DequantizeLinear of an integer constant (int8 weights, int32 biases; per-tensor
    or per-axis) becomes a `dequantize` of the constant, whose `quant` says what its
    integers mean; it is not folded: `quantize` reads the integers from it;
  * QuantizeLinear of a float constant (fake-quantized weights) is folded into an
    integer constant with its `quant` set;
  * any other QuantizeLinear / DequantizeLinear (a Q whose integers leave the graph,
    a DQ of a uint8 graph input, a per-axis activation) becomes a core `quantize` /
    `dequantize` op, the integer value's `quant` set.

Opset 10 semantics and the per-axis form of opset 13 are supported; block
quantization, float8 and scales or zero points computed at run time are refused
with a FrontendError naming the node.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import onnx
from onnx import TensorProto

from qcc.ir import Value
from qcc.ir.types import FLOAT_DTYPES, INT_INFO, QuantParams, int_range

from .errors import FrontendError
from .onnx_load import ir_dtype, node_label
from .onnx_ops import converter

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# the integer types a QuantizeLinear may produce (qcc's quantize dtypes)
_Q_DTYPES = ("u8", "i8", "i16", "u4", "i4")
_DQ_DTYPES = _Q_DTYPES + ("i32",)
_FLOAT8 = {getattr(TensorProto, k) for k in ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2",
                                              "FLOAT8E5M2FNUZ", "FLOAT4E2M1") if hasattr(TensorProto, k)}


def _type_name(elem: int) -> str:
    return TensorProto.DataType.Name(elem) if elem in TensorProto.DataType.values() else str(elem)


def check_forms(gp: onnx.GraphProto, opset: int) -> None:
    """Refuse QDQ forms qcc cannot import before anything else reads their tensors,
    so the message names the node rather than an initializer of an odd type."""
    elem = {t.name: t.data_type for t in gp.initializer}
    for vi in gp.input:
        if vi.type.HasField("tensor_type"):
            elem.setdefault(vi.name, vi.type.tensor_type.elem_type)
    for n in gp.node:
        if n.op_type not in QDQ_OPS or n.domain not in ("", "ai.onnx"):
            continue
        label = node_label(n)
        if opset < 10:
            raise FrontendError(f"{label}: {n.op_type} needs opset 10 or later (the model "
                                f"imports opset {opset})")
        for a in n.attribute:
            if a.name == "block_size" and a.i:
                raise FrontendError(f"{label}: block quantization (block_size={a.i}) is not "
                                    "supported; qcc imports per-tensor and per-axis QDQ")
            if a.name == "output_dtype" and a.i in _FLOAT8:
                raise FrontendError(f"{label}: float8 quantization ({_type_name(a.i)}) is not "
                                    "supported; qcc imports integer QDQ (uint8, int8, ...)")
        # the integer side: Q's zero point, DQ's input and zero point
        ints = [n.input[2]] if len(n.input) > 2 else []
        if n.op_type == "DequantizeLinear":
            ints.append(n.input[0])
        for name in ints:
            t = elem.get(name)
            if t in _FLOAT8:
                raise FrontendError(f"{label}: float8 quantization ({_type_name(t)}) is not "
                                    "supported; qcc imports integer QDQ (uint8, int8, ...)")
            if t == TensorProto.UINT16:
                raise FrontendError(f"{label}: 16-bit unsigned quantization (UINT16) is not "
                                    "supported; qcc imports uint8, int8, int16, int4, uint4, int32")


@dataclass(frozen=True)
class _Params:
    scale: Tuple[float, ...]   # float32 values, as Python floats
    zero_point: Tuple[int, ...]
    axis: int                  # -1: per-tensor
    dtype: str                 # the integer side's IR dtype
    scale_dtype: str           # the float side's IR dtype (DequantizeLinear's result)

    def attrs(self) -> dict:
        return {"scale": list(self.scale), "zero_point": list(self.zero_point), "axis": self.axis}

    def quant(self) -> QuantParams:
        bits, signed = INT_INFO[self.dtype]
        return QuantParams(bits, signed, self.scale, self.zero_point,
                           axis=None if self.axis == -1 else self.axis)


def _qconst(n, i: int, what: str) -> Optional[np.ndarray]:
    v = n.input(i)
    if v is None:
        return None
    if not v.is_const:
        raise n.error(f"its {what} '{n.proto.input[i]}' is computed at run time; qcc imports "
                      f"only constant quantization parameters (static quantization)")
    return v.data


def _params(n, x: Value, dtype: Optional[str]) -> _Params:
    """Scale, zero point, axis and integer dtype of a Q/DQ node on `x`.

    `dtype` is the integer side's dtype when known (a DQ's input); None for a Q,
    whose integers take the zero point's type (uint8 without one, or output_dtype)."""
    scale = _qconst(n, 1, "scale")
    zp = _qconst(n, 2, "zero point")
    sv = n.input(1)
    if sv is None:
        raise n.error("has no scale input")
    if sv.dtype not in FLOAT_DTYPES:
        raise n.error(f"its scale is {sv.dtype}; ONNX scales are float")
    if dtype is None:
        if zp is not None:
            dtype = n.input(2).dtype
        elif n.attr("output_dtype"):
            dtype = ir_dtype(int(n.attr("output_dtype")), f"{n.label}'s output_dtype")
        else:
            dtype = "u8"
        allowed = _Q_DTYPES
    else:
        allowed = _DQ_DTYPES
    if dtype not in allowed:
        raise n.error(f"quantizes to {dtype}; qcc supports {', '.join(allowed)}")
    if zp is not None and n.input(2).dtype != dtype:
        raise n.error(f"its zero point is {n.input(2).dtype} but the integers are {dtype}")
    scale = np.asarray(scale, np.float32)
    if scale.ndim > 1:
        raise n.error(f"its scale has shape {list(scale.shape)}: block quantization is not "
                      "supported (per-tensor and per-axis are)")
    if scale.size == 0 or not np.all(np.isfinite(scale)) or not np.all(scale > 0):
        raise n.error(f"its scale must be positive and finite, got {scale.ravel()[:4].tolist()}")
    if zp is None:
        zp = np.zeros(scale.shape, np.int64)
    zp = np.asarray(zp).astype(np.int64)
    if zp.size not in (1, scale.size) or zp.ndim > 1:
        raise n.error(f"its zero point (shape {list(zp.shape)}) does not match its scale "
                      f"(shape {list(scale.shape)})")
    lo, hi = int_range(dtype)
    if zp.size and (zp.min() < lo or zp.max() > hi):
        raise n.error(f"its zero point is outside the {dtype} range {lo}..{hi}")
    if dtype == "i32" and np.any(zp != 0):
        raise n.error("an int32 DequantizeLinear must have zero point 0")
    axis = -1
    if scale.size > 1:
        if n.opset < 13:
            raise n.error(f"per-axis scales need opset 13 or later (the model imports opset "
                          f"{n.opset})")
        r = x.type.rank
        a = int(n.attr("axis", 1))
        if not -r <= a < r:
            raise n.error(f"axis {a} is out of range for rank {r}")
        axis = a + r if a < 0 else a
        if x.shape[axis] != scale.size:
            raise n.error(f"{scale.size} per-axis scales for {x.shape[axis]} elements on axis "
                          f"{axis} of {x.type}")
        if zp.size == 1:
            zp = np.full(scale.shape, int(zp.ravel()[0]), np.int64)
    return _Params(tuple(float(s) for s in scale.reshape(-1)),
                   tuple(int(z) for z in zp.reshape(-1)), axis, dtype, sv.dtype)


def _quant_kernel():
    from qcc.ops.quant import quantize

    return quantize


@converter("QuantizeLinear")
def _quantize_linear(imp, n) -> List[Value]:
    x = n.input(0)
    if x.dtype not in FLOAT_DTYPES and x.dtype != "i32":
        raise n.error(f"quantizes a {x.dtype} tensor; ONNX QuantizeLinear takes float or int32")
    p = _params(n, x, None)
    name = n.outputs[0]
    if x.is_const:  # fake-quantized weights: fold to the integer constant now
        arr = _quant_kernel()(x.data, scale=list(p.scale), zero_point=list(p.zero_point),
                              axis=p.axis, dtype=p.dtype)
        g = imp.graph
        v = g.add_const(name if not g.has_value(name) else imp.fresh(name), arr, p.dtype,
                        p.quant(), unique=False)
        return [v]
    out = imp.emit("quantize", [x], {**p.attrs(), "dtype": p.dtype}, name)
    out.quant = p.quant()
    return [out]


def _observer(imp, q: Value, p: _Params) -> Optional[Value]:
    """The observe op standing for Q(x) -> DQ when this DQ undoes the Q exactly: a
    per-tensor 8-bit activation pair. One observe serves every such DQ of the Q."""
    prod = q.producer
    if prod is None or prod.op != "quantize" or q.is_const or p.axis != -1 \
            or p.dtype not in ("u8", "i8") or p.scale_dtype != "f32":
        return None
    if (list(p.scale), list(p.zero_point), -1, p.dtype) != \
            (prod.attrs["scale"], prod.attrs["zero_point"], prod.attrs.get("axis", -1),
             prod.attrs["dtype"]):
        return None
    x = prod.inputs[0]
    if x.dtype != "f32":
        return None
    cache = imp.qdq_observers
    obs = cache.get(id(prod))
    if obs is None:
        lo, hi = int_range(p.dtype)
        s, z = p.scale[0], p.zero_point[0]
        obs = imp.emit("observe", [x], {"method": "qdq", "source": "qdq",
                                        "range": [float((lo - z) * s), float((hi - z) * s)],
                                        "scale": [s], "zero_point": [z], "dtype": p.dtype},
                       imp.fresh(x.name + ".obs"))
        cache[id(prod)] = obs
    return obs


@converter("DequantizeLinear")
def _dequantize_linear(imp, n) -> List[Value]:
    x = n.input(0)
    if x.dtype not in _DQ_DTYPES:
        raise n.error(f"dequantizes a {x.dtype} tensor; qcc supports {', '.join(_DQ_DTYPES)}")
    p = _params(n, x, x.dtype)
    obs = _observer(imp, x, p)
    if obs is not None:
        return [obs]
    q = p.quant()
    if x.is_const:
        if x.quant is not None and x.quant != q:  # the same integers read with other params
            x = imp.graph.add_const(imp.fresh(x.name + ".q"), x.data, x.dtype, q, unique=False)
        x.quant = q
    elif x.quant is None:
        x.quant = q  # e.g. a uint8 graph input: its integers mean what this DQ says
    elif x.quant.scale != q.scale or x.quant.zero_point != q.zero_point or x.quant.axis != q.axis:
        # passes read a dequantize's params from its operand's `quant`: one meaning per tensor
        raise n.error(f"reads '{n.proto.input[0]}' with scale/zero point/axis other than the "
                      "ones it was quantized (or first dequantized) with; qcc needs one set of "
                      "params per integer tensor")
    name = n.outputs[0]
    if p.scale_dtype == "f32":
        return [imp.emit("dequantize", [x], p.attrs(), name)]
    y = imp.emit("dequantize", [x], p.attrs(), imp.fresh(name + ".f32"))
    return [imp.emit("cast", [y], {"to": p.scale_dtype}, name)]
