"""Durable tasks of the observability tests (per-run logs, worker metrics). Like
tests.tasks, they count executions and coordinate through Redis db 3."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery.utils.log import get_task_logger

from celery_durable import durable_task, step
from tests.tasks import FAST, bump, count, counters

task_log = get_task_logger(__name__)
plain_log = logging.getLogger("tests.obs")


def wait_until(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.02)


@step
def greet(token: str) -> str:
    task_log.info("greeting %s", token)
    plain_log.warning("plain logging inside a step")
    plain_log.debug("too fine to keep")
    return "hello"


@step
def flaky_report(token: str) -> str:
    try:
        if bump(token, "report") == 1:
            raise ConnectionError("report service down")
    except ConnectionError:
        plain_log.exception("report failed")
        raise
    return "report"


@durable_task(retry=FAST, bind=True)
def logging_task(self: Any, token: str) -> str:
    task_log.info("run %s starts", token)  # outside any step
    greeting = greet(token)
    report = flaky_report(token)
    get_task_logger(self.name).info("finished with %s and %s", greeting, report)
    return f"{greeting} {report}"


@durable_task(retry=FAST)
def chatty_task(long_chars: int, infos: int, warnings: int) -> int:
    plain_log.warning("x" * long_chars)
    for i in range(infos):
        plain_log.info("info %d", i)
    for i in range(warnings):
        plain_log.warning("warning %d", i)
    return infos + warnings


def _outsider(stop: threading.Event, tag: str) -> None:
    # A thread the task starts: it has no run context, so its records belong to no run.
    while not stop.is_set():
        plain_log.warning("outsider of %s", tag)
        time.sleep(0.005)


@step
def tagged_lines(token: str, tag: str, lines: int) -> int:
    for i in range(lines):
        task_log.info("%s line %d", tag, i)
        time.sleep(0.005)  # let the other run's thread interleave
    return lines


@durable_task(retry=FAST)
def tagged_logger(token: str, tag: str, lines: int) -> int:
    # Both runs wait for each other, so their records interleave in time.
    bump(token, "arrived")
    wait_until(lambda: count(token, "arrived") >= 2, "the other run")
    stop = threading.Event()
    outsider = threading.Thread(target=_outsider, args=(stop, tag), daemon=True)
    outsider.start()
    try:
        written = tagged_lines(token, tag, lines)
    finally:
        stop.set()
        outsider.join()
    plain_log.info("%s done", tag)
    return written


@step
def hold_slot(token: str, i: int) -> int:
    bump(token, f"holding:{i}")
    wait_until(lambda: counters.exists(f"{token}:release") == 1, "the release key")
    return i


@durable_task(retry=FAST, concurrency_limit=1)
def one_at_a_time(token: str, i: int) -> int:
    return hold_slot(token, i)
