"""Heartbeat of a worker: liveness, lease renewal, and fresh kombu unacked entries.

Runs in the worker's main process (a bootstep thread with its own Redis connections), which
sees every request of the worker whatever the pool. Each beat:

- records the worker as alive (``Pworkers``), so reapers elsewhere know it is not dead;
- every ``lease_renew_every_s``, extends the leases of the durable runs it is executing;
- frees the leases of runs it stopped executing without ending them (a pool process died),
  so their redelivered messages start the next attempt at once;
- with a Redis broker, bumps kombu's ``unacked_index`` score of every live message, so a
  long task is never redelivered by the visibility-timeout sweep while its worker lives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import redis
from celery import Celery
from celery.worker import state

from .concurrency import slots_for
from .identity import nodename_of
from .requeue import broker_is_redis
from .store import RunStore

logger = logging.getLogger("celery_durable.heartbeat")


def snapshot(items: Iterable[Any]) -> list[Any]:
    """Copy a WeakSet/dict view the event loop may be changing (retry on RuntimeError)."""
    for _ in range(5):
        try:
            return list(items)
        except RuntimeError:
            continue
    return []


def active_durable_requests(nodename: str | None = None) -> dict[str, Any]:
    """The durable runs this worker is executing right now: run id -> worker Request.

    Celery keeps the active requests per process: ``nodename`` keeps those of one worker
    when a process runs several (embedded test workers are threads of one process)."""
    from .task import DurableTask

    runs = {}
    for req in snapshot(state.active_requests):
        if isinstance(getattr(req, "task", None), DurableTask) and req.id:
            if nodename is None or getattr(req, "hostname", nodename) == nodename:
                runs[str(req.id)] = req
    return runs


def active_durable_runs(nodename: str | None = None) -> set[str]:
    """Ids of the durable runs this worker is executing right now."""
    return set(active_durable_requests(nodename))


def slot_holders(store: RunStore, requests: dict[str, Any]) -> list[tuple[str, str]]:
    """``(holders key, run id)`` of every concurrency slot the active runs hold."""
    pairs = []
    for run_id, req in requests.items():
        task = req.task
        if task.durable_concurrency_limit is None and not store.settings.queue_limits:
            continue
        queue = str((req.delivery_info or {}).get("routing_key") or "")
        try:
            refs = slots_for(task, req.args, req.kwargs, queue, store.settings)
        except Exception:
            logger.exception("celery-durable: cannot compute the slots of run %s", run_id)
            continue
        pairs += [(store.keys.limit(r.base, r.sub).holders, run_id) for r in refs]
    return pairs


def live_delivery_tags() -> list[str]:
    """Delivery tags of every message this worker holds (reserved, active, scheduled)."""
    requests = snapshot(state.requests.values())
    requests += snapshot(getattr(state, "scheduled_requests", ()))
    tags = []
    for req in requests:
        tag = getattr(getattr(req, "message", None), "delivery_tag", None)
        if tag:
            tags.append(str(tag))
    return tags


class UnackedBumper:
    """Keeps kombu's ``unacked_index`` score of live messages at "now" (Redis broker only,
    also behind Sentinel: there kombu's own channel finds the current master)."""

    def __init__(self, app: Celery) -> None:
        options = app.conf.broker_transport_options or {}
        prefix = options.get("global_keyprefix", "")
        self.key = f"{prefix}{options.get('unacked_index_key', 'unacked_index')}"
        self.app = app
        self.client: Any = None
        self._connection: Any = None
        url = str(app.conf.broker_url)
        self.enabled = broker_is_redis(app)
        if self.enabled and url.startswith(("redis", "rediss")):
            self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def _redis(self) -> Any:
        if self.client is None:
            # A Sentinel broker: connected on first use, so a broker that is down at worker
            # start delays the bumps instead of failing the worker.
            connection = self.app.connection_for_write()
            try:
                channel: Any = connection.default_channel
                self.client = channel.client
            except Exception:
                connection.release()
                raise
            self._connection = connection
        return self.client

    def bump(self, tags: list[str]) -> None:
        if not self.enabled or not tags:
            return
        now = f"{time.time():.3f}"  # formatted once, not once per tag
        # XX: only refresh entries kombu still has (never resurrect an acked message).
        self._redis().execute_command(
            "ZADD", self.key, "XX", *(item for tag in tags for item in (now, tag)))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.release()
            self._connection = None
        elif self.client is not None:
            self.client.close()
        self.client = None


class Heartbeat:
    """One worker's heartbeat; call :meth:`beat` every ``durable_heartbeat_interval_s``."""

    def __init__(self, app: Celery, store: RunStore, worker_id: str) -> None:
        self.store = store
        self.worker_id = worker_id
        self.nodename = nodename_of(worker_id)
        self.unacked = UnackedBumper(app)
        self._held: set[str] = set()
        self._last_renew = 0.0
        self._last_bump = 0.0

    def beat(self) -> None:
        now = time.monotonic()
        requests = active_durable_requests(self.nodename)
        active = set(requests)
        renew = now - self._last_renew >= self.store.settings.lease_renew_every_s
        # A run that appeared since the last renewal is renewed at once as well.
        renew = renew or bool(active - self._held)
        self.store.beat(self.worker_id, sorted(active), renew)
        if renew:
            self._last_renew = now
            self.store.renew_slots(slot_holders(self.store, requests))
        gone = self._held - active
        if gone:
            self.store.release_leases(self.worker_id, sorted(gone))
        self._held = active
        # Half the staleness threshold of the reaper's orphan restore is fresh enough.
        if now - self._last_bump >= self.store.settings.worker_ttl_s / 2:
            self._last_bump = now
            self.unacked.bump(live_delivery_tags())

    def stop(self) -> None:
        """Free the leases still held and leave the registry (a clean shutdown)."""
        try:
            held = self._held | active_durable_runs(self.nodename)
            self.store.release_leases(self.worker_id, sorted(held))
            self.store.forget_worker(self.worker_id)
        finally:
            self.unacked.close()
