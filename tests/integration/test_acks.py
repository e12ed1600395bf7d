"""The message of a completed run acknowledged by the script that ends its attempt
(celery_durable/acks.py): when the broker is kombu's Redis transport on the store's server
and db, as in the test app, and the pool runs the task in the worker's process."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.worker import state
from kombu import Connection
from kombu.transport import redis as kombu_redis
from vine import promise

from celery_durable import RunStatus
from celery_durable.acks import FusedAck, for_completed_run
from celery_durable.results import CeleryResult
from celery_durable.store import store_for


@pytest.fixture(autouse=True)
def _redis_broker_on_one_server(test_app: Celery, broker_url: str | None) -> None:
    if broker_url is not None:
        pytest.skip("RabbitMQ broker: Celery acknowledges every message itself")
    if not store_for(test_app).single_server:
        pytest.skip("the store is on Redis Cluster: Celery acknowledges every message itself")


@pytest.fixture
def celery_acks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Task ids of the messages kombu's Redis transport acknowledges (a MULTI/EXEC sent
    by Celery after the task), in any thread."""
    seen: list[str] = []
    lock = threading.Lock()
    original = kombu_redis.QoS.ack

    def recording(self: Any, delivery_tag: Any) -> Any:
        message = self._delivered.get(delivery_tag)
        with lock:
            seen.append(str((message.headers or {}).get("id")) if message else "?")
        return original(self, delivery_tag)

    monkeypatch.setattr(kombu_redis.QoS, "ack", recording)
    yield seen


def unacked_ids(redis_base_url: str) -> set[str]:
    """Task ids of every message in kombu's unacked hash of the broker's db."""
    broker = redis.Redis.from_url(f"{redis_base_url}/0")
    ids = set()
    for raw in broker.hvals("unacked"):
        message = json.loads(raw)[0]
        ids.add(str(message["headers"]["id"]))
    return ids


def test_a_completed_run_s_message_is_acknowledged_by_its_end(
        worker, tasks, celery_acks: list[str], redis_base_url: str, client) -> None:
    # More runs than the worker's prefetch (1): each settled ack must free kombu's
    # prefetch count, or the worker would stop consuming after the first.
    results = [tasks.add_one.delay(i) for i in range(20)]
    assert [r.get(timeout=30) for r in results] == [i + 1 for i in range(20)]
    ids = {r.id for r in results}
    assert not ids & set(celery_acks)  # no acknowledgement sent after the body
    assert not ids & unacked_ids(redis_base_url)
    assert {client.get_run(i).status for i in ids} == {RunStatus.COMPLETED}


def test_celery_acknowledges_a_failed_run_and_a_plain_task(
        worker, tasks, token: str, celery_acks: list[str], redis_base_url: str) -> None:
    failed = tasks.exhausted_task.delay(token)
    with pytest.raises(Exception, match="bad input"):
        failed.get(timeout=30)
    plain = tasks.plain_add.delay(1, 2)
    assert plain.get(timeout=30) == 3
    assert failed.id in celery_acks and plain.id in celery_acks
    assert not {failed.id, plain.id} & unacked_ids(redis_base_url)


def _unacked(client: Any, tag: str) -> tuple[bool, bool]:
    return bool(client.hexists("unacked", tag)), client.zscore("unacked_index", tag) is not None


@pytest.mark.parametrize("with_result", [False, True])
def test_a_fenced_out_attempt_acknowledges_nothing(test_app: Celery, with_result: bool) -> None:
    store = store_for(test_app)
    run_id = f"acked-{uuid.uuid4().hex}"
    tag = uuid.uuid4().hex
    store.create_run(run_id, "t.task", "[]", "{}", "celery")
    claim = store.claim(run_id, owner="w|1|x", nonce="n1", task="t.task", args_json="[]",
                        kwargs_json="{}", queue="celery")
    store.client.hset("unacked", tag, "[{}, \"\", \"celery\"]")
    store.client.zadd("unacked_index", {tag: 1.0})
    ack = FusedAck(unacked_key="unacked", index_key="unacked_index", tag=tag,
                   request=None, message=None)
    result = CeleryResult(key=f"celery-task-meta-{run_id}", payload="{}",
                          expires_ms=60_000) if with_result else None
    stale = str(int(claim.token) + 1)
    assert store.end_attempt_releasing(run_id, stale, RunStatus.COMPLETED,
                                       {"type": "run_completed"}, task="t.task",
                                       celery_result=result, ack=ack)[0] is None
    assert _unacked(store.client, tag) == (True, True)
    assert store.end_attempt_releasing(run_id, claim.token, RunStatus.COMPLETED,
                                       {"type": "run_completed"}, task="t.task",
                                       celery_result=result, ack=ack)[0] == "running"
    assert _unacked(store.client, tag) == (False, False)
    assert bool(store.client.exists(f"celery-task-meta-{run_id}")) is with_result


