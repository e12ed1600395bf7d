"""debounce.lua on a real Redis: one run per burst, fired once, only when due."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from celery_durable.config import DurableSettings
from celery_durable.store import RunStore
from tests.conftest import wipe_store


@pytest.fixture
def store(store_url: Callable[[int], str]) -> Iterator[RunStore]:
    st = RunStore(DurableSettings(redis_url=store_url(7), key_prefix="d:"))
    wipe_store(st.client, "d:")
    yield st
    wipe_store(st.client, "d:")
    st.client.close()


def test_a_burst_is_one_run_fired_once_when_due(store: RunStore) -> None:
    key = store.keys.debounce("t.task", "user-1")
    run, opened, due, calls = store.debounce_call(key, "r1", 200, 0, "last", '{"n": 1}')
    assert (run, opened, calls) == ("r1", True, 1)
    run2, opened2, due2, calls2 = store.debounce_call(key, "r2", 200, 0, "last", '{"n": 2}')
    assert (run2, opened2, calls2) == ("r1", False, 2) and due2 >= due
    # Too early: the burst is not due; its timer is set again, to the real due time.
    store.client.zadd(store.keys.debounce_timers, {key: 0})
    assert store.take_debounce(key) == ["r1", "wait", str(due2)]
    assert store.client.zscore(store.keys.debounce_timers, key) == due2
    store.client.zadd(store.keys.debounce_timers, {key: 0})
    time.sleep(0.25)
    assert store.take_debounce(key) == ["r1", "fire", '{"n": 2}', "2"]
    assert store.take_debounce(key) is None  # exactly one dispatcher fires it
    assert not store.client.exists(key)
    # The next call opens a new burst.
    assert store.debounce_call(key, "r3", 200, 0, "last", "{}")[:2] == ("r3", True)


def test_first_mode_and_the_longest_wait(store: RunStore) -> None:
    key = store.keys.debounce("t.task", "")
    _, _, due1, _ = store.debounce_call(key, "r1", 10_000, 50, "first", '{"n": 1}')
    _, _, due2, _ = store.debounce_call(key, "r2", 10_000, 50, "first", '{"n": 2}')
    assert due2 <= due1 + 50  # capped by the longest wait from the first call
    assert store.client.hget(key, "info") == '{"n": 1}'
