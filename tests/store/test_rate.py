"""rate.lua on a real Redis: GCRA turns, bursts, lossy callers, runtime rates."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from celery_durable.config import DurableSettings
from celery_durable.rates import RateRef, RateSpec, reserve
from celery_durable.store import RunStore, now_ms
from tests.conftest import wipe_store


@pytest.fixture
def store(store_url: Callable[[int], str]) -> Iterator[RunStore]:
    st = RunStore(DurableSettings(redis_url=store_url(8), key_prefix="q:"))
    wipe_store(st.client, "q:")
    yield st
    wipe_store(st.client, "q:")
    st.client.close()


def max_in_window(starts: list[int], window_ms: int) -> int:
    starts = sorted(starts)
    return max(sum(1 for s in starts[i:] if s < first + window_ms)
               for i, first in enumerate(starts))


def test_turns_never_exceed_the_rate_plus_the_burst(store: RunStore) -> None:
    ref = RateRef("task:t", "_", RateSpec(10, 1000, burst=3))
    before = now_ms()
    starts = [reserve(store, ref, "wait") for _ in range(50)]  # 50 callers at once
    assert all(s is not None for s in starts)
    turns = [int(s) for s in starts if s is not None]
    assert turns == sorted(turns)  # first come, first served
    assert sum(1 for s in turns if s <= before + 50) == 3  # the burst starts at once
    assert max_in_window(turns, 1000) <= 10 + 3
    # The rest are spaced by the emission interval: 50 turns span about 4.7 s.
    assert 4_600 <= turns[-1] - turns[0] <= 4_800


def test_lossy_callers_get_a_start_now_or_nothing(store: RunStore) -> None:
    ref = RateRef("task:t", "tenant-1", RateSpec(2, 60_000, burst=2))
    results = [reserve(store, ref, "drop") for _ in range(5)]
    assert [r is not None for r in results] == [True, True, False, False, False]
    # Another key has its own turns.
    assert reserve(store, RateRef("task:t", "tenant-2", ref.spec), "drop") is not None


def test_a_runtime_rate_replaces_the_coded_one(store: RunStore) -> None:
    ref = RateRef("task:t", "_", RateSpec(1, 60_000))
    config = store.keys.rate("task:t", "_")[0]
    store.set_rate_config(config, 100, 1000, 1)
    starts = [reserve(store, ref, "wait") for _ in range(5)]
    assert max(s for s in starts if s is not None) - now_ms() < 100  # 10 ms apart, not 60 s
    store.set_rate_config(config, None)
    assert not store.client.exists(config)


def test_the_state_expires_once_the_limit_is_idle(store: RunStore) -> None:
    ref = RateRef("task:t", "_", RateSpec(10, 1000))
    reserve(store, ref, "wait")
    state = store.keys.rate("task:t", "_")[1]
    assert 0 < store.client.pttl(state) <= 1100
