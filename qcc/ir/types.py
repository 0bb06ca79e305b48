"""Tensor types and quantization parameters: the facts a value carries.

Both are frozen: a pass that changes a value's type or its quantization builds a
new one and assigns it, so an old reference can never be mutated behind a pass's
back, and two values with equal params compare equal (fold-requantize relies on it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np

try:  # bfloat16 has no numpy dtype of its own; ml_dtypes ships with TVM.
    import ml_dtypes

    _BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is a dependency of apache-tvm
    _BF16 = None

# IR dtype name -> numpy storage dtype. Sub-byte integers are stored one per byte
# in memory; packing two per byte is the artifact's business, not the IR's.
_NUMPY = {
    "f32": np.dtype(np.float32),
    "f16": np.dtype(np.float16),
    "f64": np.dtype(np.float64),
    "i64": np.dtype(np.int64),
    "i32": np.dtype(np.int32),
    "i16": np.dtype(np.int16),
    "i8": np.dtype(np.int8),
    "u8": np.dtype(np.uint8),
    "i4": np.dtype(np.int8),
    "u4": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}
if _BF16 is not None:
    _NUMPY["bf16"] = _BF16

DTYPES = tuple(_NUMPY)
FLOAT_DTYPES = frozenset({"f32", "f16", "bf16", "f64"})
INT_DTYPES = frozenset({"i64", "i32", "i16", "i8", "u8", "i4", "u4"})

# (bits, signed) of each integer dtype
INT_INFO = {
    "i64": (64, True), "i32": (32, True), "i16": (16, True), "i8": (8, True),
    "u8": (8, False), "i4": (4, True), "u4": (4, False),
}


def int_range(dtype: str) -> Tuple[int, int]:
    """The representable range of an integer dtype (i4: -8..7)."""
    bits, signed = INT_INFO[dtype]
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def int_dtype(bits: int, signed: bool) -> str:
    """The IR dtype for a bit width and signedness (8, False -> 'u8')."""
    name = f"{'i' if signed else 'u'}{bits}"
    if name not in INT_INFO:
        raise ValueError(f"no integer dtype with {bits} bits, signed={signed}")
    return name


def to_numpy_dtype(dtype: str) -> np.dtype:
    try:
        return _NUMPY[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype '{dtype}' (known: {', '.join(DTYPES)})") from None


_FROM_NUMPY = {
    np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", np.dtype(np.float64): "f64",
    np.dtype(np.int64): "i64", np.dtype(np.int32): "i32", np.dtype(np.int16): "i16",
    np.dtype(np.int8): "i8", np.dtype(np.uint8): "u8", np.dtype(np.bool_): "bool",
}
if _BF16 is not None:
    _FROM_NUMPY[_BF16] = "bf16"


def from_numpy_dtype(dt) -> str:
    dt = np.dtype(dt)
    try:
        return _FROM_NUMPY[dt]
    except KeyError:
        raise ValueError(f"numpy dtype {dt} has no IR dtype") from None


@dataclass(frozen=True)
class TensorType:
    """A static shape and an element type. Shapes are fixed after import."""

    shape: Tuple[int, ...]
    dtype: str

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if self.dtype not in _NUMPY:
            raise ValueError(f"unknown dtype '{self.dtype}'")
        if any(d < 0 for d in self.shape):
            raise ValueError(f"negative dimension in shape {self.shape}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def np_dtype(self) -> np.dtype:
        return to_numpy_dtype(self.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of a numpy array of this type (sub-byte ints take a byte each)."""
        return self.size * self.np_dtype.itemsize

    @classmethod
    def of(cls, array: np.ndarray, dtype: Optional[str] = None) -> "TensorType":
        return cls(tuple(array.shape), dtype or from_numpy_dtype(array.dtype))

    def with_dtype(self, dtype: str) -> "TensorType":
        return TensorType(self.shape, dtype)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.shape))}]"


def _floats(x) -> Tuple[float, ...]:
    return tuple(float(v) for v in np.atleast_1d(np.asarray(x, dtype=np.float64)).ravel())


def _ints(x) -> Tuple[int, ...]:
    return tuple(int(v) for v in np.atleast_1d(np.asarray(x)).ravel())


@dataclass(frozen=True)
class QuantParams:
    """How an integer tensor maps to real numbers: real = scale * (q - zero_point).

    `scale` and `zero_point` are tuples: one entry per tensor, or one per channel
    along `axis`. `range` is the real-valued range the params were derived from
    (observed, clipped or shared); it is kept so reports and later passes can
    explain the choice.
    """

    bits: int
    signed: bool
    scale: Tuple[float, ...]
    zero_point: Tuple[int, ...] = (0,)
    axis: Optional[int] = None
    range: Optional[Tuple[float, float]] = None

    def __post_init__(self):
        object.__setattr__(self, "scale", _floats(self.scale))
        zp = _ints(self.zero_point)
        if len(zp) == 1 and len(self.scale) > 1:
            zp = zp * len(self.scale)
        object.__setattr__(self, "zero_point", zp)
        if self.range is not None:
            lo, hi = self.range
            object.__setattr__(self, "range", (float(lo), float(hi)))
        if len(self.scale) != len(self.zero_point):
            raise ValueError("scale and zero_point differ in length")
        if self.axis is None and len(self.scale) != 1:
            raise ValueError("per-tensor quant params need exactly one scale")

    @property
    def dtype(self) -> str:
        return int_dtype(self.bits, self.signed)

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def symmetric(self) -> bool:
        return all(z == 0 for z in self.zero_point)

    @property
    def qmin(self) -> int:
        return int_range(self.dtype)[0]

    @property
    def qmax(self) -> int:
        return int_range(self.dtype)[1]

    def scale_array(self, rank: int = 0) -> np.ndarray:
        """Scale as an array that broadcasts against a tensor of the given rank."""
        return self._broadcast(np.asarray(self.scale, dtype=np.float64), rank)

    def zero_point_array(self, rank: int = 0) -> np.ndarray:
        return self._broadcast(np.asarray(self.zero_point, dtype=np.int64), rank)

    def _broadcast(self, a: np.ndarray, rank: int) -> np.ndarray:
        if self.axis is None:
            return a.reshape(())
        shape = [1] * rank
        shape[self.axis] = a.size
        return a.reshape(shape)

    def replace(self, **changes) -> "QuantParams":
        from dataclasses import replace

        return replace(self, **changes)
