"""Durable metrics on Flower's ``/metrics``, read from Redis off the IOLoop.

A ``PeriodicCallback`` (every ``durable_flower_metrics_interval_s``) runs :func:`poll` in a
thread of its own; the IOLoop then copies the snapshot into ordinary prometheus_client
metrics, so a scrape never touches Redis. ``/metrics`` is unauthenticated in Flower: labels
carry only task, status and limit names (never concurrency keys, arguments or run ids).

Gauges come from index and limit sizes. Counters and the step histogram come from the runs
that *finished* (completed, failed, cancelled) since the previous poll, found in the status
indexes (scored by last update): their committed steps, their step and attempt retries and
their resumes after a crash. Counters start at zero when Flower starts.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter as Tally
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from celery import Celery
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from tornado.ioloop import IOLoop, PeriodicCallback

from ..client import DurableClient
from ..events import trace_events
from ..models import TERMINAL_STATUSES
from ..store import now_ms
from .limits import limit_rows

logger = logging.getLogger("celery_durable.flower")

#: Step latency buckets (seconds).
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                300.0, 1800.0, 3600.0)
#: Finished runs observed per status and poll at most (the rest wait for the next poll).
MAX_RUNS_PER_POLL = 10_000
#: Index entries read per round trip while looking for finished runs.
PAGE = 500
#: Milliseconds a poll stays behind the clock, so index writes that lag are not missed.
INDEX_LAG_MS = 2000


@dataclass(slots=True)
class Snapshot:
    """What one poll read: gauges, and increments since the previous poll."""

    runs: dict[str, int] = field(default_factory=dict)
    in_use: dict[str, int] = field(default_factory=dict)
    parked: dict[str, int] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)
    steps: Tally[str] = field(default_factory=Tally)
    step_seconds: list[tuple[str, float]] = field(default_factory=list)
    retries: Tally[tuple[str, str]] = field(default_factory=Tally)
    crash_resumes: Tally[str] = field(default_factory=Tally)
    finished: Tally[tuple[str, str]] = field(default_factory=Tally)
    upto_ms: int = 0


class DurableMetrics:
    """The metric objects (registered once per registry)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.runs = Gauge("durable_flower_runs", "Durable runs by status (index sizes)",
                          ["status"], registry=registry)
        self.in_use = Gauge("durable_flower_slots_in_use",
                            "Concurrency slots held, per limit (all keys)", ["limit"],
                            registry=registry)
        self.parked = Gauge("durable_flower_parked_runs",
                            "Runs waiting for a concurrency slot, per limit (all keys)",
                            ["limit"], registry=registry)
        self.limit = Gauge("durable_flower_slot_limit",
                           "Effective concurrency limit (runtime value, else the coded one)",
                           ["limit"], registry=registry)
        self.steps = Counter("durable_flower_steps_committed",
                             "Steps committed by runs that finished", ["task"],
                             registry=registry)
        self.step_seconds = Histogram("durable_flower_step_duration_seconds",
                                      "Duration of committed steps of runs that finished",
                                      ["task"], buckets=STEP_BUCKETS, registry=registry)
        self.retries = Counter("durable_flower_retries",
                               "Retries in runs that finished: kind=step (a step raised and "
                               "was tried again) or attempt (the run was retried)",
                               ["task", "kind"], registry=registry)
        self.crash_resumes = Counter("durable_flower_crash_resumes",
                                     "Resumes after a worker died, in runs that finished",
                                     ["task"], registry=registry)
        self.finished = Counter("durable_flower_runs_finished",
                                "Runs that finished, by task and final status",
                                ["task", "status"], registry=registry)
        self.poll_errors = Counter("durable_flower_poll_errors",
                                   "Metric polls of Redis that failed", registry=registry)

    def apply(self, snap: Snapshot) -> None:
        """Copy a snapshot into the metrics (on the IOLoop thread)."""
        for status, n in snap.runs.items():
            self.runs.labels(status=status).set(n)
        for gauge, values in ((self.in_use, snap.in_use), (self.parked, snap.parked),
                              (self.limit, snap.limits)):
            for name, n in values.items():
                gauge.labels(limit=name).set(n)
        for task, n in snap.steps.items():
            self.steps.labels(task=task).inc(n)
        for task, seconds in snap.step_seconds:
            self.step_seconds.labels(task=task).observe(seconds)
        for (task, kind), n in snap.retries.items():
            self.retries.labels(task=task, kind=kind).inc(n)
        for task, n in snap.crash_resumes.items():
            self.crash_resumes.labels(task=task).inc(n)
        for (task, status), n in snap.finished.items():
            self.finished.labels(task=task, status=status).inc(n)


