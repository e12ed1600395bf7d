"""Helpers for testing your own durable tasks against a real Redis and real workers.

Nothing here fakes the checkpoint store: the helpers start a throwaway ``redis-server``,
run embedded or subprocess Celery workers, wait for runs, make steps fail on purpose and
SIGKILL the worker holding a run. See docs/testing.md. With pytest, add
``pytest_plugins = ["celery_durable.testing.plugin"]`` to your ``conftest.py`` for the
``durable_redis_url`` fixture.
"""

from __future__ import annotations

from .faults import fail_step
from .redis_server import redis_server
from .waiting import run_and_wait, wait_for_run, wait_for_step
from .workers import WorkerProcess, durable_worker, kill_run_worker, worker_process

__all__ = [
    "WorkerProcess",
    "durable_worker",
    "fail_step",
    "kill_run_worker",
    "redis_server",
    "run_and_wait",
    "wait_for_run",
    "wait_for_step",
    "worker_process",
]
