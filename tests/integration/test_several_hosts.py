"""Workers on several hosts: separate worker processes with their own node names
(``a@hostA``, ``b@hostB``) and their own queues, sharing one checkpoint store and one
broker. Concurrency limits, crash recovery and idempotency must hold across them."""

from __future__ import annotations

import os
import signal
import uuid

import pytest

from celery_durable import RunStatus
from tests.chaos.helpers import holder_main_pid, run_with, wait_for
from tests.integration.test_limits import max_overlap, spans
from tests.workers import celery_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

#: Every worker also consumes this queue; each host has its own as well.
SHARED = "hosts-shared"


def hosts(redis_base_url: str, pool: str, concurrency: int):  # type: ignore[no-untyped-def]
    """Two workers: ``a@hostA`` on hosts-a + shared, ``b@hostB`` on hosts-b + shared."""
    tag = uuid.uuid4().hex[:6]
    return (
        celery_worker(redis_base_url, pool=pool, queue="hosts-a", also=(SHARED,),
                      concurrency=concurrency, node=f"a{tag}@hostA"),
        celery_worker(redis_base_url, pool=pool, queue="hosts-b", also=(SHARED,),
                      concurrency=concurrency, node=f"b{tag}@hostB"),
    )


def node_of(client, run_id: str, attempt: int = 1) -> str:  # type: ignore[no-untyped-def]
    """The node name of the worker that started attempt ``attempt`` of a run."""
    for event in client.get_run(run_id).events:
        if event.type == "attempt_started" and event.fields.get("attempt") == str(attempt):
            return str(event.fields["worker"]).split("|")[0]
    raise AssertionError(f"run {run_id} has no attempt {attempt}")


def test_a_limit_holds_across_hosts(redis_base_url, tasks, client, token) -> None:
    # limited: at most 2 at once, whichever host runs them; each host could run 4.
    a, b = hosts(redis_base_url, "threads", 4)
    with a, b:
        results = [tasks.limited.apply_async((token, i, 0.3), queue="hosts-a")
                   for i in range(5)]
        results += [tasks.limited.apply_async((token, 10 + i, 0.3), queue="hosts-b")
                    for i in range(5)]
        assert sorted(r.get(timeout=120) for r in results) == [*range(5), *range(10, 15)]
    assert max_overlap(spans(redis_base_url, token)) == 2
    ran_on = {node_of(client, r.id).split("@")[1] for r in results}
    assert ran_on == {"hostA", "hostB"}


def test_a_run_of_a_killed_host_resumes_on_the_other(redis_base_url, tasks, client,
                                                     token) -> None:
    a, b = hosts(redis_base_url, "prefork", 1)
    with a, b:
        result = tasks.chaos_pipeline.apply_async((token, 5, 0.4), queue=SHARED)
        run = wait_for(lambda: run_with(client, result.id, lambda r: r.step_count >= 2
                                        and bool(r.lease_owner)), 60, "two committed steps")
        committed = run.step_count
        first_host = str(run.lease_owner).split("|")[0]
        os.kill(holder_main_pid(run), signal.SIGKILL)
        assert result.get(timeout=90) == list(range(5))
        run = client.get_run(result.id)
        assert run.status is RunStatus.COMPLETED and run.attempt >= 2
        second_host = node_of(client, result.id, run.attempt)
    assert second_host != first_host
    assert {first_host.split("@")[1], second_host.split("@")[1]} == {"hostA", "hostB"}
    counts = [tasks.count(token, f"exec:{i}") for i in range(5)]
    # Steps committed on the dead host never ran again on the other one.
    assert counts[:committed] == [1] * committed, counts
    assert all(c in (1, 2) for c in counts[committed:]), counts
    assert any(e.type == "run_reaped" for e in run.events)


def test_an_idempotency_key_is_one_run_on_every_host(redis_base_url, tasks, client,
                                                     token) -> None:
    key = f"hosts:{token}"
    a, b = hosts(redis_base_url, "threads", 2)
    with a, b:
        first = tasks.counters_task.apply_async((token, 0), idempotency_key=key,
                                                queue="hosts-a")
        again = tasks.counters_task.apply_async((token, 0), idempotency_key=key,
                                                queue="hosts-b")
        assert again.id == first.id
        assert first.get(timeout=60) == {"result": 20}
        # A duplicate delivery of the finished run on the other host does not execute it.
        duplicate = tasks.counters_task.apply_async((token, 0), task_id=first.id,
                                                    queue="hosts-b")
        assert duplicate.get(timeout=60) == {"result": 20}
    assert [tasks.count(token, name) for name in ("load", "enrich", "save")] == [1, 1, 1]
    run = client.get_run(first.id)
    assert run.status is RunStatus.COMPLETED
    assert sum(e.type == "attempt_started" for e in run.events) == 1
