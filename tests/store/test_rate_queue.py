"""rate.lua's queue of waiting runs on a real Redis: who waits, who is handed a turn next
(priority, fairness keys), hand-overs that are never confirmed, lost dispatcher timers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from celery_durable.config import DurableSettings
from celery_durable.rates import RateRef, RateSpec, Turn, queue_member, sweep_queues, take
from celery_durable.store import RunStore, now_ms
from tests.conftest import wipe_store

#: One start a second: the first caller starts at once, the next one waits a second, which
#: is beyond the lookahead of these settings (2 x 0.1 s + 0.25 s = 450 ms).
SLOW = RateRef("task:t", "_", RateSpec(1, 1000))


@pytest.fixture
def store(store_url: Callable[[int], str]) -> Iterator[RunStore]:
    st = RunStore(DurableSettings(redis_url=store_url(8), key_prefix="rq:",
                                  heartbeat_interval_s=0.1, slot_handoff_s=0.3))
    wipe_store(st.client, "rq:")
    yield st
    wipe_store(st.client, "rq:")
    st.client.close()


def info(run_id: str) -> str:
    return json.dumps({"task": "t", "args": [run_id], "kwargs": {}, "queue": "q"})


def open_up(store: RunStore, ref: RateRef) -> None:
    """A runtime rate so fast that the next dispatch hands every waiting run a turn (and
    the turns booked at the old rate forgotten)."""
    config, state = store.keys.rate(ref.base, ref.sub)
    store.set_rate_config(config, 100_000, 1000, 1)
    store.client.delete(state)


def dispatch(store: RunStore, ref: RateRef) -> tuple[list[str], int]:
    """One dispatch of ``ref``'s queue (as a due timer's dispatcher does it), confirmed:
    the runs handed a turn, best first, and the next dispatch time."""
    keys, member = store.keys.rate_queue(ref.base, ref.sub), queue_member(ref)
    store.client.zadd(store.keys.rate_timers, {member: 0})
    reply = store.rate_dispatch(keys, member)
    assert reply is not None
    handed = [str(r) for r in reply[5::3]]
    store.rate_confirm(keys, member, handed, int(reply[0]))
    return handed, int(reply[0])


def parked(store: RunStore, ref: RateRef, run_id: str, **options: Any) -> Turn:
    turn = take(store, ref, run_id, info(run_id), **options)
    assert turn.start_ms is None, f"{run_id} was not expected to get a turn"
    return turn


def test_a_run_takes_a_turn_when_nobody_waits_and_waits_otherwise(store: RunStore) -> None:
    before = now_ms()
    first = take(store, SLOW, "r0", info("r0"))
    assert first.start_ms is not None and first.start_ms - before < 50
    second = take(store, SLOW, "r1", info("r1"))
    assert second == Turn(None, 0)  # its turn is a second away: beyond the lookahead
    assert parked(store, SLOW, "r2").position == 1
    # The queue's dispatcher is due when the next turn comes within the lookahead.
    member = queue_member(SLOW)
    due = store.client.zscore(store.keys.rate_timers, member)
    assert due is not None and before + 1000 - 450 - 50 <= due <= now_ms() + 1000 - 450
    assert store.client.sismember(store.keys.rate_queues, member)
    # A run arriving while others wait queues behind them, even if a turn were free.
    open_up(store, SLOW)
    assert parked(store, SLOW, "r3").position == 2


def test_the_dispatcher_hands_turns_in_queue_order_and_spaces_them(store: RunStore) -> None:
    take(store, SLOW, "r0", info("r0"))
    for i in range(1, 6):
        parked(store, SLOW, f"r{i}")
    time.sleep(0.7)  # the turn of r1 (1 s after r0's) is now within the lookahead
    keys, member = store.keys.rate_queue(SLOW.base, SLOW.sub), queue_member(SLOW)
    store.client.zadd(store.keys.rate_timers, {member: 0})
    reply = store.rate_dispatch(keys, member)
    assert reply is not None
    assert reply[5::3] == ["r1"]  # only one turn comes within 450 ms at 1/s
    assert json.loads(reply[6])["args"] == ["r1"]
    start = int(reply[7])
    assert start >= now_ms() - 50  # r1's turn: r0's + 1 s
    # Unconfirmed so far: r1 is a hand-over, the others still wait.
    assert store.client.zcard(keys[5]) == 1 and store.client.zcard(keys[2]) == 4
    store.rate_confirm(keys, member, ["r1"], int(reply[0]))
    assert store.client.zcard(keys[5]) == 0
    assert store.client.hget(keys[3], "r1") is None
    # The next dispatch is due a lookahead before the following turn.
    due = store.client.zscore(store.keys.rate_timers, member)
    assert due is not None and abs(due - (start + 1000 - 450)) <= 5


def test_a_later_run_of_higher_priority_is_handed_a_turn_first(store: RunStore) -> None:
    take(store, SLOW, "first", info("first"))
    for i in range(20):
        parked(store, SLOW, f"low{i:02}")
    parked(store, SLOW, "urgent", rank=9)
    open_up(store, SLOW)
    handed, due = dispatch(store, SLOW)
    assert handed[0] == "urgent"
    assert handed[1:] == [f"low{i:02}" for i in range(20)]
    assert due == -1  # nothing waits any more
    assert not store.client.sismember(store.keys.rate_queues, queue_member(SLOW))


def test_tenants_take_turns_in_a_shared_rate(store: RunStore) -> None:
    take(store, SLOW, "first", info("first"))
    for i in range(200):
        parked(store, SLOW, f"a{i:03}", fairness_key="tenant-a")
    parked(store, SLOW, "b0", fairness_key="tenant-b")
    parked(store, SLOW, "b1", fairness_key="tenant-b")
    open_up(store, SLOW)
    handed, _ = dispatch(store, SLOW)
    assert len(handed) == 202
    # Tenant b's two runs do not wait behind tenant a's 200: they come within four turns.
    assert {"b0", "b1"} <= set(handed[:4])
    assert [r for r in handed if r.startswith("a")] == [f"a{i:03}" for i in range(200)]


def test_a_late_start_waits_first(store: RunStore) -> None:
    take(store, SLOW, "first", info("first"))
    for i in range(3):
        parked(store, SLOW, f"r{i}")
    assert parked(store, SLOW, "late", first=True).position == 0
    open_up(store, SLOW)
    assert dispatch(store, SLOW)[0] == ["late", "r0", "r1", "r2"]


def test_an_unconfirmed_hand_over_waits_first_again(store: RunStore) -> None:
    # A dispatcher that died after taking turns but before publishing its runs loses none.
    take(store, SLOW, "first", info("first"))
    parked(store, SLOW, "lost")
    parked(store, SLOW, "next")
    open_up(store, SLOW)
    keys, member = store.keys.rate_queue(SLOW.base, SLOW.sub), queue_member(SLOW)
    store.client.zadd(store.keys.rate_timers, {member: 0})
    reply = store.rate_dispatch(keys, member)
    assert reply is not None and reply[5::3] == ["lost", "next"]
    # ... it never confirms: once the hand-overs expire, they wait first in the queue again
    # and the next dispatch hands them turns once more.
    assert store.client.zcard(keys[5]) == 2
    expiry = store.client.zrange(keys[5], 0, 0, withscores=True)[0][1]
    assert expiry <= now_ms() + 300
    time.sleep(0.35)
    store.client.zadd(store.keys.rate_timers, {member: 0})
    reply = store.rate_dispatch(keys, member)
    assert reply is not None and int(reply[4]) == -1  # the expired ones were taken back
    assert sorted(str(r) for r in reply[5::3]) == ["lost", "next"]
    assert store.client.hget(keys[3], "lost") is not None  # kept until confirmed


def test_the_sweep_gives_a_queue_back_its_lost_timer(store: RunStore) -> None:
    take(store, SLOW, "first", info("first"))
    parked(store, SLOW, "r1")
    member = queue_member(SLOW)
    store.client.zrem(store.keys.rate_timers, member)  # its dispatcher died mid-way
    assert sweep_queues(store) == 1
    assert store.due_rate_queues() == [member]
    assert sweep_queues(store) == 0  # it has one now


def test_a_paused_rate_keeps_runs_waiting(store: RunStore) -> None:
    store.set_rate_config(store.keys.rate(SLOW.base, SLOW.sub)[0], 0, 1000, 1)
    assert parked(store, SLOW, "r0").position == 0
    handed, due = dispatch(store, SLOW)
    assert handed == [] and due >= now_ms() + 900  # looks again a period later
    open_up(store, SLOW)
    assert dispatch(store, SLOW)[0] == ["r0"]


def test_waiting_runs_are_counted_per_priority(store: RunStore) -> None:
    take(store, SLOW, "first", info("first"))
    for i in range(3):
        parked(store, SLOW, f"low{i}")
    parked(store, SLOW, "high", rank=5)
    keys = store.keys.rate_queue(SLOW.base, SLOW.sub)
    assert store.rate_waiting(keys) == (4, {0: 3, 5: 1})
    open_up(store, SLOW)
    dispatch(store, SLOW)
    assert store.rate_waiting(keys) == (0, {})
