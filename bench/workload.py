"""The benchmark's Celery app and tasks: a loop of N trivial steps, timed inside the worker.

Both tasks return the wall (and thread CPU) time of their step loop in microseconds, measured
around the loop only, so broker and result-backend latency never enter the per-step figure.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from celery import Celery

from celery_durable import DurableTask, step

#: Queue the benchmark worker consumes (the Redis server is private, the name is cosmetic).
QUEUE = "bench"
DURABLE_TASK = "bench.durable_steps"
PLAIN_TASK = "bench.plain_steps"
#: Database numbers on the throwaway server.
BROKER_DB, BACKEND_DB, STORE_DB = 0, 1, 2


@step(name="noop")
def noop_step(i: int) -> int:
    """A trivial durable step: its cost is celery-durable's per-step overhead."""
    return i


def plain_noop(i: int) -> int:
    """The same trivial work as :func:`noop_step`, without @step."""
    return i


def timed_loop(fn: Callable[[int], int], n: int) -> dict[str, float]:
    """Call ``fn(0) .. fn(n - 1)``; return the loop's wall and thread CPU time (µs).

    ``wall_us`` is ``time.perf_counter`` time, ``cpu_us`` the calling thread's CPU time
    (``time.thread_time``): time spent waiting for Redis counts in the first only.
    """
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    for i in range(n):
        fn(i)
    wall1, cpu1 = time.perf_counter(), time.thread_time()
    return {"wall_us": (wall1 - wall0) * 1e6, "cpu_us": (cpu1 - cpu0) * 1e6}


def durable_steps(n: int) -> dict[str, float]:
    """Body of the durable task: ``n`` checkpointed steps; returns their timing (µs)."""
    return timed_loop(noop_step, n)


def plain_steps(n: int) -> dict[str, float]:
    """Body of the plain task: ``n`` plain calls; returns their timing (µs)."""
    return timed_loop(plain_noop, n)


def make_app(redis_url: str) -> Celery:
    """A Celery app on the server at ``redis_url`` (no db number) with both tasks registered."""
    app = Celery(
        "celery_durable_bench",
        broker=f"{redis_url}/{BROKER_DB}",
        backend=f"{redis_url}/{BACKEND_DB}",
        set_as_current=False,
    )
    app.conf.update(
        task_default_queue=QUEUE,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        result_expires=600,
        durable_redis_url=f"{redis_url}/{STORE_DB}",
    )
    app.task(base=DurableTask, name=DURABLE_TASK)(durable_steps)
    app.task(name=PLAIN_TASK)(plain_steps)
    return app
