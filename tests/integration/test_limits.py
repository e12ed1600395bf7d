"""Cluster-wide concurrency limits with real worker processes and real Redis."""

from __future__ import annotations

import json
import time

import pytest
import redis

from celery_durable import RunStatus
from celery_durable.errors import RunNotFoundError
from tests.brokers import purge_queue, queue_length
from tests.chaos.helpers import wait_for
from tests.workers import celery_worker, worker_log

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def spans(redis_base_url: str, token: str) -> list[tuple[float, float, str]]:
    counters = redis.Redis.from_url(f"{redis_base_url}/3", decode_responses=True)
    return [tuple(json.loads(s)) for s in counters.lrange(f"{token}:spans", 0, -1)]  # type: ignore[misc]


def max_overlap(items: list[tuple[float, float, str]]) -> int:
    edges = sorted([(s, 1) for s, _, _ in items] + [(e, -1) for _, e, _ in items],
                   key=lambda x: (x[0], x[1]))
    now = peak = 0
    for _, delta in edges:
        now += delta
        peak = max(peak, now)
    return peak


def test_limit_holds_across_worker_processes(redis_base_url, tasks, client, token) -> None:
    queue = "limits"
    with celery_worker(redis_base_url, pool="threads", queue=queue, concurrency=4, name="l1"), \
            celery_worker(redis_base_url, pool="threads", queue=queue, concurrency=4,
                          name="l2"):
        results = [tasks.limited.apply_async((token, i, 0.2), queue=queue) for i in range(40)]
        assert sorted(r.get(timeout=120) for r in results) == list(range(40))
    observed = spans(redis_base_url, token)
    assert len(observed) == 40
    assert max_overlap(observed) == 2  # never more than the limit, and the limit is used
    info = client.concurrency_limit(tasks.limited.name)
    assert info.holders == [] and info.parked == []
    denied = sum(any(e.type == "slot_denied" for e in client.get_run(r.id).events)
                 for r in results)
    assert denied > 0  # runs did wait for a slot, without holding a worker


def test_per_key_limit(redis_base_url, tasks, token) -> None:
    queue = "limits-key"
    with celery_worker(redis_base_url, pool="threads", queue=queue, concurrency=6, name="k1"):
        results = [tasks.per_tenant.apply_async((token, tenant, i, 0.2), queue=queue)
                   for i in range(6) for tenant in ("acme", "globex", "initech")]
        assert sorted(r.get(timeout=120) for r in results) == sorted(
            ["acme", "globex", "initech"] * 6)
    observed = spans(redis_base_url, token)
    for tenant in ("acme", "globex", "initech"):
        assert max_overlap([s for s in observed if s[2] == tenant]) == 1
    assert max_overlap(observed) >= 2  # different keys ran side by side


def test_runtime_limit_change(redis_base_url, tasks, client, token) -> None:
    queue = "limits-runtime"
    name = tasks.adjustable.name
    try:
        with celery_worker(redis_base_url, pool="threads", queue=queue, concurrency=4,
                           name="r1"):
            results = [tasks.adjustable.apply_async((token, i, 0.3), queue=queue)
                       for i in range(16)]
            # The worker starts in its own time: change the limit once two runs finished.
            wait_for(lambda: len(spans(redis_base_url, token)) >= 2, 60, "two runs")
            changed_at = time.time()
            client.set_concurrency_limit(name, 3)
            assert client.concurrency_limit(name).limit == 3
            assert sorted(r.get(timeout=120) for r in results) == list(range(16))
    finally:
        client.set_concurrency_limit(name, 1)
    observed = spans(redis_base_url, token)
    before = [s for s in observed if s[1] <= changed_at]
    after = [s for s in observed if s[0] >= changed_at]
    assert len(before) >= 2 and max_overlap(before) == 1
    assert max_overlap(after) == 3


