"""CPU kernels' small scratch buffers on the stack, however large TVM thinks is too large.

TVM 0.27's LowerTVMBuiltin keeps a "global" allocation of constant size on the stack only
below 1 kB (runtime::kMaxStackAlloca); anything larger becomes a TVMBackendAllocWorkspace /
TVMBackendFreeWorkspace pair around the allocation's scope, i.e. once per register tile or
per block of output channels when the buffer lives inside the parallel loop. For the
kernels' register tiles that limit meant at most 15 zmm accumulators (a 3x4 tile for 24
output channels instead of 6x4), and a per-channel-block sum larger than 1 kB paid a pool
allocation per block. Allocations up to `STACK_LIMIT` bytes get TVM's own
"disable_lower_builtin" annotation instead, which leaves them as plain stack allocas (LLVM
then keeps fully unrolled tiles in registers).

`register()` adds the "qcc_cpu" TIR pipeline: TVM's default one with this pass run just
before LowerTVMBuiltin.
"""
from __future__ import annotations

import math

import tvm
from tvm import tirx

STACK_LIMIT = 1 << 16  # bytes: a worker thread's stack is megabytes
PIPELINE = "qcc_cpu"
_ANN = "disable_lower_builtin"  # tvm::tirx::transform::kDisableLowerTVMBuiltin


def _constant_bytes(buffer) -> int:
    """The allocation's size in bytes, or -1 when it is not a compile-time constant."""
    dims = []
    for d in buffer.shape:
        if not isinstance(d, tvm.tirx.IntImm):
            return -1
        dims.append(int(d.value))
    return math.prod(dims) * buffer.dtype.bits * buffer.dtype.lanes // 8


def _on_stack(buffer) -> bool:
    scope = buffer.scope()
    return scope in ("", "global") and 0 < _constant_bytes(buffer) <= STACK_LIMIT


def _rewrite(stmt):
    """`stmt` with every small global AllocBuffer annotated; the nodes with bodies rebuilt
    (tirx has no Python statement mutator)."""
    S = tirx.stmt
    if isinstance(stmt, S.SeqStmt):
        return S.SeqStmt([_rewrite(s) for s in stmt.seq], stmt.span)
    if isinstance(stmt, S.For):
        return S.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, _rewrite(stmt.body),
                     stmt.thread_binding, stmt.annotations, stmt.step, stmt.span)
    if isinstance(stmt, S.AttrStmt):
        return S.AttrStmt(stmt.node, stmt.attr_key, stmt.value, _rewrite(stmt.body), stmt.span)
    if isinstance(stmt, S.IfThenElse):
        other = None if stmt.else_case is None else _rewrite(stmt.else_case)
        return S.IfThenElse(stmt.condition, _rewrite(stmt.then_case), other, stmt.span)
    if isinstance(stmt, S.While):
        return S.While(stmt.condition, _rewrite(stmt.body), stmt.span)
    if isinstance(stmt, S.AllocBuffer) and _on_stack(stmt.buffer) and _ANN not in stmt.annotations:
        return S.AllocBuffer(stmt.buffer, {**dict(stmt.annotations), _ANN: tvm.tirx.IntImm("bool", 1)}, stmt.span)
    return stmt


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="qcc.StackBuffers")
def StackBuffers(func, _mod, _ctx):
    """Annotate small constant-size global allocations to stay on the stack."""
    return func.with_body(_rewrite(func.body))


def _pipeline():
    from tvm.tirx import compilation_pipeline as cp

    lower, finalize_host, finalize_device = cp.get_tir_pipeline("default")

    def host():
        return tvm.transform.Sequential([StackBuffers, finalize_host()])

    return lower, host, finalize_device


def register() -> str:
    """Register the "qcc_cpu" TIR pipeline (idempotent); returns its name."""
    from tvm.tirx import compilation_pipeline as cp

    cp.PIPELINE_MAP.setdefault(PIPELINE, _pipeline)
    return PIPELINE
