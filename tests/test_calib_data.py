"""Bad calibration data gives a clear CalibError or a documented safe fallback, never a
crash or a NaN scale; and each range method does what it says on known distributions."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

import qcc
from qcc.calibrate import BINS, CalibError, Observer, check_samples, load_samples
from qcc.interp import Interpreter
from qcc.pass_manager import PassFailure
from qcc.passes_registry import PassError
from qcc.pipelines import PIPELINES

from models import run_pipeline, tiny_conv_model

BATCH = 2
SHAPE = (BATCH, 3, 8, 8)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    import onnx

    p = tmp_path_factory.mktemp("calib") / "tiny.onnx"
    onnx.save(tiny_conv_model(), p)
    return p


@pytest.fixture(scope="module")
def graph(model_path):
    return qcc.import_onnx(model_path, {"x": SHAPE})


def _x(n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3, 8, 8)).astype(np.float32)


def _calib_error(excinfo) -> CalibError:
    """A CalibError, raised directly or (inside a pass) as the cause of a PassFailure."""
    e = excinfo.value
    if isinstance(e, PassFailure):
        assert isinstance(e.__cause__, CalibError), f"PassFailure not caused by a CalibError: {e!r}"
        return e.__cause__
    assert isinstance(e, CalibError)
    return e


def _scales(g):
    """Every scale the quantized graph uses: quantize/dequantize attributes and value params."""
    out = []
    for n in g.nodes:
        if "scale" in n.attrs:
            out += list(n.attrs["scale"])
        for v in n.outputs + [i for i in n.inputs if i is not None]:
            if v.quant is not None:
                out += list(np.atleast_1d(v.quant.scale))
    return np.asarray(out, np.float64)


# --- files: load_samples -------------------------------------------------------------------

def test_npz_splits_into_batches(graph, tmp_path):
    f = tmp_path / "c.npz"
    np.savez(f, x=_x(7))
    batches = load_samples(f, graph)
    assert len(batches) == 3  # 7 samples, batch 2: the odd one is dropped
    assert all(b["x"].shape == SHAPE and b["x"].dtype == np.float32 for b in batches)


def test_folder_of_npy_files_works_like_an_npz(graph, tmp_path):
    x = _x(6)
    d = tmp_path / "calib"
    d.mkdir()
    np.save(d / "x.npy", x)
    np.savez(tmp_path / "c.npz", x=x)
    a, b = load_samples(d, graph), load_samples(tmp_path / "c.npz", graph)
    assert len(a) == len(b) == 3
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p["x"], q["x"])


def test_folder_of_several_npz_files_concatenates(graph, tmp_path):
    for i in range(3):
        np.savez(tmp_path / f"part{i}.npz", x=_x(2, seed=i))
    assert len(load_samples(tmp_path, graph)) == 3


def test_float64_data_is_cast(graph, tmp_path):
    np.savez(tmp_path / "c.npz", x=_x(4).astype(np.float64))
    assert all(b["x"].dtype == np.float32 for b in load_samples(tmp_path / "c.npz", graph))


@pytest.mark.parametrize("arrays,words", [
    ({"y": _x(4)}, ["'y'", "not a model input", "x"]),
    ({"x": _x(4), "extra": _x(4)}, ["'extra'", "not a model input"]),
    ({"x": np.zeros((4, 3, 9, 9), np.float32)}, ["shape", "[4, 3, 9, 9]", "[2, 3, 8, 8]"]),
    ({"x": np.zeros((4, 64), np.float32)}, ["shape"]),
    ({"x": np.zeros((0, 3, 8, 8), np.float32)}, ["empty"]),
    ({"x": _x(1)}, ["1 samples", "batch size 2"]),
])
def test_bad_arrays_give_calib_errors(graph, tmp_path, arrays, words):
    np.savez(tmp_path / "c.npz", **arrays)
    with pytest.raises(CalibError) as e:
        load_samples(tmp_path / "c.npz", graph)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_data_is_a_calib_error(graph, tmp_path, bad):
    x = _x(4)
    x[3, 1, 2, 2] = bad
    np.savez(tmp_path / "c.npz", x=x)
    with pytest.raises(CalibError, match="NaN or Inf"):
        load_samples(tmp_path / "c.npz", graph)


def _garbage(p):
    p.write_bytes(b"this is not numpy data at all\x00\x01" * 10)


def _truncated_npz(p):
    np.savez(p, x=_x(4))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _pickled(p):
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)


def _zip_of_text(p):
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("x.npy", "not an array")


@pytest.mark.parametrize("make,name", [(_garbage, "c.npz"), (_truncated_npz, "c.npz"), (_pickled, "x.npy"),
                                       (_zip_of_text, "c.npz"), (_garbage, "x.npy")])
def test_unreadable_files_give_calib_errors(graph, tmp_path, make, name):
    make(tmp_path / name)
    with pytest.raises(CalibError, match="cannot read calibration data"):
        load_samples(tmp_path / name, graph)


def test_missing_path_and_empty_folder(graph, tmp_path):
    with pytest.raises(CalibError, match="no calibration data"):
        load_samples(tmp_path / "nope.npz", graph)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibError, match="no calibration data"):
        load_samples(tmp_path / "empty", graph)


def test_a_path_in_the_pass_context_is_read_too(model_path, tmp_path):
    np.savez(tmp_path / "c.npz", x=_x(8))
    g, ctx = run_pipeline(model_path, {"x": SHAPE}, str(tmp_path / "c.npz"))
    assert ctx.report["calibration"]["batches"] == 4
    np.savez(tmp_path / "bad.npz", x=_x(8)[:, :, :4])
    with pytest.raises((CalibError, PassFailure)) as e:
        run_pipeline(model_path, {"x": SHAPE}, str(tmp_path / "bad.npz"))
    assert "shape" in str(_calib_error(e))


# --- batches in memory: ctx.options["calib"] as a list ----------------------------------------

@pytest.mark.parametrize("batches,words", [
    ([{"y": _x(2)}], ["'y'", "not a model input"]),
    ([{}], ["no array for input 'x'"]),
    ([{"x": _x(3)}], ["shape [3, 3, 8, 8]"]),
    ([{"x": np.full(SHAPE, np.nan, np.float32)}], ["NaN or Inf"]),
    ([{"x": np.array([["a"]])}], ["shape"]),
    ([_x(2)], ["not a dict"]),
    ([], ["no calibration batches"]),
])
def test_bad_batches_in_memory_give_calib_errors(model_path, batches, words):
    with pytest.raises((CalibError, PassFailure)) as e:
        run_pipeline(model_path, {"x": SHAPE}, batches)
    msg = str(_calib_error(e))
    for w in words:
        assert w in msg, (w, msg)


def test_batches_in_memory_are_cast_to_the_input_dtype(model_path, graph):
    batches = [{"x": _x(2, seed=i).astype(np.float64)} for i in range(3)]
    g, ctx = run_pipeline(model_path, {"x": SHAPE}, batches)
    assert all(b["x"].dtype == np.float32 for b in batches)  # later passes read the same list
    y = Interpreter(g).run({"x": _x(2, seed=9)})["y"]
    assert np.isfinite(y).all()
    assert check_samples(batches, graph)[0]["x"].dtype == np.float32


# --- degenerate data: constant tensors --------------------------------------------------------

@pytest.mark.parametrize("value", [0.0, 1.5, -2.0])
def test_constant_input_gives_valid_scales_and_the_float_answer(model_path, value):
    """A constant input has a zero-width range. propagate-ranges widens every range to
    include 0 and gives a zero-width one a small positive width (MIN_WIDTH), so every
    scale is finite and positive; on that same input the model still computes the float
    answer (the bias must not saturate however tiny the input scale is)."""
    from qcc.passes.propagate_ranges import MIN_WIDTH

    x = np.full(SHAPE, value, np.float32)
    g, ctx = run_pipeline(model_path, {"x": SHAPE}, [{"x": x}] * 2)
    s = _scales(g)
    assert s.size and np.isfinite(s).all() and (s > 0).all()
    if value == 0.0:
        q = next(n for n in g.nodes if n.op == "quantize" and n.inputs[0].name == "x")
        assert q.attrs["scale"][0] == pytest.approx(MIN_WIDTH / 255)
    ref = Interpreter(qcc.import_onnx(model_path, {"x": SHAPE})).run({"x": x})["y"]
    got = Interpreter(g).run({"x": x})["y"]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, atol=0.02 * max(1.0, np.abs(ref).max()))


def test_dead_channel_does_not_overflow_the_accumulator():
    """A gemm output unit whose weights are all ~0 but whose bias is not (a dead ReLU unit
    after L2 regularisation): its weight scale would be ~1e-20 and the bias at
    scale_x*scale_w would saturate int32 and overflow the accumulator."""
    from onnx import TensorProto, helper, numpy_helper as nh

    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 4)).astype(np.float32)
    w[:, 2] = 1e-22
    b = np.array([0.1, -0.2, 0.3, 0.05], np.float32)
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 4])],
                              initializer=[nh.from_array(w, "w"), nh.from_array(b, "b")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.normal(size=(8, 16)).astype(np.float32)
    g, _ = run_pipeline(m, {"x": (8, 16)}, [{"x": x}])
    assert any(n.op == "qmatmul" for n in g.nodes)
    got = Interpreter(g).run({"x": x})["y"]
    ref = x @ w + b
    np.testing.assert_allclose(got, ref, atol=0.05 * np.abs(ref).max())
    assert abs(got[:, 2] - 0.3).max() < 0.05


@pytest.mark.parametrize("alpha,beta", [(2.0, 0.5), (-1.0, 1.0), (0.5, -2.0)])
def test_gemm_alpha_beta_survive_quantization(alpha, beta):
    from onnx import TensorProto, helper, numpy_helper as nh

    rng = np.random.default_rng(1)
    W = rng.normal(size=(16, 8)).astype(np.float32)
    C = rng.normal(size=8).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "W", "C"], ["y"], alpha=alpha, beta=beta)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
                              initializer=[nh.from_array(W, "W"), nh.from_array(C, "C")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.normal(size=(4, 16)).astype(np.float32)
    g, _ = run_pipeline(m, {"x": (4, 16)}, [{"x": x}])
    assert any(n.op == "qmatmul" for n in g.nodes)
    ref = alpha * x @ W + beta * C
    got = Interpreter(g).run({"x": x})["y"]
    step = (ref.max() - ref.min()) / 255
    assert np.abs(got - ref).max() < 4 * step + 0.02 * np.abs(ref).max()


def test_tiny_requantize_multipliers_keep_their_value():
    """Ratios below 2^-32 (a dead channel next to a wide output range) keep the kernel's
    largest shift and a smaller multiplier instead of a shift the kernel would clip."""
    from qcc.ops.quant import requantize
    from qcc.passes.quantize import _multiplier

    acc = np.array([2 ** 30, -(2 ** 30), 123456789, 0], np.int32)
    for real in (2.0 ** -20, 3e-10, 2.0 ** -36, 1e-13):
        m, shift = _multiplier(real)
        assert 0 <= m < 2 ** 31 and 31 - shift <= 62
        got = requantize(acc, multiplier=[m], shift=[shift], axis=-1, input_zero_point=0, zero_point=0,
                         dtype="i32", clamp=[])
        np.testing.assert_allclose(got, np.round(acc.astype(np.float64) * real), atol=1)


# --- the Observer --------------------------------------------------------------------------

def _observe(x, batches=10):
    ob = Observer()
    for part in np.array_split(np.asarray(x, np.float32), batches):
        ob.update(part)
    return ob


@pytest.fixture(scope="module")
def gauss_outliers():
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(size=400_000), [40.0, -35.0, 38.0, -42.0]]).astype(np.float32)


def test_minmax_keeps_the_outliers(gauss_outliers):
    assert _observe(gauss_outliers).range("minmax") == (-42.0, 40.0)


def test_a_16_bit_range_is_the_extremes_widened_away_from_zero(gauss_outliers):
    assert _observe(gauss_outliers).widened(4.0) == (-168.0, 160.0)
    assert _observe(np.array([0.5, 1.0, 3.0], np.float32)).widened(4.0) == (0.5, 12.0)  # lo stays
    assert _observe(np.array([-3.0, -1.0], np.float32)).widened(2.0) == (-6.0, -1.0)
    with pytest.raises(CalibError):
        Observer().widened(4.0)


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_percentile_and_entropy_clip_outliers_to_the_bulk(gauss_outliers, method):
    lo, hi = _observe(gauss_outliers).range(method)
    assert -12 < lo < -2.5 and 2.5 < hi < 12, (method, lo, hi)


def test_mse_clips_outliers_as_far_as_their_error_allows(gauss_outliers):
    """Four values at ~10x the bulk still carry most of the squared error of a tight range,
    so the MSE-optimal range clips them only part of the way."""
    lo, hi = _observe(gauss_outliers).range("mse")
    assert -0.75 * 42 < lo < -4 and 4 < hi < 0.75 * 40, (lo, hi)


def test_percentile_matches_numpy(gauss_outliers):
    lo, hi = _observe(gauss_outliers).range("percentile", percentile=99.9)
    plo, phi = np.percentile(gauss_outliers, [0.1, 99.9])
    width = 2 * 64 / BINS  # histogram bin width for this data (grid [-64, 64])
    assert abs(lo - plo) <= 2 * width and abs(hi - phi) <= 2 * width


def test_uniform_data_is_not_clipped():
    x = np.random.default_rng(1).uniform(-1, 1, 200_000)
    ob = _observe(x)
    for m in ("minmax", "percentile", "entropy", "mse"):
        lo, hi = ob.range(m)
        assert lo < -0.9 and hi > 0.9, (m, lo, hi)


def test_one_sided_data_stays_one_sided():
    x = np.maximum(np.random.default_rng(2).normal(size=100_000), 0)
    ob = _observe(x)
    for m in ("minmax", "percentile", "entropy", "mse"):
        lo, hi = ob.range(m)
        assert lo == 0.0 and hi > 1.0, (m, lo, hi)


def _quant_error(x, lo, hi):
    """Mean squared error of x on the uint8 grid over [lo, hi], clipped to it."""
    s = (hi - lo) / 255
    return float(np.mean((np.clip(np.round((x - lo) / s), 0, 255) * s + lo - x) ** 2))


def test_mse_range_minimises_its_own_error():
    """mse must find the best clipping even when it is far below the max (one spike 20x
    the bulk): no symmetric range in a fine brute-force search has a clearly smaller error."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(size=1_000_000), [20.0, -20.0]]).astype(np.float32)

    def err(lo, hi):
        return _quant_error(x, lo, hi)

    lo, hi = _observe(x).range("mse")
    best = min(err(-t, t) for t in np.concatenate([np.linspace(2, 12, 51), [20.0]]))
    assert err(lo, hi) <= 1.05 * best
    assert hi < 0.3 * 20  # below the reach of a 30%-100%-of-max search grid


