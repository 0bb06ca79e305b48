"""The arithmetic of choosing quantization parameters, shared by passes and the frontend."""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .ir.types import QuantParams, int_range

WEIGHT_QMAX = 127  # symmetric int8 weights use [-127, 127]: no lone -128 to skew a channel
# symmetric weights by bit width: [-qmax, qmax], the most negative code unused
# (int4: [-7, 7]; int16: [-32767, 32767]) so a channel's range is symmetric about 0
WEIGHT_QMAXES = {4: 7, 8: WEIGHT_QMAX, 16: 32767}
WEIGHT_DTYPES = {4: "i4", 8: "i8", 16: "i16"}


def weight_qmax(bits: int) -> int:
    try:
        return WEIGHT_QMAXES[bits]
    except KeyError:
        raise ValueError(f"no {bits}-bit weights (have {', '.join(map(str, WEIGHT_QMAXES))})") from None


def params_for_range(lo: float, hi: float, dtype: str = "u8", symmetric: bool = False) -> QuantParams:
    """Scale and zero point that map [lo, hi] (which must contain 0) onto `dtype`."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qmin, qmax = int_range(dtype)
    bits = {"u8": 8, "i8": 8, "i16": 16, "u4": 4, "i4": 4}[dtype]
    signed = dtype.startswith("i")
    if symmetric:
        if not signed:
            raise ValueError("symmetric quantization needs a signed dtype")
        m = max(abs(lo), abs(hi)) or 1e-8
        return QuantParams(bits, True, m / qmax, 0, range=(lo, hi))
    span = (hi - lo) or 1e-8
    scale = span / (qmax - qmin)
    zp = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return QuantParams(bits, signed, scale, zp, range=(lo, hi))


def quantize_weights(w: np.ndarray, axis: int, bits: int = 8) -> Tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel weights: (integer weights, per-channel scales).

    The integers are int8 for 4- and 8-bit weights (i4 is stored one per byte in the
    IR), int16 for 16-bit ones."""
    qmax = weight_qmax(bits)
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w.astype(np.float64)), axis=red) if w.size else np.zeros(w.shape[axis])
    scale = np.where(amax > 0, amax / qmax, 1.0)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -qmax, qmax).astype(np.int16 if bits == 16 else np.int8)
    return q, scale


def pack_int4(q: np.ndarray) -> np.ndarray:
    """4-bit integers (one per byte, i4 or u4) packed two per byte, in C order: element
    2j in the low nibble of byte j, element 2j+1 in the high one; an odd count leaves
    the last high nibble 0. The artifact stores i4/u4 constants this way."""
    flat = np.asarray(q).reshape(-1).astype(np.int16) & 0xF
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, flat.dtype)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, shape, signed: bool = True) -> np.ndarray:
    """The inverse of pack_int4: int8 (signed, sign-extended) or uint8 values of `shape`."""
    n = int(np.prod(shape, dtype=np.int64))
    p = np.asarray(packed, np.uint8).astype(np.int16)
    nib = np.stack([p & 0xF, p >> 4], axis=-1).reshape(-1)[:n]
    if signed:
        return (nib - ((nib & 8) << 1)).astype(np.int8).reshape(shape)
    return nib.astype(np.uint8).reshape(shape)


def quantize_bias(b: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int32 bias at the accumulator's scale (clamped: a huge bias on a tiny scale saturates)."""
    q = np.rint(b.astype(np.float64) / scale)
    return np.clip(q, -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
