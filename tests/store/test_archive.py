"""Archived runs (archive.py, lua/_archive.lua) on a real Redis, also a Redis Cluster: a
completed run's checkpoints and trace move into one key, and every reader gets what it got
before; trace entries written later are kept; anything doubtful leaves the run as it was."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery
from redis.crc import key_slot

from celery_durable import CheckpointDecodeError, DurableClient
from celery_durable.archive import MAX_ARCHIVE_BYTES, pack, unpack
from celery_durable.config import DurableSettings
from celery_durable.context import RunContext, bind_context, unbind_context
from celery_durable.flower.api import run_json
from celery_durable.flower.redaction import Redactor
from celery_durable.flower.trace import build_trace
from celery_durable.models import RunStatus
from celery_durable.steps import step
from celery_durable.store import RunStore
from tests.conftest import wipe_store

PREFIX = "ar:"
RETENTION_MS = 100_000


def make_store(url: str, **settings: Any) -> RunStore:
    return RunStore(DurableSettings(redis_url=url, key_prefix=PREFIX, retention_s=100,
                                    active_ttl_s=1000, trace_maxlen=100, **settings))


@pytest.fixture
def store(store_url: Callable[[int], str]) -> Iterator[RunStore]:
    st = make_store(store_url(13))
    wipe_store(st.client, PREFIX)
    yield st
    wipe_store(st.client, PREFIX)
    st.close()


@pytest.fixture
def client(store: RunStore) -> Iterator[DurableClient]:
    app = Celery("archive-tests", set_as_current=False)
    yield DurableClient(app, store=store)
    app.close()


def started(store: RunStore, run_id: str) -> Any:
    """A new run, recorded and claimed by worker w1 (the claim)."""
    store.create_run(run_id, "t.task", "[]", "{}", "celery")
    return store.claim(run_id, owner="w1", nonce="n1", task="t.task", args_json="[]",
                       kwargs_json="{}", queue="celery")


def checkpoint(step_id: str, value: Any, t0: int, attempt: int = 1) -> str:
    return json.dumps({"id": step_id, "v": value, "t0": t0, "t1": t0 + 5, "a": attempt},
                      separators=(",", ":"))


#: Payloads of every shape a checkpoint can have: unicode, escapes and spaces (not written
#: by us, kept as they are), an offloaded result's size, recorded inputs.
PAYLOADS = [
    checkpoint("fetch", {"order": "o-1", "items": [1, 2, 3]}, 1_700_000_000_000),
    checkpoint("charge", "päid ✓ — 支付", 1_700_000_000_010, attempt=2),
    json.dumps({"id": "other", "v": "line one\nline two: \"quoted\"", "t0": 1_700_000_000_020,
                "t1": 1_700_000_000_021, "a": 2}),
    json.dumps({"id": "big", "o": 12, "t0": 1_700_000_000_030, "t1": 1_700_000_000_031,
                "a": 2}),
    json.dumps({"id": "noted", "v": None, "t0": 1_700_000_000_040, "t1": 1_700_000_000_041,
                "a": 2, "in": {"args": [1], "kwargs": {}}}),
]


def write_run(store: RunStore, run_id: str, *, archive: bool) -> dict[str, str]:
    """A run with two attempts, step failures, logs and an offloaded result, completed by
    its second attempt, with (``archive``) or without its checkpoints sent to the end."""
    keys = store.keys.run(run_id)
    store.create_run(run_id, "t.task", "[1]", "{}", "celery")
    c1 = store.claim(run_id, owner="w1", nonce="n1", task="t.task", args_json="[1]",
                     kwargs_json="{}", queue="celery")
    assert store.commit_step(keys, c1.token, 0, "fetch", PAYLOADS[0],
                             ["INFO", "app", "fetched", "fetch", "1", "1700000000001"]) == 1
    store.append_event(run_id, "step_failed", {"step": "charge", "pos": 1, "attempt": 1,
                                               "try": 1, "error_type": "builtins.OSError",
                                               "error_message": "down", "traceback": ""},
                       token=c1.token)
    store.end_attempt(run_id, c1.token, RunStatus.RETRYING,
                      {"type": "attempt_failed", "attempt": 1, "retry_in_s": "0.1",
                       "error_type": "builtins.OSError", "error_message": "down",
                       "traceback": ""}, task="t.task", error_json=json.dumps(
                           {"error_type": "builtins.OSError", "error_message": "down",
                            "traceback": ""}))
    c2 = store.claim(run_id, owner="w2", nonce="n2", task="t.task", args_json="[1]",
                     kwargs_json="{}", queue="celery")
    checkpoints = dict(c2.checkpoints or {})
    for pos, payload in enumerate(PAYLOADS[1:], start=1):
        blob = '"0123456789"' if '"o"' in payload else None
        step_id = json.loads(payload)["id"]
        assert store.commit_step(keys, c2.token, pos, step_id, payload, blob=blob) == 1
        checkpoints[str(pos)] = payload
    store.end_attempt(run_id, c2.token, RunStatus.COMPLETED,
                      {"type": "run_completed", "attempt": 2, "steps": 5, "replayed": 1},
                      task="t.task", result_json='{"ok":true}',
                      logs=["WARNING", "app", "done", "", "2", "1700000000050"],
                      checkpoints=checkpoints if archive else None)
    return checkpoints


def without_times(data: Any) -> Any:
    """A run's JSON without what differs between two runs written a moment apart: ids,
    server times of the run record and of its trace entries."""
    data = dict(data)
    for name in ("id", "created_at", "updated_at", "finished_at"):
        data.pop(name)
    data["events"] = [{"type": e["type"], "fields": e["fields"]} for e in data["events"]]
    return data


def test_a_completed_run_moves_into_its_archive(store: RunStore) -> None:
    write_run(store, "a1", archive=True)
    keys = store.keys.run("a1")
    # The steps hash and the trace list are gone; the archive has the run's retention.
    assert not store.client.exists(keys.steps) and not store.client.exists(keys.trace)
    assert store.client.type(keys.archive) == "string"
    for key in (keys.run, keys.archive, keys.blobs):
        assert RETENTION_MS - 5000 < store.client.pttl(key) <= RETENTION_MS, key
    # One Cluster slot for every key of the run, the archive too.
    assert len({key_slot(k.encode()) for k in keys.as_list()}) == 1
    # The archive holds exactly the committed checkpoints, compressed (zlib by default).
    packed = store.client.execute_command("GET", keys.archive, NEVER_DECODE=[])
    assert packed[:3] == b"A1z"
    steps, trace = unpack(packed)
    assert steps == {str(pos): payload for pos, payload in enumerate(PAYLOADS)}
    assert [json.loads(e)[3] for e in trace if json.loads(e)[3] != "log"] == [
        "run_created", "attempt_started", "step_failed", "attempt_failed", "attempt_started",
        "run_completed"]


def test_every_reader_gets_what_it_got_before_archiving(store: RunStore,
                                                        client: DurableClient) -> None:
    # The same run written twice, archived or not, reads back the same everywhere.
    write_run(store, "kept", archive=False)
    write_run(store, "packed", archive=True)
    assert store.client.exists(store.keys.run("kept").steps)
    assert not store.client.exists(store.keys.run("packed").steps)
    _, kept_steps, kept_trace = store.read_run("kept")
    _, packed_steps, packed_trace = store.read_run("packed")
    assert packed_steps == kept_steps
    assert [json.loads(e)[1:] for e in packed_trace] == [json.loads(e)[1:] for e in kept_trace]
    assert [[json.loads(e)[1:] for e in t] for t in store.read_traces(["kept", "packed"])] \
        == [[json.loads(e)[1:] for e in kept_trace]] * 2
    # DurableClient.get_run (steps, values, offloaded blobs, failures, attempts, logs, events)
    kept, packed = client.get_run("kept"), client.get_run("packed")
    assert packed.steps[3].value == "0123456789" and packed.steps[1].value == "päid ✓ — 支付"
    assert [s.failures for s in packed.steps][1][0].message == "down"
    assert len(packed.logs) == 2 and packed.attempt_errors[0].message == "down"
    assert without_times(packed.model_dump(mode="json")) == \
        without_times(kept.model_dump(mode="json"))
    # The Flower run page and JSON API.
    redactor = Redactor(store.settings.flower_redact)
    assert without_times(run_json(packed, redactor)) == without_times(run_json(kept, redactor))
    kept_view, packed_view = build_trace(kept, redactor, []), build_trace(packed, redactor, [])
    def rows(view: Any) -> list[Any]:
        return [(r.name, r.attempt, r.state, r.value, r.started_at, r.duration_ms,
                 [(f.error, f.attempt, f.try_number) for f in r.failures]) for r in view.steps]

    assert rows(packed_view) == rows(kept_view)
    assert [(r.attempt, r.worker, r.outcome, r.error) for r in packed_view.attempts] == \
        [(r.attempt, r.worker, r.outcome, r.error) for r in kept_view.attempts]
    assert packed_view.logs == kept_view.logs


def test_entries_written_after_the_archive_are_kept_after_it(store: RunStore,
                                                            client: DurableClient) -> None:
    write_run(store, "late", archive=True)
    keys = store.keys.run("late")
    assert store.append_event("late", "run_forked", {"fork": "f1", "from_step": "big"}) == 1
    assert store.append_logs("late", ["INFO", "app", "after", "", "2", "1700000000060"]) == 1
    # They start a new trace list with the run's TTL (no key without one)...
    assert store.client.llen(keys.trace) == 2
    assert RETENTION_MS - 5000 < store.client.pttl(keys.trace) <= RETENTION_MS
    # ...and read back after the archived entries, the steps in their places.
    types = [e.type for e in client.get_run("late").events]
    assert types[-4:] == ["log", "run_completed", "run_forked", "log"]
    assert types.count("step_committed") == 5
    assert client.get_run("late").logs[-1].message == "after"


def test_the_merged_trace_keeps_the_newest_maxlen_entries(store: RunStore) -> None:
    write_run(store, "long", archive=True)
    archived = len(store.read_run("long")[2])
    for i in range(100):
        store.append_event("long", "note", {"i": i})
    trace = store.read_run("long")[2]
    assert len(trace) == 100 and archived < 100
    assert json.loads(trace[-1])[-1] == "99" and json.loads(trace[0])[-1] == "0"


def test_an_archived_run_stays_ended(store: RunStore) -> None:
    write_run(store, "done", archive=True)
    # A duplicate delivery gets the stored result; cancel and replay leave it alone.
    again = store.claim("done", owner="w3", nonce="n3", task="t.task", args_json="[1]",
                        kwargs_json="{}", queue="celery")
    assert (again.outcome, again.status, again.result) == ("done", "completed", '{"ok":true}')
    assert store.cancel_run("done", "too late") == "completed"
    assert store.reopen_run("done") == "completed"
    assert not store.client.exists(store.keys.run("done").steps)
    assert len(store.read_run("done")[1]) == len(PAYLOADS)


def test_a_fork_of_an_archived_run_reuses_its_checkpoints(store: RunStore) -> None:
    write_run(store, "origin", archive=True)
    raw, steps, _ = store.read_run("origin")
    reused = {p: steps[p] for p in ("0", "1", "2", "3")}
    store.create_fork("fork", raw["task"], raw["args"], raw["kwargs"], raw["queue"], reused,
                      origin="origin", from_step="noted", blobs=store.read_blobs("origin"))
    c = store.claim("fork", owner="w1", nonce="f1", task="t.task", args_json="[1]",
                    kwargs_json="{}", queue="celery")
    assert dict(c.checkpoints or {}) == reused
    assert store.load_blob(store.keys.run("fork"), 3) == '"0123456789"'


def test_a_resent_end_loses_nothing(store: RunStore) -> None:
    checkpoints = write_run(store, "twice", archive=True)
    token = store.client.hget(store.keys.run("twice").run, "lease_token")
    # redis-py sends a command again after a connection error: the end may arrive twice.
    store.end_attempt("twice", str(token), RunStatus.COMPLETED, {"type": "run_completed"},
                      task="t.task", result_json='{"ok":true}', checkpoints=checkpoints)
    _, steps, trace = store.read_run("twice")
    assert steps == checkpoints
    assert [json.loads(e)[3] for e in trace].count("run_completed") == 2


def test_checkpoints_that_differ_from_the_steps_hash_are_not_archived(store: RunStore) -> None:
    c = started(store, "odd")
    keys = store.keys.run("odd")
    store.commit_step(keys, c.token, 0, "a", PAYLOADS[0])
    store.commit_step(keys, c.token, 1, "b", PAYLOADS[1])
    for wrong in ({"0": PAYLOADS[0]}, {"0": PAYLOADS[0], "1": PAYLOADS[2]},
                  {"0": PAYLOADS[0], "1": PAYLOADS[1], "2": PAYLOADS[2]}):
        assert pack(wrong) is not None
        store.end_attempt("odd", c.token, RunStatus.COMPLETED, {"type": "run_completed"},
                          task="t.task", checkpoints=wrong)
        assert not store.client.exists(keys.archive)
        assert store.client.hgetall(keys.steps) == {"0": PAYLOADS[0], "1": PAYLOADS[1]}


def test_only_completed_runs_are_archived(store: RunStore) -> None:
    for status in (RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.SUSPENDED,
                   RunStatus.RETRYING):
        run_id = f"s-{status.value}"
        c = started(store, run_id)
        store.commit_step(store.keys.run(run_id), c.token, 0, "a", PAYLOADS[0])
        store.end_attempt(run_id, c.token, status, {"type": "x"}, task="t.task",
                          checkpoints={"0": PAYLOADS[0]})
        assert store.client.hlen(store.keys.run(run_id).steps) == 1, status
        assert not store.client.exists(store.keys.run(run_id).archive), status


def test_a_run_without_steps_archives_its_trace(store: RunStore) -> None:
    c = started(store, "empty")
    store.end_attempt("empty", c.token, RunStatus.COMPLETED, {"type": "run_completed"},
                      task="t.task", checkpoints={})
    assert not store.client.exists(store.keys.run("empty").trace)
    _, steps, trace = store.read_run("empty")
    assert steps == {} and [json.loads(e)[3] for e in trace] == [
        "run_created", "attempt_started", "run_completed"]


@pytest.mark.parametrize(("mode", "kept"), [("plain", "archive"), ("off", "steps")])
def test_the_setting_packs_plain_or_not_at_all(store_url: Callable[[int], str], mode: str,
                                               kept: str) -> None:
    st = make_store(store_url(13), archive=mode)
    try:
        write_run(st, f"m-{mode}", archive=True)
        keys = st.keys.run(f"m-{mode}")
        assert st.client.exists(getattr(keys, kept))
        if mode == "plain":
            assert st.client.getrange(keys.archive, 0, 2) == "A1p"
        assert st.read_run(f"m-{mode}")[1] == {str(p): v for p, v in enumerate(PAYLOADS)}
    finally:
        st.close()


def test_a_corrupt_archive_is_a_clear_error(store: RunStore, client: DurableClient) -> None:
    write_run(store, "bad", archive=True)
    store.client.set(store.keys.run("bad").archive, "A1z5:xxxxx")
    with pytest.raises(CheckpointDecodeError, match="run bad: a run archive could not be"):
        client.get_run("bad")


@step(name="chunk")
def chunk(size: int) -> str:
    return "x" * size


def test_an_attempt_stops_keeping_checkpoints_past_the_archive_limit(store: RunStore) -> None:
    for run_id, size, archived in (("small", 1000, True), ("huge", 400_000, False)):
        c = started(store, run_id)
        ctx = RunContext(run_id=run_id, attempt=1, task_name="t.task", token=c.token,
                         owner="w1", store=store, checkpoints={})
        bound = bind_context(ctx)
        try:
            for _ in range(3):
                chunk(size)
        finally:
            unbind_context(bound)
        assert (ctx.checkpoints is not None) is archived
        assert (size * 3 < MAX_ARCHIVE_BYTES) is archived
        store.end_attempt(run_id, c.token, RunStatus.COMPLETED, {"type": "run_completed"},
                          task="t.task", checkpoints=ctx.checkpoints)
        assert bool(store.client.exists(store.keys.run(run_id).archive)) is archived
        assert len(store.read_run(run_id)[1]) == 3


def test_claim_loaded_checkpoints_are_archived_with_the_new_ones(store: RunStore) -> None:
    # A second attempt completes the run: what its claim loaded goes in with its commits.
    c1 = started(store, "resumed")
    first = checkpoint("chunk", "yyy", 1_700_000_000_000)
    store.commit_step(store.keys.run("resumed"), c1.token, 0, "chunk", first)
    store.end_attempt("resumed", c1.token, RunStatus.RETRYING, {"type": "x"}, task="t.task")
    c2 = store.claim("resumed", owner="w1", nonce="n2", task="t.task", args_json="[]",
                     kwargs_json="{}", queue="celery")
    ctx = RunContext(run_id="resumed", attempt=2, task_name="t.task", token=c2.token,
                     owner="w1", store=store, checkpoints=dict(c2.checkpoints or {}))
    bound = bind_context(ctx)
    try:
        assert chunk(3) == "yyy"  # replayed
        assert chunk(3) == "xxx"
    finally:
        unbind_context(bound)
    store.end_attempt("resumed", c2.token, RunStatus.COMPLETED, {"type": "run_completed"},
                      task="t.task", checkpoints=ctx.checkpoints)
    assert store.client.exists(store.keys.run("resumed").archive)
    steps = store.read_run("resumed")[1]
    assert steps["0"] == first and json.loads(steps["1"])["v"] == "xxx"
    assert time.time() * 1000 - json.loads(steps["1"])["t1"] < 60_000


def test_an_existing_archive_is_kept_and_the_run_keeps_its_keys(store: RunStore) -> None:
    c = started(store, "kept")
    keys = store.keys.run("kept")
    store.commit_step(keys, c.token, 0, "a", PAYLOADS[0])
    store.client.set(keys.archive, "an earlier archive")
    store.end_attempt("kept", c.token, RunStatus.COMPLETED, {"type": "run_completed"},
                      task="t.task", checkpoints={"0": PAYLOADS[0]})
    assert store.client.get(keys.archive) == "an earlier archive"
    assert store.client.hgetall(keys.steps) == {"0": PAYLOADS[0]}
    assert store.client.llen(keys.trace) > 0
    for key in (keys.run, keys.steps, keys.trace, keys.archive):
        assert 0 < store.client.pttl(key) <= RETENTION_MS, key
