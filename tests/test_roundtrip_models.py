"""Every .qir in the repo, and imported real models, print -> parse -> print identically."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import qcc
from qcc.ir.parser import load, parse
from qcc.ir.printer import print_graph, print_with_sidecar, save

ROOT = Path(__file__).resolve().parents[1]
QIR_FILES = sorted(p for p in ROOT.rglob("*.qir") if ".venv" not in p.parts and "out" not in p.parts)


def _split(text):
    return [c for c in text.split("// -----") if c.strip()]


@pytest.mark.parametrize("path", QIR_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_repo_qir_roundtrips(path):
    for case in _split(path.read_text()):
        g = parse(case, str(path))
        text = print_graph(g, inline_all=True)
        assert print_graph(parse(text), inline_all=True) == text


def _assert_roundtrip(g, tmp_path):
    save(g, tmp_path / "m.qir")
    g2 = load(tmp_path / "m.qir")
    assert print_graph(g2) == print_graph(g)
    for name, c in g.constants.items():
        assert g2.value(name).data.tobytes() == c.data.tobytes()


def test_imported_example_roundtrips(tmp_path):
    _assert_roundtrip(qcc.import_onnx(ROOT / "examples/tiny_cnn.onnx", {"input": (1, 3, 32, 32)}), tmp_path)


def test_imported_ppocr_cls_roundtrips(tmp_path, ppocr_cls_path):
    _assert_roundtrip(qcc.import_onnx(ppocr_cls_path, {"x": (1, 3, 48, 192)}), tmp_path)


def test_quantized_graph_roundtrips(tmp_path):
    """After -O2 the graph holds per-channel quant params, int32 biases and integer ops."""
    g = qcc.import_onnx(ROOT / "examples/tiny_cnn.onnx", {"input": (1, 3, 32, 32)})
    calib = np.load(ROOT / "examples/tiny_cnn_calib.npz")["input"]
    ctx = qcc.PassContext(options={"calib": [{"input": calib[i:i + 1]} for i in range(4)]})
    from qcc.pipelines import PIPELINES

    qcc.PassManager(PIPELINES["O2"], verify_each=True).run(g, ctx)
    assert any(n.op == "qconv" for n in g.nodes)
    _assert_roundtrip(g, tmp_path)


def test_cli_import_writes_parseable_qir(tmp_path):
    out = tmp_path / "tiny.qir"
    p = subprocess.run([sys.executable, "-m", "qcc.cli", "import", str(ROOT / "examples/tiny_cnn.onnx"),
                        "--input-shape", "input=1x3x32x32", "-o", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    g = load(out)
    assert [v.name for v in g.inputs] == ["input"] and [v.name for v in g.outputs] == ["probs"]
    p = subprocess.run([sys.executable, "-m", "qcc.cli", "import", str(ROOT / "examples/tiny_cnn.onnx")],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "--input-shape" in p.stderr and "Traceback" not in p.stderr
