"""slots.lua on a real Redis: FIFO within a millisecond, priority boosts, fairness keys; slots
taken with a claim and given back with the end of an attempt."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from celery_durable.concurrency import (
    QUEUED,
    SlotRef,
    acquire,
    acquire_with_claim,
    release,
    release_keys,
    settle,
    sweep,
    woken_of,
)
from celery_durable.config import DurableSettings
from celery_durable.events import trace_events
from celery_durable.models import RunStatus
from celery_durable.store import Claim, RunStore, now_ms
from tests.conftest import wipe_store

REF = SlotRef("task:t.limited", "_", 1)


@pytest.fixture
def store(store_url: Callable[[int], str]) -> Iterator[RunStore]:
    settings = DurableSettings(redis_url=store_url(6), key_prefix="s:",
                               priority_step=10)
    st = RunStore(settings)
    wipe_store(st.client, "s:")
    yield st
    wipe_store(st.client, "s:")
    st.client.close()


def admissions(store: RunStore, holder: str, n: int) -> list[str]:
    """Release the slot ``n`` times in a row; the runs it was handed to, in order."""
    order = []
    for _ in range(n):
        woken = release(store, holder, [REF])
        assert len(woken) == 1
        holder = woken[0][0]
        assert acquire(store, holder, [REF], "{}").admitted  # the woken run starts
        order.append(holder)
    return order


def test_waiting_runs_are_served_in_order_even_within_a_millisecond(store: RunStore) -> None:
    assert acquire(store, "holder", [REF], "{}").admitted
    for i in range(30):  # far faster than a millisecond apart
        assert not acquire(store, f"r{i:02}", [REF], "{}").admitted
    assert admissions(store, "holder", 30) == [f"r{i:02}" for i in range(30)]


def test_a_higher_priority_overtakes_a_bounded_number_of_waiting_runs(store: RunStore) -> None:
    assert acquire(store, "holder", [REF], "{}").admitted
    for i in range(25):
        acquire(store, f"r{i:02}", [REF], "{}")
    acquire(store, "urgent", [REF], "{}", rank=9)  # may overtake 9 x 10 = 90 runs
    acquire(store, "bit-sooner", [REF], "{}", rank=1)  # may overtake 10
    order = admissions(store, "holder", 27)
    assert order[0] == "urgent"
    assert order.index("bit-sooner") == 1 + 16  # behind the first 16 (26 - 10) of 25
    # Nothing starves: every run was served.
    assert sorted(order) == sorted([f"r{i:02}" for i in range(25)] + ["urgent", "bit-sooner"])


def test_fairness_keys_take_turns(store: RunStore) -> None:
    assert acquire(store, "holder", [REF], "{}").admitted
    for i in range(200):
        acquire(store, f"a{i:03}", [REF], "{}", fairness_key="tenant-a")
    acquire(store, "b0", [REF], "{}", fairness_key="tenant-b")
    acquire(store, "b1", [REF], "{}", fairness_key="tenant-b")
    order = admissions(store, "holder", 10)
    # Tenant b's runs do not wait behind tenant a's 200: the two tenants alternate.
    assert {"b0", "b1"} <= set(order[:4])
    assert [r for r in order if r.startswith("a")] == [f"a{i:03}" for i in range(8)]
    # A tenant that comes back later is not punished for waiting runs it no longer has.
    acquire(store, "b2", [REF], "{}", fairness_key="tenant-b")
    assert "b2" in admissions(store, order[-1], 2)


def test_the_fairness_hash_only_remembers_waiting_runs(store: RunStore) -> None:
    assert acquire(store, "holder", [REF], "{}").admitted
    for i in range(20):
        acquire(store, f"r{i}", [REF], "{}", fairness_key=f"tenant-{i}")
    fair = store.keys.limit(REF.base, REF.sub).fair
    # 20 keys, 20 runs' order and rank, one count of rank 0 (no virtual time yet)
    assert store.client.hlen(fair) == 61
    assert store.client.hget(fair, "p:0") == "20"
    admissions(store, "holder", 20)
    assert set(store.client.hkeys(fair)) == {"_v"}


def test_releasing_a_parked_run_takes_it_off_the_queue(store: RunStore) -> None:
    # A stray copy of a run that already ended was parked: its release must leave the queue
    # and the hand-over data, or the run would later be handed a slot a waiting run needs.
    assert acquire(store, "holder", [REF], "{}").admitted
    assert not acquire(store, "stray", [REF], '{"task": "t"}').admitted
    assert not acquire(store, "waiting", [REF], "{}").admitted
    assert release(store, "stray", [REF]) == []  # the slot is still held: nobody woken
    k = store.keys.limit(REF.base, REF.sub)
    assert store.client.zrange(k.parked, 0, -1) == ["waiting"]
    assert store.client.hget(k.info, "stray") is None
    assert [r for r, _ in release(store, "holder", [REF])] == ["waiting"]


def claim_of(store: RunStore, run_id: str, *, acquire_slots: bool = True, pid: int = 4242,
             dead_pid: int = 0) -> Claim:
    return store.claim(run_id, owner="w1", nonce=uuid.uuid4().hex, task="t.limited",
                       args_json="[]", kwargs_json="{}", queue="q", pid=pid,
                       dead_pid=dead_pid,
                       acquire=acquire_with_claim(store, run_id, [REF], '{"task": "t"}')
                       if acquire_slots else ())


def test_a_claim_sent_with_its_slots_is_refused_while_the_limit_is_full(
        store: RunStore) -> None:
    if not store.single_server:
        with pytest.raises(ValueError, match="one Redis server"):
            claim_of(store, "r")
        return
    k = store.keys.limit(REF.base, REF.sub)
    assert acquire(store, "holder", [REF], "{}").admitted
    refused = claim_of(store, "r")
    assert refused.outcome == "noslot"
    admission = settle(store, "r", [REF], refused.slot_replies)
    assert not admission.admitted and admission.position == 0
    assert store.client.zrange(k.parked, 0, -1) == ["r"]
    assert store.client.hget(store.keys.run("r").run, "lease_token") is None  # not claimed
    assert store.read_summaries(["r"])[0] in (None, {})
    # The holder ends: the slot is handed to r, whose claim now takes it as its lease.
    assert [run for run, _ in release(store, "holder", [REF])] == ["r"]
    before = now_ms()
    claim = claim_of(store, "r")
    assert claim.outcome == "claimed" and claim.attempt == 1
    assert settle(store, "r", [REF], claim.slot_replies).admitted
    expiry = store.client.zscore(k.holders, "r")
    assert expiry is not None and expiry >= before + store.settings.lease_ttl_ms
    assert store.client.zcard(k.woken) == 0 and store.client.zcard(k.parked) == 0


def test_ending_an_attempt_gives_its_slots_back_unless_it_was_fenced_out(
        store: RunStore) -> None:
    k = store.keys.limit(REF.base, REF.sub)
    assert acquire(store, "r", [REF], "{}").admitted
    first = claim_of(store, "r", acquire_slots=False)
    assert not acquire(store, "waiting", [REF], '{"task": "t"}').admitted
    # The first attempt's process is declared dead and the run taken over: the slot (held
    # by run id) now belongs to the second attempt.
    second = claim_of(store, "r", acquire_slots=False, dead_pid=4242)
    assert second.outcome == "claimed" and second.token != first.token
    fenced = store.end_attempt_releasing(
        "r", first.token, RunStatus.COMPLETED, {"type": "run_completed"}, task="t.limited",
        owner="w1", release=release_keys(store, [REF]))
    assert fenced == (None, [])
    assert store.client.zscore(k.holders, "r") is not None
    prev, replies = store.end_attempt_releasing(
        "r", second.token, RunStatus.COMPLETED, {"type": "run_completed"},
        task="t.limited", owner="w1", release=release_keys(store, [REF]))
    assert prev == RunStatus.RUNNING.value
    assert woken_of(replies) == [("waiting", '{"task": "t"}')]
    assert store.client.zscore(k.holders, "r") is None


def test_an_end_with_logs_releases_its_slot_once_after_the_server_lost_the_scripts(
        store: RunStore) -> None:
    # Logs and the release ride with the end; after SCRIPT FLUSH the scripts are loaded and
    # the lost commands sent again, each once.
    k = store.keys.limit(REF.base, REF.sub)
    assert acquire(store, "r", [REF], "{}").admitted
    claim = claim_of(store, "r", acquire_slots=False)
    assert not acquire(store, "waiting", [REF], '{"task": "t"}').admitted
    store.client.script_flush()
    logs = ["INFO", "app", "done soon", "", "1", "1700000000000"]
    prev, replies = store.end_attempt_releasing(
        "r", claim.token, RunStatus.COMPLETED, {"type": "run_completed"}, task="t.limited",
        owner="w1", logs=logs, release=release_keys(store, [REF]))
    assert prev == RunStatus.RUNNING.value
    assert woken_of(replies) == [("waiting", '{"task": "t"}')]
    assert store.client.zrange(k.holders, 0, -1) == ["waiting"]
    _, _, entries = store.read_run("r")
    types = [event.type for event in trace_events(entries, {})]
    assert types.count("run_completed") == 1 and types.count("log") == 1


# -- messages put on the queue by slots.lua (the store is the broker's server and db) ------

QUEUE_KEY = "s:q"  # a list the test reads, standing in for a kombu queue


@pytest.fixture
def single(store: RunStore) -> RunStore:
    """The store, when it is one Redis server: only there is a message kept (on Redis
    Cluster the queue's list is in another hash slot than the limit's keys)."""
    if not store.single_server:
        pytest.skip("the store is on Redis Cluster: runs' messages are published by Python")
    return store


def msg(run_id: str) -> tuple[str, str]:
    return QUEUE_KEY, f'{{"run": "{run_id}"}}'


def test_an_admitted_run_is_published_in_the_acquire_and_a_parked_one_when_handed_a_slot(
        single: RunStore) -> None:
    assert acquire(single, "a", [REF], "{}", message=msg("a")).admitted
    assert single.client.lrange(QUEUE_KEY, 0, -1) == ['{"run": "a"}']
    assert not acquire(single, "b", [REF], '{"info": "b"}', message=msg("b")).admitted
    assert not acquire(single, "c", [REF], '{"info": "c"}', message=msg("c")).admitted
    assert single.client.llen(QUEUE_KEY) == 1  # parked runs are not on the queue
    k = single.keys.limit(REF.base, REF.sub)
    assert single.client.hget(k.messages, "b") == f'{len(QUEUE_KEY)}:{QUEUE_KEY}{{"run": "b"}}'
    # Handed the slot: its message goes in front of the queue (RPUSH: consumers BRPOP) and
    # the reply says nothing is left to publish.
    assert release(single, "a", [REF]) == [("b", QUEUED)]
    assert single.client.lrange(QUEUE_KEY, 0, -1) == ['{"run": "a"}', '{"run": "b"}']
    assert single.client.hexists(k.messages, "b") is False
    assert single.client.hget(k.info, "b") == '{"info": "b"}'  # kept until it starts


def test_runs_handed_slots_at_once_come_off_the_queue_in_the_limit_s_order(
        single: RunStore) -> None:
    ref = SlotRef("task:t.wide", "_", 1)
    assert acquire(single, "holder", [ref], "{}").admitted
    for name in ("w1", "w2", "w3"):
        assert not acquire(single, name, [ref], "{}", message=msg(name)).admitted
    single.client.lpush(QUEUE_KEY, '{"run": "backlog"}')
    single.client.hset(single.keys.limit(ref.base, "_").config, "limit", 4)
    woken = [run for run, info in sweep(single) if info == QUEUED]
    assert woken == ["w1", "w2", "w3"]
    # kombu pops from the right: w1 first, then w2 and w3, then the backlog.
    popped = [single.client.rpop(QUEUE_KEY) for _ in range(4)]
    assert popped == ['{"run": "w1"}', '{"run": "w2"}', '{"run": "w3"}', '{"run": "backlog"}']


def test_a_hand_over_that_expires_is_published_again_from_its_info(single: RunStore) -> None:
    settings = single.settings.model_copy(update={"slot_handoff_s": 0.05})
    st = RunStore(settings, client=single.client)
    assert acquire(st, "holder", [REF], "{}").admitted
    assert not acquire(st, "late", [REF], '{"info": "late"}', message=msg("late")).admitted
    assert release(st, "holder", [REF]) == [("late", QUEUED)]
    assert st.client.llen(QUEUE_KEY) == 1
    # Its message was lost (say): the hand-over expires, the run is first in line again, and
    # the next hand-over is published by the caller, as a new message, from its info.
    st.client.delete(QUEUE_KEY)
    time.sleep(0.1)
    assert sweep(st) == [("late", '{"info": "late"}')]
    assert st.client.llen(QUEUE_KEY) == 0


def test_a_released_parked_run_forgets_its_message(single: RunStore) -> None:
    assert acquire(single, "holder", [REF], "{}").admitted
    assert not acquire(single, "stray", [REF], "{}", message=msg("stray")).admitted
    release(single, "stray", [REF])
    k = single.keys.limit(REF.base, REF.sub)
    assert single.client.hlen(k.messages) == 0
    assert release(single, "holder", [REF]) == []
    assert single.client.llen(QUEUE_KEY) == 0


def test_a_run_reaching_the_head_in_its_own_acquire_is_published_there(
        single: RunStore) -> None:
    # The caller is first in line when a slot is free (the holder's lease expired): it is
    # admitted by the loop that hands out free slots, and its message goes out as a new one.
    k = single.keys.limit(REF.base, REF.sub)
    assert acquire(single, "holder", [REF], "{}", hold_ms=30).admitted
    assert not acquire(single, "next", [REF], "{}").admitted
    time.sleep(0.06)
    assert acquire(single, "next", [REF], "{}", message=msg("next")).admitted
    assert single.client.lrange(QUEUE_KEY, 0, -1) == ['{"run": "next"}']
    assert single.client.hlen(k.messages) == 0


def test_a_message_goes_with_the_acquire_of_one_limit_only(store: RunStore) -> None:
    with pytest.raises(ValueError, match="one limit"):
        acquire(store, "r", [REF, SlotRef("queue:q", "_", 2)], "{}", message=msg("r"))


def test_a_message_is_refused_on_redis_cluster(store: RunStore) -> None:
    if store.single_server:
        pytest.skip("the store is one Redis server: messages are kept there")
    with pytest.raises(ValueError, match="Redis Cluster"):
        acquire(store, "r", [REF], "{}", message=msg("r"))
