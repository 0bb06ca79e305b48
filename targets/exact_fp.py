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

A product is fenced only when some output or some integer value (a quantize's result)
depends on it and on no inexact op (a transcendental: exp, sigmoid, erf -- polynomials
here --, softmax): behind those the compiled result differs from the reference in its
last bits whatever is fenced, so the fence would only cost its scalar pass (a GELU
epilogue's dequantize). The integers count because a last-bit difference before a
quantize can change an integer, and that reaches the outputs in full: PP-OCR cls, whose
only output follows a softmax, differed by 5e-4 when only outputs counted.

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


# Ops whose compiled result differs from the reference's in the last bits whatever is
# fenced (transcendentals; exp, sigmoid, tanh, erf are polynomials, lower_math._fast): a value computed from
# one of them is inexact, and a fence that only such values depend on buys nothing.
_INEXACT = {"relax.exp", "relax.log", "relax.tanh", "relax.sigmoid", "relax.erf", "relax.sin",
            "relax.cos", "relax.tan", "relax.power", "relax.nn.softmax", "relax.nn.log_softmax",
            "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.silu"}
INEXACT_KERNEL = "qcc_inexact_"  # name prefix of TE kernels (call_tir) that are inexact


def _inexact(call: relax.Call) -> bool:
    name = call.op.name
    if name == "relax.call_tir":
        return str(call.args[0].name_hint).startswith(INEXACT_KERNEL)
    return name in _INEXACT


def _consumers(func: relax.Function):
    """(var -> [(consumer op name, its bound var)], var -> its multiply call, the vars whose
    value is inexact (computed from an _INEXACT op), the vars observed exactly: those the
    function returns and every integer value)."""
    uses, values, tainted = {}, {}, set()
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
                ty = b.var.ty
                if isinstance(ty, relax.TensorType) and str(ty.dtype).startswith(("int", "uint")):
                    integral.add(b.var)
                if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op):
                    if v.op.same_as(mul):
                        values[b.var] = v
                    ins = [x for a in v.args for x in args_of(a)]
                    for x in ins:
                        uses.setdefault(x, []).append((v.op.name, b.var))
                    if _inexact(v):
                        tainted.add(b.var)
                elif isinstance(v, relax.TupleGetItem):
                    ins = list(args_of(v.tuple_value))
                    for x in ins:
                        uses.setdefault(x, []).append(("relax.TupleGetItem", b.var))
                elif isinstance(v, (relax.Var, relax.Tuple)):
                    # a tuple only packs values: not tainted as a whole (the function's
                    # outputs are one tuple), its fields are followed one by one
                    fields[b.var] = list(args_of(v))
                    for x in fields[b.var]:
                        uses.setdefault(x, []).append(("relax.Tuple", b.var))
                    continue
                else:
                    ins = []
                if any(x in tainted for x in ins):
                    tainted.add(b.var)

    fields, returned, integral = {}, set(), set()
    if isinstance(func.body, relax.SeqExpr):
        visit_seq(func.body)
        todo = list(args_of(func.body.body))
        while todo:
            v = todo.pop()
            if v not in returned:
                returned.add(v)
                todo.extend(fields.get(v, ()))
    # an integer value (a quantize's result) is observed exactly too: one last-bit
    # difference before it can become a different integer, and that difference reaches the
    # outputs in full whatever inexact op (a softmax) comes after
    return uses, values, tainted, returned | integral


def _reaches_exact_output(var, uses, tainted, exact) -> bool:
    """Whether some value the function returns, or some integer value it computes, depends
    on `var` and on no inexact value."""
    todo, seen = [var], set()
    while todo:
        v = todo.pop()
        if v in seen or v in tainted:
            continue
        seen.add(v)
        if v in exact:
            return True
        todo.extend(out for _, out in uses.get(v, ()))
    return False


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
                uses, values, tainted, exact = _consumers(func)
                m.fence_calls = {values[v] for v in uses if v in values and _needs_fence(v, uses)
                                 and _reaches_exact_output(v, uses, tainted, exact)}
                if m.fence_calls:
                    m.builder_.update_func(gv, m.visit_expr(func))
        return m.builder_.get()

    return transform
