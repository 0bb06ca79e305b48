"""qcc: a quantizing compiler for neural networks.

The public API, small and stable:
  qcc.import_onnx(path, input_shapes)   ONNX -> Graph
  qcc.parse(text) / qcc.load_qir(path)  .qir text -> Graph;  str(graph) prints it
  qcc.compile(model, out_dir, ...)      the whole job, artifact folder out
  qcc.load(out_dir)                     a compiled artifact as a callable module
  qcc.register_pass, qcc.Pass, qcc.PassContext, qcc.PassManager   for your own passes
"""
__version__ = "0.1.0"

from .ir import Graph, Node, Value, TensorType, QuantParams, register_op  # noqa: E402
from .ir.parser import parse, load as load_qir, QirError  # noqa: E402
from .ir.verify import verify, VerifyError  # noqa: E402
from .passes_registry import Pass, PassError, register_pass  # noqa: E402
from .pass_manager import PassContext, PassManager, PassFailure  # noqa: E402


def import_onnx(model, input_shapes=None) -> Graph:
    """Import an ONNX model (path or ModelProto) with static shapes."""
    from .frontend import import_onnx as _imp

    return _imp(model, input_shapes)


def compile(model, out_dir, *, target="host", opt_level="O0", passes=None, input_shapes=None,
            calib=None, calib_method=None, precision="", max_error=None, min_int8_fraction=None,
            size_budget=None, config=None, plugins=(), verify_each=False, threads=None, emit=(),
            depfile=None, tune_budget=None, tune_db=None, log=None):
    """Compile `model` (.onnx) into the artifact folder `out_dir`; returns the report dict.

    Every `qcc compile` option, by the same name (see `qcc compile --help`), so a build
    system gets from Python what the command gives. Safe to call repeatedly, for several
    targets, from one process. `threads`: the CPU thread count the artifact runs with by
    default (manifest.json; qcc.load/run/bench use it)."""
    from .driver import CompileOptions, compile_model

    opts = CompileOptions(target=target, opt_level=opt_level, passes=passes,
                          input_shapes=dict(input_shapes or {}), calib=calib, calib_method=calib_method,
                          precision=precision, max_error=max_error, min_int8_fraction=min_int8_fraction,
                          size_budget=size_budget, config=config, plugins=tuple(plugins),
                          verify_each=verify_each, threads=threads, emit=tuple(emit), depfile=depfile,
                          tune_budget=tune_budget, tune_db=tune_db)
    return compile_model(model, out_dir, opts, log=log)


def load(out_dir, *, threads=None):
    """Load a compiled artifact for the host: `.run({name: array}) -> {name: array}`.
    `threads`: CPU threads (default: the artifact's `compile --threads`, else every core)."""
    from .artifact import load as _load

    return _load(out_dir, threads=threads)
