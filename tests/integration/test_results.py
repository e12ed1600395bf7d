"""Celery's result of a completed run written by the script that ends its attempt
(celery_durable/results.py): when the result backend is the store's Redis server and db,
as in the test app, and by Celery itself otherwise."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery, chord
from celery.backends.redis import RedisBackend

from celery_durable import RunStatus
from celery_durable.results import CeleryResult, for_completed_run
from celery_durable.store import RunStore, store_for


@pytest.fixture(autouse=True)
def _one_server(test_app: Celery) -> None:
    if not store_for(test_app).single_server:
        pytest.skip("the store is on Redis Cluster: Celery stores every result itself")


@pytest.fixture
def stores(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The task ids Celery's Redis backend stores a result for itself, in any thread."""
    seen: list[str] = []
    lock = threading.Lock()
    original = RedisBackend._store_result

    def recording(self: Any, task_id: Any, *args: Any, **kwargs: Any) -> Any:
        with lock:
            seen.append(str(task_id))
        return original(self, task_id, *args, **kwargs)

    monkeypatch.setattr(RedisBackend, "_store_result", recording)
    yield seen


def meta_of(app: Celery, run_id: str) -> dict[str, Any]:
    backend: Any = app.backend
    raw = backend.client.get(backend.get_key_for_task(run_id))
    assert raw is not None, f"no Celery result for {run_id}"
    return dict(json.loads(raw))


def test_a_completed_run_s_result_comes_with_its_end(worker, tasks, client,
                                                    stores: list[str], test_app) -> None:
    result = tasks.add_one.delay(41)
    assert result.get(timeout=30) == 42
    assert result.id not in stores  # no GET, SET and PUBLISH after the body
    meta = meta_of(test_app, result.id)
    assert (meta["status"], meta["result"], meta["task_id"], meta["children"]) == (
        "SUCCESS", 42, result.id, [])
    assert meta["date_done"]
    backend: Any = test_app.backend
    ttl = backend.client.ttl(backend.get_key_for_task(result.id))
    assert 0 < ttl <= test_app.conf.result_expires
    assert client.get_run(result.id).status is RunStatus.COMPLETED


def test_a_failed_run_and_a_chain_are_stored_by_celery(worker, tasks, stores: list[str],
                                                      token: str) -> None:
    failed = tasks.exhausted_task.delay(token)
    with pytest.raises(Exception, match="bad input"):
        failed.get(timeout=30)
    assert failed.id in stores
    # A request with a chain: Celery publishes the next task before storing the result
    # (so it is listed among the children): the end leaves the result to Celery.
    chained = (tasks.add_one.s(1) | tasks.add_one.s()).delay()
    assert chained.get(timeout=30) == 3
    assert chained.parent.id in stores and chained.id not in stores


def test_chord_parts_are_counted_when_their_result_comes_with_the_end(
        worker, tasks, stores: list[str]) -> None:
    header = [tasks.add_one.s(i) for i in range(4)]
    result = chord(header)(tasks.total.s())
    assert result.get(timeout=60) == 1 + 2 + 3 + 4
    parts = [child.id for child in result.parent.results]
    assert not set(parts) & set(stores)


def test_a_result_goes_to_its_callers_waiting_on_the_channel(worker, tasks,
                                                            test_app) -> None:
    # .get() on the Redis backend subscribes to the result's channel: the end publishes.
    results = [tasks.add_one.delay(i) for i in range(20)]
    assert [r.get(timeout=30) for r in results] == [i + 1 for i in range(20)]


