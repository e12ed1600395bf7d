"""save_progress.lua, extend_timeout.lua and offloaded commits on a real Redis: fencing,
positions, TTLs shared by all of a run's keys."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from celery_durable.config import DurableSettings
from celery_durable.events import trace_events
from celery_durable.models import RunStatus
from celery_durable.store import RunStore, now_ms
from tests.conftest import wipe_store
from tests.store.test_scripts import checkpoint, claim


@pytest.fixture
def store(store_url: Callable[[int], str]) -> Iterator[RunStore]:
    settings = DurableSettings(redis_url=store_url(6), key_prefix="l:",
                               lease_ttl_s=30, retention_s=100, active_ttl_s=1000)
    st = RunStore(settings)
    wipe_store(st.client, "l:")
    yield st
    wipe_store(st.client, "l:")
    st.client.close()


def test_progress_is_fenced_and_only_for_the_step_being_executed(store: RunStore) -> None:
    keys = store.keys.run("p1")
    c1 = claim(store, "p1", "n1")
    assert store.save_progress(keys, c1.token, 0, '{"v":5}') == 1
    assert store.load_progress(keys, 0) == '{"v":5}'
    assert store.save_progress(keys, c1.token, 1, '{"v":1}') == -3  # not executing yet
    assert store.commit_step(keys, c1.token, 0, "a", checkpoint("a", 1)) == 1
    assert store.save_progress(keys, c1.token, 0, '{"v":6}') == -3  # already committed
    assert store.save_progress(keys, c1.token, 1, '{"v":1}') == 1
    # A zombie attempt cannot overwrite the progress of the attempt that took over.
    store.client.hset(keys.run, "lease_expires_ms", 1)
    c2 = claim(store, "p1", "n2", owner="w2")
    assert store.save_progress(keys, c1.token, 1, '{"v":99}') == -1
    assert store.load_progress(keys, 1) == '{"v":1}'
    store.end_attempt("p1", c2.token, RunStatus.COMPLETED, {"type": "x"}, task="t.task")
    assert store.save_progress(keys, c2.token, 1, '{"v":2}') == -2


def test_extend_timeout_never_moves_the_deadline_earlier(store: RunStore) -> None:
    keys = store.keys.run("e1")
    c1 = claim(store, "e1", "n1")
    now = now_ms()
    assert store.extend_deadline(keys, c1.token, now + 60_000, now + 1000) == now + 60_000
    assert store.extend_deadline(keys, c1.token, now + 5000, now + 1000) == now + 60_000
    assert store.client.hget(keys.run, "deadline_ms") == str(now + 60_000)
    events = [e.type for e in trace_events(store.read_run("e1")[2], {})]
    assert events.count("timeout_extended") == 1
    # The next attempt's claim reports the extended deadline.
    store.end_attempt("e1", c1.token, RunStatus.RETRYING, {"type": "x"}, task="t.task")
    c2 = claim(store, "e1", "n2")
    assert c2.deadline_ms == now + 60_000
    assert store.extend_deadline(keys, c1.token, now + 90_000, now) == -1


def test_every_key_of_a_run_gets_the_runs_ttl(store: RunStore) -> None:
    keys = store.keys.run("t1")
    store.create_run("t1", "t.task", "[]", "{}", "celery")
    c1 = claim(store, "t1", "n1")
    assert store.save_progress(keys, c1.token, 0, '{"v":1}') == 1
    record = json.dumps({"id": "a", "o": 10, "t0": 1, "t1": 2, "a": 1})
    assert store.commit_step(keys, c1.token, 0, "a", record, blob='"0123456789"') == 1
    assert store.load_blob(keys, 0) == '"0123456789"'
    for key in keys.as_list():
        if key != keys.archive:  # made only when the run completes
            assert 900_000 < store.client.pttl(key) <= 1_000_000, key
    store.end_attempt("t1", c1.token, RunStatus.COMPLETED, {"type": "x"}, task="t.task",
                      checkpoints={"0": record})
    # The steps hash and trace list went into the archive; every key left has the retention.
    assert not store.client.exists(keys.steps, keys.trace)
    for key in keys.as_list():
        if key not in (keys.steps, keys.trace):
            assert 90_000 < store.client.pttl(key) <= 100_000, key


def test_a_later_claim_gives_every_key_the_active_ttl_again(store: RunStore) -> None:
    # The first claim refreshes only the run hash and trace (nothing else exists yet); a
    # later one refreshes every key the earlier attempts wrote.
    keys = store.keys.run("t2")
    store.create_run("t2", "t.task", "[]", "{}", "celery")
    c1 = claim(store, "t2", "n1")
    for key in (keys.run, keys.trace):
        assert 900_000 < store.client.pttl(key) <= 1_000_000, key
    assert not store.client.exists(keys.steps, keys.progress, keys.blobs, keys.archive)
    assert store.save_progress(keys, c1.token, 0, '{"v":1}') == 1
    record = json.dumps({"id": "a", "o": 10, "t0": 1, "t1": 2, "a": 1})
    assert store.commit_step(keys, c1.token, 0, "a", record, blob='"0123456789"') == 1
    assert store.end_attempt("t2", c1.token, RunStatus.RETRYING, {"type": "x"},
                             task="t.task") == "running"
    written = (keys.run, keys.steps, keys.trace, keys.progress, keys.blobs)
    for key in written:
        store.client.pexpire(key, 5_000)
    c2 = claim(store, "t2", "n2")
    assert c2.attempt == 2
    for key in written:
        assert 900_000 < store.client.pttl(key) <= 1_000_000, key
