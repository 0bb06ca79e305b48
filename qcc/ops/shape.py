"""Data movement: ops that only rearrange, select or repeat elements.

None of them computes a new value, so every one is RANGE_PRESERVING (the output
can reuse the input's quantization) and runs unchanged on integers. concat is
the exception the other way: its inputs must share one scale (SHARED_SCALE).
pad is range-preserving for reflect/edge/wrap and for a constant that lies in
the input's range (0 always does once zero is exactly representable); passes
check `value` before relying on the trait.

Attributes arrive fully resolved (see docs/ops.md): no negative axes, no 0/-1
in reshape targets, slice bounds clamped.
"""
from __future__ import annotations

import numpy as np

from qcc.ir.opdef import INTEGER, RANGE_PRESERVING, SHARED_SCALE, Attr, broadcast_shapes, register_op
from qcc.ir.types import TensorType

from ._common import check_axes, same_dtype

_MOVE = (RANGE_PRESERVING, INTEGER)


def _reshape_infer(types, attrs):
    x, shape = types[0], tuple(attrs["shape"])
    if any(d < 0 for d in shape) or int(np.prod(shape)) != x.size:
        raise ValueError(f"reshape: cannot reshape {x} to {list(shape)}")
    return [TensorType(shape, x.dtype)]


@register_op("reshape", attrs={"shape": Attr("ints")}, infer=_reshape_infer, traits=_MOVE)
def reshape(x, *, shape):
    """Same elements in row-major order, new shape (fully resolved: no 0 or -1)."""
    return np.reshape(x, shape)


def _flatten_infer(types, attrs):
    x, a = types[0], attrs["axis"]
    if not 0 <= a <= x.rank:
        raise ValueError(f"flatten: axis {a} out of range for {x}")
    return [TensorType((int(np.prod(x.shape[:a])), int(np.prod(x.shape[a:]))), x.dtype)]


@register_op("flatten", attrs={"axis": Attr("int", 1)}, infer=_flatten_infer, traits=_MOVE)
def flatten(x, *, axis):
    """2-d view: dims before `axis` times dims from `axis` on."""
    return np.reshape(x, (int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))))


def _transpose_infer(types, attrs):
    x, perm = types[0], list(attrs["perm"])
    if sorted(perm) != list(range(x.rank)):
        raise ValueError(f"transpose: perm {perm} is not a permutation of {x.rank} axes")
    return [TensorType(tuple(x.shape[p] for p in perm), x.dtype)]


@register_op("transpose", attrs={"perm": Attr("ints")}, infer=_transpose_infer, traits=_MOVE)
def transpose(x, *, perm):
    """Permute axes: output axis i is input axis perm[i]."""
    return np.ascontiguousarray(np.transpose(x, perm))


def _squeeze_infer(types, attrs):
    x, axes = types[0], attrs["axes"]
    check_axes("squeeze", axes, x.rank)
    if any(x.shape[a] != 1 for a in axes):
        raise ValueError(f"squeeze: axes {list(axes)} of {x} are not all 1")
    return [TensorType(tuple(n for i, n in enumerate(x.shape) if i not in axes), x.dtype)]


@register_op("squeeze", attrs={"axes": Attr("ints")}, infer=_squeeze_infer, traits=_MOVE)
def squeeze(x, *, axes):
    """Drop the given size-1 axes."""
    return np.squeeze(x, axis=tuple(axes))


def _unsqueeze_infer(types, attrs):
    x, axes = types[0], attrs["axes"]
    rank = x.rank + len(axes)
    check_axes("unsqueeze", axes, rank)
    dims = iter(x.shape)
    return [TensorType(tuple(1 if i in axes else next(dims) for i in range(rank)), x.dtype)]


@register_op("unsqueeze", attrs={"axes": Attr("ints")}, infer=_unsqueeze_infer, traits=_MOVE)
def unsqueeze(x, *, axes):
    """Insert size-1 axes at the given positions of the output."""
    return np.expand_dims(x, tuple(axes))


def _concat_infer(types, attrs):
    a = attrs["axis"]
    first = types[0]
    check_axes("concat", [a], first.rank)
    for t in types[1:]:
        if t.rank != first.rank or any(i != a and m != n for i, (m, n) in
                                       enumerate(zip(t.shape, first.shape))):
            raise ValueError(f"concat: {t} does not match {first} off axis {a}")
    shape = list(first.shape)
    shape[a] = sum(t.shape[a] for t in types)
    return [TensorType(tuple(shape), same_dtype("concat", types))]


@register_op("concat", inputs=("xs*",), attrs={"axis": Attr("int")}, infer=_concat_infer,
             traits=(SHARED_SCALE, INTEGER))
def concat(*xs, axis):
    """Join along `axis`."""
    return np.concatenate(xs, axis=axis)


def _split_infer(types, attrs):
    x, a, split = types[0], attrs["axis"], list(attrs["split"])
    check_axes("split", [a], x.rank)
    if sum(split) != x.shape[a] or any(s < 0 for s in split):
        raise ValueError(f"split: pieces {split} do not add up to {x.shape[a]} (axis {a} of {x})")
    return [TensorType(x.shape[:a] + (s,) + x.shape[a + 1:], x.dtype) for s in split]


@register_op("split", outputs=("ys*",), attrs={"axis": Attr("int", 0), "split": Attr("ints")},
             infer=_split_infer, traits=_MOVE)
def split(x, *, axis, split):
    """Cut along `axis` into pieces of the given sizes, one output each."""
    return tuple(np.array_split(x, np.cumsum(split)[:-1], axis=axis))


