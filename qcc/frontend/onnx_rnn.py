"""LSTM, GRU and RNN, imported by unrolling them over the sequence into core ops.

Why unroll: qcc's shapes are static, so the sequence length is known at import and
a recurrence is just T copies of one step -- no loop construct, no opaque op the
back end cannot compile, and every step is visible to the passes. Why this shape:
quantization works per layer on matmuls with constant weights, so the input
projection X·Wᵀ of ALL time steps is one layer per direction over [T·batch, input]
(the bulk of the MACs, one well-calibrated int8 layer), and the recurrence h·Rᵀ is
one small layer per step; the weights are transposed here, once, as constants that
all steps share. Initial states that are absent (or constant) are folded at import,
so the first step has no product of zeros to calibrate. Gates are cut out with
slices rather than a split, so each fuses into the elementwise kernel reading it.

What is not unrolled raises a one-line error: sequence_lens that differ from the
sequence length (per-sequence lengths would need per-sequence time reversal),
activations other than Sigmoid, Tanh and Relu, and weights computed at run time.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from qcc.ir import Value

from .onnx_ops import converter

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"),
                        "RNN": ("Tanh",)}
_ACTIVATIONS = {"sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu"}
_DIRECTIONS = {"forward": ("fw",), "reverse": ("bw",), "bidirectional": ("fw", "bw")}


@converter("LSTM", "GRU", "RNN")
def _recurrent(imp, n):
    return _Unroll(imp, n).run()


# A value during unrolling is a graph Value, or None for all zeros (an absent initial state):
# the helpers fold zeros and constants at import instead of emitting nodes for them.
Val = Optional[Value]


class _Unroll:
    def __init__(self, imp, n):
        self.imp, self.n = imp, n
        self.base = next((o for o in n.outputs if o), None) or imp.fresh(n.op.lower())
        x = n.input(0)
        if x is None or x.type.rank != 3:
            raise n.error(f"X must be 3-D, got {None if x is None else x.type}")
        if x.dtype not in ("f32", "f16", "f64"):
            raise n.error(f"X has dtype {x.dtype}; only float inputs are supported")
        self.x, self.np_dtype = x, x.type.np_dtype
        self.layout = int(n.attr("layout", 0))
        if self.layout not in (0, 1):
            raise n.error(f"layout {self.layout} is not 0 or 1")
        self.T, self.B = (x.shape[0], x.shape[1]) if self.layout == 0 else (x.shape[1], x.shape[0])
        self.I = x.shape[2]
        if self.T < 1:
            raise n.error("the sequence is empty")
        direction = n.attr("direction", "forward")
        if direction not in _DIRECTIONS:
            raise n.error(f"unknown direction '{direction}'")
        self.dirs = _DIRECTIONS[direction]
        self.D = len(self.dirs)
        self.G = _GATES[n.op]
        self._consts: Dict[str, Value] = {}
        self._weights()
        self._attributes()

    # --- checking and preparing the inputs --------------------------------------------
    def _weights(self):
        n, D, G = self.n, self.D, self.G
        W, R = n.const(1, "W"), n.const(2, "R")
        if W is None or R is None:
            raise n.error("needs both W and R")
        H = int(n.attr("hidden_size", R.shape[-1] if R.ndim == 3 else 0))
        self.H = H
        if W.shape != (D, G * H, self.I):
            raise n.error(f"W has shape {list(W.shape)}, expected {[D, G * H, self.I]}")
        if R.shape != (D, G * H, H):
            raise n.error(f"R has shape {list(R.shape)}, expected {[D, G * H, H]}")
        Bc = n.const(3, "B")
        if Bc is not None and Bc.shape != (D, 2 * G * H):
            raise n.error(f"B has shape {list(Bc.shape)}, expected {[D, 2 * G * H]}")
        if Bc is None:
            Bc = np.zeros((D, 2 * G * H), np.float64)
        P = n.const(7, "P") if n.op == "LSTM" else None
        if P is not None and P.shape != (D, 3 * H):
            raise n.error(f"P has shape {list(P.shape)}, expected {[D, 3 * H]}")
        self.W, self.R, self.Bias = W, R, Bc
        self.P = None if P is None or not np.any(P) else P
        self.peepholes = [] if self.P is None else [
            [self._const(self.P[d, k * H:(k + 1) * H], f"{dn}.P{g}") for k, g in enumerate("iof")]
            for d, dn in enumerate(self.dirs)]
        seq = n.input(4)
        if seq is not None:
            if not seq.is_const:
                raise n.error("sequence_lens is computed at run time; qcc unrolls every sequence "
                              f"to the static length {self.T}, so it must be a constant equal to it")
            lens = [int(v) for v in np.asarray(seq.data).reshape(-1)]
            if any(v != self.T for v in lens):
                raise n.error(f"sequence_lens {lens} differ from the sequence length {self.T}; "
                              "qcc unrolls every sequence to the full length and supports "
                              "sequence_lens only when absent or all equal to it")

    def _attributes(self):
        n = self.n
        default = _DEFAULT_ACTIVATIONS[n.op]
        k = len(default)
        names = list(n.attr("activations") or default * self.D)
        if len(names) != k * self.D:
            raise n.error(f"activations {names} need {k * self.D} entries "
                          f"({k} per direction)")
        acts = []
        for name in names:
            op = _ACTIVATIONS.get(str(name).lower())
            if op is None:
                raise n.error(f"activation '{name}' is not supported (only Sigmoid, Tanh, Relu)")
            acts.append(op)
        self.acts = [acts[d * k:(d + 1) * k] for d in range(self.D)]
        clip = n.attr("clip")
        self.clip = None if clip is None else float(clip)
        if self.clip is not None and not self.clip > 0:
            raise n.error(f"clip {self.clip} must be positive")
        self.input_forget = int(n.attr("input_forget", 0)) if n.op == "LSTM" else 0
        self.lbr = int(n.attr("linear_before_reset", 0)) if n.op == "GRU" else 0

    def _initial(self, i: int, what: str) -> List[Val]:
        """initial_h / initial_c per direction as [B, H]: None when absent or all zeros."""
        v = self.n.input(i)
        D, B, H = self.D, self.B, self.H
        want = [D, B, H] if self.layout == 0 else [B, D, H]
        if v is None:
            return [None] * D
        if list(v.shape) != want:
            raise self.n.error(f"{what} has shape {list(v.shape)}, expected {want}")
        if v.is_const:
            data = np.asarray(v.data)
            if not np.any(data):
                return [None] * D
            per = [data[d] if self.layout == 0 else data[:, d] for d in range(D)]
            return [self.imp.const(p.astype(self.np_dtype), f"{self.base}.{self.dirs[d]}.{what}")
                    for d, p in enumerate(per)]
        axis = 0 if self.layout == 0 else 1
        out = []
        for d in range(D):
            part = v
            if D > 1:
                part = self._emit("slice", [v], {"starts": [d], "ends": [d + 1], "axes": [axis],
                                                  "steps": [1]}, f"{self.dirs[d]}.{what}.slice")
            out.append(self._emit("reshape", [part], {"shape": [B, H]}, f"{self.dirs[d]}.{what}"))
        return out

    # --- emitting, with zeros and constants folded -------------------------------------
    def _name(self, suffix: str) -> str:
        return self.imp.fresh(f"{self.base}.{suffix}")

    def _emit(self, op: str, inputs, attrs: Dict, suffix: str) -> Value:
        return self.imp.emit(op, inputs, attrs, self._name(suffix))

    def _const(self, array, suffix: str) -> Value:
        return self.imp.const(np.asarray(array).astype(self.np_dtype), f"{self.base}.{suffix}")

    def _add(self, a: Val, b: Val, suffix: str) -> Val:
        if a is None or b is None:
            return b if a is None else a
        if a.is_const and b.is_const:
            return self._const(a.data + b.data, suffix)
        return self._emit("add", [a, b], {}, suffix)

    def _mul(self, a: Val, b: Val, suffix: str) -> Val:
        if a is None or b is None:
            return None
        if a.is_const and b.is_const:
            return self._const(a.data * b.data, suffix)
        return self._emit("mul", [a, b], {}, suffix)

    def _shared(self, array: np.ndarray, suffix: str) -> Value:
        """One constant per direction and role (weights, biases), read by every step."""
        if suffix not in self._consts:
            self._consts[suffix] = self._const(np.ascontiguousarray(array), suffix)
        return self._consts[suffix]

    def _product(self, h: Val, w: np.ndarray, bias: Optional[np.ndarray], wname: str,
                 suffix: str) -> Val:
        """h·w (+ bias): a matmul layer (gemm with a bias), folded when h is constant.
        `wname` names the weight (and bias) constant shared by all steps."""
        if h is None:
            return None if bias is None else self._const(bias, suffix)
        if h.is_const:
            y = h.data.astype(np.float32) @ w.astype(np.float32)
            return self._const(y if bias is None else y + bias, suffix)
        wc = self._shared(w, wname)
        if bias is None:
            return self._emit("matmul", [h, wc], {}, suffix)
        bc = self._shared(bias, f"{wname}.b")
        return self._emit("gemm", [h, wc, bc], {"alpha": 1.0, "beta": 1.0, "trans_a": 0,
                                                "trans_b": 0}, suffix)

    def _split(self, v: Val, sizes: Sequence[int], suffixes: Sequence[str]) -> List[Val]:
        if v is None:
            return [None] * len(sizes)
        if v.is_const:
            parts = np.split(v.data, np.cumsum(sizes)[:-1], axis=-1)
            return [self._const(p, s) for p, s in zip(parts, suffixes)]
        # slices, not one split: each fuses into the elementwise kernel that reads it
        out, start, axis = [], 0, v.type.rank - 1
        for size, suffix in zip(sizes, suffixes):
            out.append(self._emit("slice", [v], {"starts": [start], "ends": [start + size],
                                                 "axes": [axis], "steps": [1]}, suffix))
            start += size
        return out

    def _act(self, op: str, v: Value, suffix: str) -> Value:
        """op(clip(v)), the clip when the node has one."""
        if self.clip is not None:
            v = self._emit("clip", [v], {"min": -self.clip, "max": self.clip}, f"{suffix}.clip")
        return self._emit(op, [v], {}, suffix)

    # --- the unrolled graph --------------------------------------------------------------
    def run(self) -> List[Optional[Value]]:
        n, T, B, D = self.n, self.T, self.B, self.D
        h0 = self._initial(5, "initial_h")
        c0 = self._initial(6, "initial_c") if n.op == "LSTM" else [None] * D
        x2d = self._emit("reshape", [self.x], {"shape": [T * B, self.I]}, "x2d")
        hs: List[List[Value]] = []
        last_h, last_c = [], []
        for d, dn in enumerate(self.dirs):
            proj = self._projection(x2d, d, dn)
            h, c = h0[d], c0[d]
            ys: List[Optional[Value]] = [None] * T
            for t in (range(T) if dn == "fw" else range(T - 1, -1, -1)):
                xg = self._step_input(proj, t, f"{dn}.t{t}.x")
                tag = f"{dn}.t{t}"
                if n.op == "LSTM":
                    h, c = self._lstm_step(d, xg, h, c, tag)
                elif n.op == "GRU":
                    h = self._gru_step(d, xg, h, tag)
                else:
                    h = self._rnn_step(d, xg, h, tag)
                ys[t] = h
            hs.append(ys)
            last_h.append(h)
            last_c.append(c)
        outs: List[Optional[Value]] = [None] * len(n.outputs)
        if n.used(0):
            outs[0] = self._sequence(hs, n.outputs[0])
        if n.used(1):
            outs[1] = self._final(last_h, n.outputs[1])
        if n.op == "LSTM" and n.used(2):
            outs[2] = self._final(last_c, n.outputs[2])
        return outs

    def _projection(self, x2d: Value, d: int, dn: str) -> Value:
        """X·Wᵀ plus the biases that are added outside the recurrence, all steps at once."""
        GH, H = self.G * self.H, self.H
        wb, rb = self.Bias[d, :GH], self.Bias[d, GH:]
        if self.n.op == "GRU":  # Rb of the h gate stays inside r ⊙ (...) with linear_before_reset
            bias = wb + (rb if not self.lbr else np.concatenate([rb[:2 * H], np.zeros(H)]))
        else:
            bias = wb + rb
        proj = self._product(x2d, self.W[d].T, bias if np.any(bias) else None, f"{dn}.WT",
                             f"{dn}.xw")
        if self.layout == 1 and self.B > 1:  # rows are (b, t): one row of T steps per sequence
            proj = self._emit("reshape", [proj], {"shape": [self.B, self.T * GH]}, f"{dn}.xw.bt")
        return proj

    def _step_input(self, proj: Value, t: int, suffix: str) -> Value:
        GH, B = self.G * self.H, self.B
        if self.layout == 1 and B > 1:
            s, e, axis = t * GH, (t + 1) * GH, 1
        else:
            s, e, axis = t * B, (t + 1) * B, 0
        return self._emit("slice", [proj], {"starts": [s], "ends": [e], "axes": [axis],
                                            "steps": [1]}, suffix)

    def _lstm_step(self, d: int, xg: Value, h: Val, c: Val, tag: str):
        H = self.H
        f_act, g_act, h_act = self.acts[d]
        hr = self._product(h, self.R[d].T, None, f"{self.dirs[d]}.RT", f"{tag}.hr")
        pre = self._add(xg, hr, f"{tag}.gates")
        pi, po, pf, pc = self._split(pre, [H] * 4, [f"{tag}.{g}.pre" for g in "iofc"])
        if self.P is not None:
            pcon = self.peepholes[d]
            pi = self._add(pi, self._mul(c, pcon[0], f"{tag}.i.peep"), f"{tag}.i.pre.p")
            pf = self._add(pf, self._mul(c, pcon[2], f"{tag}.f.peep"), f"{tag}.f.pre.p")
        i = self._act(f_act, pi, f"{tag}.i")
        if self.input_forget:
            f = self._emit("sub", [self._shared(np.ones(()), "one"), i], {}, f"{tag}.f")
        else:
            f = self._act(f_act, pf, f"{tag}.f")
        g = self._act(g_act, pc, f"{tag}.g")
        if c is None:
            c_new = self._emit("mul", [i, g], {}, f"{tag}.c")
        else:
            c_new = self._emit("add", [self._mul(f, c, f"{tag}.fc"), self._mul(i, g, f"{tag}.ig")],
                               {}, f"{tag}.c")
        if self.P is not None:
            po = self._add(po, self._mul(c_new, pcon[1], f"{tag}.o.peep"), f"{tag}.o.pre.p")
        o = self._act(f_act, po, f"{tag}.o")
        h_new = self._mul(o, self._emit(h_act, [c_new], {}, f"{tag}.c.act"), f"{tag}.h")
        return h_new, c_new

    def _gru_step(self, d: int, xg: Value, h: Val, tag: str) -> Value:
        H = self.H
        f_act, g_act = self.acts[d]
        RT = self.R[d].T
        xzr, xh = self._split(xg, [2 * H, H], [f"{tag}.x.zr", f"{tag}.x.h"])
        if self.lbr:
            rb = np.concatenate([np.zeros(2 * H), self.Bias[d, 5 * H:]])  # Rbz, Rbr: in xw
            rec = self._product(h, RT, rb if np.any(rb) else None, f"{self.dirs[d]}.RT",
                                f"{tag}.hr")
            rzr, rh = self._split(rec, [2 * H, H], [f"{tag}.hr.zr", f"{tag}.hr.h"])
        else:
            rzr = self._product(h, RT[:, :2 * H], None, f"{self.dirs[d]}.RT.zr", f"{tag}.hr.zr")
        zr = self._act(f_act, self._add(xzr, rzr, f"{tag}.zr.pre"), f"{tag}.zr")
        z, r = self._split(zr, [H, H], [f"{tag}.z", f"{tag}.r"])
        if self.lbr:
            hpre = self._add(xh, self._mul(r, rh, f"{tag}.r.hr"), f"{tag}.hh.pre")
        else:
            rh = self._product(self._mul(r, h, f"{tag}.rh"), RT[:, 2 * H:], None,
                               f"{self.dirs[d]}.RT.h", f"{tag}.rh.r")
            hpre = self._add(xh, rh, f"{tag}.hh.pre")
        hh = self._act(g_act, hpre, f"{tag}.hh")
        # (1 - z) ⊙ hh + z ⊙ h, as the spec and onnxruntime write it
        zc = self._emit("sub", [self._shared(np.ones(()), "one"), z], {}, f"{tag}.1mz")
        if h is None:
            return self._emit("mul", [zc, hh], {}, f"{tag}.h")
        zhh, zh = self._mul(zc, hh, f"{tag}.zhh"), self._mul(z, h, f"{tag}.zh")
        return self._emit("add", [zhh, zh], {}, f"{tag}.h")

    def _rnn_step(self, d: int, xg: Value, h: Val, tag: str) -> Value:
        hr = self._product(h, self.R[d].T, None, f"{self.dirs[d]}.RT", f"{tag}.hr")
        pre = self._add(xg, hr, f"{tag}.pre")
        return self._act(self.acts[d][0], pre, f"{tag}.h")

    # --- the outputs -------------------------------------------------------------------
    def _sequence(self, hs: List[List[Value]], name: str) -> Value:
        """Y: [T, D, B, H] (layout 0) or [B, T, D, H] (layout 1)."""
        T, B, D, H = self.T, self.B, self.D, self.H
        parts = [hs[d][t] for t in range(T) for d in range(D)]
        if self.layout == 0:  # rows (t, d, b)
            cat = self.imp.emit("concat", parts, {"axis": 0}, self._name("y.cat"))
            return self.imp.emit("reshape", [cat], {"shape": [T, D, B, H]}, name)
        cat = self.imp.emit("concat", parts, {"axis": 1}, self._name("y.cat"))  # cols (t, d, h)
        return self.imp.emit("reshape", [cat], {"shape": [B, T, D, H]}, name)

    def _final(self, last: List[Val], name: str) -> Value:
        """Y_h / Y_c: [D, B, H] (layout 0) or [B, D, H] (layout 1)."""
        B, D, H = self.B, self.D, self.H
        shape = [D, B, H] if self.layout == 0 else [B, D, H]
        x = last[0] if D == 1 else self.imp.emit("concat", last, {"axis": self.layout},
                                                 self.imp.fresh(f"{name}.cat"))
        return self.imp.emit("reshape", [x], {"shape": shape}, name)
