"""The `qcc` command as a user and a build system see it: output, exit codes, no tracebacks."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QIR = """graph @main(%x: f32[4]) {
  %a = qcc.neg(%x) : f32[4]
  %b = qcc.neg(%a) : f32[4]
  %y = qcc.relu(%b) : f32[4]
  return %y
}
"""


def qcc(*args, stdin=None):
    p = subprocess.run([sys.executable, "-m", "qcc.cli", *map(str, args)], input=stdin,
                       capture_output=True, text=True, cwd=ROOT)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def test_version_and_help():
    assert qcc("--version").stdout.startswith("qcc ")
    h = qcc("--help")
    assert h.returncode == 0
    for sub in ("compile", "import", "opt", "run", "passes", "targets"):
        assert sub in h.stdout


def test_opt_with_no_passes_reprints_input(tmp_path):
    f = tmp_path / "m.qir"
    f.write_text(QIR)
    p = qcc("opt", f, "--passes", "")
    assert p.returncode == 0, p.stderr
    assert p.stdout == QIR


def test_opt_plugin_and_pipeline(tmp_path):
    f = tmp_path / "m.qir"
    f.write_text(QIR)
    p = qcc("opt", f, "--plugin", ROOT / "examples/my_passes.py", "--passes", "fold-double-neg,clamp-relu{max=6}",
            "--print-pipeline", "-o", tmp_path / "out.qir")
    assert p.returncode == 0, p.stderr
    assert "fold-double-neg,clamp-relu" in p.stderr
    out = (tmp_path / "out.qir").read_text()
    assert "qcc.neg" not in out and "qcc.clip(%x) {max=6.0, min=0.0}" in out


def test_opt_reads_stdin():
    p = qcc("opt", "-", "--passes", "canonicalize", stdin=QIR)
    assert p.returncode == 0 and "qcc.relu" in p.stdout


def test_parse_error_is_one_line_exit_1(tmp_path):
    f = tmp_path / "bad.qir"
    f.write_text(QIR.replace("%a = qcc.neg(%x)", "%a = qcc.neg(%x"))
    p = qcc("opt", f)
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and f"{f}:2:" in p.stderr and "error:" in p.stderr


@pytest.mark.parametrize("args,code,msg", [
    (["opt", "nosuch.qir"], 1, "cannot read"),
    (["opt", "-", "--passes", "nope"], 1, "unknown pass 'nope'"),
    (["opt", "-", "--plugin", "nosuch.py"], 1, "no such file"),
    (["frobnicate"], 2, "invalid choice"),
    (["compile", "m.onnx"], 2, "required"),
    (["compile", "m.onnx", "-o", "x", "--input-shape", "x=1xfoo"], 2, "dims must be integers"),
])
def test_errors_and_exit_codes(args, code, msg):
    p = qcc(*args, stdin=QIR)
    assert p.returncode == code, p.stderr
    assert msg in p.stderr


@pytest.mark.parametrize("flags,shapes", [
    (["--input-shape", "ids=1x32", "--input-shape", "mask=1x32"], {"ids": (1, 32), "mask": (1, 32)}),
    (["--input-shape", "ids=2x17,mask=2x17"], {"ids": (2, 17), "mask": (2, 17)}),  # one flag, a list
    (["--input-shape", "a,b=1x3"], {"a,b": (1, 3)}),                                # a comma in a name
])
def test_input_shape_flags(flags, shapes):
    from qcc.cli import _input_shapes, build_parser

    args = build_parser().parse_args(["compile", "m.onnx", "-o", "x", *flags])
    assert _input_shapes(args) == shapes


def test_passes_lists_builtins():
    p = qcc("passes")
    assert p.returncode == 0
    assert "canonicalize" in p.stdout and "built-in" in p.stdout
    p = qcc("passes", "--plugin", ROOT / "examples/my_passes.py")
    assert "clamp-relu" in p.stdout and "plugin" in p.stdout


def test_time_and_dump(tmp_path):
    f = tmp_path / "m.qir"
    f.write_text(QIR)
    p = qcc("opt", f, "--passes", "canonicalize", "--time-passes", "--dump-dir", tmp_path / "d",
            "--print-ir-after-all")
    assert p.returncode == 0
    assert "pass timing" in p.stderr and "IR after canonicalize" in p.stderr
    assert (tmp_path / "d" / "001-canonicalize.qir").exists()


@pytest.mark.parametrize("op,out_shape,msg", [
    ("Det", [2], "TVM's ONNX frontend has no converter for Det"),       # no lowering anywhere
    ("Unique", None, "depends on the data; qcc compiles static shapes only"),  # dynamic output
])
def test_unlowerable_op_is_one_line_and_leaves_nothing(tmp_path, op, out_shape, msg):
    """An op neither qcc nor TVM can compile: one line, exit 1, no artifact -- and no TVM
    warning after it (the Relax builder is closed on the error path)."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "m",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    p = qcc("compile", tmp_path / "m.onnx", "--target", "host", "-O0", "-o", tmp_path / "out")
    assert p.returncode == 1, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("qcc: error:") and msg in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()


