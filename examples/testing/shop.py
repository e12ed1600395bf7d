"""The code under test: a small durable task with two steps, as in any Celery project."""

from __future__ import annotations

import os
import time

from celery import Celery

from celery_durable import RetryPolicy, durable_task, step

# Worker subprocesses started by the tests get REDIS_URL; in the test process, conftest.py
# points the app at the test Redis.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("shop", broker=REDIS_URL, backend=REDIS_URL)

#: What each step did, so the tests can tell an execution from a replay.
executed: list[str] = []


@step
def reserve(order_id: str) -> str:
    executed.append(f"reserve {order_id}")
    return f"res-{order_id}"


@step
def charge(order_id: str, slow_s: float = 0.0) -> str:
    executed.append(f"charge {order_id}")
    time.sleep(slow_s)  # the payment API taking its time
    return f"ch-{order_id}"


@durable_task(retry=RetryPolicy(max_attempts=3, min_delay=0.1, max_delay=0.1, jitter=False))
def place_order(order_id: str, slow_s: float = 0.0) -> dict[str, str]:
    return {"reservation": reserve(order_id), "charge": charge(order_id, slow_s)}
