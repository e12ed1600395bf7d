"""RunIndexes: the global indexes of runs (by status, by task, leases), queued on pipelines.

The indexes live outside the runs' hash slots, so no per-run script can update them
atomically; instead each transition queues its index commands on the same pipeline as the
script that changes the run, assuming the usual outcome (a claim takes a waiting run, an end
finishes a running one; a claim whose message was not published by ``DurableTask.apply_async``
also lists the run, which it may create). The rare other outcomes (a fenced attempt, a
duplicate delivery, a refused claim) are put right from the run hash by :meth:`repair`, one
round trip later. Readers re-check the run hash, so a lagging entry is never trusted.
"""

from __future__ import annotations

import time
from typing import Any

from .config import DurableSettings
from .keys import KeySpace
from .models import TERMINAL_STATUSES, RunStatus

#: Seconds between two TTL refreshes (or two trims) of the same index key by one process.
INDEX_TTL_REFRESH_S = 60.0
#: The statuses a claim can take a run from.
WAITING_STATUSES = (RunStatus.PENDING, RunStatus.RETRYING, RunStatus.SUSPENDED)


class RunIndexes:
    """Queues index commands on a caller's pipeline; does no I/O of its own."""

    def __init__(self, keys: KeySpace, settings: DurableSettings) -> None:
        self.keys = keys
        self.settings = settings
        self._refreshed: dict[str, float] = {}
        self._trimmed: dict[str, float] = {}

    def new(self, pipe: Any, run_id: str, task: str, ts: int,
            status: RunStatus | None = RunStatus.PENDING) -> None:
        """A run recorded at ``ts`` (ms): in the list of all runs, its task's, its status'."""
        keys = [self.keys.all_runs, self.keys.task_index(task)]
        if status is not None:
            keys.append(self.keys.status_index(status))
        for key in keys:
            pipe.zadd(key, {run_id: ts}, nx=True)
            self._keep_alive(pipe, key)

    def claimed(self, pipe: Any, run_id: str, owner: str, lease_expires_ms: int,
                ts: int) -> None:
        """An attempt of ``owner`` took the run (from whichever waiting status it was in)
        with a lease until ``lease_expires_ms``."""
        self._hold_lease(pipe, run_id, owner, lease_expires_ms)
        for status in WAITING_STATUSES:
            pipe.zrem(self.keys.status_index(status), run_id)
        self._enter(pipe, run_id, RunStatus.RUNNING, ts)

    def ended(self, pipe: Any, run_id: str, status: RunStatus, ts: int, *, task: str,
              owner: str | None) -> None:
        """The running attempt of ``owner`` ended, leaving the run in ``status``."""
        self.transition(pipe, run_id, RunStatus.RUNNING.value, status, ts, task=task,
                        owner=owner)

    def transition(self, pipe: Any, run_id: str, prev: str, status: RunStatus, ts: int, *,
                   task: str, owner: str | None, lease_expires_ms: int = 0) -> None:
        """Move the run from status ``prev`` to ``status`` and keep the lease indexes in
        step with its lease: a held lease is in ``leases`` and in its worker's run set, a
        freed one is in neither."""
        if lease_expires_ms:
            self._hold_lease(pipe, run_id, owner, lease_expires_ms)
        else:
            pipe.zrem(self.keys.leases, run_id)
            if owner is not None:
                pipe.srem(self.keys.worker_runs(owner), run_id)
        if prev == status.value:
            return
        if prev in RunStatus._value2member_map_:
            pipe.zrem(self.keys.status_index(prev), run_id)
        else:
            # Unknown previous status (a run created by a worker, not at publish).
            self.new(pipe, run_id, task, ts, status=None)
        self._enter(pipe, run_id, status, ts)
        if status in TERMINAL_STATUSES:
            for key in (self.keys.status_index(status), self.keys.all_runs,
                        self.keys.task_index(task)):
                self._trim(pipe, key, ts)

    def repair(self, pipe: Any, run_id: str, record: dict[str, str], *, task: str,
               owner: str | None) -> None:
        """Make every index agree with the run hash ``record`` (empty: the run is gone),
        after an optimistic update guessed wrong. ``owner`` is the worker whose run set
        the guess may have touched."""
        status = record.get("status", "")
        for value in RunStatus:
            if value.value != status:
                pipe.zrem(self.keys.status_index(value), run_id)
        expires = int(record.get("lease_expires_ms") or 0)
        holder = record.get("lease_owner") or ""
        if owner is not None and owner != holder:
            pipe.srem(self.keys.worker_runs(owner), run_id)
        if not record:
            pipe.zrem(self.keys.leases, run_id)
            return
        if expires > 0:
            pipe.zadd(self.keys.leases, {run_id: expires})
        else:
            pipe.zrem(self.keys.leases, run_id)
        updated = int(record.get("updated_ms") or record.get("created_ms") or 0)
        self.new(pipe, run_id, task, int(record.get("created_ms") or updated), status=None)
        if status in RunStatus._value2member_map_:
            pipe.zadd(self.keys.status_index(status), {run_id: updated})

    def _hold_lease(self, pipe: Any, run_id: str, owner: str | None,
                    lease_expires_ms: int) -> None:
        pipe.zadd(self.keys.leases, {run_id: lease_expires_ms})
        self._keep_alive(pipe, self.keys.leases)
        if owner is not None:
            pipe.sadd(self.keys.worker_runs(owner), run_id)
            self._keep_alive(pipe, self.keys.worker_runs(owner))

    def _enter(self, pipe: Any, run_id: str, status: RunStatus, ts: int) -> None:
        key = self.keys.status_index(status)
        pipe.zadd(key, {run_id: ts})
        self._keep_alive(pipe, key)

    def _keep_alive(self, pipe: Any, key: str) -> None:
        """Refresh an index key's TTL, at most once a minute per key and process: the TTL
        (the longer of retention and active TTL) only has to outlive the newest entry."""
        if self._due(self._refreshed, key):
            pipe.pexpire(key, max(self.settings.retention_ms, self.settings.active_ttl_ms))

    def _trim(self, pipe: Any, key: str, ts: int) -> None:
        """Drop entries older than the retention (their runs have expired), at most once a
        minute per key and process: a few stale entries are harmless, readers skip them."""
        if self._due(self._trimmed, key):
            pipe.zremrangebyscore(key, "-inf", ts - self.settings.retention_ms)

    @staticmethod
    def _due(last: dict[str, float], key: str) -> bool:
        now = time.monotonic()
        if now - last.get(key, -INDEX_TTL_REFRESH_S) < INDEX_TTL_REFRESH_S:
            return False
        last[key] = now
        return True
