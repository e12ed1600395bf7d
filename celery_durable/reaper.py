"""Reaper: resume runs whose worker died or whose lease expired, each exactly once.

Every worker runs one; they coordinate through Redis. A dead worker (no heartbeat for
``durable_worker_ttl_s``) is claimed by one reaper (``ZREM`` decides), which fences and
frees each run it held and puts the run's message back on its queue. Runs whose lease simply
expired are picked up from the lease index the same way. ``reap_run.lua`` makes each run's
takeover atomic, so two reapers never resume the same run.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from .concurrency import publish_woken, sweep
from .errors import DurableError
from .rates import dispatch_queue, sweep_queues
from .requeue import broker_is_redis, requeue_run, restore_stale_messages
from .store import RunStore
from .waits import dispatch_debounce, dispatch_timer

logger = logging.getLogger("celery_durable.reaper")
#: Reaper sweeps (heartbeats) between two safety sweeps of the concurrency limits.
SLOT_SWEEP_EVERY = 5


class Reaper:
    """Finds and resumes stalled runs; call :meth:`sweep` periodically."""

    def __init__(self, app: Celery, store: RunStore, worker_id: str) -> None:
        self.app = app
        self.store = store
        self.worker_id = worker_id
        self._connection: Any = None
        self._sweeps = 0

    def close(self) -> None:
        if self._connection is not None:
            self._connection.release()
            self._connection = None

    def _broker_channel(self) -> Any:
        if self._connection is None:
            self._connection = self.app.connection_for_write()
        return self._connection.default_channel

    def _is_durable(self, task_name: str) -> bool:
        from .task import DurableTask

        return isinstance(self.app.tasks.get(task_name), DurableTask)

    def restore_orphaned_messages(self) -> int:
        """Put back messages of durable tasks reserved by workers that died before starting
        them (they hold no lease, so only their stale unacked entry tells)."""
        if not broker_is_redis(self.app):
            return 0
        try:
            count = restore_stale_messages(self.app, self._broker_channel(),
                                           self.store.settings.worker_ttl_s, self._is_durable)
        except Exception:
            self.close()
            raise
        if count:
            logger.warning("celery-durable: restored %d message(s) reserved by a dead worker",
                           count)
        return count

    def sweep(self) -> int:
        """One pass; returns the number of runs resumed."""
        resumed = 0
        for dead in self.store.dead_workers():
            if dead == self.worker_id:
                continue
            runs = self.store.take_dead_worker(dead)
            if runs is None:
                continue  # another reaper took it
            logger.warning("celery-durable: worker %s stopped beating; resuming its %d run(s)",
                           dead, len(runs))
            resumed += sum(self._resume(run_id, dead) for run_id in runs)
        for run_id in self.store.expired_leases():
            resumed += self._resume(run_id, "")
        return (resumed + self.restore_orphaned_messages() + self.wake_parked()
                + self.dispatch_timers() + self.dispatch_debounces()
                + self.dispatch_rate_queues())

    def dispatch_timers(self) -> int:
        """Publish the runs whose timer is due (sleeps, wait timeouts, long backoffs).
        ``take_timer`` lets exactly one worker dispatch each."""
        return sum(dispatch_timer(self.app, self.store, run_id)
                   for run_id in self.store.due_timers())

    def dispatch_debounces(self) -> int:
        """Start the runs of debounced bursts whose calls have paused long enough."""
        return sum(dispatch_debounce(self.app, self.store, key)
                   for key in self.store.due_debounces())

    def dispatch_rate_queues(self) -> int:
        """Hand the turns of rate limits out to their waiting runs (each queue's dispatcher
        is a due timer that exactly one worker takes)."""
        return sum(dispatch_queue(self.app, self.store, member)
                   for member in self.store.due_rate_queues())

    def wake_parked(self) -> int:
        """The safety net of concurrency limits, every ``SLOT_SWEEP_EVERY`` sweeps: hand
        free slots to parked runs whose wake-up was lost (a worker died mid-release, a
        hand-over never taken). Normally releases wake parked runs directly."""
        self._sweeps += 1
        if self._sweeps % SLOT_SWEEP_EVERY:
            return 0
        missing = sweep_queues(self.store)
        if missing:
            logger.warning("celery-durable: %d rate queue(s) had lost their dispatcher timer",
                           missing)
        woken = sweep(self.store)
        publish_woken(self.app, woken)
        if woken:
            logger.warning("celery-durable: the slot sweep woke %d parked run(s)", len(woken))
        return len(woken)

    def _resume(self, run_id: str, dead_owner: str) -> bool:
        try:
            reaped = self.store.reap(run_id, dead_owner, self.worker_id)
            if reaped is None:
                return False
            how = requeue_run(self.app, run_id, reaped)
        except (DurableError, OSError) as exc:
            logger.error("celery-durable: could not resume run %s: %s", run_id, exc)
            return False
        except Exception:
            logger.exception("celery-durable: could not resume run %s", run_id)
            return False
        logger.warning("celery-durable: run %s (%s) was held by %s; %s its message",
                       run_id, reaped[1], reaped[5], how)
        return True
