"""Child runs: call() and gather(), failures, and a parent that never starts a child twice."""

from __future__ import annotations

import time

import pytest

from celery_durable import RunStatus
from tests.workers import celery_worker


def test_call_waits_for_a_child_that_retries(worker, tasks, client, token) -> None:
    result = tasks.parent_calls.delay(token, 21, fail_first=True)
    assert result.get(timeout=30) == 43
    run = client.get_run(result.id)
    assert len(run.children) == 1
    child = client.get_run(run.children[0])
    assert child.parent_id == result.id and child.attempt == 2 and child.result == 42
    assert tasks.count(token, "load") == 1 and tasks.count(token, "parent_after") == 1
    assert [s.name for s in run.steps] == [
        "load", "call:tests.tasks.child_double", "call:tests.tasks.child_double:result"]


def test_gather_twenty_children(worker, tasks, client, token) -> None:
    result = tasks.parent_gathers.delay(token, 20)
    assert result.get(timeout=60) == [i * 2 for i in range(20)]
    assert len(client.get_run(result.id).children) == 20
    assert all(tasks.count(token, f"child:{i}") == 1 for i in range(20))


def test_a_failed_child_is_raised_in_the_parent(worker, tasks, token) -> None:
    assert tasks.parent_of_broken.delay(token).get(timeout=30) == (
        "builtins.ValueError: the child is broken")


def test_cancelling_a_parent_cancels_its_children(worker, tasks, client, token) -> None:
    result = tasks.parent_of_held_child.delay(token)
    deadline = time.monotonic() + 20
    while not client.get_run(result.id).children:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client.cancel(result.id)
    run = client.get_run(result.id)
    assert run.status is RunStatus.CANCELLED
    assert len(run.children) == 1
    assert client.get_run(run.children[0]).status is RunStatus.CANCELLED


@pytest.mark.slow
def test_parent_crash_while_waiting_does_not_start_the_child_twice(
    redis_base_url, tasks, client, token
) -> None:
    import os
    import signal

    from tests.chaos.helpers import run_with, wait_for

    queue = "children-crash"
    with celery_worker(redis_base_url, pool="prefork", queue=queue, concurrency=2, name="p1"), \
            celery_worker(redis_base_url, pool="prefork", queue=queue, concurrency=2,
                          name="p2"):
        result = tasks.parent_calls_slow.apply_async((token, 7), queue=queue)
        run = wait_for(lambda: run_with(client, result.id, lambda r: bool(r.children)), 30,
                       "the child to start")
        started = [e for e in run.events if e.type == "attempt_started"]
        parent_worker_pid = int(started[-1].fields["worker"].split("|")[1])
        # Kill the worker that ran the parent (maybe the child's too) while it waits.
        os.kill(parent_worker_pid, signal.SIGKILL)
        assert result.get(timeout=90) == 15
    run = client.get_run(result.id)
    assert len(run.children) == 1
    assert client.get_run(run.children[0]).status is RunStatus.COMPLETED
    assert tasks.count(token, "load") == 1
