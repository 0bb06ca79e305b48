"""qcc.sensitivity: runs that reuse cached activations give exactly what a full run gives,
and recompute only what lies downstream of a change (the cost assign-bitwidths pays per
candidate on large models)."""
from __future__ import annotations

import numpy as np

import qcc
from qcc.interp import Interpreter
from qcc.pass_manager import PassContext, PassManager
from qcc.sensitivity import FloatCache, layer_sensitivity, output_sqnr, quantized_copy, run_reusing

from test_round_weights import PREPARE, mobile_block_model, smooth_images

LAYERS = ("c1", "cd", "c2", "y")  # layers are named by their outputs


def calibrated():
    g = qcc.import_onnx(mobile_block_model(), {"x": (8, 3, 8, 8)})
    calib = [{"x": smooth_images(8, seed)} for seed in (1, 2)]
    PassManager(PREPARE).run(g, PassContext(options={"calib": calib}))
    return g, calib


def full_run(g, feeds):
    return list(Interpreter(g).run(feeds).values())


def test_reusing_runs_equal_full_runs_for_mixed_assignments():
    g, calib = calibrated()
    cache = FloatCache(g, calib)
    for decisions in ({l: "int8" for l in LAYERS}, {"c1": "float", "cd": "w8a16", "c2": "int8", "y": "w4a8"},
                      {l: "float" for l in LAYERS}):
        q = quantized_copy(g, decisions)
        for i, feeds in enumerate(calib):
            for got, want in zip(run_reusing(q, cache, i), full_run(q, feeds)):
                np.testing.assert_array_equal(got, want)
        output_sqnr(cache, q, keep=True)
        cache.accept()  # the next assignment reuses this one's arrays: still exact


def test_a_change_recomputes_only_what_is_downstream():
    g, calib = calibrated()
    cache = FloatCache(g, calib)
    all_int8 = {l: "int8" for l in LAYERS}
    base = quantized_copy(g, all_int8)
    fresh = {}
    run_reusing(base, cache, 0, store=fresh)  # nothing cached for an int8 graph but its input
    output_sqnr(cache, base, keep=True)
    cache.accept()
    again = {}
    run_reusing(quantized_copy(g, all_int8), cache, 0, store=again)
    assert not again  # the same assignment again: every value comes from the kept run
    tail = {}
    q = quantized_copy(g, {**all_int8, "y": "float"})
    outs = run_reusing(q, cache, 0, store=tail)
    assert 0 < len(tail) < len(fresh) / 3, (len(tail), len(fresh))
    np.testing.assert_array_equal(outs[0], full_run(q, calib[0])[0])


def test_one_int8_layer_reuses_the_float_run_upstream_of_it():
    """layer_sensitivity's candidates (one layer int8, the rest float) read what lies before
    that layer from the float run. The float run is of the calibrated graph, whose layers
    read their inputs through `observe` ops; a quantized copy's float layers read them
    directly, so an observer must number like what it observes. Before, nothing matched
    and every candidate recomputed the whole model (swin_tiny: 7.6 s for a layer 80% deep,
    now 1.4 s)."""
    g, calib = calibrated()
    cache = FloatCache(g, calib)
    assert any(n.op == "observe" for n in g.nodes)
    every = {l: "float" for l in LAYERS}
    computed = {}
    for layer in LAYERS:
        q = quantized_copy(g, {**every, layer: "int8"})
        store = {}
        outs = run_reusing(q, cache, 0, store=store)
        computed[layer] = len(store)
        np.testing.assert_array_equal(outs[0], full_run(q, calib[0])[0])
    store = {}
    run_reusing(quantized_copy(g, every), cache, 0, store=store)
    assert not store  # all float: every value is the float run's
    assert computed["y"] < computed["c1"], computed  # the last layer recomputes only the tail


def test_layer_sensitivity_ranks_w4_below_int8_and_float_is_exact():
    g, calib = calibrated()
    cache = FloatCache(g, calib)
    int8 = layer_sensitivity(g, cache, list(LAYERS), choice="int8")
    w4 = layer_sensitivity(g, cache, list(LAYERS), choice="w4a8")
    assert all(w4[l] < int8[l] for l in LAYERS), (w4, int8)
    assert output_sqnr(cache, quantized_copy(g, {l: "float" for l in LAYERS})) == float("inf")


