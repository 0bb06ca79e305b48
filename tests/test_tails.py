"""qcc.tails.percentiles gives np.percentile's numbers, bit for bit, on the fast path and off it."""
from __future__ import annotations

import numpy as np
import pytest

from qcc import tails
from qcc.tails import percentiles

N = 200_000  # over tails.MIN_VALUES: the fast path


def _arrays():
    rng = np.random.default_rng(3)
    yield "normal", rng.standard_normal(N).astype(np.float32)
    yield "ties", np.round(rng.standard_normal(N) * 3).astype(np.float32)
    yield "relu", np.maximum(rng.standard_normal(N), 0).astype(np.float32)
    yield "heavy tails", (rng.standard_normal(N) * np.exp(2 * rng.standard_normal(N))).astype(np.float32)
    yield "sorted", np.sort(rng.standard_normal(N)).astype(np.float32)
    yield "float64", rng.standard_normal(N + 7)
    yield "constant", np.full(N, 1.5, np.float32)
    yield "sample fooled", _fooling()


def _fooling(n=2_000_000):
    """The strided sample holds every large value: its thresholds let too few through."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal(n).astype(np.float32)
    picked = x[::n // tails._SAMPLE]
    picked[:] = 100.0 + rng.random(picked.size).astype(np.float32)
    return x


@pytest.mark.parametrize("qs", [[0.01, 99.99], [99.9], [0.0, 100.0], [0.001, 99.0, 99.999]])
@pytest.mark.parametrize("name,x", list(_arrays()), ids=lambda v: v if isinstance(v, str) else "")
def test_same_numbers_as_numpy(name, x, qs):
    want, got = np.percentile(x, qs), percentiles(x, qs)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want), (name, qs, got, want)


def test_the_fast_path_is_taken():
    """Not a fallback in disguise: on an ordinary activation the order statistics come from
    the small subsets, and the answer still matches."""
    x = np.random.default_rng(0).standard_normal(N).astype(np.float32)
    q = np.array([0.0001, 0.9999])
    assert tails._order_statistics(x, q) is not None
    assert np.array_equal(percentiles(x, [0.01, 99.99]), np.percentile(x, [0.01, 99.99]))


def test_falls_back_where_it_should():
    assert tails._order_statistics(_fooling(), np.array([0.9999])) is None
    x = np.random.default_rng(1).standard_normal(N).astype(np.float32)
    assert tails._order_statistics(x, np.array([0.5])) is None  # a median: no small subset
    x[7] = np.nan
    assert tails._order_statistics(x, np.array([0.9999])) is None
    assert np.isnan(percentiles(x, [0.01, 99.99])).all()
    small = x[:100]
    assert np.array_equal(percentiles(small, [1.0, 99.0]), np.percentile(small, [1.0, 99.0]), equal_nan=True)
