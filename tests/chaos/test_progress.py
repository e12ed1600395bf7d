"""A long step whose worker is SIGKILLed at about 70 % resumes from its saved progress on
another worker (real processes, real Redis)."""

from __future__ import annotations

import os
import signal

import pytest

from celery_durable import RunStatus
from tests.chaos.helpers import holder_main_pid, lease_pid, run_with, wait_for
from tests.workers import celery_worker

pytestmark = pytest.mark.slow

ROWS = 100
ROW_SECONDS = 0.05


def _saved_row(client, run_id: str) -> int:  # type: ignore[no-untyped-def]
    import json

    raw = client.store.client.hget(client.store.keys.run(run_id).progress, "0")
    return int(json.loads(raw)["v"]) if raw else 0


def test_long_step_killed_at_70_percent_resumes_from_its_progress(
    redis_base_url, tasks, client, token
) -> None:
    import tests.long_tasks as long_tasks

    queue = "chaos-progress"
    with celery_worker(redis_base_url, pool="prefork", queue=queue, concurrency=1, name="p1"), \
            celery_worker(redis_base_url, pool="prefork", queue=queue, concurrency=1,
                          name="p2"):
        # Given one step over 100 rows that saves the next row after each one
        result = long_tasks.batch_job.apply_async((token, ROWS, ROW_SECONDS), queue=queue)
        wait_for(lambda: _saved_row(client, result.id) >= 70, 60, "70 rows done")
        run = wait_for(lambda: run_with(client, result.id, lambda r: bool(r.lease_owner)), 10,
                       "the holder")
        # When the worker executing it is SIGKILLed, with its pool process (killed first,
        # so no row is saved after the progress is read below)
        victim = holder_main_pid(run)
        child = lease_pid(client, result.id)
        assert child > 0 and child != victim, "the run's pool process is unknown"
        os.kill(child, signal.SIGKILL)
        os.kill(victim, signal.SIGKILL)
        killed_at = _saved_row(client, result.id)
        # Then the other worker runs the step again, starting at the saved row
        assert result.get(timeout=90) == {"rows": ROWS, "started_at": killed_at}
    starts = [int(s) for s in tasks.counters.lrange(f"{token}:starts", 0, -1)]
    assert starts == [0, killed_at] and killed_at >= 70
    # Rows before the saved progress ran once; at most the row in flight ran twice.
    assert ROWS <= tasks.count(token, "rows") <= ROWS + 1
    run = client.get_run(result.id)
    assert run.status is RunStatus.COMPLETED and run.attempt == 2
    assert holder_main_pid(run) != victim if run.lease_owner else True
    assert any(e.type == "crash_detected" for e in run.events)
