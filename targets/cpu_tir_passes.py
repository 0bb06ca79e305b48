"""What qcc adds to TVM's default TIR pipeline for CPU targets: the "qcc_cpu" pipeline.

* `StackBuffers`: small scratch buffers on the stack, however large TVM thinks is too large.
  TVM 0.27's LowerTVMBuiltin keeps a "global" allocation of constant size on the stack only
  below 1 kB (runtime::kMaxStackAlloca); anything larger becomes a
  TVMBackendAllocWorkspace / TVMBackendFreeWorkspace pair around the allocation's scope,
  i.e. once per register tile or per block of output channels when the buffer lives inside
  the parallel loop. For the kernels' register tiles that limit meant at most 15 zmm
  accumulators (a 3x4 tile for 24 output channels instead of 6x4), and a per-channel-block
  sum larger than 1 kB paid a pool allocation per block. Allocations up to `STACK_LIMIT`
  bytes get TVM's own "disable_lower_builtin" annotation instead, which leaves them as
  plain allocas at the function's entry (LLVM then keeps fully unrolled tiles in registers).
* `DropSeqScopes`: TOPI's scatter kernels (ScatterND, ScatterElements, index_put) wrap
  their statements in a "pragma_scope" attribute that only TVM's IR builder needs; LLVM's
  code generator does not know it and printed "Warning: Unknown pragma pragma_scope" on
  the user's terminal for every such kernel.
* `SkipAssert` (TVM's own pass): no argument checks in the kernels' entry points. MakePackedAPI
  wraps every kernel in a function that checks each argument's type, rank, dtype, shape,
  strides, offset and device before the call: 7 kB of code per kernel, two thirds of the
  compiled code of a small model (PP-OCR cls: 366 kB of 560 kB), all of it to fetch from
  memory on a cold call. The only caller is the model's own VM function, which passes
  tensors it allocated to the shapes the kernels were compiled for, after checking the
  user's inputs itself (vm.builtin.check_tensor_info / match_shape, and qcc's
  check_inputs before that). qcc's lowering emits no assert of its own.

All run just before LowerTVMBuiltin.
"""
from __future__ import annotations

import math
from typing import Callable

import tvm
from tvm import tirx

STACK_LIMIT = 1 << 17  # bytes: a worker thread's stack is megabytes (x86_int8's row bands use all of it)
PIPELINE = "qcc_cpu"
_NO_WORKSPACE = "disable_lower_builtin"  # tvm::tirx::transform::kDisableLowerTVMBuiltin


def _rebuild(stmt, leaf: Callable):
    """`stmt` with `leaf` applied to every statement, children first (tirx has no Python
    statement mutator: the nodes with bodies are rebuilt here)."""
    S = tirx.stmt
    if isinstance(stmt, S.SeqStmt):
        stmt = S.SeqStmt([_rebuild(s, leaf) for s in stmt.seq], stmt.span)
    elif isinstance(stmt, S.For):
        stmt = S.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, _rebuild(stmt.body, leaf),
                     stmt.thread_binding, stmt.annotations, stmt.step, stmt.span)
    elif isinstance(stmt, S.AttrStmt):
        stmt = S.AttrStmt(stmt.node, stmt.attr_key, stmt.value, _rebuild(stmt.body, leaf), stmt.span)
    elif isinstance(stmt, S.IfThenElse):
        other = None if stmt.else_case is None else _rebuild(stmt.else_case, leaf)
        stmt = S.IfThenElse(stmt.condition, _rebuild(stmt.then_case, leaf), other, stmt.span)
    elif isinstance(stmt, S.While):
        stmt = S.While(stmt.condition, _rebuild(stmt.body, leaf), stmt.span)
    return leaf(stmt)


def _constant_bytes(buffer) -> int:
    """The allocation's size in bytes, or -1 when it is not a compile-time constant."""
    dims = []
    for d in buffer.shape:
        if not isinstance(d, tvm.tirx.IntImm):
            return -1
        dims.append(int(d.value))
    return math.prod(dims) * buffer.dtype.bits * buffer.dtype.lanes // 8


def _keep_on_stack(stmt):
    S = tirx.stmt
    if not isinstance(stmt, S.AllocBuffer) or _NO_WORKSPACE in stmt.annotations:
        return stmt
    buf = stmt.buffer
    if buf.scope() not in ("", "global") or not 0 < _constant_bytes(buf) <= STACK_LIMIT:
        return stmt
    return S.AllocBuffer(buf, {**dict(stmt.annotations), _NO_WORKSPACE: tvm.tirx.IntImm("bool", 1)}, stmt.span)


def _drop_seq_scope(stmt):
    if isinstance(stmt, tirx.stmt.AttrStmt) and stmt.attr_key == "pragma_scope":
        return stmt.body
    return stmt


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="qcc.StackBuffers")
def StackBuffers(func, _mod, _ctx):
    """Annotate small constant-size global allocations to stay on the stack."""
    return func.with_body(_rebuild(func.body, _keep_on_stack))


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="qcc.DropSeqScopes")
def DropSeqScopes(func, _mod, _ctx):
    """Remove the IR builder's "pragma_scope" attributes, which codegen does not know."""
    return func.with_body(_rebuild(func.body, _drop_seq_scope))


def _pipeline():
    from tvm.tirx import compilation_pipeline as cp

    lower, finalize_host, finalize_device = cp.get_tir_pipeline("default")

    def host():
        return tvm.transform.Sequential([StackBuffers, DropSeqScopes, tirx.transform.SkipAssert(),
                                         finalize_host()])

    return lower, host, finalize_device


def register() -> str:
    """Register the "qcc_cpu" TIR pipeline (idempotent); returns its name."""
    from tvm.tirx import compilation_pipeline as cp

    cp.PIPELINE_MAP.setdefault(PIPELINE, _pipeline)
    return PIPELINE
