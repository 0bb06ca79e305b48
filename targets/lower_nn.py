"""Lowerings of the layer ops: conv, conv_transpose, gemm/matmul, norms, pooling, resize."""
from __future__ import annotations

import numpy as np

from tvm import relax
from tvm.relax import op as R

from qcc.ops.nn import transposed_conv_phases

from .lower import LoweringError, lowering, tvm_dtype


def _layout_perm(src: str, dst: str):
    return [src.index(c) for c in dst]


def _bias_add(cx, y, b, rank: int):
    if b is None:
        return y
    b = cx.cast(b, cx.dtype_of(y))
    return R.add(y, cx.reshape(b, [1, cx.shape_of(b)[0]] + [1] * (rank - 2)))


def _out_dtype(cx, node, x):
    """The accumulation dtype of a conv/matmul: f16/bf16 accumulate in f32 (as the
    reference does), anything else in the node's output dtype (None = the input's)."""
    want = tvm_dtype(node.outputs[0].dtype)
    if want in ("float16", "bfloat16"):
        return "float32"
    return None if want == cx.dtype_of(x) else want


def _finish(cx, node, y):
    """Cast an f32-accumulated result back to the node's dtype."""
    return cx.cast(y, tvm_dtype(node.outputs[0].dtype))


# --- int8 weights read by float layers (-O1) ------------------------------------------

def int8_weight(cx, node, k: int, out_axis: int):
    """(the int8 constant, its float32 scale per output channel) when input k of `node` is a
    dequantize of an int8 constant with zero zero point, per tensor or along `out_axis` (the
    weight axis that becomes the output's channels); else None.

    The layer then computes with the int8 values (converted to float32 exactly, when the
    model runs) and scales its output, by linearity. Lowered as written, the dequantize of a constant is
    folded by TVM's FoldConstant and the library would store the float weights, not the int8
    ones weight-only quantization promises."""
    v = node.inputs[k] if k < len(node.inputs) else None
    dq = v.producer if v is not None else None
    if dq is None or dq.op != "dequantize":
        return None
    src = dq.inputs[0]
    if not src.is_const or src.dtype != "i8" or any(int(z) for z in dq.attrs.get("zero_point", [0])):
        return None
    scale = np.asarray(dq.attrs["scale"], np.float32).reshape(-1)
    rank = src.type.rank
    if scale.size != 1 and int(dq.attrs.get("axis", 0)) % max(rank, 1) != out_axis % rank:
        return None
    return cx.const(src.data, "int8"), scale


def weights_as_float(w):
    """A TE tensor's int8 weights as float32 (float32 ones as they are): a stage of their own,
    run once per inference, so the layer's inner loop reads float as it does for a float
    model (converting each weight as the inner loop read it cost det 40% against float). x86
    conv kernels take it as their first stage; a reduction reads it, so InlineElementwise
    leaves it materialised."""
    from tvm import te

    if w.dtype == "float32":
        return w
    return te.compute(w.shape, lambda *i: w[i].astype("float32"), name="qcc_weights_f32")


def float_at_run_time(cx, w, anchor):
    """float32 of the int8 constant `w`, converted by a kernel of its own when the model runs
    (weights_as_float), for the generic conv and matmul.

    `anchor`, any value computed at run time (the layer's input), is an argument the kernel
    does not read: with only constant arguments TVM's FoldConstant would run the kernel at
    compile time and store its float result."""
    return cx.emit_te(lambda wt, _anchor: weights_as_float(wt), w, anchor,
                      primfunc_name_hint="qcc_int8_weights_to_f32")


def _scale_channels(cx, y, scale: np.ndarray, axis: int):
    """y times a per-channel (or single) float32 scale along `axis`."""
    shape = [1] * len(cx.shape_of(y))
    if scale.size > 1:
        shape[axis] = scale.size
    return R.multiply(y, cx.const(scale.reshape(shape), "float32"))


# --- convolution ---------------------------------------------------------------------

_CONV = {3: R.nn.conv1d, 4: R.nn.conv2d, 5: R.nn.conv3d}
_CONV_T = {3: R.nn.conv1d_transpose, 4: R.nn.conv2d_transpose, 5: R.nn.conv3d_transpose}