class _Request:
    """What acks.py reads of a worker's Request (weakly referenced by Celery's state)."""

    def __init__(self, run_id: str, message: Any, *, pid: int | None = None) -> None:
        self.id, self.message = run_id, message
        self.worker_pid = os.getpid() if pid is None else pid
        self.acknowledged = False
        # As Celery's consumer makes it: kombu's ack, handed to the event loop.
        self._on_ack = promise(lambda p, *args: None, (message.ack_log_error,))


class _Message:
    def __init__(self, channel: Any, tag: str) -> None:
        self.channel, self.delivery_tag, self.acknowledged = channel, tag, False

    def ack_log_error(self, logger: Any, errors: Any, multiple: bool = False) -> None:
        raise AssertionError("kombu's ack is not called in these checks")


class _Task:
    def __init__(self, run_id: str, *, acks_late: bool = True, eager: bool = False) -> None:
        self.acks_late = acks_late
        self.request = type("Ctx", (), {"id": run_id, "is_eager": eager,
                                        "called_directly": False})()


def test_when_the_end_acknowledges_and_when_celery_does(test_app: Celery,
                                                       redis_base_url: str) -> None:
    store = store_for(test_app)
    with test_app.connection_for_read() as conn, Connection(f"{redis_base_url}/5") as other:
        channel, elsewhere = conn.default_channel, other.default_channel
        cases: dict[str, tuple[Any, Any]] = {}

        def case(name: str, request: Any, task: Any) -> None:
            cases[name] = (request, task)

        run = "decide-run"
        case("ours", _Request(run, _Message(channel, "t1")), _Task(run))
        case("acks early", _Request(run, _Message(channel, "t1")), _Task(run, acks_late=False))
        case("eager", _Request(run, _Message(channel, "t1")), _Task(run, eager=True))
        case("another process", _Request(run, _Message(channel, "t1"), pid=1), _Task(run))
        case("two copies of the message", [_Request(run, _Message(channel, "t1")),
                                          _Request(run, _Message(channel, "t9"))], _Task(run))
        case("broker on another db", _Request(run, _Message(elsewhere, "t1")), _Task(run))
        case("no worker request", None, _Task(run))
        done = _Request(run, _Message(channel, "t1"))
        done.acknowledged = True
        case("already acknowledged", done, _Task(run))
        own = _Request(run, _Message(channel, "t1"))
        own._on_ack = promise(lambda *args: None)
        case("an acknowledgement of its own", own, _Task(run))

        decided = {}
        for name, (request, task) in cases.items():
            held = request if isinstance(request, list) else [request] if request else []
            state.active_requests.update(held)
            try:
                decided[name] = for_completed_run(task, store)
            finally:
                state.active_requests.difference_update(held)
        ours = decided.pop("ours")
        assert ours is not None
        assert (ours.unacked_key, ours.index_key, ours.tag) == ("unacked", "unacked_index", "t1")
        assert decided == dict.fromkeys(decided)  # every other case: Celery acknowledges


def test_a_global_keyprefix_names_the_unacked_keys(test_app: Celery,
                                                   redis_base_url: str) -> None:
    store = store_for(test_app)
    transport = {"global_keyprefix": "tenant:"}
    with Connection(f"{redis_base_url}/0", transport_options=transport) as conn:
        request = _Request("prefixed", _Message(conn.default_channel, "t2"))
        state.active_requests.add(request)
        try:
            ack = for_completed_run(_Task("prefixed"), store)  # type: ignore[arg-type]
        finally:
            state.active_requests.discard(request)
    assert ack is not None
    assert (ack.unacked_key, ack.index_key) == ("tenant:unacked", "tenant:unacked_index")


def test_a_threads_pool_acknowledges_in_its_event_loop(test_app: Celery, tasks,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       redis_base_url: str) -> None:
    """kombu's state is Celery's event loop's: the in-memory part of a fused ack runs
    there (handed over by Celery's call_soon, which wakes the loop), never in the pool
    thread that ended the run."""
    from celery_durable import acks
    from celery_durable.testing import durable_worker

    threads: list[str] = []
    original = acks._ack_in_memory

    def recording(message: Any, *args: Any, **kwargs: Any) -> None:
        threads.append(threading.current_thread().name)
        original(message, *args, **kwargs)

    monkeypatch.setattr(acks, "_ack_in_memory", recording)
    queue = f"acks-threads-{uuid.uuid4().hex[:6]}"
    with durable_worker(test_app, pool="threads", concurrency=3, loglevel="WARNING",
                        shutdown_timeout=10, queues=[queue]):
        results = [tasks.add_one.apply_async((i,), queue=queue) for i in range(12)]
        assert [r.get(timeout=30) for r in results] == [i + 1 for i in range(12)]
    assert len(threads) == 12
    assert not [name for name in threads if name.startswith("ThreadPoolExecutor")]
    assert not {r.id for r in results} & unacked_ids(redis_base_url)
