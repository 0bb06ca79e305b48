"""quantize: float conv / gemm / matmul become integer ops between quantize and dequantize.

Weights become symmetric per-channel int8 constants, the bias int32 at
scale_x·scale_w, the product an int32 accumulator, and a `requantize` brings it
to the output's 8-bit params — taken from the observed range of the layer's
output, or of the relu/clip right after it, which the requantize's clamp then
implements. Float stays only at the boundaries, as quantize/dequantize pairs
that `fold-requantize` cancels between consecutive integer layers.

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
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from qcc.ir.graph import Graph, Node, Value
from qcc.ir.types import QuantParams
from qcc.ops.quant import quantize_multiplier
from qcc.pass_manager import PassContext, register_property
from qcc.passes.fold_requantize import COMMUTES
from qcc.passes_registry import Pass, register_pass
from qcc.quantization import WEIGHT_QMAX, params_for_range, quantize_bias, quantize_weights

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


def _fit_bias(wq: np.ndarray, ws: np.ndarray, axis: int, bias, sx: float, x_span: int):
    """Raise the weight scale of any channel whose bias would not fit the int32 accumulator
    (next to the worst-case sum of products), and re-round that channel's weights.

    The bias is quantized at scale_x·scale_w. A channel with (near-)zero weights but a real
    bias -- a dead unit, a pruned filter -- gets a weight scale of ~1e-20, so its bias would
    be billions of steps: saturated, then overflowing the accumulator. A coarser scale costs
    that channel nothing: its weights are negligible next to its bias."""
    b = np.abs(np.asarray(bias, np.float64).reshape(-1))
    if b.size != ws.size:
        return wq, ws
    terms = wq.size // max(wq.shape[axis], 1)
    limit = max(ACC_MAX - terms * x_span * WEIGHT_QMAX, ACC_MAX // 2)
    need = b / (sx * limit)
    if not (need > ws).any():
        return wq, ws
    new = np.maximum(ws, need)
    shape = [1] * wq.ndim
    shape[axis] = -1
    ratio = (ws / new).reshape(shape)  # <= 1: the re-rounded weights stay within int8
    wq = np.clip(np.rint(wq.astype(np.float64) * ratio), -WEIGHT_QMAX, WEIGHT_QMAX).astype(np.int8)
    return wq, new


def _source(v: Optional[Value]) -> str:
    """How the range of a layer's input was derived (for the report)."""
    p = v.producer if v is not None else None
    if p is not None and p.op == "observe":
        return p.attrs.get("source", "")
    if p is not None and p.op == "dequantize":
        return "previous layer's output"
    return ""


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


# readers of a layer's result that want it as 8-bit integers: layers, the activations and
# range-preserving ops fold-requantize runs on integers, and whatever quantizes it again
_INTEGER_READERS = frozenset(COMPUTE) | {"conv_transpose", "relu", "clip", "observe", "quantize"} | COMMUTES


