"""The counters test: a failure at step 3 retries from step 3; steps 1 and 2 run once."""

from __future__ import annotations

from celery_durable import RunStatus


def test_failure_at_step_three_resumes_from_step_three(worker, tasks, client, token) -> None:
    # Given a task whose third step fails twice, then succeeds
    result = tasks.counters_task.delay(token, failures=2)

    # When the worker runs it to the end
    assert result.get(timeout=30) == {"result": 20}

    # Then steps 1 and 2 ran exactly once and step 3 three times
    assert tasks.count(token, "load") == 1
    assert tasks.count(token, "enrich") == 1
    assert tasks.count(token, "save") == 3

    run = client.get_run(result.id)
    assert run.status is RunStatus.COMPLETED
    assert run.attempt == 3
    assert run.result == {"result": 20}
    assert [s.name for s in run.steps] == ["load", "enrich", "flaky_save"]
    assert [s.attempt for s in run.steps] == [1, 1, 3]
    assert len(run.attempt_errors) == 2
    assert all(e.type == "builtins.ConnectionError" for e in run.attempt_errors)
    assert "save failed" in run.attempt_errors[0].message
    assert "Traceback" in run.attempt_errors[0].traceback
