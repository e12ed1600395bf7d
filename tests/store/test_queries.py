"""Run searches on a real Redis: filters, time windows, cursors, and the scan bound that
keeps a page from reading a whole index."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery

from celery_durable.client import DurableClient
from celery_durable.config import DurableSettings
from celery_durable.models import RunStatus
from celery_durable.queries import MAX_SCAN, RunQuery
from celery_durable.store import RunStore
from tests.conftest import wipe_store


@pytest.fixture
def client(redis_base_url: str, store_url: Callable[[int], str]) -> Iterator[DurableClient]:
    settings = DurableSettings(redis_url=store_url(12), key_prefix="q:")
    store = RunStore(settings)
    wipe_store(store.client, "q:")
    app = Celery("queries", broker=f"{redis_base_url}/12", set_as_current=False)
    yield DurableClient(app, store=store)
    wipe_store(store.client, "q:")
    store.client.close()


def make_runs(store: RunStore, count: int, task: str, queue: str, start_ms: int) -> list[str]:
    """``count`` pending runs created 1 ms apart from ``start_ms`` (through create_run.lua,
    then dated)."""
    ids = [f"{task}-{i:05d}" for i in range(count)]
    for run_id in ids:
        store.create_run(run_id, task, "[]", "{}", queue, idempotency_key=f"k-{run_id}")
    with store.client.pipeline(False) as pipe:
        for i, run_id in enumerate(ids):
            pipe.hset(store.keys.run(run_id).run, "created_ms", start_ms + i)
            for key in (store.keys.all_runs, store.keys.task_index(task),
                        store.keys.status_index(RunStatus.PENDING)):
                pipe.zadd(key, {run_id: start_ms + i})
        pipe.execute()
    return ids


def ids(page: Any) -> list[str]:
    return [r.id for r in page.runs]


def test_pages_filters_and_time_windows(client: DurableClient) -> None:
    a = make_runs(client.store, 30, "t.a", "q1", 1_000_000)
    b = make_runs(client.store, 10, "t.b", "q2", 2_000_000)
    first = client.search_runs(RunQuery(limit=15))
    assert ids(first) == list(reversed(b)) + list(reversed(a))[:5]
    assert first.counts["pending"] == 40 and first.counts["failed"] == 0
    rest: list[str] = []
    cursor = first.next_cursor
    while cursor is not None:
        page = client.search_runs(RunQuery(limit=15, cursor=cursor))
        rest += ids(page)
        cursor = page.next_cursor
    assert ids(first) + rest == list(reversed(b)) + list(reversed(a))
    assert ids(client.search_runs(RunQuery(task="t.a", limit=3))) == a[::-1][:3]
    assert ids(client.search_runs(RunQuery(queue="q2", limit=100))) == b[::-1]
    window = client.search_runs(RunQuery(since_ms=1_000_010, until_ms=1_000_012))
    assert ids(window) == [a[12], a[11], a[10]]
    assert ids(client.search_runs(RunQuery(status=RunStatus.PENDING, task="t.b",
                                           since_ms=2_000_008))) == [b[9], b[8]]
    assert ids(client.search_runs(RunQuery(status=RunStatus.FAILED))) == []


def test_search_by_id_or_idempotency_key(client: DurableClient) -> None:
    (run_id,) = make_runs(client.store, 1, "t.k", "q", 5_000)
    # The key is looked up per task (the app registers none here, so name the task).
    assert ids(client.search_runs(RunQuery(search=run_id))) == [run_id]
    client.store.claim_idempotency(client.store.keys.idempotency("t.k", "order-7"), run_id,
                                   "fp", 1, 60_000)
    assert ids(client.search_runs(RunQuery(search="order-7", task="t.k"))) == [run_id]
    assert ids(client.search_runs(RunQuery(search="order-8", task="t.k"))) == []
    assert client.get_run(run_id).idempotency_key == f"k-{run_id}"


def test_a_page_stops_after_the_scan_bound_and_hands_back_a_cursor(
        client: DurableClient) -> None:
    make_runs(client.store, MAX_SCAN + 100, "t.many", "busy", 10_000_000)
    page = client.search_runs(RunQuery(queue="nowhere", limit=10))
    assert page.runs == [] and page.next_cursor == MAX_SCAN
    last = client.search_runs(RunQuery(queue="nowhere", limit=10, cursor=page.next_cursor))
    assert last.runs == [] and last.next_cursor is None


def test_a_keyed_run_claimed_before_it_was_recorded_keeps_its_key(
        client: DurableClient) -> None:
    """A keyed run is published before it is recorded: a fast worker's claim can create the
    run hash first. The publisher's record then still notes the key (and changes nothing
    else)."""
    store = client.store
    claimed = store.claim("fast", owner="w1", nonce="n1", task="t.k", args_json="[1]",
                          kwargs_json="{}", queue="q")
    assert claimed.outcome == "claimed"
    assert store.create_run("fast", "t.k", "[1]", "{}", "q", idempotency_key="order-1") is False
    run = client.get_run("fast")
    assert run.idempotency_key == "order-1"
    assert run.status.value == "running" and run.attempt == 1