def test_mse_with_a_modelled_tail_suits_data_past_a_small_sample():
    """A few hundred values (a squeeze-excite vector over a few calibration crops) end well
    short of what later data reaches, and the sample's own mse range clips it: with the
    outermost 1% modelled as an exponential tail, the range costs less on fresh data from the
    same distribution, on each of 20 draws, and by 10x on the median one."""
    held = np.random.default_rng(0).exponential(size=1_000_000)
    ratios = []
    for seed in range(20):
        ob = _observe(np.random.default_rng(100 + seed).exponential(size=256), batches=8)
        plain, tailed = ob.range("mse"), ob.range("mse", tail=0.01)
        assert tailed[1] > plain[1] and tailed[0] == plain[0] == ob.min  # one-sided data stays so
        ratios.append(_quant_error(held, *tailed) / _quant_error(held, *plain))
    assert max(ratios) < 1.0 and np.median(ratios) < 0.1, ratios


@pytest.mark.parametrize("dist", ["exponential", "normal", "uniform"])
def test_a_modelled_tail_changes_little_where_the_sample_is_large(dist):
    """Where the sample already reaches the tail, the model of it moves the range by a few
    percent, and the error on fresh data by no more."""
    draw = {"exponential": lambda r, n: r.exponential(size=n), "normal": lambda r, n: r.normal(size=n),
            "uniform": lambda r, n: r.uniform(-1, 1, n)}[dist]
    ob = _observe(draw(np.random.default_rng(5), 400_000))
    held = draw(np.random.default_rng(6), 1_000_000)
    plain, tailed = ob.range("mse"), ob.range("mse", tail=0.01)
    assert plain[1] <= tailed[1] <= 1.06 * plain[1], (plain, tailed)
    assert _quant_error(held, *tailed) <= 1.05 * _quant_error(held, *plain)