def conv_nd(cx, node, x, w, attrs, out_dtype=None):
    """The convolution of `x` (NC...) by `w` (OI...) in the layouts the strategy picks
    (`strategy.conv_layout(node)`), returned in NC...: shared by conv and qconv.
    Constant weights are rearranged here, in numpy."""
    rank = len(cx.shape_of(x))
    if rank not in _CONV:
        raise LoweringError(f"{node.op} over {rank - 2} spatial dims is not supported")
    own = cx.strategy.conv_kernel(cx, node, x, w, attrs, out_dtype)
    if own is not None:
        return own
    n = rank - 2
    base_d, base_k = "NC" + "DHW"[3 - n:], "OI" + "DHW"[3 - n:]
    data_layout, kernel_layout = cx.strategy.conv_layout(node)
    xd = cx.permute(x, _layout_perm(base_d, data_layout))
    wk = cx.permute(w, _layout_perm(base_k, kernel_layout))
    if cx.dtype_of(wk) == "int8" and cx.dtype_of(x).startswith(("float", "bfloat")):
        wk = cx.cast(float_at_run_time(cx, wk, x), cx.dtype_of(x))
    y = _CONV[rank](
        xd, wk,
        strides=[int(s) for s in attrs.get("strides") or [1] * n],
        padding=[int(p) for p in attrs.get("pads") or [0] * 2 * n],
        dilation=[int(d) for d in attrs.get("dilations") or [1] * n],
        groups=int(attrs.get("group", 1)),
        data_layout=data_layout, kernel_layout=kernel_layout, out_layout=data_layout,
        out_dtype=out_dtype,
    )
    # back to NC... (a later layout pass cancels the transposes between convs)
    return cx.permute(y, _layout_perm(data_layout, base_d))


@lowering("conv")
def lower_conv(cx, node, ins, attrs):
    x, w, b = (list(ins) + [None])[:3]
    rank = len(cx.shape_of(x))
    q = int8_weight(cx, node, 1, 0)
    if q is not None:
        y = conv_nd(cx, node, x, q[0], attrs, _out_dtype(cx, node, x))
        y = _scale_channels(cx, y, q[1], 1)
    else:
        w = cx.cast(w, cx.dtype_of(x)) if cx.const_value(w) is None else w
        y = conv_nd(cx, node, x, w, attrs, _out_dtype(cx, node, x))
    return _finish(cx, node, _bias_add(cx, y, b, rank))


def _transpose_as_conv(cx, node, x, w, b, attrs):
    """A 2-D conv_transpose (stride s <= kernel k on each axis, not 1 on both, no dilation or
    groups: the up-sampling heads of detectors and U-Nets) as a conv to O*sh*sw channels over
    its input, a pixel shuffle and a crop (qcc.ops.nn.transposed_conv_phases; fuse does the
    same at -O1 and up, so that it is quantized as a conv). A kernel equal to its stride is
    a 1x1 conv with nothing to crop, each output pixel one sum of C products in the same
    order. TVM's conv2d_transpose has no fast CPU schedule (det's two heads: 20 ms of 91; a
    k=4, s=2 one, 64->32 channels at 48x72: 3.4 ms, against 1.8 ms in onnxruntime), the conv
    has. None when the op is not of that form."""
    wv = cx.const_value(w)
    if len(cx.shape_of(x)) != 4 or wv is None or wv.ndim != 4 or int(attrs.get("group", 1)) != 1:
        return None
    c, o, kh, kw = (int(d) for d in wv.shape)
    sh, sw = (int(s) for s in attrs.get("strides") or [1, 1])
    if any(int(d) != 1 for d in attrs.get("dilations") or []) or (sh, sw) == (1, 1) and (kh, kw) != (1, 1):
        return None  # (stride 1: TVM's conv2d_transpose is a conv already)
    pads = [int(p) for p in attrs.get("pads") or [0] * 4]
    n, _, h, wd = (int(d) for d in cx.shape_of(x))
    out_hw = [int(d) for d in node.output.shape[2:]]
    phases = transposed_conv_phases(wv, (sh, sw), (h, wd), out_hw, pads)
    if phases is None:
        return None
    wc, (k_h, k_w) = phases
    y = conv_nd(cx, node, x, cx.const(wc, cx.dtype_of(w)), {"pads": [k_h - 1, k_w - 1] * 2},
                _out_dtype(cx, node, x))
    hq, wq = h + k_h - 1, wd + k_w - 1
    y = cx.reshape(y, [n, o, sh, sw, hq, wq])
    y = cx.permute(y, [0, 1, 4, 2, 5, 3])
    y = cx.reshape(y, [n, o, hq * sh, wq * sw])
    if (pads[0], pads[1], pads[0] + out_hw[0], pads[1] + out_hw[1]) != (0, 0, hq * sh, wq * sw):
        y = R.strided_slice(y, axes=[2, 3], begin=pads[:2], end=[pads[0] + out_hw[0], pads[1] + out_hw[1]])
    return _finish(cx, node, _bias_add(cx, y, b, 4))


