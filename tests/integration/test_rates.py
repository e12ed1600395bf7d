"""Cluster-wide rate limits with real workers: tasks, steps, lossy limits, runtime rates."""

from __future__ import annotations

import json

import pytest
import redis

from celery_durable import RunStatus
from tests.workers import celery_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def times(redis_base_url: str, token: str, what: str) -> list[tuple[float, str]]:
    counters = redis.Redis.from_url(f"{redis_base_url}/3", decode_responses=True)
    return sorted(tuple(json.loads(x)) for x in counters.lrange(f"{token}:{what}", 0, -1))  # type: ignore[misc]


def max_in_window(moments: list[float], window: float) -> int:
    moments = sorted(moments)
    return max(sum(1 for m in moments[i:] if m < first + window)
               for i, first in enumerate(moments))


def test_a_rate_holds_across_three_workers(redis_base_url, tasks, client, token) -> None:
    # 10 per second (burst 2) for 60 runs published at once, 3 workers with 4 threads each:
    # no second ever admits more than 10 + 2, and every run completes.
    queue = "rates"
    workers = [celery_worker(redis_base_url, pool="threads", queue=queue, concurrency=4,
                             name=f"rate{n}") for n in range(3)]
    with workers[0], workers[1], workers[2]:
        results = [tasks.rated.apply_async((token, i), queue=queue) for i in range(50)]
        # ...and 10 sent by name, which take their turn in the worker.
        results += [tasks.rated.app.send_task(tasks.rated.name, (token, 50 + i), queue=queue)
                    for i in range(10)]
        assert sorted(r.get(timeout=120) for r in results) == list(range(60))
    starts = [t for t, _ in times(redis_base_url, token, "starts")]
    assert len(starts) == 60
    # The bodies start on their turns: never more than 10 (+ the burst of 2) in a second,
    # and the 60 of them take the 5.8 s the rate asks for.
    assert max_in_window(starts, 1.0) <= 12
    assert max(starts) - min(starts) >= (60 - 2) / 10 - 0.2
    waited = [r for r in results if any(e.type == "rate_limited"
                                        for e in client.get_run(r.id).events)]
    assert len(waited) >= 40  # waiting runs are told why, in their trace


def test_a_step_rate_limit_throttles_only_that_step(redis_base_url, tasks, client,
                                                    token) -> None:
    queue = "rates-step"
    with celery_worker(redis_base_url, pool="threads", queue=queue, concurrency=3, name="rs"):
        results = [tasks.step_throttled.apply_async((f"{token}", 5), queue=queue)
                   for _ in range(3)]
        for r in results:
            assert r.get(timeout=120) == [0, 2, 4, 6, 8]
    throttled = [t for t, _ in times(redis_base_url, token, "throttled")]
    free = [t for t, _ in times(redis_base_url, token, "free")]
    assert len(throttled) == len(free) == 15
    assert max_in_window(throttled, 1.0) <= 5 + 1
    # The unthrottled first step of every run ran at once, not behind the others' turns.
    assert max(free[:3]) - min(free[:3]) < 0.5
    steps = {s.name for r in results for s in client.get_run(r.id).steps}
    assert "throttled_call~rate" in steps and "throttled_call#5" in steps


def test_a_lossy_rate_drops_runs_and_skips_steps(worker, tasks, client, token) -> None:
    results = [tasks.rated_lossy.delay(token, i) for i in range(3)]
    assert results[0].get(timeout=30) == 0
    for r in results[1:]:
        run = client.get_run(r.id)
        assert run.status is RunStatus.CANCELLED
        assert "rate_mode='drop'" in run.events[-1].fields.get("reason", "")
        assert r.state == "REVOKED"
    assert tasks.count(token, "runs") == 1
    # A lossy step: the second call is skipped (None), and the trace says why.
    outcome = tasks.lossy_steps.delay(token).get(timeout=30)
    assert outcome == ["called", None] and tasks.count(token, "lossy") == 1