def test_insert_observers_models_the_tail_and_says_so():
    """insert-observers takes mse ranges with the tail modelled (tail=0.01) unless told
    tail=0, and the report's calibration says which. The pooled vector the classifier reads
    (4 values a sample, 32 in all) is where it shows."""
    x = np.random.default_rng(7).normal(size=(16, 3, 8, 8)).astype(np.float32)
    calib = [{"x": x[i:i + 2]} for i in range(0, 16, 2)]
    ranges = {}
    for tail in ("", "{tail=0}"):
        g, ctx = run_pipeline(tiny_conv_model(), {"x": (2, 3, 8, 8)}, calib,
                              pipeline=f"canonicalize,fuse,insert-observers{tail}")
        assert ctx.report["calibration"]["tail"] == (0.0 if tail else 0.01)
        ranges[tail] = {n.inputs[0].name: n.attrs["range"] for n in g.nodes if n.op == "observe"}
    pooled = "f"  # the flattened pool: the gemm's input
    assert ranges[""][pooled][1] > ranges["{tail=0}"][pooled][1], ranges
    with pytest.raises(PassError, match="tail must be in"):
        qcc.PassManager("insert-observers{tail=0.5}")


def test_histogram_stays_fixed_size_over_growing_batches():
    rng = np.random.default_rng(4)
    ob = Observer()
    total = 0
    for k in range(40):
        x = rng.normal(size=1000) * 2.0 ** (k / 2)  # the range grows ~a million-fold
        ob.update(x)
        total += x.size
        assert ob.hist.shape == (BINS,)
        assert ob.hist.sum() == total
        assert ob.R >= max(abs(ob.min), abs(ob.max))
    assert ob.count == total
    lo, hi = ob.range("percentile")
    assert np.isfinite([lo, hi]).all() and lo < 0 < hi


