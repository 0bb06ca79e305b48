"""np.percentile's extreme percentiles, the same numbers, without partitioning the whole array.

`smooth` fake-quantizes each candidate scaling of an activation over its [0.01, 99.99]
percentiles: one np.percentile per candidate, and np.percentile partitions a copy of all
the values (59 ms on a 4.6M-value det activation here; 4 s of PP-OCR rec's -O2 compile).
Those percentiles only read a handful of order statistics at each end. These functions
find them among the values past a threshold taken from a strided sample (one comparison
pass and a small partition: ~6 ms), then interpolate with numpy's own index and
interpolation helpers, so the result is np.percentile's, bit for bit. Whatever the
sample, the answer is exact: when the threshold lets too few values through, or a NaN is
there, they fall back to np.percentile.
"""
from __future__ import annotations

import numpy as np

try:  # numpy's own index and interpolation steps, so the numbers cannot drift from it
    from numpy.lib._function_base_impl import _QuantileMethods, _get_gamma, _get_indexes, _lerp
except ImportError:  # pragma: no cover - numpy 1.x kept them here
    try:
        from numpy.lib.function_base import _QuantileMethods, _get_gamma, _get_indexes, _lerp
    except ImportError:  # another layout: np.percentile itself
        _QuantileMethods = None

MIN_VALUES = 1 << 16  # below this np.percentile is fast enough
_SAMPLE = 1 << 15     # values in the strided sample that sets the thresholds
_SLACK = 4.0          # the thresholds let through this many times the values needed, plus 64


def percentiles(x: np.ndarray, qs) -> np.ndarray:
    """np.percentile(x, qs) over all of x (method "linear"), for percentiles near 0 or 100."""
    x = np.asarray(x).ravel()
    q = np.true_divide(np.asarray(qs, np.float64), 100)
    fast = _order_statistics(x, q) if _QuantileMethods is not None and x.size >= MIN_VALUES \
        and x.dtype.kind == "f" else None
    if fast is None:
        return np.percentile(x, qs)
    virtual, previous, nxt, lo_vals, hi_vals = fast
    gamma = _get_gamma(virtual, previous, _QuantileMethods["linear"])
    return _lerp(lo_vals, hi_vals, gamma.reshape(virtual.shape))


def _order_statistics(x: np.ndarray, q: np.ndarray):
    """(virtual indexes, previous, next, x sorted at previous, at next), as np.percentile's
    linear method picks them, or None when the thresholds do not isolate them."""
    n = x.size
    virtual = np.asanyarray(_QuantileMethods["linear"]["get_virtual_index"](n, q))
    previous, nxt = _get_indexes(x, virtual, n)
    ranks = np.concatenate([previous, nxt]) % n  # -1 (past the end) is the largest
    if np.isnan(x.max()):  # np.percentile answers NaN: let it
        return None
    sample = np.sort(x[::max(1, n // _SAMPLE)])
    m = sample.size
    if max(_through(int(r) + 1, n, m) for r in np.minimum(ranks, n - 1 - ranks)) > m // 16:
        return None  # not an extreme percentile: the subsets would not be small
    values = {}
    low, high = ranks[ranks < n // 2], ranks[ranks >= n // 2]
    if low.size:  # every value at or under t is among the smallest, ties included
        t = sample[min(m - 1, _through(int(low.max()) + 1, n, m))]
        part = np.sort(x[x <= t])
        if part.size <= low.max():
            return None
        values.update((int(r), part[r]) for r in low)
    if high.size:  # and every value at or over t among the largest
        t = sample[max(0, m - 1 - _through(n - int(high.min()), n, m))]
        part = np.sort(x[x >= t])
        first = n - part.size  # the full array's rank of part[0]
        if high.min() < first:
            return None
        values.update((int(r), part[r - first]) for r in high)
    k = previous.size
    pick = np.array([values[int(r)] for r in ranks], x.dtype)
    return virtual, previous, nxt, pick[:k], pick[k:]


def _through(need: int, n: int, m: int) -> int:
    """Sample positions from the end that let `need` of n values through, with slack."""
    return int((need * _SLACK + 64) / n * m) + 1
