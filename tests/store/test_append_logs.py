"""append_logs.lua and the log records that ride with a commit, a step failure or an end,
on a real Redis."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator

import pytest

from celery_durable.config import DurableSettings
from celery_durable.events import trace_events
from celery_durable.models import RunStatus
from celery_durable.store import RunStore
from tests.conftest import wipe_store


@pytest.fixture
def store(store_url: Callable[[int], str]) -> Iterator[RunStore]:
    settings = DurableSettings(redis_url=store_url(6), key_prefix="l:",
                               retention_s=100, active_ttl_s=1000)
    st = RunStore(settings)
    wipe_store(st.client, "l:")
    yield st
    wipe_store(st.client, "l:")
    st.client.close()


def record(message: str, step: str = "") -> list[str]:
    return ["INFO", "app", message, step, "1", "1700000000000"]


def started(store: RunStore, run_id: str) -> str:
    store.create_run(run_id, "t.task", "[]", "{}", "celery")
    return store.claim(run_id, owner="w1", nonce="n1", task="t.task", args_json="[]",
                       kwargs_json="{}", queue="celery").token


def trace(store: RunStore, run_id: str) -> list[dict[str, str]]:
    _, steps, entries = store.read_run(run_id)
    records = {int(pos): json.loads(text) for pos, text in steps.items()}
    return [event.fields for event in trace_events(entries, records)]


def test_append_logs_writes_log_events_only_for_an_existing_run(store: RunStore) -> None:
    assert store.append_logs("missing", record("lost")) == 0
    assert not store.client.exists(store.keys.run("missing").trace)  # no key without a TTL
    started(store, "r1")
    assert store.append_logs("r1", record("one") + record("two", "fetch")) == 2
    logs = [e for e in trace(store, "r1") if e["type"] == "log"]
    assert logs == [
        {"type": "log", "level": "INFO", "logger": "app", "message": "one", "step": "",
         "attempt": "1", "ms": "1700000000000"},
        {"type": "log", "level": "INFO", "logger": "app", "message": "two", "step": "fetch",
         "attempt": "1", "ms": "1700000000000"},
    ]
    assert store.client.pttl(store.keys.run("r1").trace) > 0


def test_logs_ride_with_commit_failure_and_end_in_order(store: RunStore) -> None:
    token = started(store, "r2")
    keys = store.keys.run("r2")
    checkpoint = json.dumps({"id": "a", "v": 1, "t0": 1, "t1": 2, "a": 1})
    assert store.commit_step(keys, token, 0, "a", checkpoint, record("in a", "a")) == 1
    assert store.append_event("r2", "step_failed", {"step": "b"}, token=token,
                              logs=record("b broke", "b")) == 1
    assert store.end_attempt("r2", token, RunStatus.COMPLETED, {"type": "run_completed"},
                             task="t.task", logs=record("bye")) == "running"
    types = [(e["type"], e.get("message", "")) for e in trace(store, "r2")][2:]
    assert types == [("log", "in a"), ("step_committed", ""), ("log", "b broke"),
                     ("step_failed", ""), ("log", "bye"), ("run_completed", "")]


def test_a_fenced_commit_keeps_its_logs_and_reports_the_fence(store: RunStore) -> None:
    token = started(store, "r3")
    checkpoint = json.dumps({"id": "a", "v": 1, "t0": 1, "t1": 2, "a": 1})
    assert store.commit_step(store.keys.run("r3"), "stale", 0, "a", checkpoint,
                             record("zombie")) == -1
    assert token != "stale"
    assert [e["message"] for e in trace(store, "r3") if e["type"] == "log"] == ["zombie"]


def test_scripts_lost_by_the_server_are_loaded_and_sent_once(store: RunStore) -> None:
    token = started(store, "r4")
    store.client.script_flush()
    checkpoint = json.dumps({"id": "a", "v": 1, "t0": 1, "t1": 2, "a": 1})
    assert store.commit_step(store.keys.run("r4"), token, 0, "a", checkpoint,
                             record("after flush")) == 1
    events = trace(store, "r4")
    assert [e["message"] for e in events if e["type"] == "log"] == ["after flush"]
    assert [e["type"] for e in events].count("step_committed") == 1


def test_a_failing_log_write_never_fails_the_commit(store: RunStore) -> None:
    token = started(store, "r5")
    broken = store.client.register_script("return redis.call('NO_SUCH_COMMAND')")
    store.scripts = dataclasses.replace(store.scripts, append_logs=broken)
    checkpoint = json.dumps({"id": "a", "v": 1, "t0": 1, "t1": 2, "a": 1})
    assert store.commit_step(store.keys.run("r5"), token, 0, "a", checkpoint,
                             record("dropped")) == 1
    assert store.end_attempt("r5", token, RunStatus.COMPLETED, {"type": "run_completed"},
                             task="t.task", logs=record("dropped too")) == "running"
    assert [e["type"] for e in trace(store, "r5")][-2:] == ["step_committed", "run_completed"]
