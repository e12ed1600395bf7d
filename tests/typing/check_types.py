"""Checked by mypy (``mypy`` reads tests/typing), never run by pytest: the public API's types
as user code sees them."""

from __future__ import annotations

import datetime as dt
from typing import Any, assert_type

from celery_durable import (
    DurableClient,
    RetryPolicy,
    RunContext,
    RunInfo,
    RunStatus,
    current_run,
    step,
)


@step
def fetch(order_id: str) -> dict[str, int]:
    return {"id": 1}


@step(name="charge", retry=RetryPolicy(max_attempts=10, factor=1.5, min_delay=0.5))
def charge(order: dict[str, int], amount_cents: int) -> str:
    return "ch_1"


@step(timeout=30)
def crunch(rows: int) -> int:
    return rows


def body() -> None:
    assert_type(crunch(3), int)
    assert_type(fetch("o1"), dict[str, int])
    assert_type(charge({"id": 1}, 100), str)
    ctx = current_run()
    assert_type(ctx, RunContext)
    assert_type(ctx.step("double", lambda x: x * 2, 21), int)
    assert_type(ctx.step_key, str)
    assert_type(ctx.attempt, int)
    assert_type(ctx.last_progress(0), Any)
    assert_type(ctx.patched("change"), bool)
    assert_type(ctx.extend_timeout(60), dt.datetime)


def admin(client: DurableClient) -> None:
    run = client.get_run("r1")
    assert_type(run, RunInfo)
    assert_type(run.status, RunStatus)
    assert_type(run.status.is_terminal, bool)
