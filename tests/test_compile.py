"""`qcc compile` / `qcc run` / `qcc.compile` as build systems and users see them: the artifact
contract, determinism, opaque-op fallback, and bad input (one line, exit 1, no OUT left behind)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcc
from qcc.artifact import ArtifactError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples/tiny_cnn.onnx"
SHAPE = ["--input-shape", "input=1x3x32x32"]


def cli(*args):
    p = subprocess.run([sys.executable, "-m", "qcc.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def ort(model_path, feeds):
    import onnxruntime

    return onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.fixture(scope="module")
def tiny_o0(tmp_path_factory):
    out = tmp_path_factory.mktemp("a") / "tiny"
    p = cli("compile", TINY, *SHAPE, "-O0", "-o", out)
    assert p.returncode == 0, p.stderr
    return out


def test_artifact_contract(tiny_o0):
    files = sorted(p.name for p in tiny_o0.iterdir())
    for f in ("manifest.json", "model.so", "model.qir", "model.npz", "report.json"):
        assert f in files
    m = json.loads((tiny_o0 / "manifest.json").read_text())
    assert m["inputs"] == [{"name": "input", "shape": [1, 3, 32, 32], "dtype": "f32"}]
    assert m["outputs"] == [{"name": "probs", "shape": [1, 10], "dtype": "f32"}]
    assert m["target"]["preset"] == "host" and m["target"]["tvm"]["kind"] == "llvm"
    assert len(m["model_sha256"]) == 64 and len(m["options_sha256"]) == 64
    assert set(m["files"]) == set(files) - {"manifest.json"}
    assert "time" not in json.dumps(m).lower()
    qcc.load_qir(tiny_o0 / "model.qir")  # the final IR parses


def test_float_artifact_matches_onnxruntime(tiny_o0):
    x = np.load(ROOT / "examples/tiny_cnn_input.npz")["input"]
    got = qcc.load(tiny_o0).run({"input": x})["probs"]
    ref = ort(TINY, {"input": x})[0]
    assert np.abs(got - ref).max() <= 1e-4 * (ref.max() - ref.min())


def test_run_from_several_threads_and_outputs_stay_the_callers(tiny_o0):
    """`run` copies inputs into staging tensors it keeps and hands back outputs numpy owns:
    threads calling one module at once take turns (they crashed the VM before) and each
    gets its own input's result, and an output kept (or written to) by the caller is not
    changed by later calls."""
    import threading

    m = qcc.load(tiny_o0)
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(4)]
    ref = [ort(TINY, {"input": x})[0] for x in xs]
    first = m.run({"input": xs[0]})["probs"]
    kept = first.copy()
    first[...] = -1.0  # the caller's array: writing it changes nothing the module holds
    errors = []

    def worker(i):
        for _ in range(20):
            got = m.run({"input": xs[i]})["probs"]
            if np.abs(got - ref[i]).max() > 1e-4 * (ref[i].max() - ref[i].min()):
                errors.append(i)
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    np.testing.assert_array_equal(m.run({"input": xs[0]})["probs"], kept)
    # a non-contiguous input is copied in as it is
    wide = np.zeros((1, 3, 32, 64), np.float32)
    wide[..., ::2] = xs[1]
    np.testing.assert_array_equal(m.run({"input": wide[..., ::2]})["probs"], m.run({"input": xs[1]})["probs"])


def test_run_cli_writes_outputs(tiny_o0, tmp_path):
    p = cli("run", tiny_o0, "--input", ROOT / "examples/tiny_cnn_input.npz", "-o", tmp_path / "y.npz")
    assert p.returncode == 0, p.stderr
    with np.load(tmp_path / "y.npz") as z:
        assert z["probs"].shape == (1, 10)


def test_same_inputs_give_byte_identical_artifacts(tiny_o0, tmp_path):
    out2 = tmp_path / "again"
    assert cli("compile", TINY, *SHAPE, "-O0", "-o", out2).returncode == 0
    for f in sorted(p.name for p in tiny_o0.iterdir()):
        assert (tiny_o0 / f).read_bytes() == (out2 / f).read_bytes(), f


@pytest.mark.parametrize("feeds,msg", [
    ({"input": np.zeros((1, 3, 16, 16), np.float32)}, "has shape [1, 3, 16, 16], the model expects [1, 3, 32, 32]"),
    ({"input": np.zeros((1, 3, 32, 32), np.float64)}, "has dtype float64"),
    ({"x": np.zeros((1, 3, 32, 32), np.float32)}, "unknown input 'x'"),
])
def test_run_rejects_bad_inputs(tiny_o0, tmp_path, feeds, msg):
    np.savez(tmp_path / "in.npz", **feeds)
    p = cli("run", tiny_o0, "--input", tmp_path / "in.npz")
    assert p.returncode == 1 and msg in p.stderr and p.stderr.count("\n") == 1


def _model_bytes():
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "m",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


@pytest.mark.parametrize("case,msg", [
    ("missing", "no such file"),
    ("not-onnx", ""),
    ("truncated", ""),
    ("bad-shape-name", "nosuch"),
    ("bad-shape-rank", "rank"),
    ("bad-target", "unknown target"),
])
def test_bad_input_one_line_exit_1_no_output(tmp_path, case, msg):
    model = tmp_path / "m.onnx"
    args = []
    if case == "not-onnx":
        model.write_text("this is not a model\n" * 10)
    elif case == "truncated":
        model.write_bytes(_model_bytes()[:-7])
    elif case != "missing":
        model.write_bytes(_model_bytes())
    if case == "bad-shape-name":
        args = ["--input-shape", "nosuch=1x4"]
    elif case == "bad-shape-rank":
        args = ["--input-shape", "x=1x4x4"]
    elif case == "bad-target":
        args = ["--target", "pdp-11"]
    out = tmp_path / "out"
    p = cli("compile", model, "-o", out, *args)
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("qcc: error:"), p.stderr
    assert msg.lower() in p.stderr.lower()
    assert not out.exists() and not any(x.name.startswith(".out") for x in tmp_path.iterdir())


def test_refuses_to_overwrite_a_folder_that_is_not_an_artifact(tmp_path):
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    p = cli("compile", TINY, *SHAPE, "-o", keep)
    assert p.returncode == 1 and "refusing" in p.stderr
    assert (keep / "notes.txt").read_text() == "mine"


def test_opaque_op_compiles_and_is_named_in_the_report(tmp_path):
    """CumSum has no first-class form: it is carried as onnx.CumSum, lowered by TVM's converter."""
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("CumSum", ["r", "axis"], ["c"], exclusive=1),
         helper.make_node("Mul", ["c", "two"], ["y"])], "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        [numpy_helper.from_array(np.array(1, np.int64), "axis"),
         numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    path = tmp_path / "cumsum.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    out = tmp_path / "out"
    report = qcc.compile(path, out)
    assert report["opaque_ops"] == ["onnx.CumSum"]
    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    np.testing.assert_allclose(qcc.load(out).run({"x": x})["y"], ort(path, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_scatter_compiles_without_codegen_warnings(tmp_path):
    """ScatterND (opaque: TOPI's scatter kernel) compiles with nothing on stderr and matches
    onnxruntime: TOPI wraps the kernel in a "pragma_scope" attribute that LLVM's code
    generator did not know, and TVM printed "Warning: Unknown pragma pragma_scope" on the
    user's terminal (cpu_tir_passes.DropSeqScopes)."""
    g = helper.make_graph(
        [helper.make_node("ScatterND", ["x", "idx", "upd"], ["s"]), helper.make_node("Relu", ["s"], ["y"])], "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 6])],
        [numpy_helper.from_array(np.array([[2], [0]], np.int64), "idx"),
         numpy_helper.from_array(np.arange(-6, 6, dtype=np.float32).reshape(2, 6), "upd")])
    path = tmp_path / "scatter.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    out = tmp_path / "out"
    p = cli("compile", path, "-o", out, "--quiet")
    assert p.returncode == 0, p.stderr
    assert p.stderr == "", p.stderr
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    np.testing.assert_array_equal(qcc.load(out).run({"x": x})["y"], ort(path, {"x": x})[0])


def test_kernels_carry_no_argument_checks_the_model_entry_still_checks(tmp_path):
    """The kernels' entry points are built without MakePackedAPI's argument checks
    (cpu_tir_passes: two thirds of a small model's code); a wrong input is still refused,
    by qcc before the VM and by the VM's own check of its parameters."""
    import tvm

    out = tmp_path / "out"
    qcc.compile(TINY, out, input_shapes={"input": (1, 3, 32, 32)})
    assert b"on argument #" not in (out / "model.so").read_bytes()
    m = qcc.load(out)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(m.run({"input": x})["probs"], ort(TINY, {"input": x})[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ArtifactError, match="shape"):
        m.run({"input": x[:, :, :16]})
    with pytest.raises(RuntimeError, match="mismatch"):
        m._runner._main(tvm.runtime.tensor(np.ascontiguousarray(x[:, :, :16])))


def test_python_api_compiles_two_targets_in_one_process(tmp_path):
    a = qcc.compile(TINY, tmp_path / "a", input_shapes={"input": (1, 3, 32, 32)}, target="x86-avx2")
    b = qcc.compile(TINY, tmp_path / "b", input_shapes={"input": (1, 3, 32, 32)}, target="host")
    ma = json.loads((tmp_path / "a/manifest.json").read_text())
    mb = json.loads((tmp_path / "b/manifest.json").read_text())
    assert ma["target"]["preset"] == "x86-avx2" and mb["target"]["preset"] == "host"
    assert ma["options_sha256"] != mb["options_sha256"]
    assert a["summary"]["macs"] == b["summary"]["macs"] > 0


def _conv_relu_pool(path, dtype, rng) -> None:
    """A 3x3 conv (8 channels), relu and global average pool over x [N, 3, 16, 16] in `dtype`."""
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    w = (rng.standard_normal((8, 3, 3, 3)) * 0.2).astype(dtype)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["y"])], "m",
        [helper.make_tensor_value_info("x", elem, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", elem, None)], [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.parametrize("level", ["O1", "O2"])
def test_float16_model_quantizes(tmp_path, level):
    """A model exported in float16 compiles at -O1/-O2 (promote-f16 computes it in float32;
    before, -O2 stopped with an internal error at the first dequantize) and keeps its
    float16 interface; the int8 output stays within quantization error of onnxruntime."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    _conv_relu_pool(tmp_path / "m.onnx", np.float16, rng)
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((8, 3, 16, 16)).astype(np.float16))
    report = qcc.compile(tmp_path / "m.onnx", tmp_path / "out", target="host", opt_level=level,
                         calib=tmp_path / "c.npz")
    if level == "O2":
        assert report["summary"]["int8_mac_fraction"] == 1.0
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float16)
    ref = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    y = qcc.load(tmp_path / "out").run({"x": x})["y"]
    assert y.dtype == np.float16 and y.shape == ref.shape
    assert float(np.abs(y.astype(np.float32) - ref.astype(np.float32)).max()) <= 0.02 * float(np.abs(ref).max())


def test_instance_norm_over_a_long_row_compiles_fast_and_exact(tmp_path):
    """GroupNorm(1, C) exports as InstanceNormalization over [N, 1, C*H*W]. As an opaque op
    its TVM kernel recomputed the mean for every element (mobilevitv2: 320 ms for 25600
    values); imported as a layer_norm it is one pass, matching onnxruntime."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    g = helper.make_graph(
        [helper.make_node("Reshape", ["x", "r1"], ["f"]),
         helper.make_node("InstanceNormalization", ["f", "one", "zero"], ["n"], epsilon=1e-5),
         helper.make_node("Reshape", ["n", "r2"], ["y"])], "gn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 20, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([1, 1, -1], np.int64), "r1"),
         numpy_helper.from_array(np.array([1, 64, 20, 20], np.int64), "r2"),
         numpy_helper.from_array(np.ones(1, np.float32), "one"),
         numpy_helper.from_array(np.zeros(1, np.float32), "zero")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    qcc.compile(tmp_path / "m.onnx", tmp_path / "out", target="host", opt_level="O0")
    x = (rng.standard_normal((1, 64, 20, 20)) * 2 + 0.5).astype(np.float32)
    ref = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    m = qcc.load(tmp_path / "out")
    y = m.run({"x": x})["y"]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert not report["opaque_ops"]
    m.run({"x": x})
    t = time.perf_counter()
    m.run({"x": x})
    assert time.perf_counter() - t < 0.05  # 25600 values: microseconds; the opaque kernel took ~0.3 s


@pytest.mark.parametrize("n, first, unseen", [(12, 5, True), (3, 1, False)])
def test_the_reports_errors_are_measured_where_the_search_did_not_choose(tmp_path, n, first, unseen):
    """The bit-width search measures its candidates on the first calibration batches (4 here),
    so its choices look better there than anywhere else: PP-OCR cls at batch 1 reported 34.0
    dB on the first 8 crops, 30.0 on the 8 after the search's 4, and 26.3 dB on 4096 held-out crops. The
    report's errors come from the batches after the search's when there are any, and say so."""
    rng = np.random.default_rng(0)
    _conv_relu_pool(tmp_path / "m.onnx", np.float32, rng)
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((n, 3, 16, 16)).astype(np.float32))
    report = qcc.compile(tmp_path / "m.onnx", tmp_path / "out", target="host", opt_level="O2",
                         calib=tmp_path / "c.npz", input_shapes={"x": (1, 3, 16, 16)})
    assert report["bitwidth_search_batches"]["measured"] == min(4, n)
    assert report["error_batches"] == {"first": first, "last": min(first + 7, n), "of": n,
                                       "unseen_by_bitwidth_search": unseen}
    assert report["summary"]["output_sqnr_db"]["y"] > 20
    out = cli("compile", str(tmp_path / "m.onnx"), "-O2", "--calib", str(tmp_path / "c.npz"),
              "--input-shape", "x=1x3x16x16", "-o", str(tmp_path / "out2"))
    assert f"(calibration batches {first}-{min(first + 7, n)} of {n}" in out.stdout
    assert ("unseen by the bit-width search" in out.stdout) == unseen


def test_every_key_a_pass_reports_reaches_report_json_or_is_kept_out_on_purpose(tmp_path):
    """report.json carries the ctx.report keys qcc.report.PASS_KEYS lists; a key a pass adds
    and nobody lists was dropped silently (bias-correct's `bias_correction`, and for one
    commit align-input-grid's `input_grid`, which the README named)."""
    import re

    import qcc.passes as passes
    from qcc.pipelines import PIPELINES
    from qcc.report import PASS_KEYS, PASS_KEYS_KEPT_OUT

    keys = set()
    for f in Path(passes.__path__[0]).glob("*.py"):
        text = f.read_text()
        keys |= set(re.findall(r'ctx\.report(?:\.setdefault\(|\[)"(\w+)"', text))
        for a, b in re.findall(r'key = "(\w+)" if [^\n]* else "(\w+)"', text):  # round-weights' two
            keys |= {a, b}
    assert {"input_grid", "bias_correction", "round_weights", "smoothed"} <= keys  # the scan finds them
    assert keys <= set(PASS_KEYS) | set(PASS_KEYS_KEPT_OUT), keys - set(PASS_KEYS) - set(PASS_KEYS_KEPT_OUT)

    rng = np.random.default_rng(0)
    _conv_relu_pool(tmp_path / "m.onnx", np.float32, rng)
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((4, 3, 16, 16)).astype(np.float32))
    pipeline = PIPELINES["O2"].replace("assign-bitwidths,", "assign-bitwidths,bias-correct,")
    qcc.compile(tmp_path / "m.onnx", tmp_path / "out", target="host", passes=pipeline,
                calib=tmp_path / "c.npz", input_shapes={"x": (1, 3, 16, 16)})
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "bias_correction" in report and "pass_times_s" not in report
