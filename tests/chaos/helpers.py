"""Shared helpers of the chaos suite: wait for a run to reach a state, find its holder."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celery_durable import DurableClient, RunInfo


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def run_with(client: DurableClient, run_id: str, check: Callable[[RunInfo], bool]) -> Any:
    try:
        run = client.get_run(run_id)
    except Exception:
        return None
    return run if check(run) else None


def holder_main_pid(run: RunInfo) -> int:
    """The main process id of the worker holding the run's lease (from its worker id)."""
    assert run.lease_owner, "the run has no lease holder"
    return int(run.lease_owner.split("|")[1])


def lease_pid(client: DurableClient, run_id: str) -> int:
    """The id of the process executing the run's current attempt."""
    raw = client.store.client.hget(client.store.keys.run(run_id).run, "lease_pid")
    return int(raw or 0)
