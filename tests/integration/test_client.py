"""DurableClient reads: list_runs filters, get_run of an unknown id."""

from __future__ import annotations

import time

import pytest

from celery_durable import RunNotFoundError, RunStatus


def test_list_runs_filters_and_orders(worker, tasks, client, token) -> None:
    ok = []
    for i in range(3):
        ok.append(tasks.add_one.delay(i))
        time.sleep(0.003)  # the index orders by creation time in ms: one run per ms
    bad = tasks.exhausted_task.delay(token)
    for r in ok:
        r.get(timeout=30)
    with pytest.raises(ValueError):
        bad.get(timeout=30)
    completed = client.list_runs(status="completed", task=tasks.add_one.name, limit=1000)
    ids = [r.id for r in completed]
    assert {r.id for r in ok} <= set(ids)
    assert all(r.status is RunStatus.COMPLETED and r.task == tasks.add_one.name
               for r in completed)
    newest = client.list_runs(task=tasks.add_one.name, limit=3)
    assert [r.id for r in newest] == [r.id for r in reversed(ok)]
    failed = client.list_runs(status=RunStatus.FAILED, limit=1000)
    assert bad.id in [r.id for r in failed]
    assert all(r.status is RunStatus.FAILED for r in failed)
    assert client.list_runs(task=tasks.add_one.name, limit=1, offset=1)[0].id == ok[1].id


def test_unknown_run_is_a_clear_error(client) -> None:
    with pytest.raises(RunNotFoundError, match="no durable run 'nope'"):
        client.get_run("nope")
