"""DirectLine on a real Redis: the hot path's commands on one connection per thread and
process, surviving dropped connections, lost scripts and error replies."""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections.abc import Callable, Iterator

import pytest
import redis

from celery_durable.config import DurableSettings
from celery_durable.errors import StoreError
from celery_durable.models import RunStatus
from celery_durable.store import RunStore
from tests.conftest import wipe_store


@pytest.fixture
def store(store_url: Callable[[int], str]) -> Iterator[RunStore]:
    st = RunStore(DurableSettings(redis_url=store_url(5), key_prefix="dl:"))
    if not st._direct.enabled:
        pytest.skip("the store is on Redis Cluster: DirectLine is not used there")
    wipe_store(st.client, "dl:")
    yield st
    wipe_store(st.client, "dl:")
    st.close()


def run_once(store: RunStore, run_id: str) -> str | None:
    """create, claim, commit one step and complete: every hot-path round trip."""
    store.create_run(run_id, "t.task", "[]", "{}", "celery")
    claim = store.claim(run_id, owner="w|1|x", nonce=run_id, task="t.task", args_json="[]",
                        kwargs_json="{}", queue="celery")
    assert claim.outcome == "claimed"
    keys = store.keys.run(run_id)
    assert store.commit_step(keys, claim.token, 0, "s", json.dumps({"id": "s", "v": 1})) == 1
    return store.end_attempt(run_id, claim.token, RunStatus.COMPLETED,
                             {"type": "run_completed"}, task="t.task", owner="w|1|x",
                             result_json="1")


def client_ids(store: RunStore) -> set[int]:
    return {int(c["id"]) for c in store.client.client_list()}


def test_a_thread_keeps_one_connection_and_another_thread_opens_its_own(
        store: RunStore) -> None:
    assert run_once(store, "warm") == "running"
    before = client_ids(store)
    for n in range(20):
        assert run_once(store, f"r{n}") == "running"
    # 80 round trips, no new connection (earlier tests' connections may close meanwhile)
    assert client_ids(store) - before == set()
    mine = store._direct.call("CLIENT", "ID")
    theirs: list[int] = []
    thread = threading.Thread(target=lambda: theirs.append(store._direct.call("CLIENT", "ID")))
    thread.start()
    thread.join()
    assert theirs and theirs[0] != mine


def _child_client_id(store: RunStore, out: multiprocessing.Queue[int]) -> None:
    assert run_once(store, "in-child") == "running"
    out.put(int(store._direct.call("CLIENT", "ID")))


def test_a_forked_process_opens_its_own_connection(store: RunStore) -> None:
    parent = store._direct.call("CLIENT", "ID")
    context = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[int] = context.Queue()
    child = context.Process(target=_child_client_id, args=(store, out))
    child.start()
    child_id = out.get(timeout=30)
    child.join(30)
    assert child.exitcode == 0
    assert child_id != parent
    assert store._direct.call("CLIENT", "ID") == parent  # the parent's is untouched
    assert store.client.hget(store.keys.run("in-child").run, "status") == "completed"


def test_a_connection_the_server_dropped_is_replaced(store: RunStore) -> None:
    killed = store._direct.call("CLIENT", "ID")
    assert store.client.execute_command("CLIENT", "KILL", "ID", killed) == 1
    assert run_once(store, "after-kill") == "running"
    assert store._direct.call("CLIENT", "ID") != killed


def test_scripts_the_server_lost_are_loaded_again(store: RunStore) -> None:
    assert run_once(store, "before-flush") == "running"
    store.client.script_flush()
    assert run_once(store, "after-flush") == "running"  # pipelines and single EVALSHAs


def test_an_error_reply_is_raised_and_the_connection_stays_in_step(store: RunStore) -> None:
    store.client.set("dl:plain-string", "x")
    replies = store._direct.pipeline([("PING",), ("HGET", "dl:plain-string", "f"),
                                      ("ECHO", "after")])
    assert replies[0] == "PONG" and replies[2] == "after"
    assert isinstance(replies[1], redis.ResponseError) and "WRONGTYPE" in str(replies[1])
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        store._direct.call("HGET", "dl:plain-string", "f")
    assert store._direct.call("ECHO", "still in step") == "still in step"


