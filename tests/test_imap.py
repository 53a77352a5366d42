"""imap: lazy, bounded, ordered or not, errors in place."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time

import pytest

import concur


@pytest.fixture(params=["thread", "process"])
def pool(request):
    executor = concur.ThreadPool(2) if request.param == "thread" else concur.ProcessPool(2)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


def double(x):
    return 2 * x


class CountingSource:
    """An endless iterator that counts how many items were taken from it."""

    def __init__(self):
        self.taken = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.taken += 1
        return self.taken - 1


def test_imap_streams_an_endless_iterator_with_bounded_reads(pool):
    source = CountingSource()
    results = pool.imap(double, source, chunksize=4, max_inflight=3)
    assert source.taken == 0  # nothing is read before the first result is asked for
    first = [next(results) for _ in range(10)]
    assert first == [2 * i for i in range(10)]
    # at most max_inflight chunks of 4 beyond what was consumed
    assert source.taken <= 10 + 3 * 4 + 4
    results.close()


def test_imap_auto_chunks_an_endless_iterator(pool):
    results = pool.imap(double, itertools.count())
    assert list(itertools.islice(results, 2000)) == [2 * i for i in range(2000)]
    results.close()


def test_auto_chunk_size_grows_for_tiny_items(pool):
    results = pool.imap(double, range(20000))
    assert sum(1 for _ in results) == 20000
    assert results.placement.sizer.next_size(None) > 1


def sleepy(x):
    time.sleep(0.3 if x == 0 else 0.01)
    return x


def test_unordered_yields_results_as_they_finish(pool):
    got = list(pool.imap(sleepy, range(4), ordered=False, chunksize=1))
    assert sorted(got) == [0, 1, 2, 3]
    assert got[-1] == 0


def test_ordered_keeps_input_order(pool):
    assert list(pool.imap(sleepy, range(4), chunksize=1)) == [0, 1, 2, 3]


def fail_on_three(x):
    if x == 3:
        raise ValueError("three")
    return x


def test_imap_raises_at_the_failed_position(pool):
    got = []
    with pytest.raises(ValueError, match="three"):
        for value in pool.imap(fail_on_three, range(10), chunksize=2):
            got.append(value)
    assert got == [0, 1, 2]


def test_return_exceptions_yields_errors_in_place(pool):
    got = list(pool.imap(fail_on_three, range(6), return_exceptions=True, chunksize=2))
    assert got[:3] == [0, 1, 2]
    assert got[4:] == [4, 5]
    assert isinstance(got[3], ValueError)


def test_several_iterables_are_zipped(pool):
    assert list(pool.imap(pow, [2, 3, 4], [2, 2, 2])) == [4, 9, 16]


def test_bad_max_inflight_is_refused(pool):
    with pytest.raises(ValueError, match="max_inflight"):
        pool.imap(double, [1], max_inflight=0)


def test_input_that_is_not_iterable_fails_cleanly():
    script = (
        "import gc, concur\n"
        "with concur.ThreadPool(1) as pool:\n"
        "    try:\n"
        "        pool.imap(abs, 5)\n"
        "    except TypeError as exc:\n"
        "        print(exc)\n"
        "    gc.collect()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip() == "'int' object is not iterable"
    assert proc.stderr == ""  # no "Exception ignored in ... __del__"