@lowering("conv_transpose")
def lower_conv_transpose(cx, node, ins, attrs):
    x, w, b = (list(ins) + [None])[:3]
    shuffled = _transpose_as_conv(cx, node, x, w, b, attrs)
    if shuffled is not None:
        return shuffled
    rank = len(cx.shape_of(x))
    if rank not in _CONV_T:
        raise LoweringError(f"conv_transpose over {rank - 2} spatial dims is not supported")
    n = rank - 2
    sp = "DHW"[3 - n:]
    pads = [int(p) for p in attrs.get("pads") or [0] * 2 * n]
    y = _CONV_T[rank](
        x, w,
        strides=[int(s) for s in attrs.get("strides") or [1] * n],
        padding=pads,
        output_padding=[int(p) for p in attrs.get("output_padding") or [0] * n],
        dilation=[int(d) for d in attrs.get("dilations") or [1] * n],
        groups=int(attrs.get("group", 1)),
        data_layout="NC" + sp, kernel_layout="IO" + sp,
        out_dtype=_out_dtype(cx, node, x),
    )
    return _finish(cx, node, _bias_add(cx, y, b, rank))


@lowering("batch_norm")
def lower_batch_norm(cx, node, ins, attrs):
    x, scale, bias, mean, var = ins
    eps = float(attrs.get("epsilon", 1e-5))
    rank = len(cx.shape_of(x))
    dt = cx.dtype_of(x)
    bshape = [1, cx.shape_of(x)[1]] + [1] * (rank - 2)
    vals = [cx.const_value(v) for v in (scale, bias, mean, var)]
    if all(v is not None for v in vals):
        s, bb_, m, v = (np.asarray(a, np.float64) for a in vals)
        a = s / np.sqrt(v + eps)
        c = bb_ - m * a
        work = dt if dt in ("float32", "float64") else "float32"
        y = R.add(R.multiply(cx.cast(x, work), cx.const(a.reshape(bshape), work)),
                  cx.const(c.reshape(bshape), work))
        return cx.cast(y, dt)
    scale, bias, mean, var = (cx.reshape(cx.cast(v, dt), bshape) for v in (scale, bias, mean, var))
    mul = cx.emit(R.divide(scale, R.sqrt(R.add(var, cx.const(eps, dt)))))
    add = R.subtract(bias, R.multiply(mean, mul))
    return R.add(R.multiply(x, mul), add)


# --- matrix products -----------------------------------------------------------------

def _product(cx, node, a, w, scale):
    """a @ w through the target's own kernel when it has one -- for a constant matrix w (-O1's
    int8 weights as they are: the kernel converts them) or a run-time w --, else R.matmul (int8
    weights converted by a kernel of their own first). Times the per-channel `scale` of int8
    weights (None: float)."""
    out = _out_dtype(cx, node, a)
    wv = cx.const_value(w)
    y = cx.strategy.matmul_kernel(cx, a, w, out) if wv is None or wv.ndim == 2 else None
    if y is None:
        if scale is not None:
            w = cx.cast(float_at_run_time(cx, w, a), cx.dtype_of(a))
        y = R.matmul(a, w, out_dtype=out)
    return y if scale is None else _scale_channels(cx, y, scale, -1)


def _transposed(cx, w):
    """A constant's transpose as a constant (kernels read constant weights), else a permute."""
    v = cx.const_value(w)
    return cx.const(np.ascontiguousarray(v.T), cx.dtype_of(w)) if v is not None and v.ndim == 2 \
        else cx.permute(w, [1, 0])


@lowering("matmul")
def lower_matmul(cx, node, ins, attrs):
    a, b = ins
    q = int8_weight(cx, node, 1, -1)
    return _finish(cx, node, _product(cx, node, a, q[0] if q else b, q[1] if q else None))


@lowering("gemm")
def lower_gemm(cx, node, ins, attrs):
    a, b, c = (list(ins) + [None])[:3]
    if int(attrs.get("trans_a", 0)):
        a = cx.permute(a, [1, 0])
    trans_b = int(attrs.get("trans_b", 0))
    q = int8_weight(cx, node, 1, 0 if trans_b else 1)
    w = q[0] if q else b
    y = _product(cx, node, a, _transposed(cx, w) if trans_b else w, q[1] if q else None)
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if alpha != 1.0:
        y = R.multiply(y, cx.scalar(alpha, y))
    if c is not None and beta != 0.0:
        c = cx.cast(c, cx.dtype_of(y))
        if beta != 1.0:
            cv = cx.const_value(c)
            c = cx.const(cv * beta, cx.dtype_of(c)) if cv is not None else R.multiply(c, cx.scalar(beta, c))
        y = R.add(y, c)
    return _finish(cx, node, y)