def test_merged_observers_match_one_fed_in_order():
    """observe() runs the batches side by side, each into observers of its own, and merges
    them in sample order: the same histogram as one observer fed every batch in turn
    (power-of-two grids; the narrower doubles to the wider), whatever the ranges' order."""
    rng = np.random.default_rng(5)
    parts = [np.zeros(50), rng.normal(size=3000) * 0.01, rng.normal(size=3000) * 40,
             np.zeros(10), rng.normal(size=3000) * 3, np.array([np.nan, 2.0])]
    one = Observer()
    merged = Observer()
    for p in parts:
        one.update(p)
        own = Observer()
        own.update(p)
        merged.merge(own)
    merged.merge(Observer())  # nothing observed: no change
    assert (merged.R, merged.min, merged.max, merged.count) == (one.R, one.min, one.max, one.count)
    np.testing.assert_array_equal(merged.hist, one.hist)
    for m in ("minmax", "percentile", "entropy", "mse"):
        assert merged.range(m) == one.range(m), m


def test_a_few_values_at_a_time_count_as_one_large_update():
    """update() counts a small array where its values fall and a large one with a pass over
    every bin: the histogram must be the one a single update of all the data gives (the
    final grid is the same power of two either way)."""
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.normal(size=n) * s for n, s in [(7, 0.5), (300, 3.0), (1, 9.0), (64, 1.0),
                                                             (5000, 2.0), (3, 40.0)]])
    chunks, one = Observer(), Observer()
    at = 0
    for n in (7, 300, 1, 64, 5000, 3):  # below and above the small-array threshold (BINS / 8)
        chunks.update(x[at:at + n])
        at += n
    one.update(x)
    assert (chunks.R, chunks.count) == (one.R, one.count)
    np.testing.assert_array_equal(chunks.hist, one.hist)


