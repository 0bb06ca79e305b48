"""Lowerings of data-movement ops: reshape family, transpose, concat/split, slice,
gather, pad, expand, tile, depth_to_space."""
from __future__ import annotations

import numpy as np

from tvm import relax
from tvm.relax import op as R

from .lower import LoweringError, lowering


@lowering("reshape", "flatten", "squeeze", "unsqueeze")
def lower_reshape(cx, node, ins, attrs):
    # Every member of the family is a reshape to the (static) output shape.
    return cx.reshape(ins[0], node.outputs[0].shape)


@lowering("transpose")
def lower_transpose(cx, node, ins, attrs):
    perm = attrs.get("perm")
    if perm is None or len(perm) == 0:
        perm = list(reversed(range(len(cx.shape_of(ins[0])))))
    return cx.permute(ins[0], perm)


@lowering("concat")
def lower_concat(cx, node, ins, attrs):
    xs = [v for v in ins if v is not None]
    dt = cx.dtype_of(xs[0])
    xs = [cx.cast(v, dt) for v in xs]
    if len(xs) == 1:
        return xs[0]
    return R.concat(xs, axis=int(attrs["axis"]))


@lowering("split")
def lower_split(cx, node, ins, attrs):
    x = ins[0]
    axis = int(attrs["axis"])
    sizes = [int(s) for s in attrs.get("split", [])] or [o.shape[axis] for o in node.outputs]
    if len(sizes) == 1:
        return [x]
    points = list(np.cumsum(sizes)[:-1].astype(int))
    t = cx.emit(R.split(x, [int(p) for p in points], axis=axis))
    return [relax.TupleGetItem(t, i) for i in range(len(sizes))]


def _onnx_slice_range(start: int, end: int, step: int, dim: int):
    """The index sequence of one sliced axis. Bounds are non-negative (the frontend
    resolved them); a reverse slice through index 0 ends at -1. Clamped like ONNX."""
    if step == 0:
        raise LoweringError("slice: step 0")
    if step > 0:
        return range(min(max(start, 0), dim), min(max(end, 0), dim), step)
    return range(min(max(start, 0), dim - 1), min(max(end, -1), dim - 1), step)


@lowering("slice")
def lower_slice(cx, node, ins, attrs):
    x = ins[0]
    shape = cx.shape_of(x)
    starts, ends = list(attrs["starts"]), list(attrs["ends"])
    axes = list(attrs.get("axes") or range(len(starts)))
    steps = list(attrs.get("steps") or [1] * len(starts))
    pos_axes, begins, finishes, strides = [], [], [], []
    y = x
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax = int(ax) + (len(shape) if int(ax) < 0 else 0)
        dim = shape[ax]
        r = _onnx_slice_range(int(st), int(en), int(sp), dim)
        n = len(r)
        if n == dim and r.step == 1:
            continue
        if r.step < 0:
            if n == 0:
                raise LoweringError("slice: empty reverse slice")
            y = R.flip(y, axis=ax)
            first = dim - 1 - r.start
            pos_axes.append(ax)
            begins.append(first)
            finishes.append(first + (-r.step) * (n - 1) + 1)
            strides.append(-r.step)
        else:
            pos_axes.append(ax)
            begins.append(r.start)
            finishes.append(r.start + r.step * (n - 1) + 1 if n else r.start)
            strides.append(r.step)
    if not pos_axes:
        return y
    return R.strided_slice(y, axes=pos_axes, begin=begins, end=finishes, strides=strides,
                           assume_inbound=True)


@lowering("gather")
def lower_gather(cx, node, ins, attrs):
    x, idx = ins
    axis = int(attrs.get("axis", 0))
    dim = cx.shape_of(x)[axis]
    c = cx.const_value(idx)
    if c is not None:
        c = np.where(c < 0, c + dim, c).astype(np.int64)
        if (c < 0).any() or (c >= dim).any():
            raise LoweringError(f"gather: index out of range for a dimension of {dim}")
        idx = cx.const(c, "int64")
    else:
        zero = cx.scalar(0, idx)
        idx = R.where(R.less(idx, zero), R.add(idx, cx.scalar(dim, idx)), idx)
    if len(cx.shape_of(idx)) == 0:  # relax take keeps a unit axis for a 0-d index
        idx = cx.reshape(idx, [1])
        return cx.reshape(cx.emit(R.take(x, idx, axis=axis, mode="clip")), node.outputs[0].shape)
    return R.take(x, idx, axis=axis, mode="clip")