# --- normalisation -------------------------------------------------------------------

@lowering("layer_norm")
def lower_layer_norm(cx, node, ins, attrs):
    x, scale, bias = (list(ins) + [None])[:3]
    shape = cx.shape_of(x)
    rank = len(shape)
    axis = int(attrs.get("axis", -1))
    axis = axis + rank if axis < 0 else axis
    eps = float(attrs.get("epsilon", 1e-5))
    dt = cx.dtype_of(x)
    norm_shape = list(shape[axis:])
    axes = list(range(axis, rank))

    def full(v, fill):
        if v is None:
            return cx.const(np.full(norm_shape, fill), dt)
        v = cx.cast(v, dt)
        vs = list(cx.shape_of(v))
        if vs == norm_shape:
            return v
        if len(vs) > len(norm_shape):  # leading 1s: [1, 1, C] -> [C]
            v = cx.reshape(v, vs[len(vs) - len(norm_shape):])
        cv = cx.const_value(v)
        if cv is not None:
            return cx.const(np.broadcast_to(cv, norm_shape), dt)
        return R.broadcast_to(v, norm_shape)

    work = dt if dt in ("float32", "float64") else "float32"  # f16 normalises in f32
    y = R.nn.layer_norm(cx.cast(x, work), cx.cast(full(scale, 1.0), work), cx.cast(full(bias, 0.0), work),
                        axes=axes, epsilon=eps)
    return cx.cast(y, dt)


# --- pooling -------------------------------------------------------------------------

_MAXPOOL = {3: R.nn.max_pool1d, 4: R.nn.max_pool2d, 5: R.nn.max_pool3d}
_AVGPOOL = {3: R.nn.avg_pool1d, 4: R.nn.avg_pool2d, 5: R.nn.avg_pool3d}


def _crop_to(cx, y, want):
    """Drop trailing windows TVM's ceil mode adds and ONNX does not (a window must start
    inside the input or the begin padding)."""
    got = cx.shape_of(cx.emit(y) if not isinstance(y, relax.Var) else y)
    if list(got) == list(want):
        return y
    if any(g < w for g, w in zip(got, want)):
        raise LoweringError(f"pooling produced {list(got)}, expected {list(want)}")
    axes = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
    return R.strided_slice(y, axes=axes, begin=[0] * len(axes), end=[want[i] for i in axes])


def _pool_args(attrs, n):
    return dict(
        pool_size=[int(k) for k in attrs["kernel_shape"]],
        strides=[int(s) for s in attrs.get("strides") or [1] * n],
        padding=[int(p) for p in attrs.get("pads") or [0] * 2 * n],
        dilation=[int(d) for d in attrs.get("dilations") or [1] * n],
        ceil_mode=bool(int(attrs.get("ceil_mode", 0))),
    )


@lowering("max_pool")
def lower_max_pool(cx, node, ins, attrs):
    x = ins[0]
    rank = len(cx.shape_of(x))
    if rank not in _MAXPOOL:
        raise LoweringError(f"max_pool over {rank - 2} spatial dims is not supported")
    args = _pool_args(attrs, rank - 2)
    if rank == 4 and _separable(args):
        return _separable_max_pool(cx, x, args)
    y = cx.emit(_MAXPOOL[rank](x, **args, layout="NC" + "DHW"[5 - rank:]))
    return _crop_to(cx, y, node.outputs[0].shape)


# a window at least this many taps on a side is pooled row by row, then column by column
SEPARABLE_MIN_SIDE = 5


def _separable(args) -> bool:
    """Wide 2-D windows without dilation or ceil mode (the SPP blocks of YOLO detectors:
    5x5, 9x9, 13x13 at stride 1) pool separably."""
    kh, kw = args["pool_size"]
    return (min(kh, kw) >= SEPARABLE_MIN_SIDE and args["dilation"] == [1, 1] and not args["ceil_mode"])


