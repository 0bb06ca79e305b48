"""Shared test fixtures: golden-file updating, the real models shipped in wheels."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--update-goldens", action="store_true",
                     help="rewrite tests/golden/**/*.expected.qir from the current output (read the diff!)")


@pytest.fixture
def update_goldens(request):
    return request.config.getoption("--update-goldens")


def rapidocr_model(name: str) -> Path:
    """A PP-OCR model shipped inside the rapidocr-onnxruntime wheel."""
    import importlib.util

    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None:
        pytest.skip("rapidocr-onnxruntime is not installed")
    path = Path(spec.origin).parent / "models" / name
    if not path.exists():
        pytest.skip(f"{name} not in rapidocr-onnxruntime")
    return path


@pytest.fixture(scope="session")
def ppocr_cls_path():
    return rapidocr_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")