def test_compile_takes_dynamic_dims_from_the_calibration_data(tmp_path):
    """`qcc compile model.onnx -O2 --calib data.npz -o out` with no --input-shape, on a model
    exported with dynamic batch, height and width: the calibration arrays show the shape."""
    import json

    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "m",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).standard_normal((4, 3, 8, 6)).astype(np.float32))
    p = qcc("compile", tmp_path / "m.onnx", "-O2", "--calib", tmp_path / "c.npz", "-o", tmp_path / "out")
    assert p.returncode == 0, p.stderr
    assert "input 'x' has dynamic dims [N, 3, H, W]: compiled as 1x3x8x6 from the calibration data" in p.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["options"]["input_shapes"] == {"x": [1, 3, 8, 6]}
    # without calibration data height and width stay unknown: the error names the flag
    p = qcc("compile", tmp_path / "m.onnx", "-O0", "-o", tmp_path / "out0")
    assert p.returncode == 1 and "--input-shape x=" in p.stderr and not (tmp_path / "out0").exists()


def test_compile_converts_an_old_opset_and_says_so(tmp_path):
    """An opset-6 export (the pytorch-1.0 era) compiles after onnx's version converter, with
    a warning naming the conversion; the compiled model computes the same thing."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    import qcc as api

    g = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["s"]),
                           helper.make_node("Relu", ["s"], ["y"])], "m",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 6)], ir_version=3),
              tmp_path / "m.onnx")
    p = qcc("compile", tmp_path / "m.onnx", "-O0", "-o", tmp_path / "out")
    assert p.returncode == 0, p.stderr
    assert "warning: the model uses opset 6 of the default ONNX domain: converted to opset 7 " \
           "with onnx.version_converter" in p.stderr
    x = np.linspace(-3, 3, 10, dtype=np.float32).reshape(2, 5)
    np.testing.assert_allclose(api.load(tmp_path / "out").run({"x": x})["y"], 1 / (1 + np.exp(-x)), rtol=1e-6)
    p = qcc("import", tmp_path / "m.onnx")  # the IR printer's path says it the same way, in one line
    assert p.returncode == 0 and "qcc.sigmoid" in p.stdout, p.stderr
    assert p.stderr == "qcc: warning: the model uses opset 6 of the default ONNX domain: converted to " \
                       "opset 7 with onnx.version_converter\n", p.stderr


def test_calib_without_a_quantizing_level_says_it_is_unused(tmp_path):
    """`qcc compile m.onnx --calib d.npz -o out` (no -O) builds -O0, a float model: the user
    who forgot -O2 is told, in one warning line, instead of finding "int8 MACs 0%"."""
    import json

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
                          "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32))
    said = {}
    for level in ("", "-O1", "-O2"):
        out = tmp_path / f"out{level}"
        p = qcc("compile", tmp_path / "m.onnx", *([level] if level else []), "--calib", tmp_path / "d.npz",
                "-o", out)
        assert p.returncode == 0, p.stderr
        said[level] = [l for l in p.stderr.splitlines() if "--calib is not used" in l]
        report = json.loads((out / "report.json").read_text())
        assert [w for w in report["warnings"] if "--calib" in w] == [w[len("qcc: warning: "):] for w in said[level]]
    assert said[""] == ["qcc: warning: --calib is not used: -O0 builds in float; add -O2 to quantize "
                        "activations from it"]
    assert len(said["-O1"]) == 1 and "-O1 quantizes only the weights" in said["-O1"][0]
    assert said["-O2"] == []