def _separable_max_pool(cx, x, args):
    """The max over a kh x kw window is the max over its kh rows of each row's max over kw
    columns: kh + kw comparisons an output instead of kh * kw, the same value (a max rounds
    nothing; padding is the dtype's lowest value in both passes, as in the one-pass pool).
    YOLOX's SPP (5x5, 9x9 and 13x13 windows over 192 channels at 13x13): 0.33 -> 0.08-0.10 ms
    in all on two threads."""
    kh, kw = args["pool_size"]
    sh, sw = args["strides"]
    pt, pl, pb, pr = args["padding"]
    rows = cx.emit(R.nn.max_pool2d(x, pool_size=[1, kw], strides=[1, sw], padding=[0, pl, 0, pr],
                                   dilation=[1, 1], layout="NCHW"))
    return R.nn.max_pool2d(rows, pool_size=[kh, 1], strides=[sh, 1], padding=[pt, 0, pb, 0],
                           dilation=[1, 1], layout="NCHW")


def _avg_divisor(in_sp, out_sp, k, s, d, pads, include_pad):
    """ONNX's divisor per output window: the taps inside the input (count_include_pad=0),
    or inside input + explicit pads (=1); taps in the ceil-mode overhang never count."""
    n = len(in_sp)
    per_axis = []
    for i in range(n):
        lo = -pads[i] if include_pad else 0
        hi = in_sp[i] + pads[n + i] if include_pad else in_sp[i]
        starts = np.arange(out_sp[i]) * s[i] - pads[i]
        taps = starts[:, None] + np.arange(k[i])[None, :] * d[i]
        per_axis.append(((taps >= lo) & (taps < hi)).sum(axis=1))
    div = per_axis[0].astype(np.float64)
    for a in per_axis[1:]:
        div = np.multiply.outer(div, a)
    return div


