"""Tests of shop.py: real Redis, a real (embedded) worker, failures made on purpose."""

from __future__ import annotations

from pathlib import Path

import shop
from celery import Celery

from celery_durable import RunStatus
from celery_durable.testing import (
    fail_step,
    kill_run_worker,
    run_and_wait,
    wait_for_run,
    wait_for_step,
    worker_process,
)

HERE = Path(__file__).parent


def test_the_order_completes(worker: object) -> None:
    run = run_and_wait(shop.place_order, "o-1")
    assert run.status is RunStatus.COMPLETED
    assert run.result == {"reservation": "res-o-1", "charge": "ch-o-1"}
    assert [s.name for s in run.steps] == ["reserve", "charge"]


def test_a_failed_charge_resumes_at_the_charge(worker: object) -> None:
    with fail_step("charge", times=1) as fault:
        run = run_and_wait(shop.place_order, "o-2")
    assert run.status is RunStatus.COMPLETED
    assert run.attempt == 2
    assert fault.calls == 2  # the failed execution and the one of attempt 2
    # Attempt 2 replayed the reservation: it was executed once.
    assert shop.executed.count("reserve o-2") == 1
    assert shop.executed.count("charge o-2") == 1
    assert "injected failure" in run.attempt_errors[0].message


def test_a_charge_that_keeps_failing_fails_the_run(worker: object) -> None:
    with fail_step("charge", times=3):
        run = run_and_wait(shop.place_order, "o-3")
    assert run.status is RunStatus.FAILED
    assert run.attempt == 3
    assert shop.executed.count("reserve o-3") == 1


def test_a_crash_between_steps_resumes_on_another_worker(app: Celery,
                                                         durable_redis_url: str) -> None:
    # Two real worker processes on their own queue; the one running the order is SIGKILLed
    # after the reservation committed, while the charge is in progress.
    env = {"REDIS_URL": f"{durable_redis_url}/0", "PYTHONPATH": str(HERE)}
    with worker_process("shop", cwd=HERE, env=env, queues=["crash"]) as a, \
            worker_process("shop", cwd=HERE, env=env, queues=["crash"]) as b:
        result = shop.place_order.apply_async(("o-4",), {"slow_s": 2.0}, queue="crash")
        wait_for_step(app, result.id, "reserve")
        kill_run_worker(app, result.id, [a, b])
        run = wait_for_run(app, result.id, timeout=60)
    assert run.status is RunStatus.COMPLETED
    # The reservation kept attempt 1's checkpoint; the charge was committed by attempt 2.
    assert [(s.name, s.attempt) for s in run.steps] == [("reserve", 1), ("charge", 2)]
