"""The one-shot helpers: concur.map, concur.imap, concur.run."""

from __future__ import annotations

import itertools
import operator
import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import concur

BACKENDS = ["process", "thread", "inline"]


def inc(x):
    return x + 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_map_matches_builtin_map(backend):
    assert concur.map(inc, range(20), backend=backend, workers=2) == list(map(inc, range(20)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_imap_streams_and_closes(backend):
    results = concur.imap(inc, itertools.count(), backend=backend, workers=2)
    assert list(itertools.islice(results, 5)) == [1, 2, 3, 4, 5]
    results.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_returns_the_result(backend):
    pid = concur.run(os.getpid, backend=backend)
    assert (pid == os.getpid()) == (backend != "process")


def test_run_passes_keywords_and_raises_remote_errors():
    assert concur.run(int, "ff", base=16) == 255
    with pytest.raises(ValueError, match="invalid literal"):
        concur.run(int, "zz")


def test_run_timeout_kills_the_process():
    import time

    with pytest.raises(concur.TaskTimeout) as info:
        concur.run(time.sleep, 30, timeout=0.3)
    assert isinstance(info.value, TimeoutError)


def test_unknown_backend_says_what_is_allowed():
    with pytest.raises(ValueError, match="'auto', 'inline', 'thread', 'process', 'dask'"):
        concur.map(inc, [1], backend="gpu")


def test_bad_worker_count():
    with pytest.raises(ValueError, match="workers"):
        concur.map(inc, [1], workers=0)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=-(10**6), max_value=10**6), max_size=200))
def test_thread_map_equals_builtin_map_on_random_input(items):
    assert concur.map(inc, items, backend="thread", workers=3) == [x + 1 for x in items]


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(), max_size=300), st.sampled_from([1, 3, "auto"]))
def test_pool_imap_equals_builtin_map_on_random_input(items, chunksize):
    with concur.ThreadPool(2) as pool:
        assert list(pool.imap(inc, items, chunksize=chunksize)) == [x + 1 for x in items]


def test_the_backend_names_agree_everywhere():
    import typing

    from concur import _backends, api, auto

    assert typing.get_args(api.Backend) == _backends.BACKENDS
    assert set(auto.BACKENDS) < set(_backends.BACKENDS)


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


@pytest.mark.parametrize("how", ["concur.map", "pool.imap", "pool.map"])
def test_an_unpicklable_item_is_named_by_its_place_in_the_input(how):
    items = [*range(57), Unpicklable(), *range(58, 100)]
    if how == "concur.map":
        with pytest.raises(concur.SerializationError) as info:
            concur.map(inc, items, backend="process", workers=2)
    else:  # chunks of 10: the item is the 8th of the 6th chunk
        with concur.ProcessPool(2) as pool:
            results = getattr(pool, how.split(".")[1])(inc, items, chunksize=10)
            with pytest.raises(concur.SerializationError) as info:
                list(results)
    assert info.value.index == 57
    assert "item 57 " in str(info.value) and "argument" not in str(info.value)
    assert "refuses to be pickled" in str(info.value)


def test_an_unpicklable_argument_of_a_multi_argument_item_is_named_too():
    pairs = ([1, 2, 3], [4, threading.Lock(), 6])
    with pytest.raises(concur.SerializationError) as info:
        concur.map(operator.add, *pairs, backend="process", workers=2)
    assert info.value.index == 1
    assert "argument 1 of item 1 " in str(info.value)