def test_slots_of_a_killed_worker_come_back(redis_base_url, tasks, client, token) -> None:
    import os
    import signal

    from tests.chaos.helpers import holder_main_pid, run_with

    queue = "limits-kill"
    with celery_worker(redis_base_url, pool="prefork", queue=queue, concurrency=1, name="x1"), \
            celery_worker(redis_base_url, pool="prefork", queue=queue, concurrency=1,
                          name="x2"):
        first = tasks.limited_pipeline.apply_async((f"{token}:a", 4, 0.5), queue=queue)
        run = wait_for(lambda: run_with(client, first.id, lambda r: r.step_count >= 1
                                        and bool(r.lease_owner)), 60, "the first run")
        second = tasks.limited_pipeline.apply_async((f"{token}:b", 2, 0.1), queue=queue)
        wait_for(lambda: run_with(client, second.id, lambda r: any(
            e.type == "slot_denied" for e in r.events)), 30, "the second run to park")
        os.kill(holder_main_pid(run), signal.SIGKILL)
        assert first.get(timeout=90) == [0, 1, 2, 3]
        assert second.get(timeout=90) == [0, 1]
    a, b = client.get_run(first.id), client.get_run(second.id)
    assert a.status is b.status is RunStatus.COMPLETED
    # The parked run started only after the first one ended: the limit held through the
    # crash, and its slot did not leak.
    assert b.steps[0].started_at >= a.finished_at  # type: ignore[operator]
    # A copy of the first run's message (restored by the reaper and by kombu alike) may
    # still be going through a worker, holding the slot for a moment: it must come back
    # well within the lease time (15 s) a leaked slot would take.
    name = tasks.limited_pipeline.name
    wait_for(lambda: client.concurrency_limit(name).holders == [], 5, "the slot to be free")
    assert client.concurrency_limit(name).parked == []


def test_a_stray_copy_of_an_ended_run_does_not_wait_for_a_slot(redis_base_url, tasks,
                                                               client, token,
                                                               test_app) -> None:
    # A restored or deferred copy of a run's message can arrive after the run ended, while
    # the limit is full. It must not queue for a slot (and be handed one later, ahead of
    # nobody but delaying the runs behind it): it is dropped as the duplicate it is.
    queue = "limits-stray"
    name = tasks.limited_pipeline.name
    with celery_worker(redis_base_url, pool="threads", queue=queue, concurrency=2,
                       name="s1") as proc:
        ended = tasks.limited_pipeline.apply_async((f"{token}:a", 1, 0.01), queue=queue)
        assert ended.get(timeout=60) == [0]
        holder = tasks.limited_pipeline.apply_async((f"{token}:b", 3, 0.5), queue=queue)
        wait_for(lambda: client.concurrency_limit(name).holders == [holder.id], 30,
                 "the second run to hold the slot")
        test_app.send_task(name, args=(f"{token}:a", 1, 0.01), task_id=ended.id, queue=queue)
        wait_for(lambda: f"run {ended.id} already completed" in worker_log(proc), 30,
                 "the worker to drop the copy")
        assert client.concurrency_limit(name).parked == []
        assert holder.get(timeout=60) == [0, 1, 2]
    assert not any(e.type == "slot_denied" for e in client.get_run(ended.id).events)
    assert client.concurrency_limit(name).holders == []


def test_a_failed_attempt_gives_its_slot_back_while_it_waits_to_retry(
        redis_base_url, tasks, client, token) -> None:
    # Limit 1: run a fails once and retries 2 s later (a countdown message); run b, waiting
    # for the slot, must run in that gap instead of waiting for a's retry to end.
    queue = "limits-retry"
    counters = redis.Redis.from_url(f"{redis_base_url}/3", decode_responses=True)
    with celery_worker(redis_base_url, pool="threads", queue=queue, concurrency=2,
                       name="rt1"):
        first = tasks.flaky_limited.apply_async((token, "a", True), queue=queue)
        wait_for(lambda: counters.get(f"{token}:a:tries") == "1", 60, "a's first attempt")
        second = tasks.flaky_limited.apply_async((token, "b", False), queue=queue)
        assert second.get(timeout=60) == "b"
        assert first.get(timeout=60) == "a"
    started = {label: start for start, _, label in spans(redis_base_url, token)}
    assert started["b"] < started["a"]  # b ran while a waited out its backoff
    assert client.get_run(first.id).attempt == 2
    info = client.concurrency_limit(tasks.flaky_limited.name)
    assert info.holders == [] and info.parked == []


