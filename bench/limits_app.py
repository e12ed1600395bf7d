"""Celery app and tasks of the limits benchmark (``bench.limits``), also loaded by its
``celery -A bench.limits_app:app worker`` subprocesses.

The app is configured from ``DURABLE_BENCH_LIMITS_URL`` (a throwaway Redis, no db number)
when the variable is set at import time (the workers), or by :func:`configure` (the
benchmark process, before first use). Every celery-durable setting keeps its default (the
checkpoint store is the broker's db), like an application that just swapped ``@app.task``
for ``@durable_task``.

Tasks:

- ``enqueue_durable`` / ``enqueue_plain``: published to ``SINK_QUEUE``, which no worker
  consumes: measurement 1 times ``apply_async`` alone.
- ``blocker``: a plain ``acks_late`` task that occupies a worker thread until released, so
  that a batch of runs is entirely in the queue before any worker can take one.
- ``limited``: ``@durable_task(concurrency_limit=LIMIT)`` whose body is one step sleeping
  ``seconds``; ``reference_durable`` the same without a limit, ``reference_plain`` a plain
  Celery task sleeping ``seconds`` (the references run on workers with exactly LIMIT
  threads in all). Each notes the wall time (``time.time()``) at the start and the end of its body;
  a ``task_postrun`` handler appends ``[start, end, i, pid]`` to the Redis list
  ``spans_key(token)`` (db ``RECORDS_DB``) *after* the attempt has ended and given its slot
  back, so recording never lengthens the time a slot is held.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery, signals

from celery_durable import durable_task, step

ENV_URL = "DURABLE_BENCH_LIMITS_URL"
#: Queue the workers consume, and the queue nobody consumes (measurement 1).
WORK_QUEUE = "bench-limits"
SINK_QUEUE = "bench-limits-sink"
#: Queue of the reference workers (exactly LIMIT threads in all, no concurrency limit).
REF_QUEUE = "bench-limits-ref"
#: Database numbers on the throwaway server (the durable store shares the broker's db).
BROKER_DB, BACKEND_DB, RECORDS_DB = 0, 1, 3
ENQUEUE_DURABLE = "bench.limits.enqueue_durable"
ENQUEUE_PLAIN = "bench.limits.enqueue_plain"
ENQUEUE_RATED = "bench.limits.enqueue_rated"
LIMITED = "bench.limits.limited"
RATE_WAITING = "bench.limits.rate_waiting"
#: The rate of ``rate_waiting`` in code: one start an hour, so every run after the first
#: waits in the limit's queue (measurement 4).
SLOW_RATE = "1/h"
BLOCKER = "bench.limits.blocker"
REF_PLAIN = "bench.limits.reference_plain"
REF_DURABLE = "bench.limits.reference_durable"
#: The concurrency limit of ``limited`` as declared in code.
LIMIT = 4

#: ``@durable_task`` with a type (the decorator itself is untyped).
durable: Callable[..., Callable[[Callable[..., Any]], Any]] = durable_task

app = Celery("celery_durable_bench_limits")
# @durable_task registers like shared_task; make this app the one its proxies resolve to.
app.set_default()


def configure(base_url: str) -> None:
    """Point the app at the Redis server ``base_url`` (no db number). Call before first use."""
    base_url = base_url.rstrip("/")
    app.conf.update(
        broker_url=f"{base_url}/{BROKER_DB}",
        result_backend=f"{base_url}/{BACKEND_DB}",
        task_default_queue=WORK_QUEUE,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        result_expires=600,
    )
    os.environ[ENV_URL] = base_url


if os.environ.get(ENV_URL):
    configure(os.environ[ENV_URL])


def spans_key(token: str) -> str:
    """The Redis list (db RECORDS_DB) of the body spans of ``limited`` runs of ``token``."""
    return f"bench:limits:{token}:spans"


def records_client(base_url: str) -> redis.Redis:
    return redis.Redis.from_url(f"{base_url.rstrip('/')}/{RECORDS_DB}", decode_responses=True)


_client: tuple[int, redis.Redis] | None = None
_client_lock = threading.Lock()
#: Spans of bodies that ended in this process, waiting for their task_postrun: task id ->
#: (token, [start, end, i, pid]).
_pending: dict[str, tuple[str, list[Any]]] = {}


def _records() -> redis.Redis:
    """This process's client for span records (a new one after a fork)."""
    global _client
    with _client_lock:
        if _client is None or _client[0] != os.getpid():
            _client = (os.getpid(), records_client(os.environ[ENV_URL]))
        return _client[1]


@durable(name=ENQUEUE_DURABLE)
def enqueue_durable(i: int) -> int:
    """Published, never executed (its queue has no consumer)."""
    return i


@durable(name=ENQUEUE_RATED, rate_limit="1000000/s", rate_burst=1000000)
def enqueue_rated(i: int) -> int:
    """Published, never executed: under a rate limit it never reaches (every call takes its
    turn at once), so only the turn's cost is measured."""
    return i


@app.task(name=ENQUEUE_PLAIN)
def enqueue_plain(i: int) -> int:
    """A plain Celery task, published, never executed."""
    return i


@step(name="nap")
def nap(seconds: float) -> None:
    time.sleep(seconds)


def _spanned(task: Any, token: str, i: int, body: Callable[[float], None],
             seconds: float) -> int:
    """Run ``body(seconds)`` and note its span for the task's ``task_postrun``; returns ``i``."""
    start = time.time()
    body(seconds)
    end = time.time()
    _pending[str(task.request.id)] = (token, [start, end, i, os.getpid()])
    return i


@durable(name=LIMITED, concurrency_limit=LIMIT, bind=True)
def limited(self: Any, token: str, i: int, seconds: float) -> int:
    """At most LIMIT at once across all workers; the body is one step of ``seconds``."""
    return _spanned(self, token, i, nap, seconds)


@durable(name=RATE_WAITING, rate_limit=SLOW_RATE, bind=True)
def rate_waiting(self: Any, token: str, i: int, seconds: float) -> int:
    """One start an hour: runs wait in the rate limit's queue until the rate is raised."""
    return _spanned(self, token, i, nap, seconds)


@durable(name=REF_DURABLE, bind=True)
def reference_durable(self: Any, token: str, i: int, seconds: float) -> int:
    """``limited`` without a concurrency limit."""
    return _spanned(self, token, i, nap, seconds)


@app.task(name=REF_PLAIN, bind=True)
def reference_plain(self: Any, token: str, i: int, seconds: float) -> int:
    """A plain Celery task with the same body (no step)."""
    return _spanned(self, token, i, time.sleep, seconds)


@app.task(name=BLOCKER, acks_late=True)
def blocker(gate: str, timeout_s: float) -> None:
    """Hold a worker thread (and, being acks_late, its prefetch slot) until the benchmark
    releases the gate: the runs of a batch are all published before any worker takes one."""
    client = _records()
    client.rpush(f"{gate}:started", os.getpid())
    client.blpop([f"{gate}:release"], timeout=timeout_s)


@signals.task_postrun.connect
def _record_span(task_id: str | None = None, **kwargs: Any) -> None:
    entry = _pending.pop(str(task_id), None)
    if entry is not None:
        token, span = entry
        _records().rpush(spans_key(token), json.dumps(span))
