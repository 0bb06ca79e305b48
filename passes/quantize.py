"""quantize: float conv / gemm / matmul become integer ops between quantize and dequantize.

Weights become symmetric per-channel int8 constants, the bias int32 at
scale_x·scale_w, the product an int32 accumulator, and a `requantize` brings it
to the output's 8-bit params — taken from the observed range of the layer's
output, or of the relu/clip right after it, which the requantize's clamp then
implements. Float stays only at the boundaries, as quantize/dequantize pairs
that `fold-requantize` cancels between consecutive integer layers.

Mixed precision: `assign-bitwidths` leaves a choice per layer in
ctx.options["bitwidths"] ("int8", "float", or "w{4,8,16}a{8,16}", e.g. "w4a8",
"w8a16"). Weights then get 4 bits (i4, symmetric [-7, 7]) or 16 (i16, [-32767,
32767]); an a16 layer reads int16 activations (symmetric, zero point 0): every
observed tensor that reaches an a16 layer (through range-preserving ops) is
quantized to i16 -- the producing layer requantizes straight to it -- and an 8-bit
layer reading it requantizes back. The accumulator is i64 (`acc="i64"`) when the
layer's sums could pass int32: per output channel, the sum of its weights' magnitudes
times the largest |x - zx|, plus its bias (_accumulator). A layer decided at
8-bit weights that `round-weights{defer=true}` rounded (ctx.options["rounded_weights"])
gets those integers instead of round-to-nearest's.

Before: %x.obs = qcc.observe(%x) {range=[-1.0, 1.0], ...}
        %c = qcc.conv(%x.obs, %w, %b) {...} : f32[1,8,4,4]
        %c.obs = qcc.observe(%c) {range=[0.0, 6.0], ...}
After:  %x.q = qcc.quantize(%x) {scale=[0.00784], zero_point=[128], ...} : u8[...] !q<u8 ...>
        %c.acc = qcc.qconv(%x.q, %w.q, %b.q) {x_zero_point=128, ...} : i32[...]
        %c.q = qcc.requantize(%c.acc) {multiplier=[...], shift=[...], axis=1, ...} : u8[...] !q<u8 ...>
        %c.dq = qcc.dequantize(%c.q) {...} : f32[1,8,4,4]
"""
from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from qcc.ir.graph import Graph, Node, Value
from qcc.ir.types import QuantParams
from qcc.ops.quant import ACC32_MAX, quantize_multiplier
from qcc.pass_manager import PassContext, register_property
from qcc.passes.fold_requantize import COMMUTES
from qcc.passes_registry import Pass, register_pass
from qcc.quantization import (WEIGHT_DTYPES, params_for_range, quantize_bias, quantize_weights,
                              weight_qmax)

COMPUTE = ("conv", "gemm", "matmul")
INT_OPS = ("qconv", "qmatmul", "requantize", "quantize")

register_property("quantized", "observe ops are gone and integer ops are in place",
                  lambda g: not any(n.op == "observe" for n in g.nodes)
                  and any(n.op in INT_OPS for n in g.nodes))


def _observed(v: Optional[Value]) -> Optional[Tuple[Node, Tuple[float, float]]]:
    """The observe op that produced `v` and its range, if it has one."""
    if v is None or v.producer is None or v.producer.op != "observe":
        return None
    r = v.producer.attrs.get("range")
    return (v.producer, (float(r[0]), float(r[1]))) if r else None


def _const_value(v: Optional[Value]) -> Optional[np.ndarray]:
    """A constant's float value, also through a dequantize of a constant (QDQ biases)."""
    if v is None:
        return None
    if v.is_const:
        return v.data
    p = v.producer
    if p is not None and p.op == "dequantize" and p.inputs[0].is_const:
        return p.opdef.kernel(p.inputs[0].data, **p.opdef.with_defaults(p.attrs))
    return None


def _fixed_weights(w: Optional[Value]):
    """A QDQ model's weights: (int8 array, scales, axis) behind a dequantize of an int8
    constant with symmetric params — used exactly, not re-quantized."""
    p = w.producer if w is not None else None
    if p is None or p.op != "dequantize" or not p.inputs[0].is_const or p.inputs[0].dtype != "i8":
        return None
    if any(z != 0 for z in p.attrs["zero_point"]):
        return None
    axis = p.attrs.get("axis", -1)
    return p.inputs[0].data, np.asarray(p.attrs["scale"], np.float64), (None if axis == -1 else axis)


