"""Data-free activation statistics: per-channel mean and standard deviation pushed
through the graph from what the model itself knows.

Batch norms state the statistics of their outputs (β and |γ| per channel; `fuse`
keeps them when it folds a batch norm away). From there, linear layers move them
through their weights (mean Wμ + b, variance W²σ², channels taken as independent),
relu rectifies them (the moments of a rectified normal), adds sum them, and
range-preserving ops and pools pass them on. `propagate-ranges` turns them into
ranges (mean ± 6σ) when there is no calibration data. Anything else stops the
propagation: the value gets no range and stays in float.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np

from .ir.graph import Graph, Node, Value
from .ir.opdef import RANGE_PRESERVING

Stats = Tuple[np.ndarray, np.ndarray]  # (mean, std), one entry per channel (axis 1)
SIGMAS = 6.0


def _phi(z):
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _Phi(z):
    from math import erf

    return 0.5 * (1 + np.vectorize(erf)(z / math.sqrt(2)))


def _relu(s: Stats) -> Stats:
    mu, sd = s
    sd = np.maximum(sd, 1e-12)
    z = mu / sd
    m1 = mu * _Phi(z) + sd * _phi(z)
    m2 = (mu * mu + sd * sd) * _Phi(z) + mu * sd * _phi(z)
    return m1, np.sqrt(np.maximum(m2 - m1 * m1, 0.0))


def _channels(v: Value) -> int:
    return v.shape[1] if v.type.rank >= 2 else 1


def _linear(n: Node, s: Stats) -> Optional[Stats]:
    w = n.inputs[1]
    if w is None or not w.is_const:
        return None
    W = w.data.astype(np.float64)
    b = n.inputs[2].data.astype(np.float64).reshape(-1) if len(n.inputs) > 2 and n.inputs[2] is not None \
        and n.inputs[2].is_const else 0.0
    mu, sd = s
    if n.op == "conv":
        O, Cg = W.shape[:2]
        g = n.attrs.get("group", 1)
        Wsum = W.reshape(O, Cg, -1).sum(-1)
        Wsq = (W.reshape(O, Cg, -1) ** 2).sum(-1)
        idx = (np.arange(O) // (O // g))[:, None] * Cg + np.arange(Cg)[None, :]  # input channel of (o, c)
        if mu.size != Cg * g:
            return None
        return (Wsum * mu[idx]).sum(1) + b, np.sqrt((Wsq * sd[idx] ** 2).sum(1))
    if n.op in ("gemm", "matmul"):
        if W.ndim != 2 or n.attrs.get("trans_a", 0):
            return None
        Wt = W if (n.op == "gemm" and n.attrs.get("trans_b", 0)) else W.T  # [out, in]
        if mu.size != Wt.shape[1]:
            return None
        alpha = float(n.attrs.get("alpha", 1.0))
        beta = float(n.attrs.get("beta", 1.0))
        return alpha * (Wt @ mu) + beta * b, abs(alpha) * np.sqrt((Wt ** 2) @ (sd ** 2))
    return None


def propagate(g: Graph) -> Dict[str, Stats]:
    """Statistics of every value they can be derived for, by value name."""
    out: Dict[str, Stats] = {}
    for n in g.nodes:
        v = n.outputs[0]
        bn = v.meta.get("bn_stats")
        if bn is not None:
            out[v.name] = (np.asarray(bn[0], np.float64), np.asarray(bn[1], np.float64))
            continue
        ins = [out.get(i.name) if i is not None and not i.is_const else None for i in n.inputs]
        s = ins[0] if ins else None
        r: Optional[Stats] = None
        if n.op == "observe" or (s is not None and n.op in ("global_avg_pool", "avg_pool")):
            r = s
        elif s is not None and n.op == "relu":
            r = _relu(s)
        elif s is not None and n.op == "clip" and n.attrs.get("min", -np.inf) == 0.0:
            r = _relu(s)
        elif s is not None and n.op in ("conv", "gemm", "matmul"):
            r = _linear(n, s)
        elif n.op == "add" and len(n.inputs) == 2:
            a, b = ins
            if a is not None and b is not None and a[0].size == b[0].size:
                r = a[0] + b[0], np.sqrt(a[1] ** 2 + b[1] ** 2)
        elif s is not None and n.opdef is not None and n.opdef.has(RANGE_PRESERVING) \
                and _channels(v) == s[0].size:
            r = s
        if r is not None and r[0].size == _channels(v):
            out[v.name] = r
    return out


def stats_range(s: Stats) -> Tuple[float, float]:
    mu, sd = s
    return float((mu - SIGMAS * sd).min()), float((mu + SIGMAS * sd).max())
