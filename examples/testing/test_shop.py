"""Tests of shop.py: real Redis, a real (embedded) worker, failures made on purpose."""

from __future__ import annotations

import shop

from celery_durable import RunStatus
from celery_durable.testing import fail_step, run_and_wait


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
