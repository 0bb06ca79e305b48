"""The core op declarations (docs/ops.md): importing this package registers them all.

`qcc.ir.opdef` imports it lazily on the first registry lookup, so the IR itself
has no import-time dependency on the kernels. Each module groups ops that share
shape rules and numerics; `quant` holds the integer pipeline's ops (quantize,
requantize, qconv, ...); `onnx_opaque` registers the evaluator for `onnx.*` ops.
"""
from . import activation, elementwise, nn, norm, onnx_opaque, pool, reduce, resize, shape  # noqa: F401
from . import quant  # noqa: F401  (after nn: it reuses the conv kernel)
