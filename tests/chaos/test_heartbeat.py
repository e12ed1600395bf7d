"""The heartbeat keeps a long step's lease and its message alive: a task far longer than the
lease and the visibility timeout runs once, even with a second worker eager to take it."""

from __future__ import annotations

import pytest

from celery_durable import RunStatus
from tests.workers import celery_worker

pytestmark = pytest.mark.slow


def test_long_step_is_not_redelivered_or_taken_over(redis_base_url, tasks, client,
                                                   token) -> None:
    env = {"DURABLE_TEST_VT": "3", "DURABLE_TEST_LEASE_TTL_S": "3"}
    queue = "heartbeat"
    with celery_worker(redis_base_url, pool="prefork", queue=queue, concurrency=1, name="h1",
                       extra_env=env), \
            celery_worker(redis_base_url, pool="prefork", queue=queue, concurrency=1,
                          name="h2", extra_env=env):
        result = tasks.long_single_step.apply_async((token, 10.0), queue=queue)
        assert result.get(timeout=60) == "done"
    run = client.get_run(result.id)
    assert run.status is RunStatus.COMPLETED and run.attempt == 1
    assert tasks.count(token, "body") == 1 and tasks.count(token, "crunch") == 1
    kinds = {e.type for e in run.events}
    assert not kinds & {"duplicate_deferred", "run_reaped", "crash_detected", "attempt_fenced"}