def test_a_fenced_out_attempt_writes_no_result(test_app) -> None:
    store = store_for(test_app)
    run_id = f"fenced-{uuid.uuid4().hex}"
    store.create_run(run_id, "t.task", "[]", "{}", "celery")
    claim = store.claim(run_id, owner="w|1|x", nonce="n1", task="t.task", args_json="[]",
                        kwargs_json="{}", queue="celery")
    key = f"celery-task-meta-{run_id}"
    written = CeleryResult(key=key, payload='{"status": "SUCCESS"}', expires_ms=60_000)
    stale = str(int(claim.token) + 1)
    assert store.end_attempt_releasing(run_id, stale, RunStatus.COMPLETED,
                                       {"type": "run_completed"}, task="t.task",
                                       celery_result=written)[0] is None
    assert store.client.exists(key) == 0
    pubsub = redis.Redis.from_url(store.settings.redis_url).pubsub()
    pubsub.subscribe(key)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    try:
        assert store.end_attempt_releasing(run_id, claim.token, RunStatus.COMPLETED,
                                           {"type": "run_completed"}, task="t.task",
                                           celery_result=written)[0] == "running"
        assert store.client.get(key) == '{"status": "SUCCESS"}'
        assert 0 < store.client.pttl(key) <= 60_000
        message = pubsub.get_message(timeout=5)
        assert message is not None and message["data"] == b'{"status": "SUCCESS"}'
    finally:
        pubsub.close()
        store.client.delete(key)


class _Request:
    """The request attributes for_completed_run reads, as a worker's would be."""

    def __init__(self, **overrides: Any) -> None:
        self.id = str(uuid.uuid4())
        self.is_eager = self.called_directly = False
        self.callbacks = self.chain = self.group = self.parent_id = None
        self.ignore_result = False
        self.children: list[Any] = []
        self.__dict__.update(overrides)


def decide(tasks: Any, store: RunStore, request: _Request, value: Any = 1) -> Any:
    task = tasks.add_one
    task.push_request(**request.__dict__)
    try:
        return for_completed_run(task, store, value)
    finally:
        task.pop_request()


@pytest.mark.parametrize("overrides", [
    {"is_eager": True}, {"called_directly": True}, {"ignore_result": True},
    {"callbacks": [{"task": "t.next"}]}, {"chain": [{"task": "t.next"}]},
])
def test_requests_whose_result_celery_stores_itself(tasks, test_app,
                                                    overrides: dict[str, Any]) -> None:
    store = store_for(test_app)
    assert decide(tasks, store, _Request()) is not None
    assert decide(tasks, store, _Request(**overrides)) is None


def test_a_backend_on_another_db_or_a_value_it_cannot_encode(tasks, test_app,
                                                            redis_base_url: str) -> None:
    store = store_for(test_app)
    assert decide(tasks, store, _Request(), value=object()) is None
    # The store on another db than the results: Celery stores them.
    elsewhere = RunStore(store.settings.model_copy(update={"redis_url": f"{redis_base_url}/5"}))
    try:
        assert decide(tasks, elsewhere, _Request()) is None
    finally:
        elsewhere.close()
    made = decide(tasks, store, _Request(group="g1", parent_id="p1"))
    assert made is not None and made.key == f"celery-task-meta-{made_id(made)}"
    meta = json.loads(made.payload)
    assert (meta["group_id"], meta["parent_id"], meta["status"]) == ("g1", "p1", "SUCCESS")
    assert made.expires_ms == test_app.conf.result_expires * 1000


def made_id(made: CeleryResult) -> str:
    return made.key.removeprefix("celery-task-meta-")


@pytest.mark.parametrize("extended", [False, True])
def test_the_meta_is_the_one_celery_builds(tasks, test_app, extended: bool) -> None:
    from celery import states
    from celery.result import AsyncResult

    from celery_durable.results import success_meta

    backend: Any = test_app.backend
    children = [AsyncResult("c1", app=test_app), AsyncResult("c2", app=test_app)]
    request = _Request(group="g1", parent_id="p1", children=children, task="t.name",
                       args=[1], kwargs={}, hostname="w@h", retries=0,
                       delivery_info={"routing_key": "celery"})
    previous = test_app.conf.result_extended
    test_app.conf.result_extended = extended
    try:
        ours = success_meta(backend, request, 42)
        celerys = backend._get_result_meta(result=42, state=states.SUCCESS, traceback=None,
                                           request=request)
    finally:
        test_app.conf.result_extended = previous
    ours_done, celerys_done = ours.pop("date_done"), celerys.pop("date_done")
    assert ours == celerys
    assert ("name" in ours) is extended
    # The same format and time zone (seconds apart at most).
    from datetime import datetime
    assert abs((datetime.fromisoformat(ours_done)
                - datetime.fromisoformat(celerys_done)).total_seconds()) < 5
    assert ours_done[-6:] == celerys_done[-6:]