def _slice_bounds(dim, start, end, step):
    """ONNX's clamping of already non-negative bounds (end -1 = before 0 when stepping back)."""
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim)
    return min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)


def _slicer(shape, attrs):
    sl = [slice(None)] * len(shape)
    for s, e, a, st in zip(attrs["starts"], attrs["ends"], attrs["axes"], attrs["steps"]):
        s, e = _slice_bounds(shape[a], s, e, st)
        sl[a] = slice(s, None if e < 0 else e, st)
    return tuple(sl)


def _slice_infer(types, attrs):
    x = types[0]
    n = len(attrs["starts"])
    if not (len(attrs["ends"]) == len(attrs["axes"]) == len(attrs["steps"]) == n):
        raise ValueError("slice: starts, ends, axes and steps differ in length")
    check_axes("slice", attrs["axes"], x.rank)
    if 0 in attrs["steps"]:
        raise ValueError("slice: step 0")
    shape = [len(range(x.shape[i])[s]) for i, s in enumerate(_slicer(x.shape, attrs))]
    return [TensorType(tuple(shape), x.dtype)]


_SLICE_ATTRS = {k: Attr("ints") for k in ("starts", "ends", "axes", "steps")}


@register_op("slice", attrs=_SLICE_ATTRS, infer=_slice_infer, traits=_MOVE)
def slice_(x, *, starts, ends, axes, steps):
    """Strided slice on the given axes; bounds are non-negative, end -1 means 'past index 0'."""
    return np.ascontiguousarray(x[_slicer(x.shape, dict(starts=starts, ends=ends, axes=axes,
                                                          steps=steps))])


def _gather_infer(types, attrs):
    x, idx, a = types[0], types[1], attrs["axis"]
    check_axes("gather", [a], x.rank)
    if idx.dtype not in ("i32", "i64"):
        raise ValueError(f"gather: indices must be i32 or i64, got {idx}")
    return [TensorType(x.shape[:a] + idx.shape + x.shape[a + 1:], x.dtype)]


@register_op("gather", inputs=("x", "indices"), attrs={"axis": Attr("int", 0)},
             infer=_gather_infer, traits=_MOVE)
def gather(x, indices, *, axis):
    """Take entries along `axis`; negative indices count from the end, as in ONNX."""
    return np.take(x, indices.astype(np.int64), axis=axis)


def _pad_infer(types, attrs):
    x, p = types[0], attrs["pads"]
    if len(p) != 2 * x.rank:
        raise ValueError(f"pad: needs {2 * x.rank} pads for {x}, got {list(p)}")
    shape = tuple(n + p[i] + p[x.rank + i] for i, n in enumerate(x.shape))
    if any(d < 0 for d in shape):
        raise ValueError(f"pad: negative pads {list(p)} crop more than {x} has")
    return [TensorType(shape, x.dtype)]


@register_op("pad", attrs={"pads": Attr("ints"), "value": Attr("float", 0.0),
                           "mode": Attr("str", "constant",
                                        choices=("constant", "reflect", "edge", "wrap"))},
             infer=_pad_infer, traits=_MOVE)
def pad(x, *, pads, mode, value):
    """Pad every axis by [begin..., end...]; negative pads crop first, as in ONNX."""
    r = x.ndim
    crop = tuple(slice(max(-pads[i], 0), x.shape[i] - max(-pads[r + i], 0)) for i in range(r))
    x = x[crop]
    width = [(max(pads[i], 0), max(pads[r + i], 0)) for i in range(r)]
    if mode == "constant":
        return np.pad(x, width, mode="constant", constant_values=np.asarray(value).astype(x.dtype))
    return np.pad(x, width, mode=mode)


def _expand_infer(types, attrs):
    x = types[0]
    return [TensorType(broadcast_shapes(x.shape, attrs["shape"]), x.dtype)]


@register_op("expand", attrs={"shape": Attr("ints")}, infer=_expand_infer, traits=_MOVE)
def expand(x, *, shape):
    """Broadcast to `shape` (bidirectionally, like ONNX Expand)."""
    return np.array(np.broadcast_to(x, broadcast_shapes(x.shape, shape)))


def _tile_infer(types, attrs):
    x, reps = types[0], attrs["repeats"]
    if len(reps) != x.rank or any(r < 0 for r in reps):
        raise ValueError(f"tile: repeats {list(reps)} do not fit {x}")
    return [TensorType(tuple(n * r for n, r in zip(x.shape, reps)), x.dtype)]


@register_op("tile", attrs={"repeats": Attr("ints")}, infer=_tile_infer, traits=_MOVE)
def tile(x, *, repeats):
    """Repeat the whole tensor `repeats[i]` times along axis i."""
    return np.tile(x, repeats)


def _d2s_infer(types, attrs):
    x, b = types[0], attrs["blocksize"]
    if x.rank != 4 or b < 1 or x.shape[1] % (b * b):
        raise ValueError(f"depth_to_space: {x} does not split into {b}x{b} blocks")
    n, c, h, w = x.shape
    return [TensorType((n, c // (b * b), h * b, w * b), x.dtype)]


@register_op("depth_to_space", attrs={"blocksize": Attr("int"),
                                      "mode": Attr("str", "DCR", choices=("DCR", "CRD"))},
             infer=_d2s_infer, traits=_MOVE)
def depth_to_space(x, *, blocksize, mode):
    """Move channel blocks into b x b spatial tiles (DCR: depth-column-row, or CRD)."""
    n, c, h, w = x.shape
    b = blocksize
    if mode == "DCR":
        t = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return np.ascontiguousarray(t.reshape(n, c // (b * b), h * b, w * b))
