"""Retry policies: per step, non-retryable errors, exhaustion."""

from __future__ import annotations

import pytest

from celery_durable import NonRetryableError, RunStatus


def test_step_policy_retries_inside_the_attempt(worker, tasks, client, token) -> None:
    # Given a step whose own policy allows 4 tries, failing twice
    result = tasks.step_policy_task.delay(token, failures=2)

    # Then it succeeds within the first (and only allowed) attempt of the task
    assert result.get(timeout=30) == "ok"
    assert tasks.count(token, "policy") == 3
    run = client.get_run(result.id)
    assert run.status is RunStatus.COMPLETED
    assert run.attempt == 1
    assert [e.type for e in run.steps[0].failures] == ["builtins.TimeoutError"] * 2


def test_step_policy_exhausted_fails_the_run(worker, tasks, client, token) -> None:
    # A step allowed 4 tries that fails 10 times, in a task allowed one attempt
    result = tasks.step_policy_task.delay(token, failures=10)
    with pytest.raises(TimeoutError):
        result.get(timeout=30)
    assert tasks.count(token, "policy") == 4
    run = client.get_run(result.id)
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.type == "builtins.TimeoutError"


def test_non_retryable_error_fails_at_once(worker, tasks, client, token) -> None:
    result = tasks.non_retryable_task.delay(token)
    with pytest.raises(NonRetryableError, match="card declined"):
        result.get(timeout=30)
    run = client.get_run(result.id)
    assert run.status is RunStatus.FAILED
    assert run.attempt == 1
    assert tasks.count(token, "refuse") == 1
    assert run.error is not None and "card declined" in run.error.message


def test_exhausted_attempts_fail_with_every_error(worker, tasks, client, token) -> None:
    result = tasks.exhausted_task.delay(token)
    with pytest.raises(ValueError, match="bad input #3"):
        result.get(timeout=30)
    run = client.get_run(result.id)
    assert run.status is RunStatus.FAILED
    assert run.attempt == 3
    # The first step committed once; the failing step ran in each of the 3 attempts.
    assert tasks.count(token, "load") == 1
    assert tasks.count(token, "always") == 3
    messages = [e.message for e in run.attempt_errors]
    assert messages == ["bad input #1", "bad input #2", "bad input #3"]
    assert all("Traceback" in e.traceback for e in run.attempt_errors)
    assert run.finished_at is not None
