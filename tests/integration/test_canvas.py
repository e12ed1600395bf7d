"""Durable tasks inside Celery's canvas: chain and group."""

from __future__ import annotations

from celery import chain, group

from celery_durable import RunStatus


def test_chain_of_durable_tasks(worker, tasks, client) -> None:
    result = chain(tasks.add_one.s(1), tasks.add_one.s(), tasks.add_one.s()).delay()
    assert result.get(timeout=30) == 4
    run = client.get_run(result.id)
    assert run.status is RunStatus.COMPLETED and run.args == [3]


def test_group_of_durable_tasks_with_a_retry(worker, tasks, client, token) -> None:
    result = group(
        tasks.counters_task.s(f"{token}:{i}", failures=i % 2) for i in range(4)
    ).delay()
    assert result.get(timeout=60) == [{"result": 20}] * 4
    for i, child in enumerate(result.results):
        run = client.get_run(child.id)
        assert run.status is RunStatus.COMPLETED
        assert run.attempt == 1 + i % 2
        assert tasks.count(f"{token}:{i}", "load") == 1
