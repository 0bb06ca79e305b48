"""The op registry: every op is declared once, with everything passes ask of it.

A declaration names the op's inputs and outputs, its attributes with their kinds
and defaults, how output types follow from input types, a numpy reference
kernel (the interpreter's semantics, and so the definition of the op), and the
quantization traits passes query instead of keeping their own lists of op names.

Ops whose name has a dialect prefix other than `qcc` (`onnx.NonMaxSuppression`)
are opaque: carried with whatever attributes they came with, types taken as
declared, run by the dialect's own evaluator.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from .types import TensorType

# --- quantization traits -----------------------------------------------------------
RANGE_PRESERVING = "range-preserving"  # output range is the input range (reshape, maxpool)
SHARED_SCALE = "shared-scale"  # all quantized inputs must share one scale (concat)
INTEGER = "integer"  # has an integer form (conv, matmul, add, ...)
ELEMENTWISE = "elementwise"  # broadcasting elementwise op
MONOTONIC = "monotonic"  # order-preserving unary op (relu, sigmoid)
RANGE_NARROWING = "range-narrowing"  # clamps its input (relu, clip)
QUANT = "quant"  # quantize/dequantize/requantize family
TRAITS = frozenset({RANGE_PRESERVING, SHARED_SCALE, INTEGER, ELEMENTWISE, MONOTONIC,
                    RANGE_NARROWING, QUANT})

_REQUIRED = object()
ATTR_KINDS = ("int", "float", "str", "bool", "ints", "floats", "strs", "tensor", "any")


@dataclass(frozen=True)
class Attr:
    kind: str
    default: Any = _REQUIRED
    choices: Optional[Tuple[Any, ...]] = None

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def check(self, value) -> Optional[str]:
        """None if `value` fits this attribute, else what is wrong with it."""
        k = self.kind
        ok = {
            "int": lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, (float, int)) and not isinstance(v, bool),
            "str": lambda v: isinstance(v, str),
            "bool": lambda v: isinstance(v, bool),
            "ints": lambda v: isinstance(v, (list, tuple))
            and all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in v),
            "floats": lambda v: isinstance(v, (list, tuple))
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v),
            "strs": lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
            "tensor": lambda v: isinstance(v, np.ndarray),
            "any": lambda v: True,
        }[k](value)
        if not ok:
            return f"expected {k}, got {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"expected one of {', '.join(map(repr, self.choices))}, got {value!r}"
        return None


InferFn = Callable[[Sequence[Optional[TensorType]], Dict[str, Any]], Sequence[TensorType]]
KernelFn = Callable[..., Any]


@dataclass(frozen=True)
class OpDef:
    name: str
    inputs: Tuple[str, ...]  # "x", "bias?" (optional), "xs*" (variadic, last only)
    outputs: Tuple[str, ...]  # "y", or "ys*" for a count given by the node
    attrs: Dict[str, Attr]
    infer: Optional[InferFn]
    kernel: Optional[KernelFn]
    traits: frozenset = frozenset()
    summary: str = ""

    @property
    def opaque(self) -> bool:
        return self.infer is None

    def has(self, trait: str) -> bool:
        return trait in self.traits

    def arity(self) -> Tuple[int, Optional[int]]:
        """(min, max) number of inputs; max None when variadic."""
        lo = sum(1 for i in self.inputs if not i.endswith(("?", "*")))
        if self.inputs and self.inputs[-1].endswith("*"):
            return lo, None
        return lo, len(self.inputs)

    def with_defaults(self, attrs: Dict[str, Any]) -> Dict[str, Any]:
        full = {k: a.default for k, a in self.attrs.items() if not a.required}
        full.update(attrs)
        return full

    def check_attrs(self, attrs: Dict[str, Any]) -> Optional[str]:
        if self.opaque:
            return None
        for k in attrs:
            if k not in self.attrs:
                return f"unknown attribute '{k}' (known: {', '.join(sorted(self.attrs)) or 'none'})"
        for k, spec in self.attrs.items():
            if k not in attrs:
                if spec.required:
                    return f"missing attribute '{k}'"
                continue
            err = spec.check(attrs[k])
            if err:
                return f"attribute '{k}': {err}"
        return None


_OPS: Dict[str, OpDef] = {}
_OPAQUE_RUNNERS: Dict[str, KernelFn] = {}


def register_op(name: str, *, inputs: Sequence[str] = ("x",), outputs: Sequence[str] = ("y",),
                attrs: Optional[Dict[str, Attr]] = None, infer: Optional[InferFn] = None,
                traits: Sequence[str] = (), summary: str = "") -> Callable[[KernelFn], KernelFn]:
    """Declare an op; decorates its numpy kernel `kernel(*inputs, **attrs)`.

    The kernel returns one array, or a tuple for several outputs. `infer` defaults
    to "same type as the first input", right for unary elementwise ops.
    """
    unknown = set(traits) - TRAITS
    if unknown:
        raise ValueError(f"op {name}: unknown traits {sorted(unknown)}")

    def deco(kernel: KernelFn) -> KernelFn:
        if name in _OPS:
            raise ValueError(f"op '{name}' is declared twice")
        _OPS[name] = OpDef(name, tuple(inputs), tuple(outputs), dict(attrs or {}),
                           infer or same_as_first, kernel, frozenset(traits),
                           summary or (kernel.__doc__ or "").strip().split("\n")[0])
        return kernel

    return deco


def register_opaque_dialect(prefix: str, runner: KernelFn) -> None:
    """Let ops named `prefix.Anything` run through `runner(node, inputs) -> outputs`."""
    _OPAQUE_RUNNERS[prefix] = runner


def opaque_runner(name: str) -> Optional[KernelFn]:
    return _OPAQUE_RUNNERS.get(name.split(".", 1)[0])


def get_op(name: str) -> Optional[OpDef]:
    """The declaration of `name`; a generic opaque one for dialect ops; None if unknown."""
    _ensure_loaded()
    d = _OPS.get(name)
    if d is None and "." in name and not name.startswith("qcc."):
        d = OpDef(name, ("xs*",), ("ys*",), {}, None, None, frozenset(), "opaque op")
    return d


def all_ops() -> Dict[str, OpDef]:
    _ensure_loaded()
    return dict(_OPS)


def _ensure_loaded() -> None:
    # Op declarations live in qcc.ops; import lazily so qcc.ir has no import cycle.
    import qcc.ops  # noqa: F401


# --- common inference helpers ---------------------------------------------------------

def same_as_first(types, attrs):
    return [types[0]]


def broadcast_shapes(*shapes) -> Tuple[int, ...]:
    return tuple(np.broadcast_shapes(*[tuple(s) for s in shapes]))