def poll(client: DurableClient, since_ms: int) -> Snapshot:
    """Read gauges and the runs finished in ``(since_ms, now - lag]`` (blocking)."""
    snap = Snapshot(upto_ms=max(since_ms, now_ms() - INDEX_LAG_MS))
    snap.runs = client.run_counts()
    for row in limit_rows(client):
        snap.in_use[row.name] = snap.in_use.get(row.name, 0) + len(row.holders)
        snap.parked[row.name] = snap.parked.get(row.name, 0) + len(row.parked)
        if row.key is None and row.effective is not None:
            snap.limits[row.name] = row.effective
    store = client.store
    for status in sorted(TERMINAL_STATUSES, key=lambda s: s.value):
        index = store.keys.status_index(status)
        start = 0
        while start < MAX_RUNS_PER_POLL:
            ids = store.index_window(index, since_ms + 1, snap.upto_ms, start, PAGE)
            for run_id in ids:
                _observe(client, run_id, status.value, snap)
            if len(ids) < PAGE:
                break
            start += PAGE
    return snap


def _observe(client: DurableClient, run_id: str, status: str, snap: Snapshot) -> None:
    raw, steps, trace = client.store.read_run(run_id)
    if raw.get("status") != status:
        return
    task = raw.get("task", "")
    snap.finished[(task, status)] += 1
    for text in steps.values():
        rec = json.loads(text)
        snap.steps[task] += 1
        if rec.get("t0") is not None and rec.get("t1") is not None:
            snap.step_seconds.append((task, max(0.0, (rec["t1"] - rec["t0"]) / 1000)))
    for event in trace_events(trace, {}):  # no step events needed: counted from checkpoints
        kind = event.type
        if kind == "step_failed":
            snap.retries[(task, "step")] += 1
        elif kind == "attempt_failed":
            snap.retries[(task, "attempt")] += 1
        elif kind == "crash_detected":
            snap.crash_resumes[task] += 1


class Poller:
    """Runs :func:`poll` every ``interval_s`` in its own thread and applies the result."""

    def __init__(self, app: Celery, metrics: DurableMetrics, interval_s: float) -> None:
        self.app = app
        self.metrics = metrics
        self.interval_s = interval_s
        self.since_ms = now_ms() - INDEX_LAG_MS
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="durable-metrics")
        self._running: Future[Snapshot] | None = None
        self._callback: PeriodicCallback | None = None

    def start(self) -> None:
        self._callback = PeriodicCallback(self.tick, self.interval_s * 1000)
        self._callback.start()
        IOLoop.current().add_callback(self.tick)

    def stop(self) -> None:
        if self._callback is not None:
            self._callback.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def tick(self) -> None:
        """Start a poll unless one is still running (a slow Redis never piles them up)."""
        if self._running is not None and not self._running.done():
            return
        started = time.monotonic()
        future = self._executor.submit(poll, DurableClient(self.app), self.since_ms)
        self._running = future
        loop = IOLoop.current()
        future.add_done_callback(lambda f: loop.add_callback(self._done, f, started))

    def _done(self, future: Future[Snapshot], started: float) -> None:
        try:
            snap = future.result()
        except Exception:
            self.metrics.poll_errors.inc()
            logger.warning("celery-durable: the metrics poll failed", exc_info=True)
            return
        self.since_ms = snap.upto_ms
        self.metrics.apply(snap)
        logger.debug("celery-durable: metrics polled in %.3f s", time.monotonic() - started)


__all__ = ["DurableMetrics", "Poller", "Snapshot", "poll"]