def test_batches_on_parallel_threads_give_what_one_thread_gives(monkeypatch):
    """output_sqnr runs its batches side by side (qcc.batches); the SQNR and the kept arrays
    must be exactly those of one batch at a time, and BLAS runs single-threaded meanwhile."""
    import threadpoolctl

    from qcc import batches

    # a BLAS loaded after an earlier call must be held too: the full suite loads scipy's and
    # OpenCV's own OpenBLAS copies late
    batches.map_batches(abs, [1, 2])
    for late in ("scipy.linalg", "cv2"):
        try:
            __import__(late)
        except ImportError:
            pass

    g, calib = calibrated()
    calib = calib + [{"x": smooth_images(8, seed)} for seed in (3, 4)]
    q = quantized_copy(g, {"c1": "int8", "cd": "float", "c2": "w4a8", "y": "int8"})
    seen_blas_threads = []
    real_run = run_reusing

    def spying(*args, **kwargs):
        seen_blas_threads.extend(i["num_threads"] for i in threadpoolctl.threadpool_info()
                                 if i["user_api"] == "blas")
        return real_run(*args, **kwargs)

    results = []
    for n in (1, 4):
        monkeypatch.setattr(batches, "workers", lambda n=n: n)
        monkeypatch.setattr("qcc.sensitivity.run_reusing", spying)
        cache = FloatCache(g, calib)
        db = output_sqnr(cache, q, keep=True)
        results.append((db, cache.last))
    (db1, kept1), (db4, kept4) = results
    assert db1 == db4
    for a, b in zip(kept1, kept4):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert seen_blas_threads and set(seen_blas_threads) == {1}


def test_map_batches_keeps_the_order(monkeypatch):
    """On parallel threads the later items finish first here; results still come in order."""
    import threading
    import time

    from qcc import batches

    monkeypatch.setattr(batches, "workers", lambda: 4)
    threads = set()

    def slow_first(i):
        threads.add(threading.get_ident())
        time.sleep(0.02 * (8 - i))
        return i * i

    assert batches.map_batches(slow_first, list(range(9))) == [i * i for i in range(9)]
    assert len(threads) > 1  # the items did run side by side


def test_report_sqnr_from_batch_sums_equals_sqnr_of_the_concatenation():
    """The report's per-layer SQNR is summed batch by batch (qcc.report.signal_noise) so the
    batches need not be kept: it must equal 10 log10(mean ref^2 / mean err^2) over all of them."""
    from qcc.report import signal_noise, sqnr_db

    rng = np.random.default_rng(3)
    refs = [rng.standard_normal(n).astype(np.float32) * s for n, s in ((700, 1.0), (50, 9.0), (1, 0.1))]
    gots = [r + rng.standard_normal(r.size).astype(np.float32) * 0.05 for r in refs]
    sums = np.sum([signal_noise(r, g) for r, g in zip(refs, gots)], axis=0)
    ref, got = (np.concatenate(a).astype(np.float64) for a in (refs, gots))
    direct = 10 * np.log10(np.mean(ref ** 2) / np.mean((got - ref) ** 2))
    assert sqnr_db(*sums) == round(direct, 2)
    assert sqnr_db(*signal_noise(ref, ref)) == float("inf")


def test_layers_measured_side_by_side_give_what_one_at_a_time_gives(monkeypatch):
    """layer_sensitivity runs its candidates on parallel threads (each one's batches in
    turn), numbering their values from several threads at once: every SQNR must be exactly
    the one a candidate measured alone gets."""
    from qcc import batches, sensitivity

    g, calib = calibrated()
    results = []
    for n in (1, 3):
        monkeypatch.setattr(batches, "workers", lambda n=n: n)
        monkeypatch.setattr(sensitivity, "workers", lambda n=n: n)
        cache = FloatCache(g, calib)
        results.append(layer_sensitivity(g, cache, list(LAYERS), choice="w4a8"))
        assert len(set(cache._ids.values())) == len(cache._ids)  # no number handed out twice
    assert results[0] == results[1]
    assert all(np.isfinite(v) for v in results[0].values())
