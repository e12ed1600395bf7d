"""Completed runs are archived by the worker that completes them (archive.py): a real worker
and real Redis, then every way of reading or reusing the run, the CLI included."""

from __future__ import annotations

import json

import pytest

from celery_durable import ConfigurationError, RunStatus
from celery_durable.archive import unpack
from tests.integration.test_cli import cli


def archived(client, run_id: str) -> bool:  # type: ignore[no-untyped-def]
    keys = client.store.keys.run(run_id)
    return bool(client.store.client.exists(keys.archive)) and not client.store.client.exists(
        keys.steps, keys.trace)


def test_a_completed_run_is_archived_and_reads_back_whole(worker, tasks, client, token,
                                                          redis_base_url) -> None:
    # Given a run whose third step fails once: two attempts, a step failure, three steps
    result = tasks.counters_task.delay(token, failures=1)
    assert result.get(timeout=30) == {"result": 20}
    # Then its checkpoints and trace are in its archive, which has the retention TTL
    assert archived(client, result.id)
    store = client.store
    keys = store.keys.run(result.id)
    ttl = store.client.pttl(keys.archive)
    assert store.settings.retention_ms - 10_000 < ttl <= store.settings.retention_ms
    assert abs(store.client.pttl(keys.run) - ttl) < 5000
    packed = store.client.execute_command("GET", keys.archive, NEVER_DECODE=[])
    steps, trace = unpack(packed)
    assert [json.loads(p)["id"] for p in steps.values()] == ["load", "enrich", "flaky_save"]
    assert [json.loads(e)[3] for e in trace if json.loads(e)[3] != "log"][-1] == \
        "run_completed"
    # And the client reads it as before: steps, attempts, failures, events
    run = client.get_run(result.id)
    assert run.status is RunStatus.COMPLETED and run.attempt == 2
    assert [(s.name, s.attempt, s.value) for s in run.steps] == [
        ("load", 1, 1), ("enrich", 1, 2), ("flaky_save", 2, 20)]
    assert run.steps[2].failures[0].type == "builtins.ConnectionError"
    assert run.attempt_errors[0].type == "builtins.ConnectionError"
    types = [e.type for e in run.events]
    assert types.count("step_committed") == 3 and types.count("attempt_started") == 2
    assert types.index("attempt_failed") < types.index("run_completed")
    # And so does the CLI
    shown = cli(redis_base_url, "show", result.id)
    assert shown.returncode == 0, shown.stderr
    assert "flaky_save" in shown.stdout and "builtins.ConnectionError" in shown.stdout
    as_json = json.loads(cli(redis_base_url, "show", result.id, "--json").stdout)
    assert [s["name"] for s in as_json["steps"]] == ["load", "enrich", "flaky_save"]
    assert as_json["result"] == {"result": 20}


def test_an_archived_run_is_ended_for_good_and_can_be_forked(worker, tasks, client,
                                                              token) -> None:
    original = tasks.counters_task.delay(token, failures=0)
    assert original.get(timeout=30) == {"result": 20}
    assert archived(client, original.id)
    # A duplicate delivery answers the stored result without running anything.
    again = tasks.counters_task.apply_async((token,), {"failures": 0}, task_id=original.id)
    assert again.get(timeout=30) == {"result": 20}
    assert (tasks.count(token, "load"), tasks.count(token, "save")) == (1, 1)
    # Cancel and replay (reopen) leave it as it is.
    assert client.cancel(original.id) is RunStatus.COMPLETED
    with pytest.raises(ConfigurationError, match="only failed or cancelled runs"):
        client.replay(original.id)
    # A fork reuses the archived checkpoints before its step, and runs the rest.
    fork_id = client.replay(original.id, from_step="flaky_save")
    assert tasks.counters_task.AsyncResult(fork_id).get(timeout=30) == {"result": 20}
    assert (tasks.count(token, "load"), tasks.count(token, "enrich"),
            tasks.count(token, "save")) == (1, 1, 2)
    fork = client.get_run(fork_id)
    assert [s.name for s in fork.steps] == ["load", "enrich", "flaky_save"]
    assert archived(client, fork_id)
    # The origin's trace has the fork, after its archived events.
    types = [e.type for e in client.get_run(original.id).events]
    assert types.index("run_completed") < types.index("run_forked")
    keys = client.store.keys.run(original.id)
    assert client.store.client.exists(keys.archive) and client.store.client.llen(keys.trace)
