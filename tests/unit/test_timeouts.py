"""Step timeouts without Redis: SIGALRM in the main thread, the watchdog elsewhere."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from celery_durable import StepTimeoutError
from celery_durable.timeouts import with_timeout


def _name() -> str:
    return "step 'x' of run r"


# pytest-timeout's default method uses SIGALRM itself (and the guard then leaves it alone):
# these tests use its thread method, so the step's own timer is the one under test.
@pytest.mark.timeout(60, method="thread")
def test_main_thread_blocking_call_is_interrupted_and_the_handler_restored() -> None:
    before = signal.getsignal(signal.SIGALRM)
    # An hour-long sleep: only an interruption lets the test finish within its timeout.
    with pytest.raises(StepTimeoutError, match=r"step 'x' of run r ran longer .* 0.2 s"):
        with_timeout(time.sleep, 0.2, _name)(3600)
    assert signal.getsignal(signal.SIGALRM) == before
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0


@pytest.mark.timeout(60, method="thread")
def test_a_quick_call_returns_and_leaves_nothing_pending() -> None:
    assert with_timeout(lambda x: x * 2, 5, _name)(21) == 42
    time.sleep(0.05)  # a pending interruption would surface here


def test_other_threads_use_the_watchdog() -> None:
    outcome: list[BaseException | str] = []

    def busy() -> str:
        for _ in range(600):
            time.sleep(0.05)
        return "finished"

    def run() -> None:
        try:
            outcome.append(with_timeout(busy, 0.3, _name)())
        except BaseException as exc:
            outcome.append(exc)
        # The thread goes on normally afterwards.
        outcome.append(with_timeout(lambda: "next", 5, _name)())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert isinstance(outcome[0], StepTimeoutError) and outcome[1] == "next"


@pytest.mark.timeout(60, method="thread")
def test_an_alarm_already_in_use_is_left_alone() -> None:
    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda s, f: fired.append(s))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30)
        with pytest.raises(StepTimeoutError):
            with_timeout(lambda: [time.sleep(0.05) for _ in range(200)], 0.2, _name)()
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0  # the user's timer still runs
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert fired == []
