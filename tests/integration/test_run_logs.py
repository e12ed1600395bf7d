"""Per-run logs: records logged inside a run land in its trace; ``durable show`` prints them.

Real ``celery worker`` subprocesses (the log level and bounds are settings of the worker's
app), real Redis, and the real ``celery`` entry point for ``show``.
"""

from __future__ import annotations

import json

import pytest

from celery_durable import RunStatus
from tests.integration.test_cli import cli
from tests.workers import celery_worker

pytestmark = pytest.mark.slow


def _logs(client, run_id):  # type: ignore[no-untyped-def]
    return [(r.level, r.logger, r.message.splitlines()[0], r.step, r.attempt)
            for r in client.get_run(run_id).logs]


def test_task_and_plain_logs_are_captured_and_shown(redis_base_url, client, token) -> None:
    from tests import tasks_obs

    queue = f"logs-{token}"
    with celery_worker(redis_base_url, pool="prefork", concurrency=1, queue=queue):
        result = tasks_obs.logging_task.apply_async((token,), queue=queue)
        assert result.get(timeout=60) == "hello report"

    # Given a run that logged through the task logger and plain logging, in and out of
    # steps, and failed once: every INFO+ record is in its trace, in order, with its step
    # and attempt; the DEBUG one is not (durable_log_level defaults to INFO).
    name = tasks_obs.__name__
    assert _logs(client, result.id) == [
        ("INFO", name, f"run {token} starts", "", 1),
        ("INFO", name, f"greeting {token}", "greet", 1),
        ("WARNING", "tests.obs", "plain logging inside a step", "greet", 1),
        ("ERROR", "tests.obs", "report failed", "flaky_report", 1),
        ("INFO", name, f"run {token} starts", "", 2),
        ("INFO", "tests.tasks_obs.logging_task", "finished with hello and report", "", 2),
    ]
    failure = client.get_run(result.id).logs[3].message
    assert "Traceback (most recent call last)" in failure
    assert "ConnectionError: report service down" in failure

    # The trace events carry exactly the fields the Flower views read.
    run = client.get_run(result.id)
    event = next(e for e in run.events if e.type == "log")
    assert set(event.fields) == {"type", "level", "logger", "message", "step", "attempt", "ms"}

    shown = cli(redis_base_url, "show", result.id)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "logs (6)" in text
    assert f"INFO     a1  greet  {name}: greeting {token}" in text
    assert "ERROR    a1  flaky_report  tests.obs: report failed" in text
    assert "    ConnectionError: report service down" in text  # traceback lines indented
    assert "too fine to keep" not in text
    as_json = json.loads(cli(redis_base_url, "show", result.id, "--json").stdout)
    assert [r["message"].splitlines()[0] for r in as_json["logs"]][-1] == \
        "finished with hello and report"
    assert as_json["logs"][1]["step"] == "greet" and as_json["logs"][1]["attempt"] == 1


def test_level_and_bounds(redis_base_url, client, token) -> None:
    from tests import tasks_obs

    queue = f"logs-bound-{token}"
    env = {"DURABLE_TEST_LOG_LEVEL": "warning", "DURABLE_TEST_LOG_MAX_RECORDS": "5",
           "DURABLE_TEST_LOG_MAX_CHARS": "200"}
    with celery_worker(redis_base_url, pool="solo", queue=queue, extra_env=env):
        result = tasks_obs.chatty_task.apply_async((500, 10, 10), queue=queue)
        assert result.get(timeout=60) == 20

    logs = client.get_run(result.id).logs
    # INFO records are below durable_log_level=WARNING; of the warnings, the first five are
    # kept (the long one cut at 200 characters), then one notice says the rest were not.
    assert [r.level for r in logs] == ["WARNING"] * 6
    assert logs[0].message == "x" * 200 + "... [truncated 300 characters]"
    assert [r.message for r in logs[1:5]] == [f"warning {i}" for i in range(4)]
    assert logs[5].logger == "celery_durable.logs"
    assert "durable_log_max_records=5" in logs[5].message


def test_concurrent_runs_do_not_see_each_others_logs(redis_base_url, client, token) -> None:
    from tests import tasks_obs

    queue = f"logs-threads-{token}"
    with celery_worker(redis_base_url, pool="threads", concurrency=2, queue=queue):
        a = tasks_obs.tagged_logger.apply_async((token, "alpha", 40), queue=queue)
        b = tasks_obs.tagged_logger.apply_async((token, "beta", 40), queue=queue)
        assert a.get(timeout=60) == 40 and b.get(timeout=60) == 40

    for result, tag in ((a, "alpha"), (b, "beta")):
        run = client.get_run(result.id)
        assert run.status is RunStatus.COMPLETED
        messages = [r.message for r in run.logs]
        # Only this run's own records: none of the other run, none of the thread it
        # started (which has no run context).
        assert messages == [f"{tag} line {i}" for i in range(40)] + [f"{tag} done"]


def test_capture_can_be_turned_off(redis_base_url, client, token) -> None:
    from tests import tasks_obs

    queue = f"logs-off-{token}"
    with celery_worker(redis_base_url, pool="solo", queue=queue,
                       extra_env={"DURABLE_TEST_LOG_CAPTURE": "0"}):
        result = tasks_obs.chatty_task.apply_async((10, 3, 3), queue=queue)
        assert result.get(timeout=60) == 6
    run = client.get_run(result.id)
    assert run.status is RunStatus.COMPLETED and run.logs == []
    assert "logs (" not in cli(redis_base_url, "show", result.id).stdout
