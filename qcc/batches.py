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

import collections
import itertools
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, TypeVar

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


def imap_batches(fn: Callable[[T], R], items: Iterable[T], count: Optional[int] = None,
                 ahead: Optional[int] = None) -> Iterator[R]:
    """fn(item) for each item, the items on parallel threads; results yielded in order.
    `items` may be an iterator (then `count` says how many, or at least whether one
    thread is enough): it is read in order, as the items start.

    Each result is handed on as soon as it and those before it are done, and an item
    starts only when fewer than `ahead` (default: two per thread) are started and not yet
    handed on: a caller that folds the results into a running total holds only those few,
    however many items there are (Executor.map would start them all, and keep every early
    result). Items of very uneven cost want a larger `ahead`: a slow one at the head
    otherwise leaves the other threads idle once they have run the few behind it.
    `fn` must not share mutable state between items."""
    n = min(len(items) if count is None else count, workers())
    with single_threaded_blas():
        if n <= 1:
            for it in items:
                yield fn(it)
            return
        with ThreadPoolExecutor(max_workers=n) as pool:
            todo = iter(items)
            started = collections.deque(pool.submit(fn, it) for it in itertools.islice(todo, ahead or 2 * n))
            try:
                while started:
                    result = started.popleft().result()
                    for it in itertools.islice(todo, 1):
                        started.append(pool.submit(fn, it))
                    yield result
            finally:  # an error, or the caller stopped early: start nothing more
                for f in started:
                    f.cancel()


def milestone(done: int, total: int, parts: int) -> bool:
    """Whether `done` of `total` items is where a progress line goes: about `parts` lines
    in all, the last one at `total`."""
    return done % max(1, total // parts) == 0 or done == total


def map_batches(fn: Callable[[T], R], items: Sequence[T]) -> List[R]:
    """[fn(item) for item in items], the items on parallel threads; results in order.

    `fn` must not share mutable state between items."""
    return list(imap_batches(fn, items, ahead=len(items)))  # every result is kept anyway


_DONE = object()


@contextmanager
def in_order_on_a_thread(fn: Callable[..., None], depth: int = 4) -> Iterator[Callable[..., None]]:
    """A `put(*args)` that runs fn(*args) on one other thread, in the order put, while the
    caller goes on (at most `depth` calls waiting: put blocks beyond that, which bounds the
    arrays held). One consumer keeps fn's side effects in order, so the result is the one
    a plain loop gives, bit for bit. The block ends when every call is done; fn's first
    exception is raised from put or at the end. With one core, put calls fn itself."""
    if workers() <= 1:
        yield fn
        return
    q: "queue.Queue" = queue.Queue(maxsize=depth)
    errors: List[BaseException] = []

    def work() -> None:
        while True:
            args = q.get()
            if args is _DONE:
                return
            if not errors:  # after a failure: drain, so put never blocks for ever
                try:
                    fn(*args)
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    errors.append(e)

    def put(*args) -> None:
        if errors:
            raise errors[0]
        q.put(args)

    t = threading.Thread(target=work, name="qcc-in-order", daemon=True)
    t.start()
    try:
        yield put
    finally:
        q.put(_DONE)
        t.join()
    if errors:
        raise errors[0]
