"""Durable tasks of the long-lived-run tests: progress inside a step, run and step
timeouts, large results. Executions are counted in Redis db 3 (see tests.tasks.bump)."""

from __future__ import annotations

import os
import time
from typing import Any

from celery_durable import RetryPolicy, current_run, durable_task, step
from tests.tasks import FAST, bump, counters


@step
def batch(token: str, rows: int, row_seconds: float, fail_at: int) -> dict[str, int]:
    """Process ``rows`` rows, saving the next row to do as progress after each one; the
    first execution raises at row ``fail_at`` (-1: never). Each execution records the row
    it started at in ``<token>:starts``."""
    run = current_run()
    start = int(run.last_progress(0))
    counters.rpush(f"{token}:starts", start)
    for row in range(start, rows):
        if row == fail_at and bump(token, "failed") == 1:
            raise ConnectionError(f"lost the database at row {row}")
        time.sleep(row_seconds)
        bump(token, "rows")
        run.progress(row + 1)
    return {"rows": rows, "started_at": start}


@durable_task(retry=FAST)
def batch_job(token: str, rows: int, row_seconds: float = 0.0,
              fail_at: int = -1) -> dict[str, int]:
    return batch(token, rows, row_seconds, fail_at)


@step
def oversized_progress() -> None:
    current_run().progress("x" * 100_000)


@durable_task(retry=FAST)
def oversized_progress_task() -> None:
    oversized_progress()


@durable_task(retry=FAST)
def progress_outside_step() -> None:
    current_run().progress(1)


@step
def checkpointed_nap(token: str, label: str, seconds: float) -> str:
    bump(token, label)
    time.sleep(seconds)
    return label


@durable_task(retry=RetryPolicy(max_attempts=1), run_timeout=2)
def extended_run(token: str, extend: bool) -> dict[str, Any]:
    """A run that sleeps (durably) past its 2 s run_timeout, after extending it or not."""
    checkpointed_nap(token, "before", 0)
    deadline = current_run().extend_timeout(30).isoformat() if extend else None
    current_run().sleep("nap", 3)
    checkpointed_nap(token, "after", 0)
    return {"deadline": deadline}


@step(timeout=0.5, retry=RetryPolicy(max_attempts=2, min_delay=0, max_delay=0, jitter=False))
def slow_then_fast(token: str) -> str:
    """Overruns its timeout on the first try (busy in Python), is quick on the second."""
    if bump(token, "slow_then_fast") == 1:
        for _ in range(200):
            time.sleep(0.05)
    return "fast enough"


@durable_task(retry=RetryPolicy(max_attempts=1))
def timed_steps(token: str) -> str:
    return slow_then_fast(token)


@step(timeout=1)
def blocked_sleep(token: str) -> str:
    """Blocked in one long C call (time.sleep): interrupted by SIGALRM in a main thread."""
    bump(token, "blocked_sleep")
    time.sleep(60)
    return "woke up"


@step(timeout=1)
def busy_loop(token: str) -> str:
    """Busy in Python for 60 s (short sleeps): interrupted by the watchdog in any thread."""
    bump(token, "blocked_sleep")
    for _ in range(1200):
        time.sleep(0.05)
    return "done"


@durable_task(retry=RetryPolicy(max_attempts=2, min_delay=0, max_delay=0, jitter=False))
def blocked_task(token: str, in_c_call: bool = True) -> str:
    return blocked_sleep(token) if in_c_call else busy_loop(token)


@step
def big_result(token: str, size: int) -> dict[str, Any]:
    bump(token, "big_result")
    return {"blob": "y" * size, "size": size}


@step
def small_result(token: str) -> int:
    bump(token, "small_result")
    return 7


@step
def fails_once(token: str) -> None:
    if bump(token, "fails_once") == 1:
        raise ConnectionError("try again")


@durable_task(retry=FAST)
def offloading_task(token: str, size: int) -> dict[str, Any]:
    big = big_result(token, size)
    small = small_result(token)
    fails_once(token)  # the retry replays the offloaded step from its blob
    return {"size": len(big["blob"]), "small": small}


#: The "deployed" code version of the versioned tasks (a worker's environment sets it).
CODE_VERSION = os.environ.get("DURABLE_TEST_CODE_VERSION", "v1")


def _versioned_body(token: str) -> dict[str, Any]:
    # The change deployed with v2 branches with patched(); v1 code has no such call.
    new_path = current_run().patched("fast-path") if CODE_VERSION == "v2" else False
    checkpointed_nap(token, "first", 0)
    current_run().wait_for_event("go", key=f"go:{token}", timeout=120)
    checkpointed_nap(token, "second", 0)
    return {"version": CODE_VERSION, "patched": new_path}


@durable_task(retry=FAST, version=CODE_VERSION)
def versioned_continue(token: str) -> dict[str, Any]:
    return _versioned_body(token)


@durable_task(retry=FAST, version=CODE_VERSION, version_policy="fail")
def versioned_fail(token: str) -> dict[str, Any]:
    return _versioned_body(token)


@durable_task(retry=FAST, version=CODE_VERSION, version_policy="route")
def versioned_route(token: str) -> dict[str, Any]:
    return _versioned_body(token)


@step
def record_tick(token: str) -> str:
    run = current_run()
    counters.rpush(f"{token}:ticks", run.id)
    return run.id


@durable_task(retry=FAST)
def scheduled_tick(token: str) -> str:
    """Published by `celery beat` (see tests.app): records each run once."""
    return record_tick(token)


@durable_task(retry=FAST)
def echo(value: Any) -> Any:
    """The next link of a chain: returns what it was given."""
    return value
