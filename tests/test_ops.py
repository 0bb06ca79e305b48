"""Every core op's kernel against ONNX Runtime, and its `infer` against its kernel.

Each case is one op with one attribute variant: the qcc form (resolved attributes)
and the equivalent one-node ONNX model (shape-like operands as inputs, negative
axes where ONNX allows them). The kernel must match ORT to 1e-5 of the output's
range (exactly for integers and bools), and `infer` must predict the kernel's
output types.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

from qcc.ir.opdef import (ELEMENTWISE, INTEGER, MONOTONIC, RANGE_NARROWING, RANGE_PRESERVING,
                          SHARED_SCALE, all_ops, get_op)
from qcc.ir.types import TensorType

OPSET = 21
I64 = np.int64
_rng = np.random.default_rng(1234)


def R(*shape, lo=-2.0, hi=2.0, dtype=np.float32):
    return _rng.uniform(lo, hi, shape).astype(dtype)


def I(*shape, lo=-10, hi=10, dtype=np.int32):
    return _rng.integers(lo, hi, shape).astype(dtype)


def ints(*v):
    return np.array(v, dtype=I64)


class Case:
    def __init__(self, op, inputs, attrs=None, onnx_op=None, onnx_inputs=None, onnx_attrs=None,
                 id=None):
        self.op, self.inputs, self.attrs = op, list(inputs), dict(attrs or {})
        self.onnx_op = onnx_op
        self.onnx_inputs = list(inputs) if onnx_inputs is None else list(onnx_inputs)
        self.onnx_attrs = dict(onnx_attrs or {})
        self.id = id or op


CASES = []


def case(*a, **k):
    CASES.append(Case(*a, **k))


# --- conv ------------------------------------------------------------------------------
def conv_case(id, x, w, b=None, strides=None, pads=None, dilations=None, group=1):
    r = x.ndim - 2
    attrs = dict(strides=strides or [1] * r, pads=pads or [0] * 2 * r,
                 dilations=dilations or [1] * r, group=group)
    ins = [x, w] + ([b] if b is not None else [])
    case("conv", ins, attrs, "Conv", onnx_attrs=attrs, id=f"conv-{id}")


conv_case("3x3-pad-bias", R(2, 3, 9, 9), R(4, 3, 3, 3), R(4), pads=[1, 1, 1, 1])
conv_case("stride2-asym-pads", R(1, 3, 10, 11), R(5, 3, 3, 3), strides=[2, 2], pads=[0, 0, 1, 1])
conv_case("dilation2", R(1, 4, 12, 12), R(3, 4, 3, 3), R(3), dilations=[2, 2], pads=[2, 1, 2, 1])
conv_case("groups2", R(1, 4, 8, 8), R(6, 2, 3, 3), R(6), pads=[1, 1, 1, 1], group=2)
conv_case("depthwise-s2", R(1, 8, 15, 15), R(8, 1, 3, 3), R(8), strides=[2, 2], pads=[1, 1, 1, 1],
          group=8)
conv_case("depthwise-mult2", R(1, 4, 7, 7), R(8, 1, 3, 3), R(8), pads=[1, 1, 1, 1], group=4)
# large enough that the interpreter's taps run over several blocks of channels, per image
conv_case("depthwise-blocks", R(2, 6, 130, 140), R(12, 1, 3, 3), R(12), strides=[2, 1], pads=[1, 1, 1, 1],
          dilations=[1, 2], group=6)
conv_case("1x1", R(2, 16, 5, 5), R(8, 16, 1, 1), R(8))
conv_case("5x5-s3-rect", R(1, 2, 14, 17), R(3, 2, 5, 3), strides=[3, 2], pads=[2, 1, 0, 1])
conv_case("1d", R(2, 3, 20), R(4, 3, 5), R(4), strides=[2], pads=[2, 1], dilations=[2])
conv_case("3d", R(1, 2, 6, 7, 5), R(3, 2, 3, 3, 2), R(3), strides=[1, 2, 1],
          pads=[1, 1, 0, 1, 0, 1])
# fewer output than input channels at unit stride: one matmul per tap over shifted rows
conv_case("thin-3x3-batch2", R(2, 8, 9, 10), R(3, 8, 3, 3), R(3), pads=[1, 1, 1, 1])
conv_case("thin-dilated-rect", R(1, 6, 11, 9), R(2, 6, 3, 2), dilations=[2, 3], pads=[2, 1, 1, 0])
conv_case("thin-1d", R(2, 6, 20), R(3, 6, 5), R(3), dilations=[2], pads=[2, 1])
conv_case("thin-3d", R(1, 4, 6, 7, 5), R(2, 4, 3, 3, 2), R(2), pads=[1, 1, 0, 1, 0, 1])


def convt_case(id, x, w, b=None, strides=None, pads=None, dilations=None, output_padding=None,
               group=1):
    r = x.ndim - 2
    attrs = dict(strides=strides or [1] * r, pads=pads or [0] * 2 * r,
                 dilations=dilations or [1] * r, output_padding=output_padding or [0] * r,
                 group=group)
    ins = [x, w] + ([b] if b is not None else [])
    case("conv_transpose", ins, attrs, "ConvTranspose", onnx_attrs=attrs, id=f"convt-{id}")


convt_case("plain", R(1, 3, 5, 5), R(3, 2, 3, 3), R(2))
convt_case("s2-p1-op1", R(2, 4, 6, 5), R(4, 3, 3, 3), R(3), strides=[2, 2], pads=[1, 1, 1, 1],
           output_padding=[1, 1])
convt_case("groups-dilation", R(1, 4, 5, 6), R(4, 2, 3, 2), R(4), strides=[2, 1], dilations=[2, 2],
           pads=[1, 0, 2, 1], group=2)
convt_case("k4-s2-p1", R(1, 8, 4, 4), R(8, 4, 4, 4), strides=[2, 2], pads=[1, 1, 1, 1])
convt_case("1d", R(1, 2, 7), R(2, 3, 4), R(3), strides=[3], pads=[1, 2], output_padding=[2])
convt_case("depthwise", R(1, 6, 5, 5), R(6, 1, 3, 3), strides=[2, 2], group=6)

# --- dense and normalisation --------------------------------------------------------------
case("batch_norm", [R(2, 3, 4, 5), R(3), R(3), R(3), R(3, lo=0.1, hi=2)], dict(epsilon=1e-3),
     "BatchNormalization", onnx_attrs=dict(epsilon=1e-3), id="batch_norm-4d")
case("batch_norm", [R(5, 3), R(3), R(3), R(3), R(3, lo=0.1, hi=2)], {}, "BatchNormalization",
     id="batch_norm-2d")
case("gemm", [R(3, 4), R(4, 5), R(5)], {}, "Gemm", id="gemm-bias-vector")
case("gemm", [R(4, 3), R(5, 4), R(3, 5)], dict(alpha=0.5, beta=2.0, trans_a=1, trans_b=1), "Gemm",
     onnx_attrs=dict(alpha=0.5, beta=2.0, transA=1, transB=1), id="gemm-trans-alpha-beta")
case("gemm", [R(2, 6), R(6, 3)], dict(trans_b=0), "Gemm", id="gemm-no-c")
case("gemm", [R(2, 6), R(3, 6), R(1, 1)], dict(trans_b=1), "Gemm", onnx_attrs=dict(transB=1),
     id="gemm-c-scalar")
case("matmul", [R(3, 4), R(4, 5)], {}, "MatMul", id="matmul-2d")
case("matmul", [R(2, 1, 3, 4), R(5, 4, 6)], {}, "MatMul", id="matmul-batch-broadcast")
case("matmul", [R(4), R(2, 4, 3)], {}, "MatMul", id="matmul-1d-left")
case("matmul", [R(2, 3, 4), R(4)], {}, "MatMul", id="matmul-1d-right")
case("matmul", [I(3, 4), I(4, 2)], {}, "MatMul", id="matmul-int32")
case("softmax", [R(2, 3, 5, lo=-5, hi=5)], dict(axis=1), "Softmax", onnx_attrs=dict(axis=1))
case("softmax", [R(4, 7, lo=-30, hi=30)], dict(axis=1), "Softmax", onnx_attrs=dict(axis=-1),
     id="softmax-last")
case("log_softmax", [R(2, 3, 5, lo=-5, hi=5)], dict(axis=2), "LogSoftmax", onnx_attrs=dict(axis=-1))
case("layer_norm", [R(2, 5, 8), R(8), R(8)], dict(axis=2, epsilon=1e-5), "LayerNormalization",
     onnx_attrs=dict(axis=-1, epsilon=1e-5), id="layer_norm-last")
case("layer_norm", [R(2, 3, 4, 5), R(3, 4, 5)], dict(axis=1, epsilon=1e-3), "LayerNormalization",
     onnx_attrs=dict(axis=1, epsilon=1e-3), id="layer_norm-axis1-nobias")


# --- pools -----------------------------------------------------------------------------------
def pool_case(op, id, x, k, strides=None, pads=None, dilations=None, ceil_mode=0, **extra):
    r = x.ndim - 2
    attrs = dict(kernel_shape=k, strides=strides or [1] * r, pads=pads or [0] * 2 * r,
                 ceil_mode=ceil_mode, **extra)
    if dilations is not None or op == "max_pool":
        attrs["dilations"] = dilations or [1] * r
    onnx_op = {"max_pool": "MaxPool", "avg_pool": "AveragePool"}[op]
    case(op, [x], attrs, onnx_op, onnx_attrs=attrs, id=f"{op}-{id}")


for op in ("max_pool", "avg_pool"):
    pool_case(op, "3x3-s2-p1", R(2, 3, 11, 11), [3, 3], [2, 2], [1, 1, 1, 1])
    pool_case(op, "2x2-s2", R(1, 2, 8, 9), [2, 2], [2, 2])
    pool_case(op, "ceil", R(1, 2, 10, 10), [3, 3], [2, 2], ceil_mode=1)
    pool_case(op, "ceil-pads", R(1, 2, 9, 8), [3, 2], [2, 3], [1, 0, 1, 1], ceil_mode=1)
    pool_case(op, "ceil-window-in-pad", R(1, 1, 5, 5), [2, 2], [2, 2], [1, 1, 1, 1], ceil_mode=1)
    pool_case(op, "asym-pads", R(1, 3, 7, 6), [3, 3], [1, 2], [0, 1, 2, 1])
    pool_case(op, "1d", R(2, 3, 13), [4], [3], [1, 2], ceil_mode=1)
    pool_case(op, "3d", R(1, 2, 5, 6, 7), [2, 3, 2], [2, 1, 2], [0, 1, 1, 1, 1, 0])
    pool_case(op, "dilated", R(1, 2, 12, 12), [3, 3], [1, 1], [2, 2, 2, 2], dilations=[2, 2])
for cip in (0, 1):
    pool_case("avg_pool", f"cip{cip}-pads", R(1, 2, 7, 7), [3, 3], [2, 2], [1, 1, 1, 1],
              count_include_pad=cip)
    pool_case("avg_pool", f"cip{cip}-ceil-pads", R(1, 2, 8, 7), [3, 3], [2, 2], [1, 0, 1, 1],
              ceil_mode=1, count_include_pad=cip)
    pool_case("avg_pool", f"cip{cip}-dilated-ceil", R(1, 1, 9, 10), [2, 3], [2, 2], [1, 1, 0, 1],
              dilations=[2, 1], ceil_mode=1, count_include_pad=cip)
pool_case("max_pool", "int8", R(1, 2, 6, 6, lo=-100, hi=100).astype(np.int8), [3, 3], [2, 2],
          [1, 1, 1, 1])
case("global_avg_pool", [R(2, 3, 5, 6)], {}, "GlobalAveragePool")
case("global_max_pool", [R(2, 3, 5, 6)], {}, "GlobalMaxPool")
case("global_avg_pool", [R(2, 3, 7)], {}, "GlobalAveragePool", id="global_avg_pool-1d")

# --- elementwise ----------------------------------------------------------------------------
for op, onnx_op in (("add", "Add"), ("sub", "Sub"), ("mul", "Mul"), ("div", "Div"),
                    ("min", "Min"), ("max", "Max")):
    b = R(1, 4, 1) if op != "div" else R(1, 4, 1, lo=0.5, hi=2)
    case(op, [R(3, 4, 5), b], {}, onnx_op, id=f"{op}-broadcast")
    case(op, [R(5), R(2, 3, 1)], {}, onnx_op, id=f"{op}-broadcast-both")
    nz = I(3, 4, lo=1, hi=7) * np.where(_rng.random((3, 4)) < 0.5, -1, 1).astype(np.int32)
    case(op, [I(3, 4, lo=-50, hi=50), nz], {}, onnx_op, id=f"{op}-int32")
case("add", [I(4, 4, lo=-128, hi=127, dtype=np.int8), I(4, lo=-128, hi=127, dtype=np.int8)], {},
     "Add", id="add-int8-wraps")
case("pow", [R(3, 4, lo=0.1, hi=3), R(4, lo=-2, hi=2)], {}, "Pow")
case("pow", [R(3, 4, lo=-3, hi=3), ints(2, 3, 1, 0)], {}, "Pow", id="pow-int-exponent")

UNARY = {"sqrt": ("Sqrt", 0.01, 4), "erf": ("Erf", -3, 3), "exp": ("Exp", -4, 4),
         "log": ("Log", 0.01, 9), "neg": ("Neg", -3, 3), "abs": ("Abs", -3, 3),
         "reciprocal": ("Reciprocal", 0.2, 3), "floor": ("Floor", -5, 5), "ceil": ("Ceil", -5, 5),
         "sin": ("Sin", -4, 4), "cos": ("Cos", -4, 4), "tanh": ("Tanh", -4, 4),
         "sigmoid": ("Sigmoid", -20, 20), "relu": ("Relu", -3, 3),
         "hard_swish": ("HardSwish", -5, 5)}
for op, (onnx_op, lo, hi) in UNARY.items():
    case(op, [R(3, 50, lo=lo, hi=hi)], {}, onnx_op)
case("neg", [I(10)], {}, "Neg", id="neg-int32")
case("abs", [I(10)], {}, "Abs", id="abs-int32")
case("relu", [I(10, dtype=np.int8)], {}, "Relu", id="relu-int8")
case("not", [_rng.random((3, 4)) < 0.5], {}, "Not")
case("leaky_relu", [R(4, 10)], dict(alpha=0.1), "LeakyRelu", onnx_attrs=dict(alpha=0.1))
case("leaky_relu", [R(4, 10)], {}, "LeakyRelu", id="leaky_relu-default")
case("prelu", [R(2, 3, 4, 4), R(3, 1, 1)], {}, "PRelu")
case("prelu", [R(2, 6), R(1)], {}, "PRelu", id="prelu-scalar")
case("clip", [R(4, 10, lo=-3, hi=3)], dict(min=-1.0, max=0.5), "Clip",
     onnx_inputs=[None, np.float32(-1), np.float32(0.5)], id="clip-both")
case("clip", [R(4, 10, lo=-3, hi=3)], dict(min=0.0), "Clip", onnx_inputs=[None, np.float32(0)],
     id="clip-min")
case("clip", [R(4, 10, lo=-3, hi=3)], dict(max=6.0), "Clip",
     onnx_inputs=[None, None, np.float32(6)], id="clip-max")
case("clip", [I(20, lo=-50, hi=50)], dict(min=-7.0, max=12.0), "Clip",
     onnx_inputs=[None, np.int32(-7), np.int32(12)], id="clip-int32")
case("hard_sigmoid", [R(4, 10, lo=-6, hi=6)], dict(alpha=0.25, beta=0.4), "HardSigmoid",
     onnx_attrs=dict(alpha=0.25, beta=0.4))
case("hard_sigmoid", [R(4, 10, lo=-6, hi=6)], {}, "HardSigmoid", id="hard_sigmoid-default")
case("gelu", [R(4, 30, lo=-5, hi=5)], {}, "Gelu", id="gelu-exact")
case("gelu", [R(4, 30, lo=-5, hi=5)], dict(approximate="tanh"), "Gelu",
     onnx_attrs=dict(approximate="tanh"), id="gelu-tanh")
case("where", [_rng.random((3, 1, 5)) < 0.5, R(4, 5), R(3, 4, 1)], {}, "Where")
for op, onnx_op in (("equal", "Equal"), ("less", "Less"), ("greater", "Greater")):
    case(op, [I(3, 4, lo=0, hi=3), I(4, lo=0, hi=3)], {}, onnx_op, id=f"{op}-int32")
    case(op, [np.round(R(3, 4)), np.round(R(3, 1))], {}, onnx_op, id=f"{op}-f32")

CASTS = [(R(20, lo=-100, hi=100), "i32"), (R(20, lo=0, hi=250), "u8"), (R(20, lo=-100, hi=100), "i8"),
         (I(20, lo=-1000, hi=1000).astype(np.int64), "f32"), (np.round(R(20)), "bool"),
         (_rng.random(20) < 0.5, "f32"), (R(20), "f16"), (R(20, lo=-1e4, hi=1e4), "i64")]
_ONNX_TO = {"i32": 6, "u8": 2, "i8": 3, "f32": 1, "bool": 9, "f16": 10, "i64": 7}
for x, to in CASTS:
    case("cast", [x], dict(to=to), "Cast", onnx_attrs=dict(to=_ONNX_TO[to]),
         id=f"cast-{x.dtype}-{to}")

# --- reductions ------------------------------------------------------------------------------
for op, onnx_op in (("reduce_mean", "ReduceMean"), ("reduce_sum", "ReduceSum"),
                    ("reduce_max", "ReduceMax"), ("reduce_min", "ReduceMin"),
                    ("reduce_prod", "ReduceProd")):
    x = R(3, 4, 5, lo=0.5, hi=1.5)
    case(op, [x], dict(axes=[1]), onnx_op, onnx_inputs=[x, ints(1)], id=f"{op}-axis1")
    case(op, [x], dict(axes=[0, 2], keepdims=0), onnx_op, onnx_inputs=[x, ints(0, -1)],
         onnx_attrs=dict(keepdims=0), id=f"{op}-axes02-nokeep")
    case(op, [x], dict(axes=[]), onnx_op, id=f"{op}-all")
case("reduce_sum", [I(3, 6)], dict(axes=[1], keepdims=0), "ReduceSum",
     onnx_inputs=[None, ints(1)], onnx_attrs=dict(keepdims=0), id="reduce_sum-int32")
for op, onnx_op in (("arg_max", "ArgMax"), ("arg_min", "ArgMin")):
    x = I(4, 6, 3, lo=0, hi=3).astype(np.float32)  # many ties
    case(op, [x], dict(axis=1), onnx_op, onnx_attrs=dict(axis=1), id=f"{op}-axis1")
    case(op, [x], dict(axis=2, keepdims=0, select_last_index=1), onnx_op,
         onnx_attrs=dict(axis=-1, keepdims=0, select_last_index=1), id=f"{op}-last-nokeep")
    case(op, [x], {}, onnx_op, id=f"{op}-default")

# --- data movement ---------------------------------------------------------------------------
x = R(2, 3, 4, 5)
case("reshape", [x], dict(shape=[6, 20]), "Reshape", onnx_inputs=[x, ints(6, -1)])
case("flatten", [x], dict(axis=2), "Flatten", onnx_attrs=dict(axis=2))
case("flatten", [x], dict(axis=0), "Flatten", onnx_attrs=dict(axis=0), id="flatten-0")
case("flatten", [x], {}, "Flatten", id="flatten-default")
case("transpose", [x], dict(perm=[0, 2, 3, 1]), "Transpose", onnx_attrs=dict(perm=[0, 2, 3, 1]))
y = R(2, 1, 4, 1)
case("squeeze", [y], dict(axes=[1, 3]), "Squeeze", onnx_inputs=[y, ints(1, -1)])
case("unsqueeze", [R(3, 4)], dict(axes=[0, 3]), "Unsqueeze", onnx_inputs=[None, ints(0, -1)])
case("concat", [R(2, 3, 4), R(2, 1, 4), R(2, 5, 4)], dict(axis=1), "Concat",
     onnx_attrs=dict(axis=1))
case("concat", [I(2, 3), I(2, 2)], dict(axis=1), "Concat", onnx_attrs=dict(axis=-1),
     id="concat-int32")
case("split", [x], dict(axis=3, split=[1, 3, 1]), "Split", onnx_inputs=[x, ints(1, 3, 1)],
     onnx_attrs=dict(axis=3))
case("split", [x], dict(split=[1, 1]), "Split", onnx_inputs=[x, ints(1, 1)], id="split-axis0")
case("slice", [x], dict(starts=[1, 0], ends=[3, 5], axes=[1, 3], steps=[1, 2]), "Slice",
     onnx_inputs=[x, ints(1, 0), ints(100, 5), ints(1, 3), ints(1, 2)], id="slice-step2")
case("slice", [x], dict(starts=[3, 4], ends=[-1, 0], axes=[2, 3], steps=[-1, -2]), "Slice",
     onnx_inputs=[x, ints(-1, 100), ints(-100, 0), ints(2, 3), ints(-1, -2)], id="slice-backwards")
case("slice", [x], dict(starts=[0], ends=[2], axes=[0], steps=[1]), "Slice",
     onnx_inputs=[x, ints(0), ints(2), ints(0), ints(1)], id="slice-simple")
case("gather", [R(5, 4), ints(0, -1, 3, 3)], dict(axis=0), "Gather", id="gather-negative")
case("gather", [R(2, 5, 3), I(2, 2, lo=0, hi=5)], dict(axis=1), "Gather", onnx_attrs=dict(axis=1),
     id="gather-2d-int32")
case("gather", [R(2, 5, 3), np.array(2, dtype=I64)], dict(axis=1), "Gather",
     onnx_attrs=dict(axis=1), id="gather-scalar")
p = R(1, 2, 4, 5)
for mode in ("constant", "reflect", "edge", "wrap"):
    case("pad", [p], dict(pads=[0, 0, 1, 2, 0, 1, 2, 1], mode=mode, value=1.5), "Pad",
         onnx_inputs=[p, ints(0, 0, 1, 2, 0, 1, 2, 1), np.float32(1.5)],
         onnx_attrs=dict(mode=mode), id=f"pad-{mode}")
case("pad", [p], dict(pads=[0, 0, -1, 2, 0, 0, 1, -2]), "Pad",
     onnx_inputs=[p, ints(0, 0, -1, 2, 0, 0, 1, -2)], id="pad-negative")
case("pad", [I(3, 4)], dict(pads=[1, 1, 1, 1], value=7.0), "Pad",
     onnx_inputs=[None, ints(1, 1, 1, 1), np.int32(7)], id="pad-int32")
case("expand", [R(3, 1)], dict(shape=[2, 3, 4]), "Expand", onnx_inputs=[None, ints(2, 1, 4)])
case("expand", [R(1, 4)], dict(shape=[3, 4]), "Expand", onnx_inputs=[None, ints(3, 1)],
     id="expand-bidirectional")
case("tile", [R(2, 3)], dict(repeats=[2, 3]), "Tile", onnx_inputs=[None, ints(2, 3)])
for mode in ("DCR", "CRD"):
    case("depth_to_space", [R(2, 8, 3, 4)], dict(blocksize=2, mode=mode), "DepthToSpace",
         onnx_attrs=dict(blocksize=2, mode=mode), id=f"depth_to_space-{mode}")


# --- resize ----------------------------------------------------------------------------------
def resize_case(id, x, sizes, scales=None, **attrs):
    qattrs = dict(sizes=list(sizes), **attrs)
    if scales is not None:
        qattrs["scales"] = list(scales)
        oin = [x, None, np.array(scales, np.float32)]
    else:
        oin = [x, None, None, np.array(sizes, I64)]
    case("resize", [x], qattrs, "Resize", onnx_inputs=oin, onnx_attrs=attrs, id=f"resize-{id}")


rx = R(1, 2, 5, 6)
for ct in ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel",
           "half_pixel_symmetric", "tf_half_pixel_for_nn"):
    for nm in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
        resize_case(f"nearest-{ct}-{nm}-up", rx, [1, 2, 10, 15], mode="nearest",
                    coordinate_transformation_mode=ct, nearest_mode=nm)
    resize_case(f"nearest-{ct}-down", rx, [1, 2, 3, 4], mode="nearest",
                coordinate_transformation_mode=ct)
for ct in ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel",
           "half_pixel_symmetric"):
    resize_case(f"linear-{ct}-up", rx, [1, 2, 9, 13], mode="linear",
                coordinate_transformation_mode=ct)
    resize_case(f"linear-{ct}-down", rx, [1, 2, 3, 4], mode="linear",
                coordinate_transformation_mode=ct)
    resize_case(f"cubic-{ct}-up", rx, [1, 2, 8, 11], mode="cubic",
                coordinate_transformation_mode=ct)
resize_case("cubic-a-exclude", rx, [1, 2, 9, 4], mode="cubic", cubic_coeff_a=-0.5,
            exclude_outside=1)
resize_case("nearest-scale2x", rx, [1, 2, 10, 12], mode="nearest")
resize_case("nearest-noninteger-scales", rx, [1, 2, 12, 8], scales=[1, 1, 2.5, 1.4], mode="nearest",
            coordinate_transformation_mode="asymmetric")
resize_case("linear-noninteger-scales", rx, [1, 2, 12, 8], scales=[1, 1, 2.5, 1.4], mode="linear")
resize_case("nearest-uint8", I(1, 3, 4, 4, lo=0, hi=255, dtype=np.uint8), [1, 3, 8, 8],
            mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")


# --- the checks ------------------------------------------------------------------------------
def _ort(c: Case, out_dtypes):
    names, feeds, vis = [], {}, []
    # onnx_inputs[i] None means "the qcc operand i" where there is one, else an absent input
    for i in range(max(len(c.onnx_inputs), len(c.inputs))):
        a = c.onnx_inputs[i] if i < len(c.onnx_inputs) else None
        if a is None and i < len(c.inputs):
            a = c.inputs[i]
        if a is None:
            names.append("")
            continue
        a = np.asarray(a)
        names.append(f"i{i}")
        feeds[f"i{i}"] = a
        vis.append(helper.make_tensor_value_info(f"i{i}", helper.np_dtype_to_tensor_dtype(a.dtype),
                                                 list(a.shape)))
    while names and names[-1] == "":
        names.pop()
    outs = [f"o{i}" for i in range(len(out_dtypes))]
    ovis = [helper.make_tensor_value_info(o, helper.np_dtype_to_tensor_dtype(dt), None)
            for o, dt in zip(outs, out_dtypes)]
    node = helper.make_node(c.onnx_op, names, outs, **c.onnx_attrs)
    model = helper.make_model(helper.make_graph([node], "t", vis, ovis),
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_kernel_matches_onnxruntime(c: Case):
    d = get_op(c.op)
    assert d is not None and not d.opaque
    assert d.check_attrs(c.attrs) is None, d.check_attrs(c.attrs)
    attrs = d.with_defaults(c.attrs)
    got = d.kernel(*c.inputs, **attrs)
    got = list(got) if isinstance(got, tuple) else [got]

    inferred = list(d.infer([TensorType.of(np.asarray(a)) for a in c.inputs], attrs))
    assert inferred == [TensorType.of(g) for g in got], "infer disagrees with the kernel"

    want = _ort(c, [g.dtype for g in got])
    assert len(want) == len(got)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
        if g.dtype.kind in "fc":
            span = float(np.max(w) - np.min(w)) if w.size else 0.0
            err = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)))) if w.size else 0.0
            assert err <= 1e-5 * max(span, 1.0), f"max abs error {err} (output range {span})"
        else:
            np.testing.assert_array_equal(g, w)


def _doc_table(header: str):
    """Rows (first cell, second cell) of the docs/ops.md table whose header starts `| header |`."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "ops.md").read_text()
    rows, inside = [], False
    for line in text.splitlines():
        if line.startswith(f"| {header} |"):
            inside = True
        elif inside and line.startswith("|") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.append((cells[0], cells[1]))
        elif inside and not line.startswith("|"):
            inside = False
    return rows


