"""qcc.batches.in_order_on_a_thread: the calls run in the order put, on another thread, at
most `depth` waiting, and a failure reaches the caller."""
from __future__ import annotations

import threading
import time

import pytest

from qcc import batches
from qcc.batches import in_order_on_a_thread


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(batches, "workers", lambda: 2)


def test_calls_run_in_order_on_another_thread(two_cores):
    seen, threads = [], set()

    def work(i, j):
        time.sleep(0.001 * (i % 3))  # uneven work: order must not depend on it
        seen.append((i, j))
        threads.add(threading.get_ident())

    with in_order_on_a_thread(work, depth=2) as put:
        for i in range(20):
            put(i, -i)
    assert seen == [(i, -i) for i in range(20)]  # all done when the block ends, in order
    assert threads and threading.get_ident() not in threads


def test_put_blocks_beyond_depth(two_cores):
    release = threading.Event()
    waiting = []

    def work(i):
        release.wait()

    with in_order_on_a_thread(work, depth=2) as put:
        t = threading.Thread(target=lambda: [put(i) or waiting.append(i) for i in range(5)])
        t.start()
        deadline = time.monotonic() + 10
        while len(waiting) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        # one call running, two waiting in the queue: the fourth put cannot return yet
        assert len(waiting) == 3, waiting
        release.set()
        t.join()
    assert waiting == list(range(5))


def test_a_failure_reaches_the_caller(two_cores):
    done = []

    def work(i):
        if i == 3:
            raise ValueError("bad item 3")
        done.append(i)

    with pytest.raises(ValueError, match="bad item 3"):
        with in_order_on_a_thread(work, depth=1) as put:
            for i in range(50):
                put(i)
    assert done == [0, 1, 2]  # nothing after the failure ran


def test_one_core_calls_inline(monkeypatch):
    monkeypatch.setattr(batches, "workers", lambda: 1)
    seen = []
    with in_order_on_a_thread(lambda i: seen.append((i, threading.get_ident()))) as put:
        put(1)
        assert seen == [(1, threading.get_ident())]


def test_imap_batches_reads_an_iterator_only_as_items_start(monkeypatch):
    """At most two items per thread are started and not yet handed on: the rest of the
    iterator is not read (round-weights draws each batch's rows as it is read)."""
    from qcc import batches

    monkeypatch.setattr(batches, "workers", lambda: 2)
    read = []

    def items():
        for i in range(20):
            read.append(i)
            yield i

    seen = []
    for r in batches.imap_batches(lambda i: i * i, items(), 20):
        seen.append(r)
        assert len(read) <= len(seen) + 4  # the ones handed on, and at most 2 x 2 ahead
    assert seen == [i * i for i in range(20)] and read == list(range(20))


def test_milestones_are_about_parts_lines_ending_at_the_total():
    from qcc.batches import milestone

    assert [d for d in range(1, 17) if milestone(d, 16, 10)] == list(range(1, 17))  # 16 // 10 = 1
    assert [d for d in range(1, 65) if milestone(d, 64, 4)] == [16, 32, 48, 64]
    assert [d for d in range(1, 38) if milestone(d, 37, 4)] == [9, 18, 27, 36, 37]
    assert [d for d in range(1, 4) if milestone(d, 3, 10)] == [1, 2, 3]