def test_an_unreachable_server_raises_a_connection_error(store: RunStore) -> None:
    unreachable = RunStore(DurableSettings(redis_url="redis://127.0.0.1:1/0",
                                           redis_socket_timeout_s=0.5))
    with pytest.raises(redis.ConnectionError):
        unreachable._direct.call("PING")
    with pytest.raises(StoreError, match="record run r"):
        unreachable.create_run("r", "t.task", "[]", "{}", "celery")


def reply_skips(store: RunStore) -> int:
    stats = store.client.info("commandstats").get("cmdstat_client|reply", {})
    return int(stats.get("calls", 0))


def record_published(store: RunStore, run_id: str) -> None:
    store.record_published_run(run_id, "t.task", "[]", "{}", "celery", "key-1")


def test_a_published_keyed_run_is_recorded_without_waiting_and_the_line_stays_in_step(
        store: RunStore) -> None:
    record_published(store, "first")  # waits (the first record of this thread)
    assert store._direct.can_send_quietly()
    skips = reply_skips(store)
    sent = []
    for n in range(50):
        record_published(store, f"quiet{n}")
        sent.append(f"quiet{n}")
    # Replies were skipped, so the next reply read on this thread's line is its own.
    assert store._direct.call("ECHO", "in step") == "in step"
    for run_id in ["first", *sent]:
        run = store.client.hgetall(store.keys.run(run_id).run)
        assert run["status"] == "pending" and run["idempotency_key"] == "key-1"
        assert store.client.zscore(store.keys.status_index(RunStatus.PENDING), run_id)
    # Each quiet record skipped the reply of each of its commands: EVALSHA create_run and
    # the 3 index ZADDs (their TTL was refreshed by the first record, once a minute).
    assert reply_skips(store) - skips == 50 * 4


def test_a_server_that_lost_its_scripts_gets_them_back_from_the_next_waiting_record(
        store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    record_published(store, "warm")
    store.client.script_flush()
    record_published(store, "dropped")  # quiet: the server drops its EVALSHA (NOSCRIPT)
    assert store._direct.call("ECHO", "in step") == "in step"
    assert not store.client.exists(store.keys.run("dropped").run)
    monkeypatch.setattr("celery_durable.store.QUIET_RECHECK_S", 0.0)
    record_published(store, "rechecked")  # the periodic waiting record loads the scripts
    assert store.client.hget(store.keys.run("rechecked").run, "status") == "pending"


def test_a_server_that_refuses_client_reply_gets_waiting_records(
        store: RunStore, store_url: Callable[[int], str]) -> None:
    # An ACL user without CLIENT (as managed services and proxies may set it up).
    store.client.acl_setuser("noreply", enabled=True, passwords=["+pw"], keys=["*"],
                             commands=["+@all", "-client"])
    try:
        url = store_url(5).replace("redis://", "redis://noreply:pw@")
        limited = RunStore(DurableSettings(redis_url=url, key_prefix="dl:"))
        record_published(limited, "a")
        record_published(limited, "b")
        assert not limited._direct.can_send_quietly()
        assert limited._direct.call("ECHO", "in step") == "in step"
        for run_id in ("a", "b"):
            assert store.client.hget(store.keys.run(run_id).run, "status") == "pending"
        limited.close()
    finally:
        store.client.acl_deluser("noreply")


def test_commands_are_packed_as_redis_py_packs_them(store: RunStore) -> None:
    from celery_durable.direct import _pack

    conn = store.client.connection_pool.make_connection()
    commands = [("EVALSHA", "a" * 40, 2, "k1", "k2", 0.1, 1e20, -3, 10**30, "é€", b"\x00\xff",
                 "a\r\nb"), ("ZADD", "z", 1733333333333.5, "m"), ("PING",)]
    assert b"".join(_pack(conn, commands)) == b"".join(conn.pack_commands(commands))
    with pytest.raises(redis.DataError):
        _pack(conn, [("SET", "k", None)])
