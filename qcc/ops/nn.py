"""Convolutions and matrix products: the ops that carry a network's weights.

Convolution is im2col over a free strided window view followed by one batched
matmul per group set, so a 224x224 mobile net runs in numpy without Python
loops over pixels. Float operands are multiplied in float32 (BLAS, like ONNX
Runtime), float64 stays float64, integer operands accumulate in int64 so the
reference is exact; the result takes the declared dtype of `x`.
"""
from __future__ import annotations

import itertools

import numpy as np

from qcc.ir.opdef import INTEGER, Attr, broadcast_shapes, register_op
from qcc.ir.types import TensorType

from ._common import check_rank, pad_spatial, same_dtype, spatial, windows


def _acc(a: np.ndarray) -> np.ndarray:
    """Operand in its accumulation dtype: f32 for f16/bf16/f32, f64, int64 for ints."""
    if a.dtype.kind in "iub":
        return a.astype(np.int64, copy=False)
    return a.astype(np.float64 if a.dtype == np.float64 else np.float32, copy=False)


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.matmul; int64 products go through float64 BLAS when that is provably exact.

    numpy's integer matmul has no BLAS and is several times slower. If
    max|a| * max|b| * K < 2**53 every partial sum is an integer float64 holds
    exactly, so the rounded float64 result is the int64 one (always the case
    for 8- and 16-bit quantized operands).
    """
    if a.dtype != np.int64 or not a.size or not b.size:
        return np.matmul(a, b)
    k = a.shape[-1]
    bound = float(np.abs(a).max()) * float(np.abs(b).max()) * k
    if bound >= 2.0 ** 53:
        return np.matmul(a, b)
    return np.rint(np.matmul(a.astype(np.float64), b.astype(np.float64))).astype(np.int64)


def _conv_out(n, k, s, d, pb, pe):
    return (n + pb + pe - ((k - 1) * d + 1)) // s + 1


def _im2col(xp, w, G, Og, strides, dilations):
    """Grouped conv as one batched matmul: (G, Og, Cg*K) @ (N, G, Cg*K, P) -> (N, G, Og, P).

    Columns are laid out with the output pixels innermost, so the copy reads whole
    rows of the input and the product comes out in NC... order with no transpose; a
    1x1 conv with unit strides needs no copy at all.
    """
    r = xp.ndim - 2
    N = xp.shape[0]
    Cg, k = w.shape[1], w.shape[2:]
    K = int(np.prod(k))
    if K == 1:
        xs = xp[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)]
        out = xs.shape[2:]
        cols = xs.reshape(N, G, Cg, int(np.prod(out)))  # a view when unstrided
    else:
        win = windows(xp, k, strides, dilations)  # N, C, *out, *k  (a view)
        out = win.shape[2:2 + r]
        perm = (0, 1, *range(2 + r, 2 + 2 * r), *range(2, 2 + r))
        cols = win.transpose(perm).reshape(N, G, Cg * K, int(np.prod(out)))  # the one im2col copy
    y = _mm(w.reshape(G, Og, Cg * K), cols)  # N, G, Og, P
    return y.reshape(N, G * Og, *out)


def _shifted_gemms(xp, w, dilations):
    """Unit-stride, ungrouped conv as one matmul per kernel tap over shifted flat rows.

    Over the padded input flattened per channel, the window at tap t for every output
    pixel is one contiguous run of each row, offset by t's position in the padded
    grid: W_t (O x C) @ rows[:, off_t : off_t + L] is a BLAS product on a view, with no
    im2col copy. It computes a few junk columns (outputs that would straddle a row
    end), dropped at the end. Worth it when the output has fewer channels than the
    input (the im2col copy, K x C rows, then dominates a thin product); with as many
    output channels, the per-tap accumulation costs more than the copy saves.
    """
    N, C = xp.shape[:2]
    grid = xp.shape[2:]
    O, k = w.shape[0], w.shape[2:]
    r = len(grid)
    out = [grid[i] - (k[i] - 1) * dilations[i] for i in range(r)]
    pitch = [int(np.prod(grid[i + 1:])) for i in range(r)]  # elements per step along each axis
    length = sum((o - 1) * p for o, p in zip(out, pitch)) + 1
    rows = np.ascontiguousarray(xp).reshape(N, C, -1)
    y = np.zeros((N, O, out[0] * pitch[0]), np.result_type(xp.dtype, w.dtype))
    term = np.empty((O, length), y.dtype)
    for tap in itertools.product(*(range(kk) for kk in k)):
        off = sum(t * d * p for t, d, p in zip(tap, dilations, pitch))
        wt = np.ascontiguousarray(w[(slice(None), slice(None)) + tap])
        for n in range(N):
            np.matmul(wt, rows[n, :, off:off + length], out=term)
            y[n, :, :length] += term
    y = y.reshape(N, O, out[0], *grid[1:])
    return y[(slice(None), slice(None), slice(None)) + tuple(slice(0, o) for o in out[1:])]


# Bytes one pass of _depthwise's taps works on, output block and scratch together: every
# tap rereads and rewrites them, so they should stay in a core's L2 (2 MB on the Xeons
# here). Measured on PP-OCR det's five depthwise shapes, float32, one thread: 256 kB 14.0
# ms in all, 512 kB 13.4, 1 MB 15.0, unblocked 19.5.
_DW_BLOCK_BYTES = 1 << 19


def _depthwise(xp, w, G, Og, strides, dilations):
    """One input channel per group: a multiply-add per kernel tap over strided slices.

    Per-group matmuls would be 1-wide; this is several times faster for the
    3x3 depthwise layers that dominate mobile nets. The taps run over a block of
    channels at a time (_DW_BLOCK_BYTES), not the whole map: each tap rewrites its
    block, which then stays in cache. Every output is the same sum in the same tap
    order either way.
    """
    r = xp.ndim - 2
    N = xp.shape[0]
    k = w.shape[2:]
    out = [(xp.shape[2 + i] - ((k[i] - 1) * dilations[i] + 1)) // strides[i] + 1 for i in range(r)]
    wg = w.reshape(G, Og, *k)
    dtype = np.result_type(xp.dtype, w.dtype)
    y = np.empty((N, G, Og, *out), dtype)
    step = max(1, min(G, _DW_BLOCK_BYTES // max(1, 2 * Og * int(np.prod(out)) * dtype.itemsize)))
    term = np.empty((1, step, Og, *out), dtype)  # one scratch block: a fresh array per tap costs page faults
    taps = [(tap, tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                        for t, d, o, s in zip(tap, dilations, out, strides)))
            for tap in itertools.product(*(range(kk) for kk in k))]
    for n in range(N):
        for g0 in range(0, G, step):
            g = slice(g0, min(G, g0 + step))
            block, scratch = y[n:n + 1, g], term[:, :g.stop - g0]
            for i, (tap, window) in enumerate(taps):
                np.multiply(xp[(slice(n, n + 1), g) + window][:, :, None],
                            wg[(g, slice(None)) + tap].reshape((1, -1, Og) + (1,) * r),
                            out=block if i == 0 else scratch)
                if i:
                    block += scratch
    return y.reshape(N, G * Og, *out)


_CONV_ATTRS = {
    "strides": Attr("ints"), "pads": Attr("ints"), "dilations": Attr("ints"),
    "group": Attr("int", 1),
}


def _conv_infer(types, attrs):
    x, w = types[0], types[1]
    b = types[2] if len(types) > 2 else None
    check_rank("conv", x, 3, 5)
    r = x.rank - 2
    if w.rank != x.rank:
        raise ValueError(f"conv: weight {w} and input {x} differ in rank")
    for name, f in (("strides", 1), ("pads", 2), ("dilations", 1)):
        spatial("conv", name, attrs[name], r, f)
    g = attrs["group"]
    if g < 1 or x.shape[1] != w.shape[1] * g or w.shape[0] % g:
        raise ValueError(f"conv: input {x}, weight {w} and group {g} do not agree")
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"conv: bias {b} does not match {w.shape[0]} output channels")
    pads, st, dl = attrs["pads"], attrs["strides"], attrs["dilations"]
    out = [_conv_out(x.shape[2 + i], w.shape[2 + i], st[i], dl[i], pads[i], pads[r + i])
           for i in range(r)]
    if any(o < 1 for o in out):
        raise ValueError(f"conv: output would be empty ({out}) for input {x}, weight {w}")
    return [TensorType((x.shape[0], w.shape[0], *out), x.dtype)]


@register_op("conv", inputs=("x", "w", "b?"), attrs=_CONV_ATTRS, infer=_conv_infer,
             traits=(INTEGER,))
def conv(x, w, b=None, *, strides, pads, dilations, group):
    """N-d convolution (ONNX Conv): NC... layout, weights O x C/group x k..., explicit pads."""
    r = x.ndim - 2
    xa, wa = _acc(x), _acc(w)
    xp = pad_spatial(xa, pads[:r], pads[r:])
    O, Cg = w.shape[:2]
    G, Og = group, O // group
    if Cg == 1:
        y = _depthwise(xp, wa, G, Og, strides, dilations)
    elif G == 1 and 2 * O <= Cg and all(s == 1 for s in strides) and w[0, 0].size > 1 \
            and xp.dtype.kind == "f":
        y = _shifted_gemms(xp, wa, dilations)
    else:
        y = _im2col(xp, wa, G, Og, strides, dilations)
    if b is not None:
        y = y + _acc(b).reshape((O,) + (1,) * r)
    return np.ascontiguousarray(y.astype(x.dtype, copy=False))


_CONVT_ATTRS = dict(_CONV_ATTRS, output_padding=Attr("ints"))


def _conv_transpose_infer(types, attrs):
    x, w = types[0], types[1]
    b = types[2] if len(types) > 2 else None
    check_rank("conv_transpose", x, 3, 5)
    r = x.rank - 2
    if w.rank != x.rank:
        raise ValueError(f"conv_transpose: weight {w} and input {x} differ in rank")
    for name, f in (("strides", 1), ("pads", 2), ("dilations", 1), ("output_padding", 1)):
        spatial("conv_transpose", name, attrs[name], r, f)
    g = attrs["group"]
    if g < 1 or x.shape[1] != w.shape[0] or w.shape[0] % g:
        raise ValueError(f"conv_transpose: input {x}, weight {w} and group {g} do not agree")
    O = w.shape[1] * g
    if b is not None and b.shape != (O,):
        raise ValueError(f"conv_transpose: bias {b} does not match {O} output channels")
    st, p, dl, op = attrs["strides"], attrs["pads"], attrs["dilations"], attrs["output_padding"]
    out = [st[i] * (x.shape[2 + i] - 1) + op[i] + (w.shape[2 + i] - 1) * dl[i] + 1 - p[i] - p[r + i]
           for i in range(r)]
    if any(o < 1 for o in out):
        raise ValueError(f"conv_transpose: output would be empty ({out})")
    return [TensorType((x.shape[0], O, *out), x.dtype)]


def transposed_conv_phases(w: np.ndarray, strides, in_hw, out_hw, pads):
    """A 2-D conv_transpose (weights C x O x kh x kw, strides (sh, sw) with s <= k on each
    axis, no dilation or groups) as a conv over its input: (conv weights [O*sh*sw, C, Kh, Kw],
    (Kh, Kw)) with K = ceil(k/s), for a conv with padding K - 1 whose channel
    o*sh*sw + r*sw + c is output channel o at phase (r, c); those phases interleaved (a
    depth_to_space, CRD, when sh == sw) and cropped to the rows and columns from (pads[0],
    pads[1]) are the conv_transpose's output. None when a stride exceeds its kernel, or the
    output reaches past the phases' map (an output padding beyond every tap).

    Output pixel q*s + r - pad sums x[q - j] * w[j*s + r] over the K taps j: the phases
    are plain convs, with the taps flipped and zero past k."""
    C, O, kh, kw = w.shape
    (sh, sw), k = (int(v) for v in strides), (kh, kw)
    if kh < sh or kw < sw:
        return None
    Kh, Kw = -(-kh // sh), -(-kw // sw)
    if any(p + o > (i + K - 1) * st for p, o, i, K, st in zip(pads[:2], out_hw, in_hw, (Kh, Kw), (sh, sw))):
        return None
    wp = np.zeros((C, O, Kh * sh, Kw * sw), w.dtype)
    wp[:, :, :k[0], :k[1]] = w
    # [c, o, j_h, r, j_w, c'] -> [o, r, c', c, Kh-1-j_h, Kw-1-j_w]
    taps = wp.reshape(C, O, Kh, sh, Kw, sw)[:, :, ::-1, :, ::-1, :].transpose(1, 3, 5, 0, 2, 4)
    return np.ascontiguousarray(taps).reshape(O * sh * sw, C, Kh, Kw), (Kh, Kw)


@register_op("conv_transpose", inputs=("x", "w", "b?"), attrs=_CONVT_ATTRS,
             infer=_conv_transpose_infer, traits=(INTEGER,))
def conv_transpose(x, w, b=None, *, strides, pads, dilations, output_padding, group):
    """N-d transposed convolution (ONNX ConvTranspose): weights C x O/group x k....

    Each input pixel's contribution is one matmul (col = x^T w); the columns are
    then scattered back (col2im) with one strided add per kernel tap, and the
    padding cropped off the full output.
    """
    r = x.ndim - 2
    xa, wa = _acc(x), _acc(w)
    N, C = x.shape[:2]
    G = group
    Cg, Og = C // G, w.shape[1]
    O = Og * G
    k, ins = w.shape[2:], x.shape[2:]
    P, K = int(np.prod(ins)), int(np.prod(k))
    xm = xa.reshape(N, G, Cg, P).transpose(1, 0, 3, 2).reshape(G, N * P, Cg)
    cols = _mm(xm, wa.reshape(G, Cg, Og * K))  # G, N*P, Og*K
    cols = cols.reshape(G, N, *ins, Og, *k)
    perm = (1, 0, 2 + r, *range(3 + r, 3 + 2 * r), *range(2, 2 + r))
    cols = cols.transpose(perm).reshape(N, O, *k, *ins)
    full = [(ins[i] - 1) * strides[i] + (k[i] - 1) * dilations[i] + 1 + output_padding[i]
            for i in range(r)]
    y = np.zeros((N, O, *full), dtype=cols.dtype)
    for tap in itertools.product(*(range(kk) for kk in k)):
        dst = tuple(slice(t * d, t * d + (n - 1) * s + 1, s)
                    for t, d, n, s in zip(tap, dilations, ins, strides))
        y[(slice(None), slice(None)) + dst] += cols[(slice(None), slice(None)) + tap]
    crop = tuple(slice(pads[i], full[i] - pads[r + i]) for i in range(r))
    y = y[(slice(None), slice(None)) + crop]
    if b is not None:
        y = y + _acc(b).reshape((O,) + (1,) * r)
    return np.ascontiguousarray(y.astype(x.dtype, copy=False))


def _gemm_infer(types, attrs):
    a, b = types[0], types[1]
    c = types[2] if len(types) > 2 else None
    check_rank("gemm", a, 2)
    check_rank("gemm", b, 2)
    m, ka = a.shape[::-1] if attrs["trans_a"] else a.shape
    kb, n = b.shape[::-1] if attrs["trans_b"] else b.shape
    if ka != kb:
        raise ValueError(f"gemm: inner dimensions differ ({a} x {b}, trans_a={attrs['trans_a']}, "
                         f"trans_b={attrs['trans_b']})")
    if c is not None and broadcast_shapes(c.shape, (m, n)) != (m, n):
        raise ValueError(f"gemm: c {c} does not broadcast to ({m}, {n})")
    return [TensorType((m, n), same_dtype("gemm", [a, b]))]


@register_op("gemm", inputs=("a", "b", "c?"),
             attrs={"alpha": Attr("float", 1.0), "beta": Attr("float", 1.0),
                    "trans_a": Attr("int", 0), "trans_b": Attr("int", 0)},
             infer=_gemm_infer, traits=(INTEGER,))
def gemm(a, b, c=None, *, alpha, beta, trans_a, trans_b):
    """alpha * a' @ b' + beta * c, with ' an optional transpose; c broadcasts."""
    aa, ba = _acc(a), _acc(b)
    y = _mm(aa.T if trans_a else aa, ba.T if trans_b else ba)
    if alpha != 1.0:
        y = y * y.dtype.type(alpha) if y.dtype.kind == "f" else y * alpha
    if c is not None and beta != 0.0:
        cc = _acc(c)
        y = y + (cc * cc.dtype.type(beta) if cc.dtype.kind == "f" else cc * beta)
    return np.ascontiguousarray(np.asarray(y).astype(a.dtype, copy=False))


def _matmul_infer(types, attrs):
    a, b = types
    if a.rank == 0 or b.rank == 0:
        raise ValueError("matmul: operands must have rank >= 1")
    sa = (1,) + a.shape if a.rank == 1 else a.shape
    sb = b.shape + (1,) if b.rank == 1 else b.shape
    if sa[-1] != sb[-2]:
        raise ValueError(f"matmul: inner dimensions differ ({a} x {b})")
    shape = broadcast_shapes(sa[:-2], sb[:-2]) + (sa[-2], sb[-1])
    if a.rank == 1:
        shape = shape[:-2] + shape[-1:]
    if b.rank == 1:
        shape = shape[:-1]
    return [TensorType(shape, same_dtype("matmul", [a, b]))]


@register_op("matmul", inputs=("a", "b"), infer=_matmul_infer, traits=(INTEGER,))
def matmul(a, b):
    """numpy/ONNX MatMul: batch dimensions broadcast, 1-d operands are promoted and squeezed."""
    return np.ascontiguousarray(_mm(_acc(a), _acc(b)).astype(a.dtype, copy=False))