def _per_channel(scales: np.ndarray, n: int) -> np.ndarray:
    return np.full(n, float(scales[0])) if scales.size == 1 else scales


ACC_MAX = 2 ** 31 - 1
MIN_SHIFT = -31  # the requantize kernel shifts right by at most 62 bits (31 - shift)


def _multiplier(real: float) -> Tuple[int, int]:
    """quantize_multiplier, also for ratios below 2^-32: those keep the largest shift the
    kernel applies and a smaller multiplier (fewer significant bits, still the right
    value) instead of a shift the kernel would clip, scaling the result up."""
    m, s = quantize_multiplier(real)
    if m and s < MIN_SHIFT:
        return int(round(real * 2.0 ** (31 - MIN_SHIFT))), MIN_SHIFT
    return m, s


def bias_fit_scale(bias: np.ndarray, sx: float, terms: int, x_span: int, qmax: int) -> np.ndarray:
    """The smallest weight scale per channel at which its bias (at scale sx·scale_w) still
    fits the int32 accumulator next to the worst-case sum of `terms` products."""
    limit = max(ACC_MAX - terms * x_span * qmax, ACC_MAX // 2)
    return np.abs(bias) / (sx * limit)


def _fit_bias(wq: np.ndarray, ws: np.ndarray, axis: int, bias, sx: float, x_span: int, qmax: int = 127):
    """Raise the weight scale of any channel whose bias would not fit the int32 accumulator
    (next to the worst-case sum of products), and re-round that channel's weights.

    The bias is quantized at scale_x·scale_w. A channel with (near-)zero weights but a real
    bias -- a dead unit, a pruned filter -- gets a weight scale of ~1e-20, so its bias would
    be billions of steps: saturated, then overflowing the accumulator. A coarser scale costs
    that channel nothing: its weights are negligible next to its bias."""
    b = np.asarray(bias, np.float64).reshape(-1)
    if b.size != ws.size:
        return wq, ws
    need = bias_fit_scale(b, sx, wq.size // max(wq.shape[axis], 1), x_span, qmax)
    if not (need > ws).any():
        return wq, ws
    new = np.maximum(ws, need)
    shape = [1] * wq.ndim
    shape[axis] = -1
    ratio = (ws / new).reshape(shape)  # <= 1: the re-rounded weights stay within their bits
    wq = np.clip(np.rint(wq.astype(np.float64) * ratio), -qmax, qmax).astype(wq.dtype)
    return wq, new


def _source(v: Optional[Value]) -> str:
    """How the range of a layer's input was derived (for the report)."""
    p = v.producer if v is not None else None
    if p is not None and p.op == "observe":
        return p.attrs.get("source", "")
    if p is not None and p.op == "dequantize":
        return "previous layer's output"
    return ""


def _input_source(v: Optional[Value], qx: QuantParams) -> str:
    """_source, with the observer's method ('observer:mse', 'observer:minmax': insert-observers
    chooses per tensor), marked '+headroom16' where a 16-bit input took its range16: the
    calibrated extremes widened by insert-observers' headroom16 (the report's calibration says
    by how much)."""
    p = v.producer if v is not None else None
    observed = p is not None and p.op == "observe" and p.attrs.get("source") == "observer"
    wide = qx.dtype == "i16" and observed and p.attrs.get("range16") and not p.attrs.get("scale")
    if wide:
        return _source(v) + "+headroom16"
    return _source(v) + (f":{p.attrs['method']}" if observed and p.attrs.get("method") else "")


def _only_user(v: Value) -> Optional[Node]:
    users = v.users()
    return users[0] if len(users) == 1 else None


def _ranged_observer(v: Value) -> Optional[Node]:
    obs = _only_user(v)
    return obs if obs is not None and obs.op == "observe" and obs.attrs.get("range") else None


def _output_end(n: Node, g: Graph):
    """Where the layer's integer output ends: after a relu/clip that only it feeds, if any
    (through the layer's own observer or directly, as in QDQ models).
    Returns (the observe op whose result gets replaced, clamp bounds in real units)."""
    obs = _only_user(n.output)
    after = obs.output if obs is not None and obs.op == "observe" else n.output
    act = _only_user(after)
    if act is not None and act.op in ("relu", "clip") and after not in g.outputs and n.output not in g.outputs:
        act_obs = _ranged_observer(act.output)
        if act_obs is not None and act.output not in g.outputs:
            lo = 0.0 if act.op == "relu" else float(act.attrs.get("min", -np.inf))
            hi = np.inf if act.op == "relu" else float(act.attrs.get("max", np.inf))
            return act_obs, (lo, hi)
    if obs is not None and obs.op == "observe" and obs.attrs.get("range"):
        return obs, (-np.inf, np.inf)
    return None


# readers of a layer's result that want it as 8-bit integers: layers, the activations
# fold-requantize runs on integers, and whatever quantizes it again (a QDQ model's fixed
# observe points); range-preserving ops pass the question on to their readers
# (_read_as_integers)
_INTEGER_READERS = frozenset(COMPUTE) | {"conv_transpose", "relu", "clip", "observe", "quantize"}


def _read_as_integers(v: Value, seen: Optional[set] = None) -> bool:
    """Whether some op computes with `v` as integers. Range-preserving ops (a slice, a
    reshape, a concat) and calibration-only observers are looked through: on integers they
    would only move 8-bit values on to their readers, so it is those readers that count.
    An LSTM's input projection is sliced into its gates, which are all float; a detector's
    box regression is concatenated with float scores into the output."""
    seen = set() if seen is None else seen
    for u in v.users():
        if id(u) in seen:
            continue
        seen.add(id(u))
        if u.op in COMMUTES or (u.op == "observe" and not u.attrs.get("scale")):
            if any(_read_as_integers(o, seen) for o in u.outputs):
                return True
        elif u.op in _INTEGER_READERS:
            return True
    return False


def _float_exit(n: Node, end_obs: Node, g: Graph) -> Optional[Value]:
    """The float value to replace with the layer's int32 accumulator, dequantized, when
    nothing reads the layer's result as integers: its readers are all float ops (the adds
    and multiplies of a hard-swish, a residual add, a squeeze-excite gate, a softmax),
    directly or through range-preserving ops (_read_as_integers).
    Rounding that result to 8 bits first would only add error -- clipped to the calibrated
    range, then rounded once more where the next layer quantizes its input -- and buy no
    integer op. A graph output is read as float too: a classifier's logits or an LM head's
    8-bit requantize clipped every held-out input's logits to the range 16 calibration
    inputs showed. A relu/clip fused into the layer stays, as the float op it was. QDQ
    models' fixed output params keep their 8-bit requantize."""
    end_v = end_obs.output
    if end_obs.attrs.get("scale"):
        return None
    users = end_v.users()
    if (not users and end_v not in g.outputs) or _read_as_integers(end_v):
        return None
    own = _only_user(n.output)
    if own is not None and own.op == "observe":
        return None if own.attrs.get("scale") else own.output
    return n.output


def layer_bits(choice: Optional[str]) -> Optional[Tuple[int, int]]:
    """(weight bits, activation bits) of a bit-width decision; None for float. No decision
    is int8; "w4a8", "w8a16", ... and the aliases ("int4", "int16") are assign-bitwidths'."""
    from qcc.passes.assign_bitwidths import choice_bits, normalize_choice

    if choice is None:
        return 8, 8
    c = normalize_choice(choice)
    return None if c == "float" else choice_bits(c)


def _wide_observers(graph: Graph, layers) -> set:
    """The observe ops whose tensors reach an a16 layer's input, back through observers and
    range-preserving ops: their tensors are quantized to int16."""
    marked, todo = set(), [n.inputs[0] for n in layers if n.inputs and n.inputs[0] is not None]
    while todo:
        v = todo.pop()
        p = v.producer
        if p is None or id(p) in marked:
            continue
        if p.op == "observe":
            marked.add(id(p))
            todo.append(p.inputs[0])
        elif p.op in COMMUTES:
            todo += [u for i, u in enumerate(p.inputs) if u is not None and not u.is_const
                     and not (p.op == "gather" and i == 1)]
    return marked


def _accumulator(op: str, qx: QuantParams, wq: np.ndarray, wbits: int, bq) -> str:
    """int32 unless this layer's sums could pass it, then int64: per output channel, the sum
    of its weights' magnitudes times the largest |x - zx|, plus its bias -- exact, as the
    weights are constants, and never above the dtypes' bound (K x max|x - zx| x max|w|). That
    bound alone put int16 activations in int64 beyond K = 511 (a 3x3 conv of 57 channels),
    which no fast kernel computes: on PP-OCR det an a16 3x3 96->24 conv ran the generic
    int64 lowering, 9 of a 20 ms build; its weights' bound is under a third of int32's."""
    xmax = max(abs(qx.qmin - qx.zero_point[0]), abs(qx.qmax - qx.zero_point[0]))
    b = np.abs(np.asarray(bq, np.int64).reshape(-1)) if bq is not None and np.size(bq) else np.zeros(1, np.int64)
    if op != "conv" and wq.ndim != 2:  # a batched constant: the dtypes' bound, K its leading axis
        return "i32" if int(wq.shape[0]) * xmax * (weight_qmax(wbits) + 1) + int(b.max()) <= ACC32_MAX else "i64"
    w = np.abs(wq.astype(np.int64))
    per_out = w.reshape(w.shape[0], -1).sum(axis=1) if op == "conv" else w.sum(axis=0)
    b = b if b.size == per_out.size else np.full(per_out.shape, int(b.max()))
    return "i32" if int((xmax * per_out + b).max()) <= ACC32_MAX else "i64"


@register_pass
@dataclass(frozen=True)
class Quantize(Pass):
    """Rewrite float conv/gemm/matmul into int8 ops with requantize epilogues."""

    name = "quantize"
    requires = frozenset({"ranged"})
    produces = frozenset({"quantized"})
    activation_dtype: str = "u8"
    symmetric: bool = False
    exclude: str = ""  # 'glob;glob' of layer names kept in float

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        if self.activation_dtype not in ("u8", "i8"):
            raise ValueError(f"activation-dtype must be u8 or i8, got {self.activation_dtype}")
        keep_float = [p for p in self.exclude.split(";") if p]
        decisions = ctx.options.get("bitwidths", {})
        changed = False
        layers = ctx.report.setdefault("layers_quantized", {})
        if ctx.options.get("rounded_weights"):  # round-weights{defer=true}'s choices
            from qcc.passes.round_weights import apply_rounded_weights

            changed = bool(apply_rounded_weights(graph, decisions, ctx.options["rounded_weights"]))
        bits = {n.name: layer_bits(decisions.get(n.name)) for n in graph.nodes if n.op in COMPUTE}
        # object.__setattr__: a frozen pass keeps per-run scratch out of its options
        object.__setattr__(self, "_wide", _wide_observers(
            graph, [n for n in graph.nodes if n.op in COMPUTE and (bits[n.name] or (0, 0))[1] == 16]))
        object.__setattr__(self, "_consts", {})
        for n in graph.nodes:
            if n.graph is None or n.op not in COMPUTE:
                continue
            if any(fnmatch.fnmatchcase(n.name, p) for p in keep_float) or bits[n.name] is None:
                layers[n.name] = {"precision": "float", "why": "excluded"}
                continue
            done = self._rewrite(n, graph, ctx, *bits[n.name])
            if done is not None:
                layers[n.name] = done
                changed = True
        for n in graph.nodes:  # observers have served their purpose
            if n.op != "observe":
                continue
            if n.attrs.get("scale"):
                # a QDQ model's fixed params are part of its meaning (they may stand in for a
                # relu the exporter removed): keep them as a quantize/dequantize pair
                qp = self._act_params(n)
                qv = self._quantize_input(n.inputs[0], qp, graph, n)
                dq = graph.add_node("dequantize", [qv], {"scale": list(qp.scale),
                                                         "zero_point": list(qp.zero_point), "axis": -1},
                                    names=[n.inputs[0].name + ".dq"], after=qv.producer)
                graph.replace_value(n.output, dq.output)
            else:
                graph.replace_value(n.output, n.inputs[0])
            graph.remove_node(n)
            changed = True
        graph.eliminate_dead_code()
        return changed

    # --- the rewrite -------------------------------------------------------------------
    def _shared_const(self, g: Graph, name: str, data: np.ndarray, dtype: str, q: QuantParams) -> Value:
        """A new integer constant, or the one an earlier layer of this run got for the same
        integers and params: layers that share one float weight (an unrolled recurrence's
        h·Rᵀ at every step, a weight-tied head) then share one integer weight in the IR,
        model.npz and the report's size, as they did in float."""
        key = (dtype, data.shape, hashlib.sha256(np.ascontiguousarray(data).tobytes()).digest(),
               np.asarray(q.scale).tobytes(), q.axis, q.bits)
        v = self._consts.get(key)
        if v is None:
            v = self._consts[key] = g.add_const(name, data, dtype, q)
        return v

    def _act_params(self, obs: Node, bits: Optional[int] = None) -> QuantParams:
        """An observe op's params: fixed ones (a QDQ model's) exactly, else from its range,
        in 16 bits for a tensor an a16 layer reads (or when `bits` asks for them)."""
        a = obs.attrs
        rng = a["range"]
        if a.get("scale"):
            from qcc.ir.types import INT_INFO

            b, signed = INT_INFO[a["dtype"]]
            return QuantParams(b, signed, a["scale"], a.get("zero_point") or [0], range=tuple(rng))
        if bits is None:
            bits = 16 if id(obs) in getattr(self, "_wide", ()) else 8
        if bits == 16 and a.get("range16"):
            rng = a["range16"]
        return self._range_params(rng[0], rng[1], bits)

    def _range_params(self, lo: float, hi: float, bits: int) -> QuantParams:
        if bits == 16:  # int16 activations: symmetric, zero point 0
            return params_for_range(lo, hi, "i16", True)
        return params_for_range(lo, hi, self.activation_dtype if not self.symmetric else "i8", self.symmetric)

    def _quantize_input(self, v: Value, q: QuantParams, g: Graph, before: Node) -> Value:
        """Reuse an existing quantize of `v` with the same params (a value feeding two layers)."""
        for u in v.users():
            if u.op == "quantize" and u.output.quant == q:
                return u.output
        src = v.producer
        node = g.add_node("quantize", [v], {"scale": list(q.scale), "zero_point": list(q.zero_point),
                                            "axis": -1, "dtype": q.dtype},
                          names=[v.name.removesuffix(".obs") + ".q"],
                          **({"after": src} if src is not None else {"before": before}))
        node.output.quant = q
        return node.output

    def _weights(self, n: Node, wbits: int = 8):
        """(integer weight const array, scales, channel axis of the result, bias array or None)."""
        w = n.inputs[1]
        fixed = _fixed_weights(w)
        if fixed is None and (w is None or not w.is_const):
            return None
        wd = w.data.astype(np.float32) if fixed is None else None
        b = n.inputs[2] if len(n.inputs) > 2 else None
        bias = _const_value(b)
        if b is not None and bias is None:
            return None
        if n.op == "conv":
            if fixed is not None:
                wq, ws, axis = fixed
                if axis not in (None, 0):
                    return None
                return wq, _per_channel(ws, wq.shape[0]), 1, 0, bias
            wq, ws = quantize_weights(wd, 0, wbits)
            return wq, ws, 1, 0, bias
        if fixed is not None:  # gemm / matmul with a QDQ model's integer weights
            wq, ws, axis = fixed
            if wq.ndim != 2 or n.attrs.get("trans_a", 0) or float(n.attrs.get("alpha", 1.0)) != 1.0 \
                    or float(n.attrs.get("beta", 1.0)) != 1.0:
                return None
            col = 0 if n.attrs.get("trans_b", 0) else 1  # the weight axis that is the output column
            if axis not in (None, col):
                return None
            if col == 0:
                wq = wq.T
            if bias is not None and bias.size != wq.shape[1]:
                return None
            return wq, _per_channel(ws, wq.shape[1]), n.output.type.rank - 1, 1, \
                (None if bias is None else bias.reshape(-1))
        if n.op == "gemm":
            if n.attrs.get("trans_a", 0):
                return None
            if n.attrs.get("trans_b", 0):
                wd = wd.T
            alpha, beta = float(n.attrs.get("alpha", 1.0)), float(n.attrs.get("beta", 1.0))
            if bias is not None:
                c = np.asarray(bias, np.float64) * beta  # y = alpha·(x @ W) + beta·C
                N = wd.shape[1]
                if c.size == 1:
                    c = np.full(N, float(c.ravel()[0]))
                elif c.size == N:
                    c = c.reshape(N)
                else:
                    return None  # a full [M, N] bias: leave in float
                bias = c
            wq, ws = quantize_weights(wd * np.float32(alpha), 1, wbits)  # a negative alpha too
            return wq, ws, 1, 1, bias
        if n.op == "matmul":
            if wd.ndim != 2:
                return None
            wq, ws = quantize_weights(wd, 1, wbits)
            return wq, ws, n.output.type.rank - 1, 1, None
        return None

    def _input(self, n: Node, g: Graph, abits: int = 8):
        """The layer's integer input and its params: an already-integer value of the right
        width behind a dequantize (the previous layer's output), or a new quantize of an
        observed value -- or of a dequantized one of the other width, from its range, which
        fold-requantize turns into a requantize."""
        v = n.inputs[0]
        p = v.producer if v is not None else None
        want = ("i16",) if abits == 16 else ("u8", "i8")
        if p is not None and p.op == "dequantize" and p.attrs.get("axis", -1) == -1 \
                and p.inputs[0].quant is not None:
            q = p.inputs[0].quant
            if p.inputs[0].dtype in want:
                return p.inputs[0], q
            if p.inputs[0].dtype in ("u8", "i8", "i16") and q.range is not None:
                qx = self._range_params(q.range[0], q.range[1], abits)
                return self._quantize_input(v, qx, g, n), qx
            return None
        x = _observed(v)
        if x is None:
            return None
        qx = self._act_params(x[0])
        if qx.dtype not in want and not x[0].attrs.get("scale"):
            qx = self._act_params(x[0], abits)
        return self._quantize_input(p.inputs[0], qx, g, n), qx

    def _rewrite(self, n: Node, g: Graph, ctx: PassContext, wbits: int = 8, abits: int = 8):
        end = _output_end(n, g)
        fixed = _fixed_weights(n.inputs[1]) is not None
        wts = self._weights(n, wbits)
        if end is None or wts is None:
            return None
        x = self._input(n, g, abits)
        if x is None:
            return None
        (xq, qx), (end_obs, clamp) = x, end
        in_source = _input_source(n.inputs[0], qx)  # now: the rewrite below detaches n's inputs
        end_v = end_obs.output
        wq, ws, out_axis, w_axis, bias = wts
        wbits = 8 if fixed else wbits  # a QDQ model's int8 weights are used as they are
        qy = self._act_params(end_obs)
        sx, sy = qx.scale[0], qy.scale[0]
        if bias is not None and not fixed:
            wq, ws = _fit_bias(wq, ws, w_axis, bias, sx, qx.qmax - qx.qmin, weight_qmax(wbits))
        name = n.name
        wdt = WEIGHT_DTYPES[wbits]
        wc = self._shared_const(g, name + ".wq", wq, wdt, QuantParams(wbits, True, ws, 0, axis=w_axis)
                                if ws.size > 1 else QuantParams(wbits, True, ws, 0))
        acc_scale = sx * ws
        bc = None
        bq = None
        if bias is not None:
            bq = quantize_bias(np.asarray(bias).reshape(-1), acc_scale)
            bc = g.add_const(name + ".bq", bq, "i32",
                             QuantParams(32, True, acc_scale, 0, axis=0 if acc_scale.size > 1 else None))
        acc_dt = _accumulator(n.op, qx, wq, wbits, bq)
        if n.op == "conv":
            attrs = {k: n.attrs[k] for k in ("strides", "pads", "dilations", "group") if k in n.attrs}
            attrs["x_zero_point"] = qx.zero_point[0]
            if acc_dt != "i32":
                attrs["acc"] = acc_dt
            acc = g.add_node("qconv", [xq, wc, bc], attrs, names=[name + ".acc"], before=n)
        else:
            attrs = {"a_zero_point": qx.zero_point[0], **({"acc": acc_dt} if acc_dt != "i32" else {})}
            acc = g.add_node("qmatmul", [xq, wc, bc], attrs, names=[name + ".acc"], before=n)
        per_ch = acc_scale.size > 1
        acc.output.quant = QuantParams(64 if acc_dt == "i64" else 32, True, acc_scale, 0,
                                       axis=out_axis if per_ch else None)
        precision = "int8" if (wbits, qx.bits) == (8, 8) else f"w{wbits}a{qx.bits}"
        bits_info = {"precision": precision, "weight_bits": wbits, "activation_bits": qx.bits,
                     "accumulator": acc_dt}
        exit_v = _float_exit(n, end_obs, g)
        if exit_v is not None:
            scales = [float(v) for v in np.atleast_1d(acc_scale)]
            dq = g.add_node("dequantize", [acc.output], {"scale": scales, "zero_point": [0] * len(scales),
                                                         "axis": out_axis if per_ch else -1},
                            names=[name + ".dq"], after=acc)
            replaced = exit_v.producer
            g.replace_value(exit_v, dq.output)
            g.eliminate_dead_code([replaced])
            if dq.output in g.outputs:  # a graph output keeps the model's name for it
                base = exit_v.name.removesuffix(".obs")
                if not g.has_value(base):
                    g.rename(dq.output, base)
            return {**bits_info, "op": n.op, "output_value": exit_v.name.removesuffix(".obs"),
                    "output": "int32 accumulator, dequantized (float readers only)",
                    "dequantize": dq.output.name, "input_range": list(qx.range or ()),
                    "input_range_source": in_source, "x_scale": sx, "x_zero_point": qx.zero_point[0],
                    "weight_scales": [float(v) for v in np.atleast_1d(ws)], "fused_activation": False}
        mults = [_multiplier(float(s) / sy) for s in np.atleast_1d(acc_scale)]
        lo = qy.qmin if not np.isfinite(clamp[0]) else int(np.clip(round(clamp[0] / sy) + qy.zero_point[0], qy.qmin, qy.qmax))
        hi = qy.qmax if not np.isfinite(clamp[1]) else int(np.clip(round(clamp[1] / sy) + qy.zero_point[0], qy.qmin, qy.qmax))
        rq_attrs = {"multiplier": [m for m, _ in mults], "shift": [s for _, s in mults],
                    "axis": out_axis if per_ch else -1, "zero_point": qy.zero_point[0], "dtype": qy.dtype}
        if (lo, hi) != (qy.qmin, qy.qmax):
            rq_attrs["clamp"] = [lo, hi]
        rq = g.add_node("requantize", [acc.output], rq_attrs, names=[name + ".rq"], after=acc)
        rq.output.quant = qy
        dq = g.add_node("dequantize", [rq.output], {"scale": list(qy.scale), "zero_point": list(qy.zero_point),
                                                   "axis": -1}, names=[name + ".dq"], after=rq)
        replaced = end_v.producer
        g.replace_value(end_v, dq.output)
        g.eliminate_dead_code([replaced])
        if dq.output in g.outputs:  # a graph output keeps the model's name for it
            base = end_v.name.removesuffix(".obs")
            if not g.has_value(base):
                g.rename(dq.output, base)
        return {**bits_info, "op": n.op, "output_value": end_v.name.removesuffix(".obs"),
                "requantize": rq.output.name, "input_range": list(qx.range or ()),
                "input_range_source": in_source, "output_range": list(qy.range or ()),
                "output_range_source": end_obs.attrs.get("source", ""), "x_scale": sx, "x_zero_point": qx.zero_point[0], "y_scale": sy,
                "y_zero_point": qy.zero_point[0], "weight_scales": [float(s) for s in np.atleast_1d(ws)],
                "multiplier": rq_attrs["multiplier"], "shift": rq_attrs["shift"],
                "fused_activation": end_v.name != n.output.name + ".obs"}