def _doc_ops():
    return {n.strip() for first, _ in _doc_table("op") for n in first.split(",")}


def test_every_documented_op_is_declared_and_tested():
    # the integer pipeline's ops (qcc/ops/quant.py) join the table with issue 4
    declared = {n for n, d in all_ops().items() if d.kernel.__module__ != "qcc.ops.quant"}
    doc = _doc_ops()
    assert doc - declared == set(), "documented but not declared"
    assert declared - doc == set(), "declared but not documented"
    assert declared - {c.op for c in CASES} == set(), "declared but not tested"


def test_traits_table_in_docs_matches_registry():
    ops = {n: d for n, d in all_ops().items() if d.kernel.__module__ != "qcc.ops.quant"}
    table = dict(_doc_table("trait"))
    assert table, "docs/ops.md has no traits table"
    moving = {n for n, d in ops.items() if d.has(RANGE_PRESERVING)}
    for trait, cell in table.items():
        names = {n.strip() for n in cell.split(",")}
        if "the range-preserving ops" in names:
            names = (names - {"the range-preserving ops"}) | moving
        assert names == {n for n, d in ops.items() if d.has(trait)}, trait


def test_traits():
    ops = all_ops()
    for name in ("reshape", "flatten", "transpose", "squeeze", "unsqueeze", "max_pool", "slice",
                 "pad", "gather", "split", "expand", "tile", "depth_to_space", "global_max_pool",
                 "resize"):
        assert ops[name].has(RANGE_PRESERVING), name
    assert ops["concat"].has(SHARED_SCALE)
    for name in ("conv", "gemm", "matmul", "add", "mul", "concat", "relu", "max_pool", "avg_pool"):
        assert ops[name].has(INTEGER), name
    for name in ("add", "sub", "mul", "div", "min", "max", "pow", "where", "equal"):
        assert ops[name].has(ELEMENTWISE), name
    for name in ("relu", "clip"):
        assert ops[name].has(MONOTONIC) and ops[name].has(RANGE_NARROWING), name
    assert not ops["gelu"].has(MONOTONIC) and not ops["softmax"].has(RANGE_PRESERVING)