def test_zeros_then_data_and_non_finite_values():
    ob = Observer()
    ob.update(np.zeros(100))
    assert ob.range("minmax") == (0.0, 0.0)  # zero width: propagate-ranges widens it
    ob.update(np.array([np.nan, np.inf, -np.inf, 1.0, -0.5]))
    assert ob.range("minmax") == (-0.5, 1.0)
    assert ob.hist.sum() == 102
    for m in ("percentile", "entropy", "mse"):
        lo, hi = ob.range(m)
        assert np.isfinite([lo, hi]).all() and lo <= 0 <= hi


def test_nothing_finite_observed_is_a_calib_error():
    ob = Observer()
    ob.update(np.array([np.nan, np.inf]))
    ob.update(np.zeros(0))
    with pytest.raises(CalibError, match="no finite values"):
        ob.range("minmax")


def test_unknown_method_is_a_calib_error():
    with pytest.raises(CalibError, match="unknown calibration method"):
        _observe(np.arange(10.0) - 5).range("median")


def test_a_pipeline_on_all_zero_calibration_data_has_no_nan_scale(model_path):
    g, ctx = run_pipeline(model_path, {"x": SHAPE}, [{"x": np.zeros(SHAPE, np.float32)}], level="O3")
    s = _scales(g)
    assert np.isfinite(s).all() and (s > 0).all()
    assert "O3" in PIPELINES


