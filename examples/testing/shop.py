"""The code under test: a small durable task with two steps, as in any Celery project."""

from __future__ import annotations

from celery import Celery

from celery_durable import RetryPolicy, durable_task, step

app = Celery("shop")  # the tests point it at their Redis (conftest.py)

#: What each step did, so the tests can tell an execution from a replay.
executed: list[str] = []


@step
def reserve(order_id: str) -> str:
    executed.append(f"reserve {order_id}")
    return f"res-{order_id}"


@step
def charge(order_id: str) -> str:
    executed.append(f"charge {order_id}")
    return f"ch-{order_id}"


@durable_task(retry=RetryPolicy(max_attempts=3, min_delay=0.1, max_delay=0.1, jitter=False))
def place_order(order_id: str) -> dict[str, str]:
    return {"reservation": reserve(order_id), "charge": charge(order_id)}