def test_a_stale_hand_over_header_does_not_start_a_run_over_its_limit(
        redis_base_url, tasks, client, token) -> None:
    # A message that says its run was handed a slot (a restored copy of a hand-over, say)
    # while the limit is full: Redis decides, and the run waits for a slot like any other.
    from celery_durable.concurrency import HANDED_HEADER

    queue = "limits-stale"
    name = tasks.adjustable.name
    try:
        client.set_concurrency_limit(name, 0)  # paused: no slot for anyone
        with celery_worker(redis_base_url, pool="threads", queue=queue, concurrency=2,
                           name="st1"):
            sent = tasks.adjustable.app.send_task(
                name, args=(token, 1, 0.1), queue=queue, headers={HANDED_HEADER: 1})
            def parked() -> bool:
                try:
                    return any(e.type == "slot_denied" for e in client.get_run(sent.id).events)
                except RunNotFoundError:  # parked, not yet recorded
                    return False

            wait_for(parked, 60, "the run to wait for a slot")
            run = client.get_run(sent.id)
            assert run.status == RunStatus.PENDING and run.attempt == 0
            assert client.concurrency_limit(name).parked == [sent.id]
            client.set_concurrency_limit(name, 1)
            assert sent.get(timeout=60) == 1
        assert [label for _, _, label in spans(redis_base_url, token)] == ["1"]
        assert client.get_run(sent.id).attempt == 1
    finally:
        client.set_concurrency_limit(name, 1)


def test_queue_limit_is_shared_by_every_task_routed_there(redis_base_url, tasks,
                                                          token) -> None:
    queue = "images"
    env = {"DURABLE_TEST_QUEUE_LIMITS": json.dumps({queue: 2})}
    with celery_worker(redis_base_url, pool="threads", queue=queue, concurrency=6, name="q1",
                       extra_env=env):
        # Two different tasks (one of them unlimited by itself) share the queue's 2 slots.
        results = [tasks.per_tenant.apply_async((token, f"t{i}", i, 0.2), queue=queue)
                   for i in range(6)]
        results += [tasks.limited.apply_async((token, 100 + i, 0.2), queue=queue)
                    for i in range(6)]
        for r in results:
            r.get(timeout=120)
    assert max_overlap(spans(redis_base_url, token)) == 2


def test_a_full_limit_parks_runs_at_publish_without_a_message(redis_base_url, tasks, client,
                                                              token, test_app) -> None:
    # Given a limit of 1 and no worker yet, only the first run is put on the queue: the
    # others wait in Redis, in order, instead of each taking a trip through a worker.
    queue = "limits-publish"
    purge_queue(test_app, queue)
    client.set_concurrency_limit(tasks.adjustable.name, 1)
    results = [tasks.adjustable.apply_async((token, i, 0.1), queue=queue) for i in range(4)]
    assert queue_length(test_app, queue) == 1
    info = client.concurrency_limit(tasks.adjustable.name)
    assert info.holders == [results[0].id]
    assert info.parked == [r.id for r in results[1:]]
    for r in results[1:]:
        assert client.get_run(r.id).status is RunStatus.PENDING
        assert any(e.type == "slot_denied" for e in client.get_run(r.id).events)
    # With the store on the broker's Redis db, their messages wait with them, for the
    # release to put on the queue; elsewhere the release's worker publishes them.
    messages = client.store.keys.limit(f"task:{tasks.adjustable.name}", "_").messages
    broker = str(test_app.conf.broker_url)
    shares_db = broker.startswith("redis://") and broker == client.store.settings.redis_url
    assert client.store.client.hlen(messages) == (3 if shares_db else 0)
    # When a worker comes, each release publishes the next one: first come, first served.
    with celery_worker(redis_base_url, pool="threads", queue=queue, concurrency=4, name="p1"):
        assert [r.get(timeout=60) for r in results] == [0, 1, 2, 3]
    observed = sorted(spans(redis_base_url, token))
    assert [label for _, _, label in observed] == ["0", "1", "2", "3"]
    assert max_overlap(observed) == 1
    info = client.concurrency_limit(tasks.adjustable.name)
    assert info.holders == [] and info.parked == []


