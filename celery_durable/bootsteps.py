"""The worker bootstep: a thread in the main worker process for heartbeat and reaper.

It is added to ``app.steps['worker']`` when a DurableTask binds to the app (see
:func:`install`), so a plain ``celery -A proj worker`` runs it with no extra flag. The
thread has its own Redis connections and never touches the worker's event loop.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import redis
from celery import Celery, bootsteps, signals
from celery.concurrency.solo import TaskPool as SoloPool
from celery.worker import state as worker_state
from kombu.utils.url import maybe_sanitize_url

from . import metrics, spin
from .checks import run_startup_checks
from .config import DurableSettings, settings_for
from .errors import ConfigurationError
from .heartbeat import Heartbeat
from .identity import install_worker_id, new_worker_id
from .reaper import Reaper
from .store import RunStore
from .versions import extra_queues

logger = logging.getLogger("celery_durable")
#: Seconds between attempts to reach the checkpoint store at worker start: doubling from the
#: first, up to the last.
STORE_RETRY_FIRST_S, STORE_RETRY_MAX_S = 0.5, 10.0


def connect_store(settings: DurableSettings) -> RunStore:
    """The checkpoint store, once it answers: a worker started while Redis is restarting
    or not reachable yet waits for it (as Celery waits for its broker) instead of exiting;
    it consumes no task meanwhile. A warm or cold shutdown interrupts the wait."""
    delay = STORE_RETRY_FIRST_S
    while True:
        store: RunStore | None = None
        try:
            store = RunStore(settings)
            store.client.ping()
            return store
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError,
                redis.exceptions.RedisClusterException) as exc:
            if store is not None:
                store.client.close()
            logger.warning("celery-durable: the checkpoint store %s does not answer (%s); "
                           "trying again in %g s", maybe_sanitize_url(settings.redis_url),
                           exc, delay)
        _pause(delay)
        delay = min(delay * 2, STORE_RETRY_MAX_S)


def _pause(seconds: float) -> None:
    """Sleep, in short naps that honour a shutdown requested meanwhile: Celery's signal
    handlers only set a flag in the main process (which this runs in)."""
    deadline = time.monotonic() + seconds
    while True:
        worker_state.maybe_shutdown()  # raises WorkerShutdown / WorkerTerminate
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.1))


def tasks_at_once_of(worker: Any) -> int:
    """How many tasks ``worker``'s pool runs at the same time: one for the solo pool, its
    concurrency for the others (green pools' included: their tasks share one thread, where
    polling would hold up the others)."""
    pool_cls = getattr(worker, "pool_cls", None)
    if isinstance(pool_cls, type) and issubclass(pool_cls, SoloPool):
        return 1
    return max(1, int(getattr(worker, "concurrency", 1) or 1))


class DurableWorkerStep(bootsteps.StartStopStep):
    """Heartbeat + reaper thread of one worker."""

    requires = ("celery.worker.components:Pool",)
    label = "celery-durable"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.app: Celery = worker.app
        self.worker = worker
        # Set before the pool starts, so that forked pool processes inherit it.
        self.worker_id = new_worker_id(str(worker.hostname))
        install_worker_id(self.worker_id, str(worker.hostname))
        # Before the consumer starts: also consume the version-tagged queues of this code.
        queues = self.app.amqp.queues
        for name in extra_queues(self.app, list(queues.consume_from)):
            if name not in queues.consume_from:
                queues.select_add(name)
                logger.info("celery-durable: also consuming %s (version_policy='route')", name)
        self._set_reply_spin(worker)
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._thread: threading.Thread | None = None
        self._heartbeat: Heartbeat | None = None
        self._exporter: Any = None
        if metrics.AVAILABLE:
            # Connected before the pool starts, so that every pool process inherits it.
            signals.worker_process_shutdown.connect(metrics.mark_dead, weak=False)

    def _set_reply_spin(self, worker: Any) -> None:
        """Choose how long this worker's processes poll for store replies (spin.py); set
        before the pool starts, so that forked pool processes inherit it."""
        tasks_at_once, cores = tasks_at_once_of(worker), spin.usable_cores()
        budget = spin.budget_for(settings_for(self.app).reply_spin_us, tasks_at_once, cores)
        spin.set_budget(budget)
        logger.info("celery-durable: polling %d us for store replies (%d tasks at once on "
                    "%d cores)", budget, tasks_at_once, cores)

    def start(self, worker: Any) -> None:
        settings = settings_for(self.app)
        store = connect_store(settings)
        run_startup_checks(self.app, settings, store.client)
        self._heartbeat = Heartbeat(self.app, store, self.worker_id)
        reaper = Reaper(self.app, store, self.worker_id) if settings.reaper else None
        self._heartbeat.beat()
        self._thread = threading.Thread(
            target=self._loop, args=(self._heartbeat, reaper, settings.heartbeat_interval_s),
            name="celery-durable-heartbeat", daemon=True,
        )
        self._thread.start()
        signals.worker_shutdown.connect(self._on_worker_shutdown, weak=False)
        logger.info("celery-durable: worker %s heartbeat every %gs", self.worker_id,
                    settings.heartbeat_interval_s)
        if settings.metrics_port is not None:
            self._start_exporter(worker, settings)

    def _start_exporter(self, worker: Any, settings: DurableSettings) -> None:
        """Serve the worker's Prometheus metrics (durable_metrics_port)."""
        port = settings.metrics_port
        assert port is not None
        if not metrics.AVAILABLE:
            raise ConfigurationError(
                "durable_metrics_port is set but prometheus_client is not installed: "
                "pip install 'celery-durable[prometheus]' (or unset durable_metrics_port)")
        if not settings.metrics:
            raise ConfigurationError(
                "durable_metrics_port is set but durable_metrics is False: nothing would be "
                "recorded; enable durable_metrics or unset durable_metrics_port")
        directory = metrics.multiprocess_dir()
        if directory is not None and not os.path.isdir(directory):
            raise ConfigurationError(
                f"PROMETHEUS_MULTIPROC_DIR={directory} is not a directory: create it (empty) "
                "before starting the worker, or unset it")
        pool = type(getattr(worker, "pool", None)).__module__
        if "prefork" in pool and directory is None:
            logger.warning(
                "celery-durable: durable_metrics_port is set with a prefork pool but "
                "PROMETHEUS_MULTIPROC_DIR is not: the pool processes' metrics cannot be "
                "exported. Start the worker with PROMETHEUS_MULTIPROC_DIR=<an empty dir>")
        try:
            self._exporter = metrics.start_exporter(port, settings.metrics_addr)
        except OSError:
            # The worker runs on without an exporter rather than refuse to start.
            logger.exception("celery-durable: could not serve metrics on %s:%s",
                             settings.metrics_addr, port)
            return
        logger.info("celery-durable: Prometheus metrics on http://%s:%s/metrics",
                    settings.metrics_addr, self._exporter.server_port)

    def _loop(self, heartbeat: Heartbeat, reaper: Reaper | None, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                heartbeat.beat()
                if reaper is not None and not self._draining.is_set():
                    reaper.sweep()
            except Exception:
                # Redis may be briefly unreachable: keep beating; leases outlive a few misses.
                logger.exception("celery-durable: heartbeat failed (will retry)")
        if reaper is not None:
            reaper.close()

    def stop(self, worker: Any) -> None:
        # Warm shutdown: the pool is stopped after this step and still finishes its tasks,
        # so keep renewing their leases until the worker is fully down.
        self._draining.set()

    def terminate(self, worker: Any) -> None:
        # Cold shutdown: running tasks are abandoned and their messages redelivered; free
        # their leases now so that the next attempts start at once.
        self._finish()

    def _on_worker_shutdown(self, sender: Any = None, **kwargs: Any) -> None:
        if sender is self.worker:
            self._finish()
            signals.worker_shutdown.disconnect(self._on_worker_shutdown)

    def _finish(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        exporter, self._exporter = self._exporter, None
        if exporter is not None:
            exporter.shutdown()
            exporter.server_close()
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            try:
                heartbeat.stop()
            except Exception:
                logger.exception("celery-durable: could not release leases at shutdown")


def install(app: Celery) -> None:
    """Add the celery-durable worker bootstep to ``app`` (idempotent)."""
    steps = app.steps["worker"]
    if DurableWorkerStep not in steps:
        steps.add(DurableWorkerStep)