@lowering("avg_pool")
def lower_avg_pool(cx, node, ins, attrs):
    """avg = (sum over the zero-padded window) / (ONNX's divisor), the divisor a constant
    computed here: exact for every pads/ceil_mode/count_include_pad combination."""
    x = ins[0]
    shape = cx.shape_of(x)
    rank = len(shape)
    if rank not in _AVGPOOL:
        raise LoweringError(f"avg_pool over {rank - 2} spatial dims is not supported")
    n = rank - 2
    args = _pool_args(attrs, n)
    include = bool(int(attrs.get("count_include_pad", 0)))
    dt = cx.dtype_of(x)
    if dt not in ("float32", "float64"):  # ints and f16/bf16 average in f32, like the reference
        x = R.astype(x, "float32")
    out_sp = list(node.outputs[0].shape[2:])
    k, s, d, pads = args["pool_size"], args["strides"], args["dilation"], args["padding"]
    # Pad explicitly (zeros), with enough at the end for every ONNX window, then pool
    # with a full-window divisor and rescale by window_size / onnx_divisor.
    ends = [max(0, (out_sp[i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 - shape[2 + i] - pads[i]) for i in range(n)]
    pad_w = [0, 0, 0, 0]
    for i in range(n):
        pad_w += [pads[i], ends[i]]
    xp = R.nn.pad(x, pad_w, "constant", 0.0) if any(pad_w) else x
    y = _AVGPOOL[rank](xp, pool_size=k, strides=s, padding=[0] * 2 * n, dilation=d,
                       ceil_mode=False, count_include_pad=True, layout="NC" + "DHW"[3 - n:])
    y = _crop_to(cx, cx.emit(y), node.outputs[0].shape)
    div = _avg_divisor(shape[2:], out_sp, k, s, d, pads, include)
    factor = float(np.prod(k)) / np.maximum(div, 1)
    if not np.all(factor == 1.0):
        y = R.multiply(y, cx.const(factor.reshape([1, 1] + out_sp), cx.dtype_of(x)))
    if dt != cx.dtype_of(x):
        from .lower_math import round_cast

        y = round_cast(cx, y, dt)
    return y


# --- resize --------------------------------------------------------------------------

_F = np.float32


def _source_coords(out_len: int, in_len: int, scale, ctm: str) -> np.ndarray:
    """Where each output index samples the input: the reference kernel's own float32
    computation (nearest rounding at exact .5 depends on its operation order)."""
    from qcc.ops.resize import COORD_MODES, source_coords

    if ctm not in COORD_MODES:
        raise LoweringError(f"resize: coordinate_transformation_mode {ctm!r} is not supported")
    return source_coords(out_len, in_len, scale, ctm)


def _resize_table(in_len: int, out_len: int, scale, attrs):
    """(indices [out, taps], float32 weights [out, taps]) of one resized axis."""
    c = _source_coords(out_len, in_len, scale, attrs.get("coordinate_transformation_mode", "half_pixel"))
    from qcc.ops.resize import NEAREST_MODES, _cubic, _linear, _nearest

    mode = attrs.get("mode", "nearest")
    if mode == "nearest":
        nm = attrs.get("nearest_mode", "round_prefer_floor")
        if nm not in NEAREST_MODES:
            raise LoweringError(f"resize: nearest_mode {nm!r} is not supported")
        return _nearest(c, in_len, nm)
    if mode == "linear":
        return _linear(c, in_len)
    if mode == "cubic":
        return _cubic(c, in_len, float(attrs.get("cubic_coeff_a", -0.75)), int(attrs.get("exclude_outside", 0)))
    raise LoweringError(f"resize: mode {mode!r} is not supported")


def _axis_tables(shape, sizes, scales, attrs):
    """{axis: (index table, weights)} of every axis the resize changes, as the reference
    computes them; an axis of the same length and scale 1 is an identity, skipped as ONNX
    Runtime (and the reference) skip it for every mode."""
    tables = {}
    for axis, (n_in, n_out) in enumerate(zip(shape, sizes)):
        scale = _F(scales[axis]) if scales else (_F(n_out) / _F(n_in) if n_in else _F(1))
        if not (n_in == n_out and scale == 1):
            tables[axis] = _resize_table(n_in, n_out, scale, attrs)
    return tables


def _nearest_as_index_map(cx, x, shape, sizes, tables):
    """A nearest resize whose every index table is floor(i * n_in / n_out) (integer up- or
    downsampling, the usual asymmetric/floor FPN upsampling) as one gather kernel with that
    index arithmetic, else None: LLVM vectorizes it, where a take per axis through a constant
    table ran element by element (PP-OCR det's 48x72 -> 96x144 of 96 channels: 2 x 160 us)."""
    from tvm import te

    from .cpu_rules import UNROLL_INNER

    for axis, (idx, _) in tables.items():
        n_in, n_out = int(shape[axis]), sizes[axis]
        if idx.shape[1] != 1 or not np.array_equal(idx[:, 0], (np.arange(n_out) * n_in) // n_out):
            return None
    ratios = [(int(shape[a]), sizes[a]) if a in tables else None for a in range(len(shape))]
    last = ratios[-1]
    # an integer upsampling of the last axis: each output row interleaves k copies
    attrs_te = {UNROLL_INNER: last[1] // last[0]} if last and last[1] % last[0] == 0 and last[1] > last[0] else {}

    def fn(t):
        return te.compute(sizes, lambda *i: t[tuple(v if r is None else (v * r[0]) // r[1] for v, r in zip(i, ratios))],
                          name="resize_nearest", attrs=attrs_te)

    return cx.emit_te(fn, cx.emit(x), primfunc_name_hint="resize_nearest")


@lowering("resize")
def lower_resize(cx, node, ins, attrs):
    """Separable resize: per resized axis, gathers at constant indices weighted by constant
    coefficients, both computed here exactly as the reference kernel computes them, so
    every mode and coordinate mode matches it (and ONNX Runtime's rounding)."""
    x = ins[0]
    shape = list(cx.shape_of(x))
    sizes = [int(v) for v in attrs["sizes"]]
    scales = [float(v) for v in attrs.get("scales") or []]
    if len(sizes) != len(shape):
        raise LoweringError(f"resize: sizes {sizes} do not match the input rank {len(shape)}")
    mode = attrs.get("mode", "nearest")
    dt = cx.dtype_of(x)
    tables = _axis_tables(shape, sizes, scales, attrs)
    if mode == "nearest" and tables:
        direct = _nearest_as_index_map(cx, x, shape, sizes, tables)
        if direct is not None:
            return direct
    work_dt = "float64" if dt == "float64" else "float32"
    y = x if mode == "nearest" else cx.cast(x, work_dt)
    for axis, (idx, w) in tables.items():
        bshape = [1] * len(shape)
        bshape[axis] = sizes[axis]
        acc = None
        for t in range(idx.shape[1]):
            g = R.take(y, cx.const(idx[:, t], "int64"), axis=axis, mode="clip")
            term = g if mode == "nearest" else R.multiply(g, cx.const(w[:, t].reshape(bshape), work_dt))
            acc = term if acc is None else R.add(acc, term)
        y = cx.emit(acc)
    if mode != "nearest" and work_dt != dt:
        from .lower_math import round_cast

        y = round_cast(cx, y, dt)
    return y
