"""Model importers: ONNX to the qcc graph IR."""
from .errors import FrontendError
from .onnx import import_onnx

__all__ = ["FrontendError", "import_onnx"]