def test_a_delayed_publish_takes_its_slot_when_it_starts(redis_base_url, tasks, client,
                                                         token, test_app) -> None:
    queue = "limits-delayed"
    purge_queue(test_app, queue)
    client.set_concurrency_limit(tasks.adjustable.name, 1)
    first = tasks.adjustable.apply_async((token, 0, 0.1), queue=queue)
    delayed = tasks.adjustable.apply_async((token, 1, 0.1), queue=queue, countdown=0.5)
    # The delayed one is on the queue (its slot is not held while it waits for its ETA).
    assert queue_length(test_app, queue) == 2
    assert client.concurrency_limit(tasks.adjustable.name).holders == [first.id]
    with celery_worker(redis_base_url, pool="threads", queue=queue, concurrency=2, name="d1"):
        assert first.get(timeout=60) == 0 and delayed.get(timeout=60) == 1
    assert max_overlap(spans(redis_base_url, token)) == 1


def test_a_failed_publish_gives_its_slot_back(tasks, client, token, monkeypatch) -> None:
    from celery import Task

    client.set_concurrency_limit(tasks.adjustable.name, 1)

    def broker_down(*args: object, **kwargs: object) -> None:
        raise ConnectionError("the broker is unreachable")

    monkeypatch.setattr(Task, "apply_async", broker_down)
    with pytest.raises(ConnectionError):
        tasks.adjustable.apply_async((token, 0, 0.1), queue="limits-nowhere")
    info = client.concurrency_limit(tasks.adjustable.name)
    assert info.holders == [] and info.parked == []


def test_a_later_high_priority_run_goes_next(redis_base_url, tasks, client, token,
                                            test_app) -> None:
    # Given one slot, taken, and 20 runs waiting for it: a run published afterwards with a
    # high priority (0 with a Redis broker, as in Celery; 9 with RabbitMQ) starts as soon as
    # the slot frees.
    queue = "limits-priority"
    high = 0 if str(test_app.conf.broker_url).startswith("redis") else 9
    client.set_concurrency_limit(tasks.adjustable.name, 1)
    results = [tasks.adjustable.apply_async((token, i, 0.05), queue=queue) for i in range(21)]
    urgent = tasks.adjustable.apply_async((token, 99, 0.05), queue=queue, priority=high)
    assert client.concurrency_limit(tasks.adjustable.name).parked[0] == urgent.id
    with celery_worker(redis_base_url, pool="threads", queue=queue, concurrency=4, name="pr"):
        for r in [*results, urgent]:
            r.get(timeout=60)
    order = [label for _, _, label in sorted(spans(redis_base_url, token))]
    assert order[:2] == ["0", "99"]
    assert order[2:] == [str(i) for i in range(1, 21)]  # the others in their order


def test_a_tenant_with_a_backlog_does_not_hold_back_another(redis_base_url, tasks, client,
                                                           token) -> None:
    queue = "limits-fair"
    a = [tasks.fair_share.apply_async((token, "a", i, 0.01), queue=queue) for i in range(200)]
    b = [tasks.fair_share.apply_async((token, "b", i, 0.01), queue=queue) for i in range(2)]
    with celery_worker(redis_base_url, pool="threads", queue=queue, concurrency=4, name="fa"):
        for r in b:
            assert r.get(timeout=60) == "b"
        order = [label for _, _, label in sorted(spans(redis_base_url, token))]
        for r in a:
            r.get(timeout=120)
    # Tenant b's two runs were among the first few to start, not behind a's 200.
    assert {"b:0", "b:1"} <= set(order[:6])
