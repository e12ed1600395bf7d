"""The trace list (lua/_trace.lua) and its reader (events.py), on a real redis-server: entry
format and server time, capping, steps placed by step count rather than by clocks, forks."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from celery_durable.config import DurableSettings
from celery_durable.events import trace_events
from celery_durable.models import RunStatus
from celery_durable.store import RunStore
from tests.conftest import wipe_store
from tests.store.test_append_logs import started

PREFIX = "tr:"


@pytest.fixture
def store(store_url: Callable[[int], str]) -> Iterator[RunStore]:
    st = RunStore(DurableSettings(redis_url=store_url(7), key_prefix=PREFIX, trace_maxlen=100))
    wipe_store(st.client, PREFIX)
    yield st
    wipe_store(st.client, PREFIX)
    st.client.close()


def checkpoint(step_id: str, finished_ms: int) -> str:
    return json.dumps({"id": step_id, "v": 1, "t0": finished_ms - 1, "t1": finished_ms, "a": 1})


def events(store: RunStore, run_id: str) -> list[tuple[str, dict[str, str]]]:
    _, steps, entries = store.read_run(run_id)
    records = {int(pos): json.loads(text) for pos, text in steps.items()}
    return [(e.type, e.fields) for e in trace_events(entries, records)]


def test_an_entry_holds_server_time_step_count_and_string_fields(store: RunStore) -> None:
    before = int(time.time() * 1000)
    started(store, "a1")
    raw = store.client.lrange(store.keys.run("a1").trace, 0, -1)
    at, steps, *fields = json.loads(raw[-1])
    assert before - 1000 <= at <= int(time.time() * 1000) + 1000  # the server's clock, ms
    assert steps == 0
    assert fields[:4] == ["type", "attempt_started", "attempt", "1"]  # numbers as strings
    assert all(isinstance(f, str) for f in fields)


def test_commits_write_no_trace_entry_and_read_back_in_place(store: RunStore) -> None:
    token = started(store, "a2")
    keys = store.keys.run("a2")
    length = store.client.llen(keys.trace)
    # The worker's clock is far behind Redis's: the steps must still come after the start.
    skewed = int(time.time() * 1000) - 3_600_000
    assert store.commit_step(keys, token, 0, "fetch", checkpoint("fetch", skewed)) == 1
    assert store.client.llen(keys.trace) == length  # no entry per step
    assert store.append_event("a2", "step_failed", {"step": "save"}, token=token) == 1
    assert store.commit_step(keys, token, 1, "save", checkpoint("save", skewed + 5)) == 1
    assert store.commit_step(keys, token, 2, "mail", checkpoint("mail", skewed + 9)) == 1
    assert store.end_attempt("a2", token, RunStatus.COMPLETED, {"type": "run_completed"},
                             task="t.task") == "running"
    assert [(t, f.get("step", "")) for t, f in events(store, "a2")] == [
        ("run_created", ""), ("attempt_started", ""), ("step_committed", "fetch"),
        ("step_failed", "save"), ("step_committed", "save"), ("step_committed", "mail"),
        ("run_completed", ""),
    ]
    committed = [f for t, f in events(store, "a2") if t == "step_committed"]
    assert committed[1] == {"type": "step_committed", "step": "save", "pos": "1"}


def test_steps_after_the_last_entry_are_listed_last(store: RunStore) -> None:
    token = started(store, "a3")
    keys = store.keys.run("a3")
    now = int(time.time() * 1000)
    for pos, name in enumerate(["a", "b"]):
        assert store.commit_step(keys, token, pos, name, checkpoint(name, now + pos)) == 1
    assert store.client.llen(keys.trace) == 2  # still running: no end entry yet
    assert [t for t, _ in events(store, "a3")][-2:] == ["step_committed", "step_committed"]


def test_the_trace_keeps_the_newest_maxlen_entries(store: RunStore) -> None:
    token = started(store, "a4")
    for i in range(130):
        assert store.append_event("a4", "note", {"n": str(i)}, token=token) == 1
    kept = [f for _, f in events(store, "a4")]
    assert len(kept) == 100
    assert kept[0]["n"] == "30" and kept[-1]["n"] == "129"
    ids = [e.id for e in trace_events(store.read_run("a4")[2], {})]
    assert len(set(ids)) == len(ids)


def test_a_fork_records_where_it_came_from_after_its_reused_steps(store: RunStore) -> None:
    now = int(time.time() * 1000)
    store.create_fork("f1", "t.task", "[]", "{}", "celery",
                      {"0": checkpoint("a", now), "1": checkpoint("b", now)},
                      origin="o1", from_step="c")
    assert events(store, "f1") == [
        ("run_created", {"type": "run_created", "task": "t.task"}),
        ("step_committed", {"type": "step_committed", "step": "a", "pos": "0"}),
        ("step_committed", {"type": "step_committed", "step": "b", "pos": "1"}),
        ("run_forked_from", {"type": "run_forked_from", "origin": "o1", "from_step": "c",
                             "reused": "2"}),
    ]
    assert store.client.pttl(store.keys.run("f1").trace) > 0
