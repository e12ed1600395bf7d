"""Prometheus metrics recorded by workers (with the ``prometheus`` extra installed).

Each metric is labelled by task name (and, for finished runs, status), never by run id. The
labelled children are looked up once per task and process, so a step costs two updates of
a child (``inc`` and ``observe``). Recording never raises into a run: a failing update is
logged once and ignored, and durability never depends on it.

Prefork workers run tasks in pool processes: set ``PROMETHEUS_MULTIPROC_DIR`` (an empty
directory, wiped before the worker starts) so that prometheus_client's multiprocess mode
writes each process's values to files that the exporter of the main process (started when
``durable_metrics_port`` is set) aggregates. Metric families are created on first use, so a
process that never runs a durable task (Flower, a producer) exports none of them.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

try:  # the optional extra
    import prometheus_client
    from prometheus_client import multiprocess
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    prometheus_client = None  # type: ignore[assignment]

from .config import DurableSettings

logger = logging.getLogger("celery_durable")

AVAILABLE = prometheus_client is not None
#: Upper bounds (seconds) of the step duration buckets: steps take milliseconds to hours.
STEP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                         60.0, 300.0, 900.0, 3600.0, float("inf"))
#: Statuses counted by ``durable_runs_finished_total`` (the ends a worker records).
FINISHED_STATUSES = ("completed", "failed")

_lock = threading.Lock()
_families: dict[str, Any] = {}
_meters: dict[str, TaskMeters] = {}
_warned = False


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode, or None when it is off."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get(
        "prometheus_multiproc_dir") or None


def _create_families() -> dict[str, Any]:
    pc = prometheus_client
    task = ("task",)
    return {
        "committed": pc.Counter("durable_steps_committed", "Steps executed and committed",
                                task),
        "duration": pc.Histogram("durable_step_duration_seconds",
                                 "Execution time of committed steps (seconds)", task,
                                 buckets=STEP_DURATION_BUCKETS),
        "replayed": pc.Counter("durable_steps_replayed",
                               "Steps answered from their checkpoint instead of executed", task),
        "retries": pc.Counter("durable_run_retries",
                              "Attempts that failed and will be retried", task),
        "crash_resumes": pc.Counter("durable_crash_resumes",
                                    "Attempts that resumed a run whose worker died", task),
        "slot_waits": pc.Counter("durable_slot_waits",
                                 "Runs parked because a concurrency limit was full (counted "
                                 "where they were parked: the publisher, or the worker for "
                                 "a run sent by name)", task),
        "finished": pc.Counter("durable_runs_finished",
                               "Runs that ended in a worker, by status", ("task", "status")),
    }


def _warn(what: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        logger.warning("celery-durable: could not %s; metrics may be incomplete", what,
                       exc_info=True)


class TaskMeters:
    """The metric children of one task in this process (created once, then reused)."""

    __slots__ = ("_committed", "_duration", "_replayed", "_retries", "_crash_resumes",
                 "_slot_waits", "_finished")

    def __init__(self, families: dict[str, Any], task: str) -> None:
        self._committed = families["committed"].labels(task)
        self._duration = families["duration"].labels(task)
        self._replayed = families["replayed"].labels(task)
        self._retries = families["retries"].labels(task)
        self._crash_resumes = families["crash_resumes"].labels(task)
        self._slot_waits = families["slot_waits"].labels(task)
        self._finished = {s: families["finished"].labels(task, s) for s in FINISHED_STATUSES}

    def step_committed(self, seconds: float) -> None:
        """A step ran for ``seconds`` and its checkpoint was committed."""
        try:
            self._committed.inc()
            self._duration.observe(seconds)
        except Exception:
            _warn("record a committed step")

    def step_replayed(self, count: int = 1) -> None:
        """``count`` steps were answered from their checkpoints (an attempt reports all
        of its replays once, as it ends: a resume replays many in a row)."""
        try:
            if count:
                self._replayed.inc(count)
        except Exception:
            _warn("record a replayed step")

    def run_retrying(self) -> None:
        try:
            self._retries.inc()
        except Exception:
            _warn("record a retry")

    def crash_resumed(self) -> None:
        try:
            self._crash_resumes.inc()
        except Exception:
            _warn("record a crash resume")

    def slot_waited(self) -> None:
        try:
            self._slot_waits.inc()
        except Exception:
            _warn("record a slot wait")

    def run_finished(self, status: str) -> None:
        """The run ended with ``status`` (one of FINISHED_STATUSES)."""
        try:
            self._finished[status].inc()
        except Exception:
            _warn("record a finished run")


def meters_for(settings: DurableSettings, task: str) -> TaskMeters | None:
    """The metrics of ``task`` in this process, or None (no extra, or ``durable_metrics``
    is off). Never raises."""
    if not AVAILABLE or not settings.metrics:
        return None
    meters = _meters.get(task)
    if meters is not None:
        return meters
    try:
        with _lock:
            if not _families:
                _families.update(_create_families())
            meters = _meters.get(task)
            if meters is None:
                meters = _meters[task] = TaskMeters(_families, task)
        return meters
    except Exception:
        _warn("create the metrics")
        return None


def mark_dead(sender: Any = None, pid: int | None = None, **kwargs: Any) -> None:
    """worker_process_shutdown receiver: a pool process ends (runs in that process; a
    process killed by a signal never gets here, which only matters for live gauges)."""
    try:
        if pid is not None and multiprocess_dir() is not None:
            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
    except Exception:
        _warn("mark a pool process dead")


def start_exporter(port: int, addr: str) -> Any:
    """Serve ``/metrics`` over HTTP from a thread of this (the worker's main) process.

    With ``PROMETHEUS_MULTIPROC_DIR`` set, the exporter aggregates the files of every
    process (the pool processes included); otherwise it serves this process's registry.
    Returns the HTTP server (``shutdown()`` stops it).
    """
    registry: Any = prometheus_client.REGISTRY
    if multiprocess_dir() is not None:
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server, _thread = prometheus_client.start_http_server(port, addr, registry=registry)
    return server
