"""Data-free ranges: statistics from batch norms pushed through relu and weights match
what the activations really do on data with those statistics."""
from __future__ import annotations

import numpy as np

import qcc
from qcc.interp import run
from qcc.ir import Graph, TensorType


def _net(rng, x_samples):
    """conv -> identity BN carrying the conv output's true statistics -> relu -> conv -> relu."""
    g = Graph()
    x = g.add_input("x", TensorType((1, 4, 8, 8), "f32"))
    w1 = (rng.standard_normal((8, 4, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((6, 8, 3, 3)) * 0.3).astype(np.float32)
    conv = dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1)
    c1 = g.add_node("conv", [x, g.add_const("w1", w1)], conv, names=["c1"])
    probe = Graph()
    px = probe.add_input("x", x.type)
    pc = probe.add_node("conv", [px, probe.add_const("w1", w1)], conv, names=["c1"])
    probe.set_outputs([pc.output])
    outs = np.concatenate([run(probe, {"x": s})["c1"] for s in x_samples])
    mu, sd = outs.mean(axis=(0, 2, 3)), outs.std(axis=(0, 2, 3))
    bn = g.add_node("batch_norm", [c1.output, g.add_const("g", sd.astype(np.float32)),
                                   g.add_const("b", mu.astype(np.float32)), g.add_const("m", mu.astype(np.float32)),
                                   g.add_const("v", (sd ** 2).astype(np.float32))], {"epsilon": 0.0}, names=["bn"])
    r1 = g.add_node("relu", [bn.output], names=["r1"])
    c2 = g.add_node("conv", [r1.output, g.add_const("w2", w2)], conv, names=["c2"])
    r2 = g.add_node("relu", [c2.output], names=["r2"])
    g.set_outputs([r2.output])
    return g


def test_derived_ranges_cover_real_activations():
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, 4, 8, 8)).astype(np.float32) for _ in range(32)]
    g = _net(rng, xs)
    ref = g.copy()
    ctx = qcc.PassContext()
    qcc.PassManager("fuse,insert-observers,propagate-ranges", verify_each=True).run(g, ctx)
    ranges = {n.inputs[0].name: (n.attrs.get("range"), n.attrs["source"]) for n in g.nodes if n.op == "observe"}
    # the folded layer keeps the conv's name and carries the batch norm's output
    assert ranges["c1"][1] == "bn" and ranges["c2"][1] == "weights"
    assert ranges["x"][1] == "none"  # nothing is known about the model's input
    acts = {k: [] for k in ("bn", "c2")}
    for s in xs:
        from qcc.interp import Interpreter

        it = Interpreter(ref, keep=True)
        it.run({"x": s})
        env = {v.name: a for v, a in it.env.items()}
        for k in acts:
            acts[k].append(env[k])
    for k, arrs in acts.items():
        a = np.concatenate([x.ravel() for x in arrs])
        lo, hi = ranges["c1" if k == "bn" else k][0]
        inside = np.mean((a >= lo) & (a <= hi))
        assert inside > 0.999, (k, inside)
        assert hi < 4 * np.abs(a).max(), (k, hi, np.abs(a).max())  # not uselessly wide
    assert any("without calibration data" in w for w in ctx.warnings)
