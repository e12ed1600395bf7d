"""Wait for a durable run to reach a state, with a deadline (never a fixed sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery

from ..client import DurableClient
from ..errors import RunNotFoundError, RunWaitTimeoutError
from ..models import RunInfo, RunStatus

#: Seconds between two reads of the run while waiting.
POLL_S = 0.05


def wait_for_run(
    app: Celery,
    run_id: str,
    until: Callable[[RunInfo], bool] | Iterable[RunStatus | str] | None = None,
    timeout: float = 30.0,
) -> RunInfo:
    """Read the run until ``until`` holds; return it.

    ``until`` is a predicate on the :class:`RunInfo` or a set of statuses; by default the
    run must have ended (completed, failed or cancelled). A run that does not exist yet (not
    published or not started) is waited for too. ``timeout`` is in seconds.

    Raises:
        RunWaitTimeoutError: the condition did not hold within ``timeout``; the message
            has the run's last status and steps.
    """
    check = _condition(until)
    client = DurableClient(app)
    deadline = time.monotonic() + timeout
    last: RunInfo | None = None
    while True:
        try:
            last = client.get_run(run_id)
        except RunNotFoundError:
            last = None
        if last is not None and check(last):
            return last
        if time.monotonic() >= deadline:
            state = ("not found" if last is None else
                     f"{last.status.value}, steps {[s.name for s in last.steps]}")
            raise RunWaitTimeoutError(
                f"run {run_id} did not reach the awaited state within {timeout:g} s (it is "
                f"{state}): is a worker consuming its queue?", run_id=run_id)
        time.sleep(POLL_S)


def wait_for_step(app: Celery, run_id: str, step: str, timeout: float = 30.0) -> RunInfo:
    """Wait until the run has committed the step ``step`` (a step id: ``name`` or
    ``name#2``); return the run as read then.

    Raises:
        RunWaitTimeoutError: the step was not committed within ``timeout`` seconds.
    """
    return wait_for_run(app, run_id, lambda run: any(s.name == step for s in run.steps),
                        timeout)


def run_and_wait(task: Any, *args: Any, timeout: float = 30.0, app: Celery | None = None,
                 **kwargs: Any) -> RunInfo:
    """Publish ``task(*args, **kwargs)`` and wait until its run has ended; return the run.

    The run may have completed, failed or been cancelled: assert on ``run.status``,
    ``run.result``, ``run.steps`` and ``run.attempt_errors``. ``app`` defaults to the
    task's app. A worker must be consuming the task's queue (see :func:`durable_worker`).

    Raises:
        RunWaitTimeoutError: the run had not ended within ``timeout`` seconds.
    """
    result = task.apply_async(args, kwargs)
    return wait_for_run(app if app is not None else task.app, result.id, None, timeout)


def _condition(
    until: Callable[[RunInfo], bool] | Iterable[RunStatus | str] | None,
) -> Callable[[RunInfo], bool]:
    if until is None:
        return lambda run: run.status.is_terminal
    if callable(until):
        return until
    wanted = {RunStatus(s) for s in until}
    return lambda run: run.status in wanted
