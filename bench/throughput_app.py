"""Celery app of the throughput benchmark (``bench.throughput``), also loaded by its
``celery -A bench.throughput_app:app worker`` subprocesses.

Two tasks of the same shape on one app, so one worker (same pool, same flags) runs both:
``plain(n)`` calls a trivial function ``n`` times, ``durable(n)`` is a DurableTask calling a
trivial ``@step`` ``n`` times. Both return ``[t_start, t_end]`` (``time.time()`` at the start
and end of the body), from which the drain's span is computed.

The server is ``DURABLE_BENCH_REDIS_URL`` (no db number). Broker, results and checkpoint
store share db 0, as an app configured with one Redis URL has them (Celery's Redis docs
use the same URL for broker and backend); a durable run's Celery result is then written by
the script that ends its attempt (celery_durable/results.py). Every ``durable_*`` setting
is at its default otherwise, except ``durable_reply_spin_us``, which
``DURABLE_BENCH_REPLY_SPIN_US`` sets when given (to compare a worker with and without
polling for replies; see celery_durable/spin.py).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import Celery
from celery.signals import worker_ready

from celery_durable import DurableTask, step

ENV_URL = "DURABLE_BENCH_REDIS_URL"
ENV_SPIN = "DURABLE_BENCH_REPLY_SPIN_US"
QUEUE = "throughput"
#: One db for all three (see the module docstring).
BROKER_DB = BACKEND_DB = STORE_DB = 0
PLAIN_TASK, DURABLE_TASK = "bench.throughput.plain", "bench.throughput.durable"
#: Logged (at WARNING, the workers' level) once the worker consumes: WorkerSet waits for it.
READY_LINE = "bench worker ready."


@step(name="noop")
def noop_step(i: int) -> int:
    """A trivial durable step: its cost is celery-durable's per-step cost."""
    return i


def plain_noop(i: int) -> int:
    return i


def plain(n: int) -> list[float]:
    """Body of the plain task: ``n`` plain calls; returns [start, end] (epoch seconds)."""
    started = time.time()
    for i in range(n):
        plain_noop(i)
    return [started, time.time()]


def durable(n: int) -> list[float]:
    """Body of the durable task: ``n`` checkpointed steps; returns [start, end]."""
    started = time.time()
    for i in range(n):
        noop_step(i)
    return [started, time.time()]


def make_app(base_url: str, results: bool = True) -> Celery:
    """The app on the server at ``base_url`` (no db number); without ``results``, a
    producer whose publishing does not subscribe to result channels (the workers still
    store every result)."""
    backend = f"{base_url}/{BACKEND_DB}" if results else "disabled"
    app = Celery("bench_throughput", broker=f"{base_url}/{BROKER_DB}", backend=backend,
                 set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        result_expires=3600,
        durable_redis_url=f"{base_url}/{STORE_DB}",
    )
    if os.environ.get(ENV_SPIN):
        app.conf.durable_reply_spin_us = int(os.environ[ENV_SPIN])
    app.task(name=PLAIN_TASK, shared=False)(plain)
    app.task(base=DurableTask, name=DURABLE_TASK, shared=False)(durable)
    return app


@worker_ready.connect
def _announce_ready(**_: Any) -> None:
    logging.getLogger("bench.throughput").warning(READY_LINE)


app = make_app(os.environ.get(ENV_URL, "redis://127.0.0.1:6379").rstrip("/"))