def test_rates_change_at_runtime(tasks, client) -> None:
    name = tasks.rated.name
    try:
        client.set_rate_limit(name, "100/s", burst=5)
        info = client.rate_limit(name)
        assert (info.coded, info.runtime) == ("10/s", "100/s")
    finally:
        client.set_rate_limit(name, None)
    assert client.rate_limit(name).runtime is None


def test_runs_waiting_for_a_slow_rate_start_when_it_is_raised(redis_base_url, tasks, client,
                                                               token) -> None:
    # One start a minute per key: the second and third runs wait (no worker holds them).
    # Raising the rate at runtime forgets the turns booked at the old one and dispatches
    # the waiting runs at once.
    queue = "rates-raised"
    name = tasks.rate_keyed.name
    with celery_worker(redis_base_url, pool="threads", queue=queue, concurrency=2, name="rr"):
        results = [tasks.rate_keyed.apply_async((token, i), queue=queue) for i in range(3)]
        assert results[0].get(timeout=30) == 0
        assert client.rate_limit(name, token).waiting == 2
        try:
            client.set_rate_limit(name, "100/s")
            assert [r.get(timeout=30) for r in results[1:]] == [1, 2]
        finally:
            client.set_rate_limit(name, None)
    assert client.rate_limit(name, token).waiting == 0


def waited_in_queue(client, results) -> set[str]:
    """The runs that waited in the rate limit's queue (not just for an ETA turn)."""
    return {r.id for r in results
            if any(e.type == "rate_limited" and "position" in e.fields
                   for e in client.get_run(r.id).events)}


def test_a_later_high_priority_run_takes_the_next_free_turn(redis_base_url, tasks, client,
                                                            token, test_app) -> None:
    # 4 starts a second: of 20 runs published at once, those whose turns come within the
    # dispatch lookahead get them at once; the rest wait in the limit's queue. A run
    # published afterwards with a high priority (0 with a Redis broker, 9 with RabbitMQ)
    # goes before every run that waits.
    queue = "rates-priority"
    high = 0 if str(test_app.conf.broker_url).startswith("redis") else 9
    results = [tasks.rate_shared.apply_async((token, "a", i), queue=queue) for i in range(20)]
    urgent = tasks.rate_shared.apply_async((token, "a", 99), queue=queue, priority=high)
    info = client.rate_limit(tasks.rate_shared.name)
    assert info.waiting >= 5 and info.waiting_by_priority.get(9) == 1
    waited = waited_in_queue(client, results)
    assert len(waited) >= 5
    with celery_worker(redis_base_url, pool="threads", queue=queue, concurrency=4, name="rp"):
        for r in [*results, urgent]:
            r.get(timeout=60)
    order = [label for _, label in times(redis_base_url, token, "starts")]
    queued = [f"a:{i}" for i, r in enumerate(results) if r.id in waited]
    assert order.index("a:99") < min(order.index(label) for label in queued)
    assert [label for label in order if label in queued] == queued  # the others in order
    assert client.rate_limit(tasks.rate_shared.name).waiting == 0


def test_a_tenant_with_a_backlog_does_not_hold_back_another_under_a_rate(
        redis_base_url, tasks, client, token) -> None:
    queue = "rates-fair"
    a = [tasks.rate_shared.apply_async((token, "a", i), queue=queue) for i in range(24)]
    b = [tasks.rate_shared.apply_async((token, "b", i), queue=queue) for i in range(2)]
    waited = waited_in_queue(client, [*a, *b])
    assert {r.id for r in b} <= waited
    with celery_worker(redis_base_url, pool="threads", queue=queue, concurrency=4, name="rf"):
        for r in [*a, *b]:
            r.get(timeout=60)
    order = [label for _, label in times(redis_base_url, token, "starts")]
    queued = [label for label in order
              if any(r.id in waited and label == f"{t}:{i}"
                     for t, runs in (("a", a), ("b", b)) for i, r in enumerate(runs))]
    # Tenant b's two runs are among the first few of the waiting runs to start, not behind
    # the rest of tenant a's backlog.
    assert {"b:0", "b:1"} <= set(queued[:4])
