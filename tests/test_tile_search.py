"""-O3's tile search (targets/tile_search.py): it times each large int8 conv's candidate tiles
with the conv's epilogue, records the choice in the tuning database, and a rebuild reads it
without measuring; the build applies it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from qcc.ir import Graph, TensorType

pytest.importorskip("tvm")

from qcc.targets import get_target, tile_search, x86_int8  # noqa: E402
from qcc.targets.tune import TuneDB  # noqa: E402

HOST = get_target("host")
pytestmark = pytest.mark.skipif(x86_int8.isa_for(HOST) is None, reason="the host has no x86 int8 kernel")


def _graph():
    """Two convs: a 5x5 one (a 3x3 would be AVX2's Winograd kernel, which has no tile to search)
    with a requantize + relu epilogue, and a small 1x1 one after it."""
    rng = np.random.default_rng(0)
    g = Graph("tiles")
    x = g.add_input("x", TensorType((1, 16, 24, 40), "u8"))

    def layer(v, cin, cout, k, name):
        w = g.add_const(f"w_{name}", rng.integers(-128, 128, (cout, cin, k, k)).astype(np.int8))
        b = g.add_const(f"b_{name}", rng.integers(-5000, 5000, cout).astype(np.int32))
        acc = g.add_node("qconv", [v, w, b], {"strides": [1, 1], "pads": [k // 2] * 4, "dilations": [1, 1],
                                              "group": 1, "x_zero_point": 7}, names=[f"acc_{name}"]).output
        return g.add_node("requantize", [acc], {"multiplier": [1 << 30], "shift": [-12], "axis": -1,
                                                "zero_point": 3, "dtype": "u8", "clamp": [3, 255]},
                          names=[name]).output

    y = layer(layer(x, 16, 48, 5, "big"), 48, 8, 1, "small")
    g.set_outputs([y])
    return g


def test_probe_is_the_conv_and_its_epilogue():
    g = _graph()
    big = next(n for n in g.nodes if n.op == "qconv")
    probe, feeds = tile_search._probe(g, big)
    assert [n.op for n in probe.nodes] == ["qconv", "requantize"]
    assert set(feeds) == {i.name for i in probe.inputs} and feeds["in0"].dtype == np.uint8


def test_search_records_the_choice_and_a_rebuild_reads_it(tmp_path, monkeypatch):
    monkeypatch.setattr(tile_search, "ROUNDS", 1)
    g = _graph()
    db = TuneDB(tmp_path, HOST.target_dict())
    log = []
    tiles, report = tile_search.search_tiles(g, HOST, db, measure=True, threads=1, log=log.append)
    # the big conv holds over 90% of the MACs: it alone is searched
    assert list(report) == ["acc_big"] and any("measuring" in m for m in log)
    rec = json.loads(next(db.dir.glob("tile-*.json")).read_text())
    plan = tile_search._plan(next(n for n in g.nodes if n.op == "qconv"), x86_int8.isa_for(HOST))
    assert set(rec["ms"]) == {f"{mr}x{nr}" for mr, nr in plan.tile_space}  # every candidate timed, all bit-exact
    assert tuple(rec["tile"]) in plan.tile_space
    assert report["acc_big"] == {"tile": rec["tile"], "cost_model": list(plan.tile_space[0])}
    assert (x86_int8.tile_key(plan) in tiles) == (tuple(rec["tile"]) != plan.tile_space[0])

    def no_measuring(*a, **k):
        raise AssertionError("a rebuild measured")

    monkeypatch.setattr(tile_search, "_measure", no_measuring)
    again = tile_search.search_tiles(g, HOST, db, measure=True, threads=1)
    assert again == (tiles, report)
    # without measurements or records: the cost model's tiles, nothing reported
    assert tile_search.search_tiles(g, HOST, TuneDB(tmp_path / "empty", HOST.target_dict()), measure=False) == ({}, {})


def test_a_recorded_tile_is_what_the_build_uses(tmp_path):
    g = _graph()
    plan = tile_search._plan(next(n for n in g.nodes if n.op == "qconv"), x86_int8.isa_for(HOST))
    other = plan.tile_space[-1]
    db = TuneDB(tmp_path, HOST.target_dict())
    db.put(tile_search._workload(x86_int8.tile_key(plan)), {"tile": list(other), "ms": {}})
    tiles, _ = tile_search.search_tiles(g, HOST, db, measure=False)
    assert tiles == {x86_int8.tile_key(plan): other}
    with x86_int8.tile_choices(tiles):
        p = tile_search._plan(next(n for n in g.nodes if n.op == "qconv"), plan.isa)
    assert p.tile == other and p.ogp % other[0] == 0


def test_a_candidate_that_fails_to_build_is_dropped(tmp_path, monkeypatch):
    """A tile TVM cannot compile costs the search that candidate, not the compile."""
    from qcc.targets import builder

    monkeypatch.setattr(tile_search, "ROUNDS", 1)
    real = builder.compile_graph
    g = _graph()
    # a candidate after the cost model's own (which the others are checked against); which
    # tiles there are depends on the host's ISA (AVX2: 6x4 is not first, VNNI: it is)
    plan = tile_search._plan(next(n for n in g.nodes if n.op == "qconv"), x86_int8.isa_for(HOST))
    bad = plan.tile_space[-1]
    assert bad != plan.tile_space[0]

    def flaky(g, preset, **kw):
        if x86_int8._TILES.get() and next(iter(x86_int8._TILES.get().values())) == bad:
            raise RuntimeError("no such schedule")
        return real(g, preset, **kw)

    monkeypatch.setattr(builder, "compile_graph", flaky)
    tiles, report = tile_search.search_tiles(g, HOST, TuneDB(tmp_path, HOST.target_dict()), measure=True, threads=1)
    rec = json.loads(next(TuneDB(tmp_path, HOST.target_dict()).dir.glob("tile-*.json")).read_text())
    assert rec["ms"] and f"{bad[0]}x{bad[1]}" not in rec["ms"] and tuple(rec["tile"]) != bad
    assert len(rec["ms"]) == len(plan.tile_space) - 1  # the others all timed