def test_infer_rejects_bad_operands():
    conv = get_op("conv")
    attrs = conv.with_defaults(dict(strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1]))
    with pytest.raises(ValueError, match="group"):
        conv.infer([TensorType((1, 3, 8, 8), "f32"), TensorType((4, 2, 3, 3), "f32")], attrs)
    with pytest.raises(ValueError, match="dtypes differ"):
        get_op("add").infer([TensorType((2,), "f32"), TensorType((2,), "i32")], {})
    with pytest.raises(ValueError):
        get_op("reshape").infer([TensorType((2, 3), "f32")], {"shape": [5]})


def test_integer_div_truncates_toward_zero():
    a = np.array([7, -7, 7, -7, 0], np.int32)
    b = np.array([2, 2, -2, -2, 3], np.int32)
    np.testing.assert_array_equal(get_op("div").kernel(a, b), [3, -3, -3, 3, 0])


def test_float16_stays_float16():
    x = R(2, 3, 6, 6).astype(np.float16)
    w = R(4, 3, 3, 3).astype(np.float16)
    y = get_op("conv").kernel(x, w, strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1)
    assert y.dtype == np.float16
    for op in ("sigmoid", "gelu", "softmax"):
        d = get_op(op)
        attrs = d.with_defaults({"axis": 1} if op == "softmax" else {})
        assert d.kernel(x, **attrs).dtype == np.float16, op


