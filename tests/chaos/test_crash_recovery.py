"""Kill workers mid-run (real processes, real Redis): runs finish elsewhere, committed steps
never run again, at most the in-flight step runs twice."""

from __future__ import annotations

import os
import signal
import time

import pytest

from celery_durable import RunStatus
from tests.chaos.helpers import holder_main_pid, lease_pid, run_with, wait_for
from tests.workers import celery_worker

pytestmark = pytest.mark.slow

STEPS = 6
STEP_SECONDS = 0.4


def _assert_resumed(tasks, client, token, result, killed_at_step: int) -> None:  # type: ignore[no-untyped-def]
    assert result.get(timeout=90) == list(range(STEPS))
    run = client.get_run(result.id)
    assert run.status is RunStatus.COMPLETED
    counts = [tasks.count(token, f"exec:{i}") for i in range(STEPS)]
    # Steps committed before the kill ran exactly once; the in-flight one at most twice.
    assert counts[:killed_at_step] == [1] * killed_at_step, counts
    assert counts[killed_at_step] in (1, 2), counts
    assert counts[killed_at_step + 1:] == [1] * (STEPS - killed_at_step - 1), counts
    assert run.attempt >= 2


def test_sigkill_of_the_main_worker_process(redis_base_url, tasks, client, token) -> None:
    queue = "chaos-main"
    with celery_worker(redis_base_url, pool="prefork", queue=queue, concurrency=1, name="a"), \
            celery_worker(redis_base_url, pool="prefork", queue=queue, concurrency=1,
                          name="b"):
        result = tasks.chaos_pipeline.apply_async((token, STEPS, STEP_SECONDS), queue=queue)
        run = wait_for(lambda: run_with(client, result.id, lambda r: r.step_count >= 2
                                        and bool(r.lease_owner)), 60, "two committed steps")
        committed = run.step_count
        victim = holder_main_pid(run)
        # When the main process dies, its pool child dies with it (pdeathsig).
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: run_with(client, result.id, lambda r: r.attempt >= 2
                                  and r.lease_owner and holder_main_pid(r) != victim),
                 30, "the run to resume on the other worker")
        recovery_s = time.monotonic() - killed
        _assert_resumed(tasks, client, token, result, committed)
    run = client.get_run(result.id)
    assert any(e.type == "run_reaped" for e in run.events)
    assert any(e.type == "crash_detected" for e in run.events)
    assert recovery_s < 15, f"recovery took {recovery_s:.1f} s"


def test_sigkill_of_a_prefork_child(redis_base_url, tasks, client, token) -> None:
    queue = "chaos-child"
    with celery_worker(redis_base_url, pool="prefork", queue=queue, concurrency=1, name="c"), \
            celery_worker(redis_base_url, pool="prefork", queue=queue, concurrency=1,
                          name="d"):
        result = tasks.chaos_pipeline.apply_async((token, STEPS, STEP_SECONDS), queue=queue)
        run = wait_for(lambda: run_with(client, result.id, lambda r: r.step_count >= 2
                                        and bool(r.lease_owner)), 60, "two committed steps")
        committed = run.step_count
        child = lease_pid(client, result.id)
        assert child and child != holder_main_pid(run)
        os.kill(child, signal.SIGKILL)
        _assert_resumed(tasks, client, token, result, committed)
    run = client.get_run(result.id)
    assert any(e.type == "crash_detected" for e in run.events)


def test_a_run_that_keeps_killing_its_worker_gives_up(
    redis_base_url, tasks, client, token
) -> None:
    queue = "chaos-oom"
    with celery_worker(redis_base_url, pool="prefork", queue=queue, concurrency=1, name="e",
                       extra_env={"DURABLE_TEST_MAX_CRASHES": "2"}):
        result = tasks.chaos_pipeline.apply_async((token, 3, 5.0), queue=queue)
        for crash in range(3):
            wait_for(lambda c=crash: run_with(client, result.id, lambda r: r.attempt == c + 1
                                              and bool(r.lease_owner)), 60,
                     f"attempt {crash + 1}")
            os.kill(lease_pid(client, result.id), signal.SIGKILL)
        with pytest.raises(Exception, match="died 3 times"):
            result.get(timeout=60)
    run = client.get_run(result.id)
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.type.endswith("RunCrashedError")


def test_hard_time_limit_fails_the_run_with_the_reason(redis_base_url, tasks, client,
                                                       token) -> None:
    from celery.exceptions import TimeLimitExceeded

    queue = "chaos-time-limit"
    with celery_worker(redis_base_url, pool="prefork", queue=queue, concurrency=1, name="t"):
        result = tasks.too_slow.apply_async((token,), queue=queue)
        with pytest.raises(TimeLimitExceeded):
            result.get(timeout=30)
        time.sleep(3)  # nothing retries or resumes it afterwards
    run = client.get_run(result.id)
    assert run.status is RunStatus.FAILED and run.attempt == 1
    assert run.error is not None and "hard time limit" in run.error.message
    assert tasks.count(token, "too_slow_body") == 1
