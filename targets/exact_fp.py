"""Keep float multiplies from being fused into FMAs, so float math between integer
segments rounds exactly as the reference interpreter (numpy) does.

TVM's LLVM back end creates every target machine with `AllowFPOpFusion = Fast`
(src/target/llvm/llvm_instance.cc), so LLVM contracts `a * b + c` into one fused
multiply-add whenever it sees the fmul feeding the fadd: inside one op (hard_sigmoid,
batch-norm's x * a + c) and across fused ops once small loops are unrolled and the
intermediate buffer is forwarded (dequantize's `* scale` feeding a residual add). An
FMA rounds once where numpy rounds twice: last-bit differences that a following
quantize can turn into a different integer. nvcc does the same (`--fmad=true`).

`ExactFloatMultiply(target)` rewrites each float32/float64 `relax.multiply` whose
value can reach an add/subtract/reduction into an elementwise TE kernel whose product
is wrapped where the contraction cannot see through it:

- LLVM targets: `llvm.arithmetic.fence(a * b)`, the intrinsic made for this (clang's
  __arithmetic_fence): an identity the DAG combiner cannot look through, so the fadd
  finds no fmul to fuse. LLVM does not vectorize it: a loop holding a fence runs scalar,
  so the fenced product stays its own small stage (cpu_schedule.py never inlines it into
  its consumers, which keep vectorizing). `llvm.canonicalize` would vectorize, but LLVM
  22's x86 back end crashes (SIGSEGV in instruction selection) on canonicalize feeding
  a clamp and a float-to-int conversion -- exactly the quantize pattern -- so it is out.
- CUDA: `__fmul_rn(a, b)` / `__dmul_rn`, which nvcc never contracts.

tests/test_targets_int.py checks the compiled elementwise kernels hold no FMA and match
the interpreter bit for bit. Multiplies inside reductions (conv, matmul: their FMA inner
loops) are other ops and keep their FMAs. The pass runs first in the strategy's Relax
pipeline, so the Relax module `lower_for` shows still has plain `R.multiply`.
"""
from __future__ import annotations

import tvm
from tvm import relax, te
from tvm import tirx

_FLOATS = ("float32", "float64")
FENCE = "llvm.arithmetic.fence"


def _fence_fn(target_kind: str):
    """(dtype, a, b) -> the fenced product a * b, for a target kind (None: no fence)."""
    if target_kind == "llvm":
        return lambda dt, a, b: tirx.call_llvm_pure_intrin(dt, FENCE, a * b)
    if target_kind == "cuda":
        return lambda dt, a, b: tirx.call_pure_extern(dt, "__fmul_rn" if dt == "float32" else "__dmul_rn", a, b)
    return None


def _multiply_te(mul_scalar):
    """A * B with numpy broadcasting (static shapes), each product `mul_scalar(a, b)`."""

    def compute(A, B):
        out_shape = _broadcast_shape(A.shape, B.shape)

        def index(t, idx):
            rank = len(t.shape)
            sub = idx[len(idx) - rank:]
            return t(*[0 if int(d) == 1 and int(o) != 1 else i
                       for i, d, o in zip(sub, t.shape, out_shape[len(out_shape) - rank:])])

        dt = str(A.dtype)
        return te.compute(out_shape, lambda *i: mul_scalar(dt, index(A, i), index(B, i)), name="T_multiply")

    return compute


def _broadcast_shape(a, b):
    a, b = [int(d) for d in a], [int(d) for d in b]
    n = max(len(a), len(b))
    a, b = [1] * (n - len(a)) + a, [1] * (n - len(b)) + b
    return [x if y == 1 else y for x, y in zip(a, b)]


# Consumers through which LLVM can see an fmul and fuse it into an FMA (fadd/fsub, a
# float reduction's accumulate), and ops that only move data (the fmul is forwarded
# through them once fused): a multiply is fenced only when its value can reach one of
# the former, so other kernels carry no extra instruction.
_CONTRACTING = {"relax.add", "relax.subtract", "relax.negative", "relax.sum", "relax.mean",
                "relax.cumsum"}
_PASS_THROUGH = {"relax.reshape", "relax.permute_dims", "relax.broadcast_to", "relax.expand_dims",
                 "relax.squeeze", "relax.strided_slice", "relax.take", "relax.concat", "relax.split",
                 "relax.tile", "relax.flip", "relax.layout_transform", "relax.repeat",
                 "relax.flatten"}


def _consumers(func: relax.Function):
    """(var -> [(consumer op name, its bound var)], var -> its multiply call)."""
    uses, values = {}, {}
    mul = tvm.ir.Op.get("relax.multiply")

    def args_of(e):
        if isinstance(e, relax.Var):
            yield e
        elif isinstance(e, relax.Tuple):
            for f in e.fields:
                yield from args_of(f)

    def visit_seq(seq):
        for block in seq.blocks:
            for b in block.bindings:
                v = b.value
                if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op):
                    if v.op.same_as(mul):
                        values[b.var] = v
                    for a in v.args:
                        for x in args_of(a):
                            uses.setdefault(x, []).append((v.op.name, b.var))
                elif isinstance(v, relax.TupleGetItem):
                    for x in args_of(v.tuple_value):
                        uses.setdefault(x, []).append(("relax.TupleGetItem", b.var))
                elif isinstance(v, (relax.Var, relax.Tuple)):
                    for x in args_of(v):
                        uses.setdefault(x, []).append(("relax.Tuple", b.var))

    if isinstance(func.body, relax.SeqExpr):
        visit_seq(func.body)
    return uses, values


def _needs_fence(var, uses, seen=None) -> bool:
    seen = set() if seen is None else seen
    if var in seen:
        return False
    seen.add(var)
    for op, out in uses.get(var, ()):
        if op in _CONTRACTING:
            return True
        if (op in _PASS_THROUGH or op in ("relax.TupleGetItem", "relax.Tuple")) and _needs_fence(out, uses, seen):
            return True
    return False


@relax.expr_functor.mutator
class _FenceMultiplies(relax.PyExprMutator):
    def __init__(self, mod, mul_scalar):
        super().__init__(mod)
        self._compute = _multiply_te(mul_scalar)
        self._op = tvm.ir.Op.get("relax.multiply")
        self.fence_calls = set()  # the multiply calls (binding values) to fence

    def visit_call_(self, call):
        fence = call in self.fence_calls and self._fenceable(call)
        call = super().visit_call_(call)
        if not fence:
            return call
        return self.builder_.call_te(self._compute, *call.args, primfunc_name_hint="multiply")

    @staticmethod
    def _fenceable(call) -> bool:
        ty = call.ty
        if not isinstance(ty, relax.TensorType) or str(ty.dtype) not in _FLOATS or ty.shape is None:
            return False
        return all(isinstance(x.ty, relax.TensorType) and x.ty.shape is not None
                   and str(x.ty.dtype) == str(ty.dtype) for x in call.args)


def ExactFloatMultiply(target) -> tvm.transform.Pass:  # noqa: N802 - a TVM pass
    """The pass for `target` (identity for targets with no fence)."""
    kind = target.kind.name if target is not None else ""
    mul_scalar = _fence_fn(kind)

    @tvm.transform.module_pass(opt_level=0, name="qcc.ExactFloatMultiply")
    def transform(mod, ctx):
        if mul_scalar is None:
            return mod
        m = _FenceMultiplies(mod, mul_scalar)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                uses, values = _consumers(func)
                m.fence_calls = {values[v] for v in uses if v in values and _needs_fence(v, uses)}
                if m.fence_calls:
                    m.builder_.update_func(gv, m.visit_expr(func))
        return m.builder_.get()

    return transform
