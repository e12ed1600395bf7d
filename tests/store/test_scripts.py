"""The Lua scripts on a real Redis: fencing, idempotency, gaps, TTLs, indexes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from celery_durable.config import DurableSettings
from celery_durable.models import RunStatus
from celery_durable.store import RunStore
from tests.conftest import wipe_store


@pytest.fixture
def store(store_url: Callable[[int], str]) -> Iterator[RunStore]:
    settings = DurableSettings(redis_url=store_url(5), key_prefix="t:",
                               lease_ttl_s=30, retention_s=100, active_ttl_s=1000)
    st = RunStore(settings)
    wipe_store(st.client, "t:")
    yield st
    wipe_store(st.client, "t:")
    st.client.close()


def claim(store: RunStore, run_id: str, nonce: str, owner: str = "w1"):  # type: ignore[no-untyped-def]
    return store.claim(run_id, owner=owner, nonce=nonce, task="t.task", args_json="[]",
                       kwargs_json="{}", queue="celery")


def checkpoint(step_id: str, value: object) -> str:
    return json.dumps({"id": step_id, "v": value, "t0": 1, "t1": 2, "a": 1})


def test_create_then_claim_loads_nothing_and_starts_attempt_one(store: RunStore) -> None:
    assert store.create_run("r1", "t.task", "[1]", "{}", "celery") is True
    assert store.create_run("r1", "t.task", "[1]", "{}", "celery") is False
    c = claim(store, "r1", "n1")
    assert (c.outcome, c.attempt, c.status, dict(c.checkpoints or {})) == (
        "claimed", 1, "pending", {})
    raw = store.client.hgetall("t:{r1}:run")
    assert raw["status"] == "running" and raw["lease_owner"] == "w1"


def test_commit_is_fenced_idempotent_and_ordered(store: RunStore) -> None:
    c1 = claim(store, "r2", "n1")
    assert store.commit_step(store.keys.run("r2"), c1.token, 0, "a", checkpoint("a", 1)) == 1
    # A re-sent commit of the same position changes nothing.
    assert store.commit_step(store.keys.run("r2"), c1.token, 0, "a", checkpoint("a", 99)) == 0
    # A gap is refused.
    assert store.commit_step(store.keys.run("r2"), c1.token, 2, "c", checkpoint("c", 3)) == -3
    # Another attempt takes over once the lease has expired.
    store.client.hset("t:{r2}:run", "lease_expires_ms", 1)
    c2 = claim(store, "r2", "n2", owner="w2")
    assert c2.outcome == "claimed" and c2.attempt == 2 and int(c2.token) > int(c1.token)
    assert json.loads((c2.checkpoints or {})["0"])["v"] == 1
    # The old attempt (a zombie) can neither commit nor end the run.
    assert store.commit_step(store.keys.run("r2"), c1.token, 1, "b", checkpoint("b", 2)) == -1
    assert store.end_attempt("r2", c1.token, RunStatus.COMPLETED, {"type": "x"},
                             task="t.task") is None
    assert store.append_event("r2", "step_failed", {"step": "b"}, token=c1.token) == -1
    assert store.client.hlen("t:{r2}:steps") == 1
    assert store.commit_step(store.keys.run("r2"), c2.token, 1, "b", checkpoint("b", 2)) == 1


def test_live_lease_makes_a_second_claim_busy(store: RunStore) -> None:
    claim(store, "r3", "n1")
    busy = claim(store, "r3", "n2", owner="w2")
    assert busy.outcome == "busy" and busy.owner == "w1" and busy.lease_expires_ms > 0
    # The same claim re-sent (a client retry) gets the same token back.
    again = claim(store, "r3", "n1")
    assert again.outcome == "claimed" and again.attempt == 1


def test_ended_run_answers_done_with_its_result(store: RunStore) -> None:
    c = claim(store, "r4", "n1")
    prev = store.end_attempt("r4", c.token, RunStatus.COMPLETED, {"type": "run_completed"},
                             task="t.task", result_json='{"ok":true}')
    assert prev == "running"
    done = claim(store, "r4", "n2")
    assert (done.outcome, done.status, done.result) == ("done", "completed", '{"ok":true}')


def test_every_key_has_a_ttl_and_terminal_runs_get_the_retention(store: RunStore) -> None:
    store.create_run("r5", "t.task", "[]", "{}", "celery")
    c = claim(store, "r5", "n1")
    store.commit_step(store.keys.run("r5"), c.token, 0, "a", checkpoint("a", 1))
    keys = ["t:{r5}:run", "t:{r5}:steps", "t:{r5}:trace"]
    for key in keys:
        assert 900_000 < store.client.pttl(key) <= 1_000_000, key
    store.end_attempt("r5", c.token, RunStatus.FAILED, {"type": "run_failed"}, task="t.task")
    for key in keys:
        assert 0 < store.client.pttl(key) <= 100_000, key
    for key in store.client.scan_iter("t:index:*"):
        assert store.client.pttl(key) > 0, key


def test_status_indexes_follow_transitions(store: RunStore) -> None:
    store.create_run("r6", "t.task", "[]", "{}", "celery")
    assert store.client.zscore("t:index:status:pending", "r6") is not None
    c = claim(store, "r6", "n1")
    assert store.client.zscore("t:index:status:pending", "r6") is None
    assert store.client.zscore("t:index:status:running", "r6") is not None
    store.end_attempt("r6", c.token, RunStatus.RETRYING, {"type": "attempt_failed"},
                      task="t.task")
    assert store.client.zscore("t:index:status:running", "r6") is None
    assert store.client.zscore("t:index:status:retrying", "r6") is not None


def test_run_keys_share_one_cluster_slot(store: RunStore) -> None:
    from redis.crc import key_slot

    k = store.keys.run("abc-123")
    assert len({key_slot(key.encode()) for key in k.as_list()}) == 1


def test_scripts_are_reloaded_after_a_flush(store: RunStore) -> None:
    # Pipelines send EVALSHA without SCRIPT EXISTS; a server that lost the scripts must
    # still work (restart without persistence of the script cache, SCRIPT FLUSH).
    store.client.script_flush()
    assert store.create_run("r7", "t.task", "[]", "{}", "celery") is True
    store.client.script_flush()
    c = claim(store, "r7", "n1")
    store.client.script_flush()
    store.beat("w1", ["r7"], renew=True)
    assert store.commit_step(store.keys.run("r7"), c.token, 0, "a", checkpoint("a", 1)) == 1


def test_a_reaper_that_dies_before_requeueing_is_covered(store: RunStore) -> None:
    c = claim(store, "r8", "n1", owner="dead-worker")
    reaped = store.reap("r8", "dead-worker", "reaper-1")
    assert reaped is not None and reaped[5] == "dead-worker"
    # The zombie is fenced; the reaper holds the lease while it requeues...
    assert store.commit_step(store.keys.run("r8"), c.token, 0, "a", checkpoint("a", 1)) == -1
    assert store.client.hget("t:{r8}:run", "lease_owner") == "reaper:reaper-1"
    # ...and if it dies there, the run stays a candidate: once the grace has passed another
    # reaper takes it again (reaped runs are never left without an owner).
    store.client.hset("t:{r8}:run", "lease_expires_ms", 1)
    store.client.zadd(store.keys.leases, {"r8": 1})
    assert "r8" in store.expired_leases()
    assert store.reap("r8", "", "reaper-2") is not None
    # A claim takes a reaper's lease at once (no waiting for the grace) and counts a crash.
    nxt = claim(store, "r8", "n2", owner="w2")
    assert nxt.outcome == "claimed" and nxt.crashes == 1


def test_a_reaped_run_keeps_its_canvas_options(store: RunStore) -> None:
    # The reaper re-publishes a run whose message is gone from the data the record keeps:
    # the rest of its chain must be in it.
    canvas = json.dumps({"chain": [{"task": "t.next", "args": [], "kwargs": {}}]})
    store.create_run("r9", "t.task", "[1]", "{}", "celery", canvas)
    store.create_run("r10", "t.task", "[1]", "{}", "celery")
    claim(store, "r9", "n1", owner="dead-worker")
    claim(store, "r10", "n1", owner="dead-worker")
    assert store.reap("r9", "dead-worker", "reaper-1")[6] == canvas  # type: ignore[index]
    assert store.reap("r10", "dead-worker", "reaper-1")[6] == ""  # type: ignore[index]
    assert not store.client.hexists("t:{r10}:run", "canvas")  # nothing stored without one


def index_state(store: RunStore, run_id: str, owner: str = "w1") -> dict[str, object]:
    """Where the global indexes put ``run_id``: its status indexes, lease, worker set."""
    statuses = [s.value for s in RunStatus
                if store.client.zscore(store.keys.status_index(s), run_id) is not None]
    return {"statuses": statuses,
            "lease": store.client.zscore(store.keys.leases, run_id),
            "in_worker_set": bool(store.client.sismember(store.keys.worker_runs(owner),
                                                         run_id)),
            "listed": store.client.zscore(store.keys.all_runs, run_id) is not None
            and store.client.zscore(store.keys.task_index("t.task"), run_id) is not None}


def test_claims_and_ends_index_in_the_same_round_trip(store: RunStore) -> None:
    store.create_run("i1", "t.task", "[]", "{}", "celery")
    c = claim(store, "i1", "n1")
    state = index_state(store, "i1")
    assert state["statuses"] == ["running"] and state["in_worker_set"] and state["listed"]
    assert state["lease"] == int(store.client.hget("t:{i1}:run", "lease_expires_ms"))
    store.end_attempt("i1", c.token, RunStatus.COMPLETED, {"type": "run_completed"},
                      task="t.task", owner="w1")
    state = index_state(store, "i1")
    assert state["statuses"] == ["completed"] and state["lease"] is None
    assert not state["in_worker_set"] and state["listed"]


def test_wrong_guesses_of_the_optimistic_index_update_are_repaired(store: RunStore) -> None:
    # A duplicate delivery finds the run busy: the indexes keep the holder's lease.
    store.create_run("i2", "t.task", "[]", "{}", "celery")
    holder = claim(store, "i2", "n1", owner="w1")
    assert claim(store, "i2", "n2", owner="w2").outcome == "busy"
    state = index_state(store, "i2", owner="w2")
    assert state["statuses"] == ["running"] and not state["in_worker_set"]
    assert state["lease"] == int(store.client.hget("t:{i2}:run", "lease_expires_ms"))
    assert index_state(store, "i2", owner="w1")["in_worker_set"]
    # A late copy of the message of an ended run leaves it where it is.
    store.end_attempt("i2", holder.token, RunStatus.COMPLETED, {"type": "run_completed"},
                      task="t.task", owner="w1")
    assert claim(store, "i2", "n3", owner="w3").outcome == "done"
    state = index_state(store, "i2", owner="w3")
    assert state["statuses"] == ["completed"] and state["lease"] is None
    assert not state["in_worker_set"]
    # A fenced attempt's end does not take the run away from the attempt that owns it now.
    store.create_run("i3", "t.task", "[]", "{}", "celery")
    zombie = claim(store, "i3", "n1", owner="w1")
    store.client.hset("t:{i3}:run", "lease_expires_ms", 1)
    owner = claim(store, "i3", "n2", owner="w2")
    assert owner.outcome == "claimed"
    assert store.end_attempt("i3", zombie.token, RunStatus.COMPLETED,
                             {"type": "run_completed"}, task="t.task", owner="w1") is None
    state = index_state(store, "i3", owner="w2")
    assert state["statuses"] == ["running"] and state["in_worker_set"]
    assert state["lease"] == int(store.client.hget("t:{i3}:run", "lease_expires_ms"))
    assert not index_state(store, "i3", owner="w1")["in_worker_set"]


def test_a_run_created_by_its_first_claim_is_listed(store: RunStore) -> None:
    # Published by a producer without celery-durable (send_task by name): no record yet.
    c = claim(store, "i4", "n1")
    assert c.outcome == "claimed" and c.status == "new"
    state = index_state(store, "i4")
    assert state["statuses"] == ["running"] and state["listed"] and state["in_worker_set"]
    assert state["lease"] == int(store.client.hget("t:{i4}:run", "lease_expires_ms"))
    created = int(store.client.hget("t:{i4}:run", "created_ms"))
    assert store.client.zscore(store.keys.all_runs, "i4") == created
    assert store.client.zscore(store.keys.task_index("t.task"), "i4") == created
    store.end_attempt("i4", c.token, RunStatus.COMPLETED, {"type": "run_completed"},
                      task="t.task", owner="w1")
    state = index_state(store, "i4")
    assert state["statuses"] == ["completed"] and state["listed"] and state["lease"] is None


def test_a_claim_told_the_run_may_be_unlisted_lists_it_in_its_own_round_trip(
        store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    if store.single_server:  # the claim's round trip is the DirectLine's; nothing follows
        monkeypatch.setattr(store.client, "pipeline",
                            lambda *a, **k: pytest.fail("a second round trip"))
    c = store.claim("i5", owner="w1", nonce="n1", task="t.task", args_json="[]",
                    kwargs_json="{}", queue="celery", listed=False)
    assert c.outcome == "claimed" and c.status == "new"
    monkeypatch.undo()
    created = int(store.client.hget("t:{i5}:run", "created_ms"))
    assert store.client.zscore(store.keys.all_runs, "i5") == created
    assert store.client.zscore(store.keys.task_index("t.task"), "i5") == created
    # A run that was listed after all keeps its place in the lists.
    store.create_run("i6", "t.task", "[]", "{}", "celery")
    listed_at = store.client.zscore(store.keys.all_runs, "i6")
    store.client.zadd(store.keys.all_runs, {"i6": 5})  # an old run, say
    assert store.claim("i6", owner="w1", nonce="n1", task="t.task", args_json="[]",
                       kwargs_json="{}", queue="celery", listed=False).outcome == "claimed"
    assert store.client.zscore(store.keys.all_runs, "i6") == 5 and listed_at != 5


def test_claim_returns_every_checkpoint_undecoded_even_with_newlines(store: RunStore) -> None:
    store.create_run("rn", "t.task", "[]", "{}", "celery")
    c = claim(store, "rn", "n1")
    keys = store.keys.run("rn")
    payloads = [checkpoint(f"s{i}", {"text": "a\nb", "i": i}) for i in range(3)]
    for pos, payload in enumerate(payloads):
        assert store.commit_step(keys, c.token, pos, f"s{pos}", payload) == 1
    store.end_attempt("rn", c.token, RunStatus.RETRYING, {"type": "attempt_retrying"},
                      task="t.task")
    again = claim(store, "rn", "n2")
    assert dict(again.checkpoints or {}) == {str(i): p for i, p in enumerate(payloads)}
    # A payload holding a raw newline (not written by celery-durable) comes back intact too.
    store.client.hset(keys.steps, "1", "not\njson")
    store.end_attempt("rn", again.token, RunStatus.RETRYING, {"type": "attempt_retrying"},
                      task="t.task")
    third = claim(store, "rn", "n3")
    assert dict(third.checkpoints or {}) == {"0": payloads[0], "1": "not\njson",
                                             "2": payloads[2]}