def _float_exit(n: Node, end_obs: Node, g: Graph) -> Optional[Value]:
    """The float value to replace with the layer's int32 accumulator, dequantized, when
    nothing reads the layer's result as integers: its readers are all float ops (the adds
    and multiplies of a hard-swish, a residual add, a squeeze-excite gate, a softmax).
    Rounding that result to 8 bits first would only add error -- clipped to the calibrated
    range, then rounded once more where the next layer quantizes its input -- and buy no
    integer op. A relu/clip fused into the layer stays, as the float op it was. Graph outputs
    and QDQ models' fixed output params keep their 8-bit requantize."""
    end_v = end_obs.output
    if end_obs.attrs.get("scale") or end_v in g.outputs:
        return None
    users = end_v.users()
    if not users or any(u.op in _INTEGER_READERS for u in users):
        return None
    own = _only_user(n.output)
    if own is not None and own.op == "observe":
        return None if own.attrs.get("scale") else own.output
    return n.output


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
        for n in graph.nodes:
            if n.graph is None or n.op not in COMPUTE:
                continue
            if any(fnmatch.fnmatchcase(n.name, p) for p in keep_float) or decisions.get(n.name) == "float":
                layers[n.name] = {"precision": "float", "why": "excluded"}
                continue
            done = self._rewrite(n, graph, ctx)
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
    def _act_params(self, obs: Node) -> QuantParams:
        """An observe op's params: fixed ones (a QDQ model's) exactly, else from its range."""
        a = obs.attrs
        rng = a["range"]
        if a.get("scale"):
            from qcc.ir.types import INT_INFO

            bits, signed = INT_INFO[a["dtype"]]
            return QuantParams(bits, signed, a["scale"], a.get("zero_point") or [0], range=tuple(rng))
        return params_for_range(rng[0], rng[1], self.activation_dtype if not self.symmetric else "i8",
                                self.symmetric)

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

    def _weights(self, n: Node):
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
            wq, ws = quantize_weights(wd, 0)
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
            wq, ws = quantize_weights(wd * np.float32(alpha), 1)  # a negative alpha too
            return wq, ws, 1, 1, bias
        if n.op == "matmul":
            if wd.ndim != 2:
                return None
            wq, ws = quantize_weights(wd, 1)
            return wq, ws, n.output.type.rank - 1, 1, None
        return None

    def _input(self, n: Node, g: Graph):
        """The layer's integer input and its params: an already-integer value behind a
        dequantize (the previous layer's output), or a new quantize of an observed value."""
        v = n.inputs[0]
        p = v.producer if v is not None else None
        if p is not None and p.op == "dequantize" and p.attrs.get("axis", -1) == -1 \
                and p.inputs[0].quant is not None and p.inputs[0].dtype in ("u8", "i8"):
            return p.inputs[0], p.inputs[0].quant
        x = _observed(v)
        if x is None:
            return None
        qx = self._act_params(x[0])
        return self._quantize_input(p.inputs[0], qx, g, n), qx

    def _rewrite(self, n: Node, g: Graph, ctx: PassContext):
        end = _output_end(n, g)
        wts = self._weights(n)
        if end is None or wts is None:
            return None
        x = self._input(n, g)
        if x is None:
            return None
        (xq, qx), (end_obs, clamp) = x, end
        end_v = end_obs.output
        wq, ws, out_axis, w_axis, bias = wts
        qy = self._act_params(end_obs)
        sx, sy = qx.scale[0], qy.scale[0]
        if bias is not None and _fixed_weights(n.inputs[1]) is None:
            wq, ws = _fit_bias(wq, ws, w_axis, bias, sx, qx.qmax - qx.qmin)
        name = n.name
        wc = g.add_const(name + ".wq", wq, "i8", QuantParams(8, True, ws, 0, axis=w_axis if ws.size > 1 else None)
                         if ws.size > 1 else QuantParams(8, True, ws, 0))
        acc_scale = sx * ws
        bc = None
        if bias is not None:
            bc = g.add_const(name + ".bq", quantize_bias(np.asarray(bias).reshape(-1), acc_scale), "i32",
                             QuantParams(32, True, acc_scale, 0, axis=0 if acc_scale.size > 1 else None))
        if n.op == "conv":
            attrs = {k: n.attrs[k] for k in ("strides", "pads", "dilations", "group") if k in n.attrs}
            attrs["x_zero_point"] = qx.zero_point[0]
            acc = g.add_node("qconv", [xq, wc, bc], attrs, names=[name + ".acc"], before=n)
        else:
            acc = g.add_node("qmatmul", [xq, wc, bc], {"a_zero_point": qx.zero_point[0]},
                             names=[name + ".acc"], before=n)
        per_ch = acc_scale.size > 1
        acc.output.quant = QuantParams(32, True, acc_scale, 0, axis=out_axis if per_ch else None)
        exit_v = _float_exit(n, end_obs, g)
        if exit_v is not None:
            scales = [float(v) for v in np.atleast_1d(acc_scale)]
            dq = g.add_node("dequantize", [acc.output], {"scale": scales, "zero_point": [0] * len(scales),
                                                         "axis": out_axis if per_ch else -1},
                            names=[name + ".dq"], after=acc)
            g.replace_value(exit_v, dq.output)
            g.eliminate_dead_code()
            return {"precision": "int8", "op": n.op, "output_value": exit_v.name.removesuffix(".obs"),
                    "output": "int32 accumulator, dequantized (float readers only)",
                    "dequantize": dq.output.name, "input_range": list(qx.range or ()),
                    "input_range_source": _source(n.inputs[0]), "x_scale": sx, "x_zero_point": qx.zero_point[0],
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
        g.replace_value(end_v, dq.output)
        g.eliminate_dead_code()
        if dq.output in g.outputs:  # a graph output keeps the model's name for it
            base = end_v.name.removesuffix(".obs")
            if not g.has_value(base):
                g.rename(dq.output, base)
        return {"precision": "int8", "op": n.op, "output_value": end_v.name.removesuffix(".obs"),
                "requantize": rq.output.name, "input_range": list(qx.range or ()),
                "input_range_source": _source(n.inputs[0]), "output_range": list(qy.range or ()),
                "output_range_source": end_obs.attrs.get("source", ""), "x_scale": sx, "x_zero_point": qx.zero_point[0], "y_scale": sy,
                "y_zero_point": qy.zero_point[0], "weight_scales": [float(s) for s in np.atleast_1d(ws)],
                "multiplier": rq_attrs["multiplier"], "shift": rq_attrs["shift"],
                "fused_activation": end_v.name != n.output.name + ".obs"}
