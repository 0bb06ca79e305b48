"""Per-op converters from ONNX nodes to core ops with normalised attributes.

A converter `fn(imp, n)` gets the Importer and the ONode and returns the Values of
the node's outputs (a list, or one Value), or None to import the node as an opaque
`onnx.<OpType>` op instead (a form the core op does not cover: MaxPool's indices,
Pad's wrap mode, ...). The node computing the ONNX output gets the ONNX name; helper
nodes and constants get fresh names derived from it.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List

import numpy as np

from qcc.ir import Value

from .onnx_load import ir_dtype

CONVERTERS: Dict[str, Callable] = {}


def converter(*ops: str):
    def deco(fn):
        for op in ops:
            CONVERTERS[op] = fn
        return fn
    return deco


# --- helpers ---------------------------------------------------------------------------

def _axis(n, a: int, rank: int, what: str = "axis") -> int:
    a = int(a)
    if not -rank <= a < rank:
        raise n.error(f"{what} {a} is out of range for rank {rank}")
    return a + rank if a < 0 else a


def _axes(n, axes, rank: int, what: str = "axes") -> List[int]:
    out = sorted({_axis(n, a, rank, what) for a in axes})
    if len(out) != len(list(axes)):
        raise n.error(f"repeated axis in {what} {list(axes)}")
    return out


def _ints(x) -> List[int]:
    return [int(v) for v in np.asarray(x).reshape(-1)]


def _same_pads(n, in_sp, kernel, strides, dilations, auto_pad: str) -> List[int]:
    begins, ends = [], []
    for i, k, s, d in zip(in_sp, kernel, strides, dilations):
        out = -(-i // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - i, 0)
        small, big = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else big)
        ends.append(big if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def _pads(n, in_sp, kernel, strides, dilations) -> List[int]:
    """Explicit [begin..., end...] pads from `pads`/`auto_pad`."""
    r = len(kernel)
    auto_pad = n.attr("auto_pad", "NOTSET") or "NOTSET"
    if auto_pad == "NOTSET":
        pads = list(n.attr("pads") or [0] * 2 * r)
        if len(pads) != 2 * r:
            raise n.error(f"pads {pads} need {2 * r} entries")
        return pads
    if auto_pad == "VALID":
        return [0] * 2 * r
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(n, in_sp, kernel, strides, dilations, auto_pad)
    raise n.error(f"unknown auto_pad '{auto_pad}'")


def _spatial(n, name: str, r: int, default: int) -> List[int]:
    v = list(n.attr(name) or [default] * r)
    if len(v) != r:
        raise n.error(f"{name} {v} needs {r} entries")
    return v


def _alias(imp, n, v: Value) -> List[Value]:
    return [v]


# --- convolution, normalisation, dense ---------------------------------------------------

@converter("Conv")
def _conv(imp, n):
    x, w, b = n.input(0), n.input(1), n.input(2)
    r = w.type.rank - 2
    kernel = list(w.shape[2:])
    ks = n.attr("kernel_shape")
    if ks and list(ks) != kernel:
        raise n.error(f"kernel_shape {list(ks)} disagrees with the weights' shape {list(w.shape)}")
    strides, dilations = _spatial(n, "strides", r, 1), _spatial(n, "dilations", r, 1)
    pads = _pads(n, x.shape[2:], kernel, strides, dilations)
    return imp.emit("conv", [x, w, b], {"strides": strides, "pads": pads, "dilations": dilations,
                                         "group": int(n.attr("group", 1))}, n.outputs[0])


@converter("ConvTranspose")
def _conv_transpose(imp, n):
    x, w, b = n.input(0), n.input(1), n.input(2)
    r = w.type.rank - 2
    kernel = list(w.shape[2:])
    strides, dilations = _spatial(n, "strides", r, 1), _spatial(n, "dilations", r, 1)
    out_pad = _spatial(n, "output_padding", r, 0)
    auto_pad = n.attr("auto_pad", "NOTSET") or "NOTSET"
    out_shape = n.attr("output_shape")
    in_sp = x.shape[2:]
    if out_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if out_shape:
            target = list(out_shape)[-r:]
        else:
            target = [i * s for i, s in zip(in_sp, strides)]
        begins, ends = [], []
        for ax in range(r):
            total = strides[ax] * (in_sp[ax] - 1) + out_pad[ax] + \
                (kernel[ax] - 1) * dilations[ax] + 1 - target[ax]
            if total < 0:  # the output is larger than the convolution: pad its end
                out_pad[ax] += -total
                total = 0
            if auto_pad == "SAME_UPPER":
                begins.append(total // 2)
                ends.append(total - total // 2)
            else:
                begins.append(total - total // 2)
                ends.append(total // 2)
        pads = begins + ends
    elif auto_pad == "VALID":
        pads = [0] * 2 * r
    else:
        pads = _pads(n, in_sp, kernel, strides, dilations)
    return imp.emit("conv_transpose", [x, w, b],
                    {"strides": strides, "pads": pads, "dilations": dilations,
                     "output_padding": out_pad, "group": int(n.attr("group", 1))}, n.outputs[0])


@converter("BatchNormalization")
def _batch_norm(imp, n):
    if n.attr("training_mode", 0) or any(n.used(i) for i in range(1, len(n.outputs))):
        return None
    if n.attr("spatial", 1) == 0:
        return None
    return imp.emit("batch_norm", n.inputs[:5], {"epsilon": float(n.attr("epsilon", 1e-5))},
                    n.outputs[0])


@converter("LayerNormalization")
def _layer_norm(imp, n):
    if any(n.used(i) for i in range(1, len(n.outputs))):
        return None
    x = n.input(0)
    return imp.emit("layer_norm", [x, n.input(1), n.input(2)],
                    {"axis": _axis(n, n.attr("axis", -1), x.type.rank),
                     "epsilon": float(n.attr("epsilon", 1e-5))}, n.outputs[0])


@converter("InstanceNormalization")
def _instance_norm(imp, n):
    """Each sample's channel normalised over its spatial axes, then scale[c] * y + bias[c]:
    a layer_norm over axes [2, rank) with unit scale, and a per-channel mul and add. (As an
    opaque op it lowered through TVM's converter to a fused mean/normalise kernel whose
    schedule recomputed the mean for every element: mobilevitv2's GroupNorm(1, C), exported
    as InstanceNormalization over [1, 1, C*H*W], took 320 ms per 25600 values.)"""
    x, scale, bias = n.input(0), n.input(1), n.input(2)
    rank = x.type.rank
    if rank < 3:
        raise n.error(f"input of rank {rank}: InstanceNormalization needs (N, C, D1, ...)")
    out = n.outputs[0]
    dt = x.type.np_dtype
    y = imp.emit("layer_norm", [x, imp.const(np.ones((1,), dt), f"{out}.one")],
                 {"axis": 2, "epsilon": float(n.attr("epsilon", 1e-5))}, imp.fresh(f"{out}.norm"))
    per_channel = [x.type.shape[1]] + [1] * (rank - 2)

    def channels(v, what):
        if v.is_const:
            return imp.const(np.asarray(v.data).reshape(per_channel), f"{out}.{what}")
        return imp.emit("reshape", [v], {"shape": per_channel}, imp.fresh(f"{out}.{what}"))

    y = imp.emit("mul", [y, channels(scale, "scale")], {}, imp.fresh(f"{out}.scaled"))
    return imp.emit("add", [y, channels(bias, "bias")], {}, out)


@converter("Gemm")
def _gemm(imp, n):
    return imp.emit("gemm", [n.input(0), n.input(1), n.input(2)],
                    {"alpha": float(n.attr("alpha", 1.0)), "beta": float(n.attr("beta", 1.0)),
                     "trans_a": int(n.attr("transA", 0)), "trans_b": int(n.attr("transB", 0))},
                    n.outputs[0])


@converter("MatMul")
def _matmul(imp, n):
    return imp.emit("matmul", n.inputs[:2], {}, n.outputs[0])


# --- elementwise -------------------------------------------------------------------------

_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Equal": "equal",
           "Less": "less", "Greater": "greater"}
_UNARY = {"Sqrt": "sqrt", "Erf": "erf", "Exp": "exp", "Log": "log", "Neg": "neg", "Abs": "abs",
          "Reciprocal": "reciprocal", "Floor": "floor", "Ceil": "ceil", "Sin": "sin", "Cos": "cos",
          "Tanh": "tanh", "Sigmoid": "sigmoid", "Relu": "relu", "Not": "not",
          "HardSwish": "hard_swish"}


@converter(*_BINARY)
def _binary(imp, n):
    return imp.emit(_BINARY[n.op], n.inputs[:2], {}, n.outputs[0])


@converter("LessOrEqual", "GreaterOrEqual")
def _less_or_equal(imp, n):
    a, b = n.input(0), n.input(1)
    inner = imp.emit("greater" if n.op == "LessOrEqual" else "less", [a, b], {},
                     imp.fresh(n.outputs[0] + ".neg"))
    return imp.emit("not", [inner], {}, n.outputs[0])


@converter("Pow")
def _pow(imp, n):
    a, b = n.input(0), n.input(1)
    if a.dtype != b.dtype:
        if a.dtype not in ("f32", "f16", "bf16", "f64"):
            return None
        b = _cast(imp, b, a.dtype, n.outputs[0] + ".exponent")
    return imp.emit("pow", [a, b], {}, n.outputs[0])


def _cast(imp, v: Value, dtype: str, base: str) -> Value:
    if v.is_const:
        from qcc.ir.types import to_numpy_dtype
        return imp.const(v.data.astype(to_numpy_dtype(dtype)), base)
    return imp.emit("cast", [v], {"to": dtype}, imp.fresh(base))


@converter(*_UNARY)
def _unary(imp, n):
    return imp.emit(_UNARY[n.op], [n.input(0)], {}, n.outputs[0])


@converter("Where")
def _where(imp, n):
    return imp.emit("where", n.inputs[:3], {}, n.outputs[0])


@converter("Min", "Max", "Sum", "Mean")
def _variadic(imp, n):
    xs = [v for v in n.inputs if v is not None]
    if not xs:
        raise n.error("needs at least one input")
    op = {"Min": "min", "Max": "max", "Sum": "add", "Mean": "add"}[n.op]
    out = n.outputs[0]
    if len(xs) == 1:
        return [xs[0]]
    acc = xs[0]
    for i, x in enumerate(xs[1:], start=2):
        last = i == len(xs) and n.op != "Mean"
        acc = imp.emit(op, [acc, x], {}, out if last else imp.fresh(f"{out}.partial{i - 1}"))
    if n.op == "Mean":
        from qcc.ir.types import to_numpy_dtype
        k = imp.const(np.array(len(xs), to_numpy_dtype(acc.dtype)), f"{out}.count")
        acc = imp.emit("div", [acc, k], {}, out)
    return [acc]


@converter("LeakyRelu")
def _leaky_relu(imp, n):
    return imp.emit("leaky_relu", [n.input(0)], {"alpha": float(n.attr("alpha", 0.01))},
                    n.outputs[0])


@converter("PRelu")
def _prelu(imp, n):
    return imp.emit("prelu", n.inputs[:2], {}, n.outputs[0])


@converter("Clip")
def _clip(imp, n):
    if n.opset < 11:
        lo, hi = n.attr("min", -math.inf), n.attr("max", math.inf)
    else:
        lo, hi = n.const(1, "min"), n.const(2, "max")
        lo = -math.inf if lo is None else float(np.asarray(lo).reshape(-1)[0])
        hi = math.inf if hi is None else float(np.asarray(hi).reshape(-1)[0])
    return imp.emit("clip", [n.input(0)], {"min": float(lo), "max": float(hi)}, n.outputs[0])


@converter("HardSigmoid")
def _hard_sigmoid(imp, n):
    return imp.emit("hard_sigmoid", [n.input(0)], {"alpha": float(n.attr("alpha", 0.2)),
                                                   "beta": float(n.attr("beta", 0.5))},
                    n.outputs[0])


@converter("Gelu")
def _gelu(imp, n):
    return imp.emit("gelu", [n.input(0)], {"approximate": n.attr("approximate", "none")},
                    n.outputs[0])


@converter("Softmax", "LogSoftmax")
def _softmax(imp, n):
    op = "softmax" if n.op == "Softmax" else "log_softmax"
    x = n.input(0)
    r = x.type.rank
    out = n.outputs[0]
    if n.opset >= 13:
        return imp.emit(op, [x], {"axis": _axis(n, n.attr("axis", -1), r)}, out)
    axis = _axis(n, n.attr("axis", 1), max(r, 1)) if r else 0
    if axis >= r - 1:  # flattening to [prod(:axis), prod(axis:)] leaves the last axis alone
        return imp.emit(op, [x], {"axis": max(r - 1, 0)}, out)
    flat = [int(np.prod(x.shape[:axis], dtype=np.int64)),
            int(np.prod(x.shape[axis:], dtype=np.int64))]
    y = imp.emit("reshape", [x], {"shape": flat}, imp.fresh(f"{out}.flat"))
    y = imp.emit(op, [y], {"axis": 1}, imp.fresh(f"{out}.{op}"))
    return imp.emit("reshape", [y], {"shape": list(x.shape)}, out)


# --- pooling and reductions ----------------------------------------------------------------

@converter("MaxPool", "AveragePool")
def _pool(imp, n):
    if n.used(1):
        return None  # MaxPool's indices
    x = n.input(0)
    kernel = list(n.attr("kernel_shape") or [])
    r = len(kernel)
    if r != x.type.rank - 2:
        raise n.error(f"kernel_shape {kernel} does not fit input {x.type}")
    strides, dilations = _spatial(n, "strides", r, 1), _spatial(n, "dilations", r, 1)
    pads = _pads(n, x.shape[2:], kernel, strides, dilations)
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads, "dilations": dilations,
             "ceil_mode": int(n.attr("ceil_mode", 0))}
    if n.op == "MaxPool":
        return imp.emit("max_pool", [x], attrs, n.outputs[0])
    attrs["count_include_pad"] = int(n.attr("count_include_pad", 0))
    return imp.emit("avg_pool", [x], attrs, n.outputs[0])


@converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(imp, n):
    op = "global_avg_pool" if n.op == "GlobalAveragePool" else "global_max_pool"
    return imp.emit(op, [n.input(0)], {}, n.outputs[0])


_REDUCE = {"ReduceMean": "reduce_mean", "ReduceSum": "reduce_sum", "ReduceMax": "reduce_max",
           "ReduceMin": "reduce_min", "ReduceProd": "reduce_prod"}
# lowered as pre-op, reduce_sum, post-op
_REDUCE_LOWERED = {"ReduceL1": ("abs", None), "ReduceL2": ("square", "sqrt"),
                   "ReduceSumSquare": ("square", None), "ReduceLogSum": (None, "log"),
                   "ReduceLogSumExp": ("exp", "log")}


@converter(*_REDUCE, *_REDUCE_LOWERED)
def _reduce(imp, n):
    x = n.input(0)
    r = x.type.rank
    axes_input = n.opset >= 18 or (n.op == "ReduceSum" and n.opset >= 13)
    if axes_input:
        axes = n.const(1, "axes")
        axes = None if axes is None else _ints(axes)
    else:
        axes = n.attr("axes")
    if not axes:
        if axes_input and n.attr("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(r))
    attrs = {"axes": _axes(n, axes, r), "keepdims": int(n.attr("keepdims", 1))}
    out = n.outputs[0]
    if n.op in _REDUCE:
        return imp.emit(_REDUCE[n.op], [x], attrs, out)
    pre, post = _REDUCE_LOWERED[n.op]
    if pre == "square":
        x = imp.emit("mul", [x, x], {}, imp.fresh(f"{out}.square"))
    elif pre:
        x = imp.emit(pre, [x], {}, imp.fresh(f"{out}.{pre}"))
    y = imp.emit("reduce_sum", [x], attrs, imp.fresh(f"{out}.sum") if post else out)
    return imp.emit(post, [y], {}, out) if post else y


@converter("ArgMax", "ArgMin")
def _arg(imp, n):
    x = n.input(0)
    return imp.emit("arg_max" if n.op == "ArgMax" else "arg_min", [x],
                    {"axis": _axis(n, n.attr("axis", 0), x.type.rank),
                     "keepdims": int(n.attr("keepdims", 1)),
                     "select_last_index": int(n.attr("select_last_index", 0))}, n.outputs[0])


# --- shape manipulation ----------------------------------------------------------------------

@converter("Reshape")
def _reshape(imp, n):
    x = n.input(0)
    shape = _ints(n.const(1, "shape"))
    allowzero = int(n.attr("allowzero", 0))
    out = []
    for i, d in enumerate(shape):
        if d == 0 and not allowzero:
            if i >= x.type.rank:
                raise n.error(f"shape {shape} copies dim {i} of an input of rank {x.type.rank}")
            d = x.shape[i]
        out.append(d)
    if out.count(-1) > 1:
        raise n.error(f"shape {shape} has more than one -1")
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        if known == 0 or x.type.size % known:
            raise n.error(f"cannot reshape {x.type} to {shape}")
        out[out.index(-1)] = x.type.size // known
    if any(d < 0 for d in out) or int(np.prod(out, dtype=np.int64)) != x.type.size:
        raise n.error(f"cannot reshape {x.type} to {shape}")
    return imp.emit("reshape", [x], {"shape": out}, n.outputs[0])


@converter("Flatten")
def _flatten(imp, n):
    x = n.input(0)
    r = x.type.rank
    axis = int(n.attr("axis", 1))
    if not -r <= axis <= r:
        raise n.error(f"axis {axis} is out of range for rank {r}")
    return imp.emit("flatten", [x], {"axis": axis + r if axis < 0 else axis}, n.outputs[0])


@converter("Transpose")
def _transpose(imp, n):
    x = n.input(0)
    perm = n.attr("perm") or list(range(x.type.rank))[::-1]
    return imp.emit("transpose", [x], {"perm": [_axis(n, p, x.type.rank, "perm") for p in perm]},
                    n.outputs[0])


@converter("Squeeze")
def _squeeze(imp, n):
    x = n.input(0)
    axes = n.attr("axes") if n.opset < 13 else n.const(1, "axes")
    if axes is None or len(_ints(axes)) == 0:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    axes = _axes(n, _ints(axes), x.type.rank)
    for a in axes:
        if x.shape[a] != 1:
            raise n.error(f"cannot squeeze axis {a} of {x.type}")
    return imp.emit("squeeze", [x], {"axes": axes}, n.outputs[0])


@converter("Unsqueeze")
def _unsqueeze(imp, n):
    x = n.input(0)
    axes = n.attr("axes") if n.opset < 13 else n.const(1, "axes")
    if axes is None:
        raise n.error("has no axes")
    axes = _ints(axes)
    return imp.emit("unsqueeze", [x], {"axes": _axes(n, axes, x.type.rank + len(axes))},
                    n.outputs[0])


@converter("Concat")
def _concat(imp, n):
    xs = [v for v in n.inputs if v is not None]
    return imp.emit("concat", xs, {"axis": _axis(n, n.attr("axis", 0), xs[0].type.rank)},
                    n.outputs[0])


@converter("Split")
def _split(imp, n):
    x = n.input(0)
    axis = _axis(n, n.attr("axis", 0), x.type.rank)
    dim = x.shape[axis]
    split = n.attr("split") if n.opset < 13 else n.const(1, "split")
    split = None if split is None or len(_ints(split)) == 0 else _ints(split)
    if split is None:
        k = int(n.attr("num_outputs", len(n.outputs)))
        if "num_outputs" in n.attrs:
            chunk = -(-dim // k)
            split = [chunk] * (k - 1) + [dim - chunk * (k - 1)]
        elif dim % k:
            raise n.error(f"cannot split dim {dim} into {k} equal parts")
        else:
            split = [dim // k] * k
    if sum(split) != dim or len(split) != len(n.outputs) or any(s < 0 for s in split):
        raise n.error(f"split {split} does not fit dim {dim} and {len(n.outputs)} outputs")
    return imp.emit_multi("split", [x], {"axis": axis, "split": split}, n.outputs)


@converter("Slice")
def _slice(imp, n):
    x = n.input(0)
    r = x.type.rank
    if n.opset < 10:
        starts, ends, axes, steps = n.attr("starts"), n.attr("ends"), n.attr("axes"), None
    else:
        starts, ends = n.const(1, "starts"), n.const(2, "ends")
        axes, steps = n.const(3, "axes"), n.const(4, "steps")
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else _ints(axes)
    steps = [1] * len(starts) if steps is None else _ints(steps)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise n.error("starts, ends, axes and steps differ in length")
    per_axis = {}
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = _axis(n, a, r)
        if a in per_axis:
            raise n.error(f"axis {a} is sliced twice")
        if st == 0:
            raise n.error("a step is 0")
        d = x.shape[a]
        s = s + d if s < 0 else s
        e = e + d if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), d), min(max(e, 0), d)
        else:
            s, e = min(max(s, 0), d - 1), min(max(e, -1), d - 1)
        per_axis[a] = (s, e, st)
    axes = sorted(per_axis)
    return imp.emit("slice", [x], {"starts": [per_axis[a][0] for a in axes],
                                   "ends": [per_axis[a][1] for a in axes], "axes": axes,
                                   "steps": [per_axis[a][2] for a in axes]}, n.outputs[0])


@converter("Gather")
def _gather(imp, n):
    x, idx = n.input(0), n.input(1)
    axis = _axis(n, n.attr("axis", 0), x.type.rank)
    if idx.is_const and (idx.data < 0).any():
        idx = imp.const(np.where(idx.data < 0, idx.data + x.shape[axis], idx.data),
                        f"{n.outputs[0]}.indices")
    return imp.emit("gather", [x, idx], {"axis": axis}, n.outputs[0])


@converter("Pad")
def _pad(imp, n):
    x = n.input(0)
    r = x.type.rank
    mode = n.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        return None
    if n.opset < 11:
        pads, value, axes = n.attr("pads"), n.attr("value", 0.0), None
    else:
        pads, value, axes = n.const(1, "pads"), n.const(2, "constant_value"), n.const(3, "axes")
    pads = _ints(pads)
    value = 0.0 if value is None or np.size(value) == 0 else float(np.asarray(value).reshape(-1)[0])
    if axes is not None:
        axes = [_axis(n, a, r) for a in _ints(axes)]
        k = len(axes)
        if len(pads) != 2 * k:
            raise n.error(f"pads {pads} need {2 * k} entries for axes {axes}")
        full = [0] * (2 * r)
        for i, a in enumerate(axes):
            full[a], full[a + r] = pads[i], pads[i + k]
        pads = full
    if len(pads) != 2 * r:
        raise n.error(f"pads {pads} need {2 * r} entries for {x.type}")
    return imp.emit("pad", [x], {"pads": pads, "mode": mode, "value": value}, n.outputs[0])


@converter("Resize", "Upsample")
def _resize(imp, n):
    x = n.input(0)
    r = x.type.rank
    mode = n.attr("mode", "nearest")
    mode = {"bilinear": "linear", "trilinear": "linear"}.get(mode, mode)
    # Upsample and Resize-10 sample at x_out / scale, nearest rounding down
    ctm, nearest_mode, cubic_a, exclude, policy = "asymmetric", "floor", -0.75, 0, "stretch"
    sizes = None
    if n.op == "Upsample" or n.opset < 11:
        scales = n.attr("scales") if (n.op == "Upsample" and n.opset < 9) else n.const(1, "scales")
    else:
        scales, sizes = n.const(2, "scales"), n.const(3, "sizes")
        ctm = n.attr("coordinate_transformation_mode", "half_pixel")
        nearest_mode = n.attr("nearest_mode", "round_prefer_floor")
        cubic_a = float(n.attr("cubic_coeff_a", -0.75))
        exclude = int(n.attr("exclude_outside", 0))
        policy = n.attr("keep_aspect_ratio_policy", "stretch")
        if n.attr("antialias", 0) or ctm == "tf_crop_and_resize":
            return None
    if mode not in ("nearest", "linear", "cubic"):
        raise n.error(f"unknown mode '{mode}'")
    if scales is not None and np.size(scales) == 0:
        scales = None
    if sizes is not None and np.size(sizes) == 0:
        sizes = None
    axes = n.attr("axes")
    axes = list(range(r)) if axes is None else [_axis(n, a, r) for a in axes]
    out, sc = list(x.shape), [1.0] * r
    if sizes is not None:
        given = _ints(sizes)
        if len(given) != len(axes):
            raise n.error(f"sizes {given} do not fit axes {axes}")
        if policy == "stretch":
            for a, s in zip(axes, given):
                out[a], sc[a] = s, (s / x.shape[a] if x.shape[a] else 1.0)
        elif policy in ("not_larger", "not_smaller"):
            ratios = [s / x.shape[a] for a, s in zip(axes, given)]
            k = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                out[a], sc[a] = int(math.floor(k * x.shape[a] + 0.5)), k
        else:
            raise n.error(f"unknown keep_aspect_ratio_policy '{policy}'")
    elif scales is not None:
        given = [float(s) for s in np.asarray(scales, np.float32).reshape(-1)]
        if len(given) != len(axes):
            raise n.error(f"scales {given} do not fit axes {axes}")
        for a, s in zip(axes, given):
            if s <= 0:
                raise n.error(f"scale {s} is not positive")
            out[a], sc[a] = int(math.floor(x.shape[a] * s)), s
    else:
        raise n.error("has neither scales nor sizes")
    # the core op scales coordinates by sizes/in unless told the model's own scales
    exact = all(np.float32(s) == np.float32(o / i) for s, o, i in zip(sc, out, x.shape) if i)
    return imp.emit("resize", [x], {"sizes": out, "mode": mode,
                                    "coordinate_transformation_mode": ctm,
                                    "nearest_mode": nearest_mode, "cubic_coeff_a": cubic_a,
                                    "exclude_outside": exclude,
                                    "scales": [] if exact else [float(s) for s in sc]},
                    n.outputs[0])


@converter("Cast")
def _cast_op(imp, n):
    to = ir_dtype(int(n.attr("to")), f"{n.label}'s target")
    return imp.emit("cast", [n.input(0)], {"to": to}, n.outputs[0])


@converter("CastLike")
def _cast_like(imp, n):
    return imp.emit("cast", [n.input(0)], {"to": n.input(1).dtype}, n.outputs[0])


@converter("Expand")
def _expand(imp, n):
    x = n.input(0)
    shape = _ints(n.const(1, "shape"))
    try:
        out = list(np.broadcast_shapes(tuple(x.shape), tuple(shape)))
    except ValueError:
        raise n.error(f"cannot expand {x.type} to {shape}") from None
    return imp.emit("expand", [x], {"shape": out}, n.outputs[0])


@converter("Tile")
def _tile(imp, n):
    x = n.input(0)
    reps = _ints(n.const(1, "repeats"))
    if len(reps) != x.type.rank:
        raise n.error(f"repeats {reps} do not fit {x.type}")
    return imp.emit("tile", [x], {"repeats": reps}, n.outputs[0])


@converter("DepthToSpace")
def _depth_to_space(imp, n):
    return imp.emit("depth_to_space", [n.input(0)],
                    {"blocksize": int(n.attr("blocksize")), "mode": n.attr("mode", "DCR")},
                    n.outputs[0])


@converter("Identity")
def _identity(imp, n):
    return [n.input(0)]


@converter("Dropout")
def _dropout(imp, n):
    x = n.input(0)
    if n.opset >= 12:
        training = n.input(2)
        if training is not None:
            if not training.is_const:
                return None
            if bool(np.asarray(training.data).reshape(-1)[0]):
                ratio = n.const(1, "ratio")
                if ratio is None or float(np.asarray(ratio).reshape(-1)[0]) != 0.0:
                    return None
    outs = [x]
    if n.used(1):
        outs.append(imp.add_const(n.outputs[1], np.ones(x.shape, np.bool_), n.label))
    return outs
