"""Helpers shared by the op declarations: dtype handling and small shape rules.

Kernels are the definition of the ops, so they must be exact and must not leak
numpy's type promotion into the IR: a float32 op yields float32, an int8 add
yields int8. The rule everywhere is "compute wide, cast back to the declared
type", and these helpers say what "wide" means for each dtype.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from qcc.ir.types import TensorType


def compute_dtype(dt) -> np.dtype:
    """The dtype to compute a float result in: f16/bf16 widen to f32, f64 stays, ints go f64."""
    dt = np.dtype(dt)
    if dt == np.float64 or dt.kind in "iub":
        return np.dtype(np.float64)
    return np.dtype(np.float32)  # f32, f16, bf16 (ml_dtypes' bfloat16 is kind 'V')


def as_compute(x: np.ndarray) -> np.ndarray:
    """`x` converted to its float compute dtype (no copy when it already is one)."""
    return np.asarray(x).astype(compute_dtype(x.dtype), copy=False)


def cast_like(y: np.ndarray, dt) -> np.ndarray:
    """Cast a computed result back to the declared dtype; integers are rounded half to even."""
    dt = np.dtype(dt)
    y = np.asarray(y)
    if y.dtype == dt:
        return y
    if dt.kind in "iu" and y.dtype.kind == "f":
        info = np.iinfo(dt)
        y = np.clip(np.rint(y), info.min, info.max)
    return y.astype(dt)


def same_dtype(op: str, types: Sequence[Optional[TensorType]]) -> str:
    """The common dtype of the given (non-absent) operands; a mismatch is an IR error."""
    dts = {t.dtype for t in types if t is not None}
    if len(dts) != 1:
        raise ValueError(f"{op}: operand dtypes differ ({', '.join(sorted(dts))})")
    return dts.pop()


def check_rank(op: str, t: TensorType, lo: int, hi: Optional[int] = None) -> None:
    hi = lo if hi is None else hi
    if not lo <= t.rank <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}"
        raise ValueError(f"{op}: expected rank {want}, got {t}")


def check_axes(op: str, axes: Sequence[int], rank: int) -> None:
    for a in axes:
        if not 0 <= a < rank:
            raise ValueError(f"{op}: axis {a} out of range for rank {rank}")
    if len(set(axes)) != len(axes):
        raise ValueError(f"{op}: repeated axis in {list(axes)}")


def spatial(op: str, name: str, values: Sequence[int], r: int, factor: int = 1) -> None:
    """Check a per-spatial-axis attribute has r * factor entries."""
    if len(values) != r * factor:
        raise ValueError(f"{op}: '{name}' needs {r * factor} entries for {r} spatial axes, "
                         f"got {list(values)}")


def pad_spatial(x: np.ndarray, begin, end, value=0) -> np.ndarray:
    """Pad the axes after N and C by `begin`/`end` (no copy when nothing to pad)."""
    if not any(begin) and not any(end):
        return x
    width = [(0, 0), (0, 0)] + [(int(b), int(e)) for b, e in zip(begin, end)]
    return np.pad(x, width, mode="constant", constant_values=value)


def windows(xp: np.ndarray, kernel, strides, dilations) -> np.ndarray:
    """A (N, C, *out, *kernel) strided view of the sliding windows over an NC... array.

    The view costs nothing; a conv reshapes it into im2col columns (one copy), a
    pool reduces over the trailing axes. `out` is floor((len - extent) / s) + 1.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    r = len(kernel)
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    v = sliding_window_view(xp, extent, axis=tuple(range(2, 2 + r)))
    sel = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) \
        + tuple(slice(None, None, d) for d in dilations)
    return v[sel]
