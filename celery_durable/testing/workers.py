"""Celery workers for integration tests: embedded (a thread of the test process) or real
``celery worker`` subprocesses that a test can SIGKILL, as a crash would."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Celery

from ..client import DurableClient
from ..config import settings_for
from ..errors import HarnessError, StoreError
from ..store import store_for

#: How long (seconds) a worker subprocess may take to log that it is ready.
READY_TIMEOUT_S = 60.0


@contextmanager
def durable_worker(
    app: Celery,
    *,
    pool: str = "threads",
    concurrency: int = 2,
    queues: Sequence[str] | None = None,
    loglevel: str = "WARNING",
    shutdown_timeout: float = 10.0,
) -> Iterator[Any]:
    """Run an embedded worker for ``app`` (a thread of this process) during the block.

    It runs the durable bootstep like any worker (heartbeat, reaper, timers), so sleeps,
    waits, retries and child runs behave as in production. ``queues`` defaults to the app's
    default queue. Faults from :func:`fail_step` reach it (same process).

    Run one at a time: Celery stops embedded workers through a process-wide flag, so when
    this one stops, any other embedded worker of the process (a session-wide one, say)
    stops too; start that one again after the block if later tests need it.

    Raises:
        StoreError: the checkpoint store (``durable_redis_url``) does not answer; checked
            first, so that a test fails with that reason rather than a timeout.
    """
    from celery.contrib.testing.worker import start_worker

    settings_for(app)  # a bad durable_* setting fails here, with its name
    try:
        store_for(app).ping()
    except StoreError as exc:
        raise StoreError(f"durable_worker: {exc}") from exc
    app.loader.import_default_modules()
    options: dict[str, Any] = {}
    if queues:
        options["queues"] = list(queues)
    # A worker given queues selects them on the app itself (kombu's Queues.select): give
    # the app its selection back afterwards, so that later workers consume what they did.
    from celery.worker import state

    # A worker that failed to stop in time (start_worker raised) leaves Celery's stop flag
    # set, which would stop this one at once.
    if state.should_terminate == 0:
        state.should_terminate = None
    queues_of_app = app.amqp.queues
    selected = getattr(queues_of_app, "_consume_from", None)
    try:
        with start_worker(app, pool=pool, concurrency=concurrency, loglevel=loglevel,
                          perform_ping_check=False, shutdown_timeout=shutdown_timeout,
                          **options) as worker:
            yield worker
    finally:
        if hasattr(queues_of_app, "_consume_from"):
            queues_of_app._consume_from = selected
    gc.collect()  # results the worker published unsubscribe now, while Redis is up


class WorkerProcess:
    """A ``celery -A APP worker`` subprocess started by :func:`worker_process`.

    ``pid`` is its main process; ``log_path`` its combined output, kept until the block
    ends; ``killed`` tells whether :meth:`kill` was used.
    """

    def __init__(self, proc: subprocess.Popen[bytes], log_path: str, hostname: str) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.log_path = log_path
        self.hostname = hostname
        self.killed = False

    def log(self) -> str:
        """Everything the worker has written so far."""
        return Path(self.log_path).read_text(errors="replace")

    def holds(self, lease_owner: str | None) -> bool:
        """Whether ``lease_owner`` (``RunInfo.lease_owner``: ``"<node>|<pid>|<random>"``) is
        this worker."""
        parts = (lease_owner or "").split("|")
        return len(parts) == 3 and parts[1] == str(self.pid)

    def kill(self) -> None:
        """SIGKILL the worker's main process and its pool processes: no shutdown, no
        cleanup, as in an OOM kill or a lost machine."""
        self.killed = True
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop the worker (warm shutdown, then SIGKILL after 20 s) and all its processes."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


@contextmanager
def worker_process(
    app: str,
    *,
    cwd: str | os.PathLike[str] | None = None,
    pool: str = "prefork",
    concurrency: int = 1,
    queues: Sequence[str] | None = None,
    hostname: str | None = None,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[WorkerProcess]:
    """Run ``celery -A app worker`` as a subprocess (its own process group) until it has
    logged that it is ready; stop it, and every process it started, when the block ends.

    ``app`` is what ``-A`` takes (``"proj"``, ``"proj.celery:app"``); ``cwd`` and ``env``
    (added to this process's environment) let it be imported.

    Raises:
        HarnessError: the worker exited or was not ready within ``READY_TIMEOUT_S``.
    """
    name = hostname or f"durable-test-{os.getpid()}-{time.monotonic_ns()}@%h"
    log = tempfile.NamedTemporaryFile(prefix="durable-worker-", suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "celery", "-A", app, "worker", "-P", pool, "-c",
           str(concurrency), "-n", name, "--loglevel=INFO", "--without-gossip",
           "--without-mingle", "--without-heartbeat", *extra_args]
    if queues:
        cmd += ["-Q", ",".join(queues)]
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    worker = WorkerProcess(proc, log.name, name)
    try:
        _wait_ready(worker)
        yield worker
    finally:
        worker.stop()
        os.unlink(log.name)


def _wait_ready(worker: WorkerProcess) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while " ready." not in worker.log():
        if worker.proc.poll() is not None:
            raise HarnessError(f"the worker exited with status {worker.proc.returncode} "
                               f"before it was ready; its log:\n{worker.log()[-3000:]}")
        if time.monotonic() > deadline:
            raise HarnessError(f"the worker was not ready after {READY_TIMEOUT_S:g} s; its "
                               f"log:\n{worker.log()[-3000:]}")
        time.sleep(0.05)


def kill_run_worker(app: Celery, run_id: str, workers: Sequence[WorkerProcess]) -> WorkerProcess:
    """SIGKILL the worker (one of ``workers``) whose attempt holds the run's lease now.

    Use it after :func:`~celery_durable.testing.wait_for_step` to crash a run between two
    steps; another worker resumes the run after ``durable_worker_ttl_s``. Only workers this
    test started are ever killed.

    Raises:
        HarnessError: no attempt of the run holds a lease, or the holder is not one of
            ``workers``.
    """
    run = DurableClient(app).get_run(run_id)
    for worker in workers:
        if not worker.killed and worker.holds(run.lease_owner):
            worker.kill()
            return worker
    raise HarnessError(f"run {run_id} ({run.status.value}) is not held by any of the given "
                       f"workers (lease owner {run.lease_owner!r})")