@lowering("pad")
def lower_pad(cx, node, ins, attrs):
    """Negative pads crop first, then the rest pads (ONNX order; it matters for reflect)."""
    y = ins[0]
    shape = list(cx.shape_of(y))
    rank = len(shape)
    pads = [int(p) for p in attrs["pads"]]
    mode = attrs.get("mode", "constant")
    value = float(attrs.get("value", 0.0))
    dt = cx.dtype_of(y)
    if dt.startswith(("int", "uint")):  # the value as the reference converts it (a zero point)
        value = float(np.asarray(value).astype(dt))
    before, after = pads[:rank], pads[rank:]
    crop_axes = [i for i in range(rank) if before[i] < 0 or after[i] < 0]
    if crop_axes:
        y = R.strided_slice(y, axes=crop_axes, begin=[max(-before[i], 0) for i in crop_axes],
                            end=[shape[i] - max(-after[i], 0) for i in crop_axes])
        for i in crop_axes:
            shape[i] -= max(-before[i], 0) + max(-after[i], 0)
    grow_b = [max(p, 0) for p in before]
    grow_a = [max(p, 0) for p in after]
    if any(grow_b) or any(grow_a):
        relax_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate",
                      "wrap": "circular"}.get(mode)
        if relax_mode is None:
            raise LoweringError(f"pad: mode {mode!r} is not supported")
        if relax_mode == "reflect" and any((b or a) and (b >= d or a >= d)
                                           for b, a, d in zip(grow_b, grow_a, shape)):
            raise LoweringError("pad: reflect padding as wide as the dimension")
        if relax_mode == "circular" and any(b > d or a > d for b, a, d in zip(grow_b, grow_a, shape)):
            raise LoweringError("pad: wrap padding wider than the dimension")
        width = [v for pair in zip(grow_b, grow_a) for v in pair]
        y = R.nn.pad(y, width, relax_mode, value)
    return y


@lowering("expand")
def lower_expand(cx, node, ins, attrs):
    out = list(node.outputs[0].shape)
    x = ins[0]
    if list(cx.shape_of(x)) == out:
        return x
    return R.broadcast_to(x, out)


@lowering("tile")
def lower_tile(cx, node, ins, attrs):
    reps = [int(r) for r in attrs["repeats"]]
    if all(r == 1 for r in reps):
        return ins[0]
    return R.tile(ins[0], reps)


@lowering("depth_to_space")
def lower_depth_to_space(cx, node, ins, attrs):
    x = ins[0]
    bs = int(attrs["blocksize"])
    mode = attrs.get("mode", "DCR")
    b, c, h, w = (int(d) for d in cx.shape_of(x))
    if mode not in ("DCR", "CRD"):
        raise LoweringError(f"depth_to_space: unknown mode {mode!r}")
    co = c // (bs * bs)
    from tvm import te

    from .cpu_rules import UNROLL_INNER

    def source(o, i, j):  # input channel of output channel o at tile position (i, j)
        return (i * bs + j) * co + o if mode == "DCR" else o * bs * bs + i * bs + j

    # one gather with plain index arithmetic (the reshape-transpose-reshape it replaces
    # left an index expression LLVM would not vectorize), each output row's bs phases
    # unrolled by the CPU schedule (UNROLL_INNER)
    def fn(t):
        return te.compute((b, co, h * bs, w * bs),
                          lambda n, o, hh, ww: t[n, source(o, hh % bs, ww % bs), hh // bs, ww // bs],
                          name="depth_to_space", attrs={UNROLL_INNER: bs})

    return cx.emit_te(fn, cx.emit(x), primfunc_name_hint="depth_to_space")
