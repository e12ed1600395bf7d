"""The counters test on real worker processes with each execution pool; and every message
acknowledged, by the end of its run's attempt (solo, threads) or by Celery (prefork)."""

from __future__ import annotations

import json

import pytest
import redis

from celery_durable import RunStatus
from tests.workers import celery_worker


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["prefork", "solo", "threads"])
def test_counters_on_every_pool(redis_base_url, tasks, client, token, pool) -> None:
    queue = f"pool-{pool}"
    with celery_worker(redis_base_url, pool=pool, queue=queue):
        results = [
            tasks.counters_task.apply_async((f"{token}:{i}",), {"failures": 2}, queue=queue)
            for i in range(3)
        ]
        assert [r.get(timeout=60) for r in results] == [{"result": 20}] * 3
    broker = redis.Redis.from_url(f"{redis_base_url}/0")
    left = {json.loads(raw)[0]["headers"]["id"] for raw in broker.hvals("unacked")}
    assert not {r.id for r in results} & left
    for i, r in enumerate(results):
        assert tasks.count(f"{token}:{i}", "load") == 1
        assert tasks.count(f"{token}:{i}", "enrich") == 1
        assert tasks.count(f"{token}:{i}", "save") == 3
        run = client.get_run(r.id)
        assert run.status is RunStatus.COMPLETED and run.queue == queue
