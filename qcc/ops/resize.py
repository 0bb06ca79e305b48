"""resize: nearest, (n-)linear and cubic interpolation, as ONNX Resize (opset 19+).

Every mode is separable, so the kernel resizes one axis at a time with a gather
of the neighbour taps and a weighted sum; an N-d linear resize is the n-linear
interpolation ONNX defines. Source coordinates are computed in float32, in the
same operation order as ONNX Runtime, because nearest-neighbour rounding at
exact .5 boundaries depends on it and deployments are compared against ORT.

The frontend turns the `scales`/`sizes` inputs into the full output shape
`sizes`. When a model gave scales that are not out/in exactly (scale 2.5 on 5
pixels gives 12 pixels, 12/5 = 2.4), the coordinate mapping uses the original
scale, so the frontend also passes `scales` in that case; [] means sizes / in.

Range-preserving: nearest and linear outputs stay within the input range; cubic
can overshoot slightly (a pass that relies on the trait checks `mode`).
"""
from __future__ import annotations

import numpy as np

from qcc.ir.opdef import INTEGER, RANGE_PRESERVING, Attr, register_op
from qcc.ir.types import TensorType

from ._common import cast_like

COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
               "asymmetric", "tf_half_pixel_for_nn")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")

_F = np.float32


def source_coords(out_len: int, in_len: int, scale: float, mode: str) -> np.ndarray:
    """Where output index x samples the input, in input index units (float32)."""
    x = np.arange(out_len, dtype=_F)
    s, half = _F(scale), _F(0.5)
    if mode == "half_pixel":
        return (x + half) / s - half
    if mode == "pytorch_half_pixel":
        return (x + half) / s - half if out_len > 1 else np.zeros(out_len, _F)
    if mode == "align_corners":
        return np.zeros(out_len, _F) if out_len == 1 else x * _F(in_len - 1) / _F(out_len - 1)
    if mode == "asymmetric":
        return x / s
    if mode == "tf_half_pixel_for_nn":  # opset 11-12 only; kept for old models
        return (x + half) / s
    if mode == "half_pixel_symmetric":
        adjustment = _F(out_len) / (s * _F(in_len))
        offset = _F(in_len) / _F(2) * (_F(1) - adjustment)
        return offset + (x + half) / s - half
    raise ValueError(f"resize: unknown coordinate_transformation_mode '{mode}'")


def _nearest(c, in_len, mode):
    if mode == "round_prefer_floor":
        i = np.ceil(c - _F(0.5))
    elif mode == "round_prefer_ceil":
        i = np.floor(c + _F(0.5))
    elif mode == "floor":
        i = np.floor(c)
    else:
        i = np.ceil(c)
    return np.clip(i, 0, in_len - 1).astype(np.int64)[:, None], np.ones((len(c), 1), _F)


def _linear(c, in_len):
    c = np.clip(c, _F(0), _F(in_len - 1))
    i0 = np.minimum(c.astype(np.int64), in_len - 1)
    i1 = np.minimum(i0 + 1, in_len - 1)
    w1 = c - i0.astype(_F)
    return np.stack([i0, i1], 1), np.stack([_F(1) - w1, w1], 1)


def _cubic(c, in_len, a, exclude_outside):
    base = np.floor(c)
    r = (c - base).astype(np.float64)
    a = float(a)
    w = np.stack([
        ((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
        ((a + 2) * r - (a + 3)) * r * r + 1,
        ((a + 2) * (1 - r) - (a + 3)) * (1 - r) * (1 - r) + 1,
        ((a * (2 - r) - 5 * a) * (2 - r) + 8 * a) * (2 - r) - 4 * a,
    ], 1)
    idx = base.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :]
    if exclude_outside:
        w = np.where((idx < 0) | (idx >= in_len), 0.0, w)
        w = w / w.sum(1, keepdims=True)
    return np.clip(idx, 0, in_len - 1), w.astype(_F)


def _resize_axis(x, axis, out_len, scale, attrs):
    in_len = x.shape[axis]
    c = source_coords(out_len, in_len, scale, attrs["coordinate_transformation_mode"])
    mode = attrs["mode"]
    if mode == "nearest":
        idx, w = _nearest(c, in_len, attrs["nearest_mode"])
        return np.take(x, idx[:, 0], axis=axis)
    if mode == "linear":
        idx, w = _linear(c, in_len)
    else:
        idx, w = _cubic(c, in_len, attrs["cubic_coeff_a"], attrs["exclude_outside"])
    xm = np.moveaxis(x, axis, -1)
    y = (xm[..., idx] * w.astype(x.dtype)).sum(-1)  # (..., out, taps) -> (..., out)
    return np.moveaxis(y, -1, axis)


def _resize_infer(types, attrs):
    x, sizes, scales = types[0], list(attrs["sizes"]), list(attrs["scales"])
    if len(sizes) != x.rank or any(s < 0 for s in sizes):
        raise ValueError(f"resize: sizes {sizes} do not fit {x}")
    if scales and (len(scales) != x.rank or any(s <= 0 for s in scales)):
        raise ValueError(f"resize: scales {scales} do not fit {x}")
    return [TensorType(tuple(sizes), x.dtype)]


_ATTRS = {
    "sizes": Attr("ints"),
    "mode": Attr("str", "nearest", choices=("nearest", "linear", "cubic")),
    "coordinate_transformation_mode": Attr("str", "half_pixel", choices=COORD_MODES),
    "nearest_mode": Attr("str", "round_prefer_floor", choices=NEAREST_MODES),
    "cubic_coeff_a": Attr("float", -0.75),
    "exclude_outside": Attr("int", 0),
    "scales": Attr("floats", []),
}


@register_op("resize", attrs=_ATTRS, infer=_resize_infer, traits=(RANGE_PRESERVING, INTEGER))
def resize(x, *, sizes, mode, coordinate_transformation_mode, nearest_mode, cubic_coeff_a,
           exclude_outside, scales):
    """Resize to `sizes` (the full output shape) by nearest, linear or cubic interpolation."""
    attrs = dict(mode=mode, coordinate_transformation_mode=coordinate_transformation_mode,
                 nearest_mode=nearest_mode, cubic_coeff_a=cubic_coeff_a,
                 exclude_outside=exclude_outside)
    y = x if mode == "nearest" else x.astype(np.float64 if x.dtype == np.float64 else _F)
    for axis, (n_in, n_out) in enumerate(zip(x.shape, sizes)):
        scale = _F(scales[axis]) if scales else _F(n_out) / _F(n_in) if n_in else _F(1)
        if n_in == n_out and scale == 1:
            continue  # identity (ORT skips such axes even where the mapping is a shift)
        y = _resize_axis(y, axis, n_out, scale, attrs)
    return np.ascontiguousarray(cast_like(y, x.dtype))
