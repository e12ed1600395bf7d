"""Celery workers for integration tests: embedded (a thread of the test process) or real
``celery worker`` subprocesses that a test can SIGKILL, as a crash would."""

from __future__ import annotations

import gc
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
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


#: Thread idents of embedded workers asked to stop (see :func:`_stop_only_these`).
_STOPPING: set[int] = set()


def _stop_only_these() -> None:
    """Make Celery's shutdown check stop the embedded workers named in ``_STOPPING``.

    Celery's own ``start_worker`` stops an embedded worker by setting the process-wide
    ``celery.worker.state.should_terminate``, which every embedded worker of the process
    watches: stopping one stops (or races with) all of them. The consumer loop calls
    ``state.maybe_shutdown()`` on every turn, in the worker's own thread; the wrapper
    installed here raises ``WorkerTerminate`` there for a thread asked to stop, so the
    worker shuts down through Celery's normal path, and leaves the others alone. Installed
    once; it defers to Celery's check otherwise.
    """
    from celery.exceptions import WorkerTerminate
    from celery.worker import state

    if getattr(state.maybe_shutdown, "_durable_stop", False):
        return
    celery_check = state.maybe_shutdown

    def maybe_shutdown() -> None:
        if threading.get_ident() in _STOPPING:
            raise WorkerTerminate(0)
        celery_check()

    maybe_shutdown._durable_stop = True  # type: ignore[attr-defined]
    state.maybe_shutdown = maybe_shutdown


_EMBEDDED = itertools.count(1)


def _embedded_nodename() -> str:
    """``gen<pid>-<n>@<host>``: a node name of its own for each embedded worker (Celery's
    ``gen<pid>@<host>`` is the same for every worker of a process)."""
    from celery.utils.nodenames import anon_nodename

    return anon_nodename().replace("@", f"-{next(_EMBEDDED)}@", 1)


def _stack_of(thread: threading.Thread) -> str:
    """Where ``thread`` is now, for the error of a worker that does not stop."""
    frame = sys._current_frames().get(thread.ident or -1)
    return "".join(traceback.format_stack(frame)) if frame is not None else "(gone)"


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
    default queue. Faults from :func:`fail_step` reach it (same process). Several may run
    at once (a session-wide one and a test's own, say): leaving the block stops this worker
    only, unlike Celery's ``start_worker``, whose stop flag is process-wide.

    Yields the worker (a ``celery.contrib.testing.worker.TestWorkController``), started
    and consuming.

    Raises:
        StoreError: the checkpoint store (``durable_redis_url``) does not answer; checked
            first, so that a test fails with that reason rather than a timeout.
        HarnessError: the worker did not stop within ``shutdown_timeout`` seconds (a task
            still running, say); the message shows where its thread was.
    """
    from celery.contrib.testing.worker import (
        TestWorkController,
        setup_app_for_worker,
        test_worker_starting,
        test_worker_stopped,
    )
    from celery.result import _set_task_join_will_block  # type: ignore[attr-defined]
    from kombu.asynchronous import get_event_loop, set_event_loop

    settings_for(app)  # a bad durable_* setting fails here, with its name
    try:
        store_for(app).ping()
    except StoreError as exc:
        raise StoreError(f"durable_worker: {exc}") from exc
    app.loader.import_default_modules()
    _stop_only_these()
    options: dict[str, Any] = {}
    if queues:
        options["queues"] = list(queues)
    # A worker given queues selects them on the app itself (kombu's Queues.select): give
    # the app its selection back afterwards, so that later workers consume what they did.
    queues_of_app = app.amqp.queues
    selected = getattr(queues_of_app, "_consume_from", None)
    test_worker_starting.send(sender=app)
    worker: Any = None
    try:
        setup_app_for_worker(app, loglevel, None)  # type: ignore[arg-type]
        # kombu keeps one "current" event loop per process, and a worker takes it if there
        # is one: two embedded workers would share it, and the first to stop closes it
        # (every socket of the other worker with it). This one makes its own.
        previous_loop = get_event_loop()
        set_event_loop(None)
        try:
            worker = TestWorkController(
                app=app, concurrency=concurrency, hostname=_embedded_nodename(), pool=pool,
                loglevel=loglevel, logfile=None, ready_callback=None,
                without_heartbeat=True, without_mingle=True, without_gossip=True, **options)
        finally:
            if previous_loop is not None:
                set_event_loop(previous_loop)

        def run() -> None:
            try:
                worker.start()
            finally:  # a thread ident can be reused once its thread has ended
                _STOPPING.discard(threading.get_ident())

        thread = threading.Thread(target=run, daemon=True,
                                  name=f"durable_worker {worker.hostname}")
        thread.start()
        worker.ensure_started()
        _set_task_join_will_block(False)
        try:
            yield worker
        finally:
            _STOPPING.add(thread.ident or -1)
            thread.join(shutdown_timeout)
            if thread.is_alive():  # it stays marked: it stops once back in its loop
                raise HarnessError(
                    f"durable_worker: the worker {worker.hostname} did not stop within "
                    f"{shutdown_timeout:g} s (shutdown_timeout); its thread is at:\n"
                    f"{_stack_of(thread)}")
    finally:
        test_worker_stopped.send(sender=app, worker=worker)
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
