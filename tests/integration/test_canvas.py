"""Durable tasks inside Celery's canvas: chain and group."""

from __future__ import annotations

import pytest
from celery import chain, group

from celery_durable import RunStatus
from tests.workers import celery_worker


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


def test_a_sleeping_run_keeps_its_place_in_a_chain(worker, tasks, client, token) -> None:
    # The run is suspended (its attempt ends) and published again by a timer: the rest of
    # the chain must still follow it.
    result = chain(tasks.sleeper.si(token, 1.5), tasks.add_one.si(41)).delay()
    assert result.get(timeout=30) == 42
    assert client.get_run(result.parent.id).status is RunStatus.COMPLETED


@pytest.mark.slow
def test_parked_runs_keep_their_chains_and_callbacks(redis_base_url, tasks, client,
                                                      token) -> None:
    # A limit of 2 and six chains at once: most first runs wait for a slot, parked in
    # Redis; each still hands its result on to the rest of its chain and its callback.
    queue = "canvas-limits"
    with celery_worker(redis_base_url, pool="threads", queue=queue, concurrency=4,
                       name="canvas"):
        results = [
            chain(tasks.limited.si(token, i, 0.2).set(queue=queue),
                  tasks.add_one.s().set(queue=queue)).apply_async(
                link=tasks.add_one.si(100 + i).set(queue=queue))
            for i in range(6)
        ]
        assert sorted(r.get(timeout=60) for r in results) == [i + 1 for i in range(6)]
    parked = [r.parent.id for r in results
              if any(e.type == "slot_denied" for e in client.get_run(r.parent.id).events)]
    assert parked  # the limit did make some of them wait
