"""Celery apps of the crash-recovery benchmark (``bench.recovery``), also loaded by its
``celery -A bench.recovery_app:<app> worker`` subprocesses.

Two apps on the same throwaway Redis (``DURABLE_BENCH_REDIS_URL``, no db number):

- ``durable_app``: one durable task of ``steps`` steps of ``seconds`` each, with every
  celery-durable setting at its default (the checkpoint store is the broker's db).
- ``stock_app``: a plain ``acks_late`` task of the same shape, with no celery-durable in the
  worker at all (no DurableTask is bound to it, so no heartbeat/reaper bootstep; tasks are
  registered with ``shared=False`` so neither app picks up the other's task), and
  ``broker_transport_options={"visibility_timeout": STOCK_VISIBILITY_TIMEOUT_S}`` (kombu
  defaults otherwise).

Every step execution appends a start record to the Redis list ``starts_key(task_id)``
(db ``RECORDS_DB``): ``{"pos", "t" (time.time() at the step's start), "attempt", "pid",
"main_pid" (the worker's main process), "host"}``. A durable step also returns its start
time, so its checkpoint value holds it too.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import redis
from celery import Celery

from celery_durable import DurableTask, current_run, step

ENV_URL = "DURABLE_BENCH_REDIS_URL"
ENV_QUEUE = "DURABLE_BENCH_QUEUE"
#: Database numbers on the throwaway server (the durable store shares the broker's db 0).
BROKER_DB, BACKEND_DB, RECORDS_DB = 0, 1, 3
DURABLE_TASK = "bench.recovery.durable_pipeline"
STOCK_TASK = "bench.recovery.stock_pipeline"
#: visibility_timeout (seconds) of the stock app's broker transport.
STOCK_VISIBILITY_TIMEOUT_S = 10.0

_records: tuple[int, redis.Redis] | None = None


def starts_key(task_id: str) -> str:
    """The Redis list (db RECORDS_DB) holding the start records of a task's steps."""
    return f"bench:starts:{task_id}"


def records_client(base_url: str) -> redis.Redis:
    return redis.Redis.from_url(f"{base_url}/{RECORDS_DB}", decode_responses=True)


def _records_client() -> redis.Redis:
    """This process's client for start records (a new one after a fork)."""
    global _records
    pid = os.getpid()
    if _records is None or _records[0] != pid:
        _records = (pid, records_client(os.environ[ENV_URL].rstrip("/")))
    return _records[1]


def record_start(task_id: str, pos: int, attempt: int) -> float:
    """Append a start record for step ``pos`` of ``task_id``; returns its timestamp."""
    started = time.time()
    record = {"pos": pos, "t": started, "attempt": attempt, "pid": os.getpid(),
              "main_pid": os.getppid(), "host": socket.gethostname()}
    _records_client().rpush(starts_key(task_id), json.dumps(record))
    return started


@step(name="work")
def work(pos: int, seconds: float) -> dict[str, Any]:
    """One durable step: record its start, sleep ``seconds``; the checkpoint keeps ``t0``."""
    run = current_run()
    started = record_start(run.id, pos, run.attempt)
    time.sleep(seconds)
    return {"pos": pos, "t0": started, "pid": os.getpid()}


def durable_pipeline(steps: int, seconds: float) -> int:
    """Body of the durable task: ``steps`` checkpointed steps of ``seconds`` each."""
    for pos in range(steps):
        work(pos, seconds)
    return steps


def _base_conf(app: Celery, queue: str) -> None:
    app.conf.update(
        task_default_queue=queue,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        result_expires=3600,
    )


def make_durable_app(base_url: str, queue: str = "recovery-durable") -> Celery:
    """The durable app on the server at ``base_url`` (celery-durable defaults throughout)."""
    app = Celery("bench_recovery_durable", broker=f"{base_url}/{BROKER_DB}",
                 backend=f"{base_url}/{BACKEND_DB}", set_as_current=False)
    _base_conf(app, queue)
    app.task(base=DurableTask, name=DURABLE_TASK, shared=False)(durable_pipeline)
    return app


def make_stock_app(base_url: str, queue: str = "recovery-stock") -> Celery:
    """The stock-Celery app: a plain acks_late task, a short visibility timeout."""
    app = Celery("bench_recovery_stock", broker=f"{base_url}/{BROKER_DB}",
                 backend=f"{base_url}/{BACKEND_DB}", set_as_current=False)
    _base_conf(app, queue)
    app.conf.broker_transport_options = {"visibility_timeout": STOCK_VISIBILITY_TIMEOUT_S}

    @app.task(name=STOCK_TASK, bind=True, acks_late=True, shared=False)
    def stock_pipeline(self: Any, steps: int, seconds: float) -> int:
        for pos in range(steps):
            record_start(str(self.request.id), pos, 0)
            time.sleep(seconds)
        return steps

    return app


def _env_url() -> str:
    return os.environ.get(ENV_URL, "redis://127.0.0.1:6379").rstrip("/")


def _env_queue(default: str) -> str:
    return os.environ.get(ENV_QUEUE, default)


#: The apps the worker subprocesses load (``-A bench.recovery_app:durable_app``).
durable_app = make_durable_app(_env_url(), _env_queue("recovery-durable"))
stock_app = make_stock_app(_env_url(), _env_queue("recovery-stock"))
