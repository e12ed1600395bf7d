"""The counters test on real worker processes with each execution pool."""

from __future__ import annotations

import pytest

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
    for i, r in enumerate(results):
        assert tasks.count(f"{token}:{i}", "load") == 1
        assert tasks.count(f"{token}:{i}", "enrich") == 1
        assert tasks.count(f"{token}:{i}", "save") == 3
        run = client.get_run(r.id)
        assert run.status is RunStatus.COMPLETED and run.queue == queue