def test_cast_to_int4_wraps():
    y = get_op("cast").kernel(np.array([7, 8, -9, 15, -1], np.int32), to="i4")
    assert y.dtype == np.int8
    np.testing.assert_array_equal(y, [7, -8, 7, -1, -1])


@pytest.mark.parametrize("xs,ws,dil", [((2, 8, 9, 10), (3, 8, 3, 3), (1, 1)),
                                        ((1, 6, 11, 9), (2, 6, 3, 2), (2, 3)),
                                        ((2, 6, 20), (3, 6, 5), (2,))])
def test_thin_convs_take_the_shifted_matmuls(monkeypatch, xs, ws, dil):
    """Unit-stride convs with at most half as many output channels as input channels skip
    the im2col copy; they must agree with it."""
    from qcc.ops import nn

    x, w = R(*xs), R(*ws)
    r = x.ndim - 2
    attrs = dict(strides=[1] * r, pads=[1] * 2 * r, dilations=list(dil), group=1)
    taken = []
    real = nn._shifted_gemms
    monkeypatch.setattr(nn, "_shifted_gemms", lambda *a: taken.append(1) or real(*a))
    y = get_op("conv").kernel(x, w, **attrs)
    assert taken
    xp = np.pad(x, [(0, 0), (0, 0)] + [(1, 1)] * r)
    ref = nn._im2col(xp, w, 1, w.shape[0], [1] * r, list(dil))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_depthwise_blocks_do_not_change_the_sums(monkeypatch, dtype):
    """The interpreter's depthwise taps run over blocks of channels that fit in cache; each
    output must be the same sum, in the same order, as over the whole map at once."""
    from qcc.ops import nn

    x = (R(2, 5, 33, 20) * 100).astype(dtype)
    w = (R(10, 1, 3, 2) * 100).astype(dtype)
    attrs = dict(strides=[2, 1], pads=[1, 0, 1, 1], dilations=[1, 2], group=5)
    monkeypatch.setattr(nn, "_DW_BLOCK_BYTES", 1 << 40)
    whole = get_op("conv").kernel(x, w, **attrs)
    monkeypatch.setattr(nn, "_DW_BLOCK_BYTES", 1)  # one channel per block
    np.testing.assert_array_equal(get_op("conv").kernel(x, w, **attrs), whole)
    monkeypatch.setattr(nn, "_DW_BLOCK_BYTES", 2 * 2 * 17 * 19 * x.itemsize * 2)  # 2 + 2 + 1 channels
    np.testing.assert_array_equal(get_op("conv").kernel(x, w, **attrs), whole)


def test_integer_products_are_exact():
    x = _rng.integers(-128, 128, (1, 16, 9, 9)).astype(np.int64)
    w = _rng.integers(-127, 128, (8, 16, 3, 3)).astype(np.int64)
    attrs = dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1)
    y = get_op("conv").kernel(x, w, **attrs)
    ref = get_op("conv").kernel(x.astype(np.float64), w.astype(np.float64), **attrs)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, ref.astype(np.int64))  # exact: |sum| << 2**53
    big = np.array([[2 ** 40, 3]], np.int64)  # products beyond float64's integers
    np.testing.assert_array_equal(get_op("matmul").kernel(big, big.T), [[2 ** 80 % 2 ** 64 + 9]])