def test_an_unnamed_array_serves_the_only_input(graph, tmp_path):
    """np.savez(f, x) stores the array as 'arr_0': with one model input that is unambiguous
    (a warning says so); any other unknown name stays an error (test_bad_arrays_give_calib_errors)."""
    np.savez(tmp_path / "c.npz", _x(4))
    said = []
    batches = load_samples(tmp_path / "c.npz", graph, warn=said.append)
    assert len(batches) == 2 and set(batches[0]) == {"x"}
    assert said == ["calibration array 'arr_0' used for the model's only input 'x'"]
    # the same rule keys the shapes that fix dynamic dims before import (qcc.driver)
    from qcc.calibrate import by_input, sample_shapes
    assert by_input(sample_shapes(tmp_path / "c.npz"), ["x"]) == {"x": (4, 3, 8, 8)}
    assert by_input({"y": (4,)}, ["x"]) == {"y": (4,)} and by_input({"arr_0": (4,)}, ["x", "z"]) == {"arr_0": (4,)}


@pytest.mark.parametrize("kind", ["normal", "one-sided", "negative", "heavy-tailed"])
def test_mse_range_is_the_candidate_loops_choice(kind):
    """mse scores its candidate ranges all at once; the choice must be the one a loop over
    them makes (the first of equal errors), bit for bit."""
    rng = np.random.default_rng(5)
    x = {"normal": rng.normal(size=50_000), "one-sided": np.abs(rng.normal(size=50_000)),
         "negative": -np.abs(rng.laplace(size=50_000)),
         "heavy-tailed": rng.standard_cauchy(size=50_000)}[kind]
    ob = _observe(x)
    for bits in (4, 8, 16):
        e = ob.edges()
        centers, lo0, hi0 = (e[:-1] + e[1:]) / 2, float(ob.min), float(ob.max)
        floor = min(0.3, max(2 * ob.R / ob.bins / max(abs(lo0), abs(hi0)), 1e-6))
        best, best_err = (lo0, hi0), np.inf
        for f in np.unique(np.concatenate([np.geomspace(floor, 0.3, 64), np.linspace(0.3, 1.0, 71)])):
            lo, hi = (lo0 * f if lo0 < 0 else lo0), hi0 * f
            step = (hi - lo) / (2 ** bits - 1)
            clipped = np.clip(centers, lo, hi)
            err = np.sum(ob.hist * ((centers - clipped) ** 2 + np.where(centers == clipped, step * step / 12, 0.0)))
            if step > 0 and err < best_err:
                best_err, best = err, (lo, hi)
        assert ob.range("mse", bits=bits) == (float(best[0]), float(best[1])), (kind, bits)
