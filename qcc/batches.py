"""Run independent per-batch reference computations on every core.

The interpreter's numpy kernels are mostly single-threaded elementwise work (depthwise
taps, activations, quantize, requantize), so a measurement over several calibration
batches leaves cores idle unless the batches themselves run side by side; numpy
releases the GIL in its kernels, so threads are enough. BLAS is held to one thread
meanwhile: otherwise every batch's thread would start its own BLAS pool and the cores
would be oversubscribed (measured slower than one batch at a time). One BLAS thread
also makes every product's rounding the same on any machine, whatever its core count.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, List, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def workers() -> int:
    """Threads per-batch work may use: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS limited to one thread inside the block (threadpoolctl; a no-op without it).

    The loaded libraries are scanned each time (~3 ms): a BLAS loaded after a cached scan
    (scipy's own OpenBLAS, say) would otherwise keep its threads."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a declared dependency
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def imap_batches(fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]:
    """fn(item) for each item, the items on parallel threads; results yielded in order.

    Each result is handed on as soon as it and those before it are done, so a caller
    that folds them into a running total holds only the few still in flight.
    `fn` must not share mutable state between items."""
    n = min(len(items), workers())
    with single_threaded_blas():
        if n <= 1:
            for it in items:
                yield fn(it)
            return
        with ThreadPoolExecutor(max_workers=n) as pool:
            yield from pool.map(fn, items)


def map_batches(fn: Callable[[T], R], items: Sequence[T]) -> List[R]:
    """[fn(item) for item in items], the items on parallel threads; results in order.

    `fn` must not share mutable state between items."""
    return list(imap_batches(fn, items))
