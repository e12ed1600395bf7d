"""A worker frozen mid-run (SIGSTOP) loses its run; when it wakes it cannot commit."""

from __future__ import annotations

import os
import signal

import pytest

from celery_durable import RunStatus
from tests.chaos.helpers import holder_main_pid, run_with, wait_for
from tests.workers import celery_worker

pytestmark = pytest.mark.slow


def test_a_woken_zombie_cannot_commit_or_finish(redis_base_url, tasks, client, token) -> None:
    queue = "chaos-zombie"
    with celery_worker(redis_base_url, pool="prefork", queue=queue, concurrency=1,
                       name="z1") as first, \
            celery_worker(redis_base_url, pool="prefork", queue=queue, concurrency=1,
                          name="z2") as second:
        result = tasks.chaos_pipeline.apply_async((token, 5, 1.0), queue=queue)
        run = wait_for(lambda: run_with(client, result.id, lambda r: r.step_count >= 1
                                        and bool(r.lease_owner)), 60, "a committed step")
        frozen = first if holder_main_pid(run) == first.pid else second
        # Freeze the holder (main process and pool child) in the middle of a step.
        os.killpg(frozen.pid, signal.SIGSTOP)
        try:
            assert result.get(timeout=90) == [0, 1, 2, 3, 4]
            finished = client.get_run(result.id)
        finally:
            os.killpg(frozen.pid, signal.SIGCONT)
        # The zombie finishes its step and tries to commit it: rejected, it stops.
        wait_for(lambda: run_with(client, result.id, lambda r: any(
            e.type == "attempt_fenced" for e in r.events)), 30, "the zombie to be fenced")
        after = client.get_run(result.id)
    assert after.status is RunStatus.COMPLETED
    assert after.result == finished.result == [0, 1, 2, 3, 4]
    assert [s.value for s in after.steps] == [s.value for s in finished.steps]
    assert [s.attempt for s in after.steps] == [s.attempt for s in finished.steps]
    assert any(e.type == "run_reaped" for e in after.events)
    fenced = [e for e in after.events if e.type == "attempt_fenced"]
    assert [e.fields["attempt"] for e in fenced] == ["1"]
    # Nothing after the fence: the zombie did not end the run or add steps. (Its captured
    # log lines may follow: they are unfenced on purpose, and say what the zombie did.)
    assert [e for e in after.events if e.type != "log"][-1].type == "attempt_fenced"
