"""Progress inside a step, run timeouts that a run extends, step timeouts (embedded worker:
the step runs in a worker thread, so an overrun is interrupted by the watchdog)."""

from __future__ import annotations

import json

import pytest

from celery_durable import (
    NotInRunError,
    ProgressTooLargeError,
    RunStatus,
    RunTimeoutError,
    StepTimeoutError,
)


@pytest.fixture(scope="module")
def long_tasks(test_app):  # type: ignore[no-untyped-def]
    import tests.long_tasks as module

    return module


def test_a_retried_step_resumes_from_its_saved_progress(worker, long_tasks, tasks, client,
                                                        token) -> None:
    # Given a batch step that fails at row 7 of 10 on its first execution
    result = long_tasks.batch_job.delay(token, 10, 0.0, 7)
    # Then the retry starts at row 7, not 0: every row is processed exactly once
    assert result.get(timeout=30) == {"rows": 10, "started_at": 7}
    starts = [int(s) for s in tasks.counters.lrange(f"{token}:starts", 0, -1)]
    assert starts == [0, 7]
    assert tasks.count(token, "rows") == 10
    run = client.get_run(result.id)
    assert run.status is RunStatus.COMPLETED and run.attempt == 2
    # The progress record stays with the run's other keys and expires with them.
    store = client.store
    keys = store.keys.run(result.id)
    saved = json.loads(store.client.hget(keys.progress, "0"))
    assert saved["v"] == 10 and saved["a"] == 2
    run_ttl = store.client.pttl(keys.run)  # read first: both only decrease meanwhile
    assert 0 < store.client.pttl(keys.progress) <= run_ttl


def test_oversized_progress_fails_clearly(worker, long_tasks, client) -> None:
    result = long_tasks.oversized_progress_task.delay()
    with pytest.raises(ProgressTooLargeError) as info:
        result.get(timeout=30)
    assert "'oversized_progress'" in str(info.value)
    assert "durable_max_progress_bytes=65536" in str(info.value)
    assert client.get_run(result.id).attempt == 1  # a bug in the code: not retried


def test_progress_outside_a_step_is_an_error(worker, long_tasks) -> None:
    with pytest.raises(NotInRunError, match="only defined inside a step"):
        long_tasks.progress_outside_step.delay().get(timeout=30)


def test_extend_timeout_keeps_a_run_alive_past_its_run_timeout(worker, long_tasks, client,
                                                               token) -> None:
    # Given a run_timeout of 2 s and a durable sleep of 3 s after extending it by 30 s
    result = long_tasks.extended_run.delay(token, True)
    # Then the run wakes up after its original deadline and completes
    assert result.get(timeout=30)["deadline"] is not None
    run = client.get_run(result.id)
    assert run.status is RunStatus.COMPLETED and run.attempt == 2
    # The body calls extend_timeout() in each of its two attempts: each call moves the
    # deadline to 30 s from then.
    extended = [e for e in run.events if e.type == "timeout_extended"]
    assert len(extended) == 2
    assert all(int(e.fields["deadline_ms"]) > int(e.fields["previous_ms"]) for e in extended)
    assert run.finished_at is not None and run.created_at is not None
    assert (run.finished_at - run.created_at).total_seconds() > 2


def test_without_the_extension_the_same_run_times_out(worker, long_tasks, client,
                                                      token) -> None:
    result = long_tasks.extended_run.delay(token, False)
    with pytest.raises(RunTimeoutError):
        result.get(timeout=30)
    run = client.get_run(result.id)
    assert run.status is RunStatus.FAILED
    assert [s.name for s in run.steps] == ["checkpointed_nap", "nap"]


def test_a_step_that_overruns_its_timeout_is_retried(worker, long_tasks, tasks, client,
                                                     token) -> None:
    # Given a step with timeout=0.5 s whose first try takes 10 s
    result = long_tasks.timed_steps.delay(token)
    # Then the first try is interrupted and the step's own retry succeeds
    assert result.get(timeout=30) == "fast enough"
    assert tasks.count(token, "slow_then_fast") == 2
    run = client.get_run(result.id)
    assert run.attempt == 1
    (failure,) = run.steps[0].failures
    assert failure.type == "celery_durable.errors.StepTimeoutError"
    assert "'slow_then_fast'" in failure.message and "timeout of 0.5 s" in failure.message
    assert any(e.type == "step_failed" and e.fields["error_type"].endswith("StepTimeoutError")
               for e in run.events)


def test_step_timeout_must_be_positive() -> None:
    from celery_durable import ConfigurationError, step

    with pytest.raises(ConfigurationError, match=r"@step\(timeout=...\) must be > 0"):
        step(timeout=0)
    with pytest.raises(ConfigurationError, match="number of seconds"):
        step(timeout="1s")  # type: ignore[arg-type]
    assert StepTimeoutError("x").retryable


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["prefork", "solo", "threads"])
def test_step_timeout_in_real_worker_pools(redis_base_url, long_tasks, tasks, client, token,
                                           pool) -> None:
    from tests.workers import celery_worker

    # Given a step with timeout=1 s that would take 60 s, and two attempts: in the main
    # thread of a process (prefork, solo) it is blocked in one time.sleep(60), which SIGALRM
    # interrupts; in a worker thread it runs Python code, which the watchdog interrupts (a
    # thread blocked in one long C call is only interrupted when the call returns).
    queue = f"step-timeout-{pool}"
    with celery_worker(redis_base_url, pool=pool, queue=queue, concurrency=1, name=pool):
        result = long_tasks.blocked_task.apply_async((token, pool != "threads"), queue=queue)
        # Then each attempt is interrupted and the run fails with StepTimeoutError
        with pytest.raises(StepTimeoutError, match="timeout of 1 s"):
            result.get(timeout=90)
    run = client.get_run(result.id)
    assert run.status is RunStatus.FAILED and run.attempt == 2
    assert tasks.count(token, "blocked_sleep") == 2
    assert [e.type for e in run.attempt_errors] == ["celery_durable.errors.StepTimeoutError"] * 2
