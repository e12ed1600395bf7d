"""ReplyWait: wait for a store reply by polling its socket for a short while first.

A step's commit is one round trip to Redis, and the worker has nothing else to do until
the reply arrives. Blocking in ``recv`` lets the kernel idle the CPU; on a virtual machine
whose guest does not poll before halting (a Firecracker VM, for one), waking from that
idle costs more than the round trip itself: measured on a 2-core VM with Redis on
loopback, 50-95 us per round trip blocking against 21-37 us polling. So, while a budget
lasts, the reply is awaited by polling the socket without blocking; then by blocking as
before.

Polling costs the CPU it runs on. It pays only where that CPU would otherwise idle: when
the worker runs fewer tasks at once than there are cores for Redis and the pool
(:func:`budget_for`, used by the worker bootstep, which turns it off otherwise). And a
budget that keeps running out (a distant or loaded Redis, where a reply takes longer than
the budget) is a loss every time: after :data:`MISSES_BEFORE_REST` misses in a row,
replies are awaited by blocking for the next :data:`REST_WAITS`, then polling is tried
again.
"""

from __future__ import annotations

import os
import select
import ssl
import time
from typing import Any

#: The budget (microseconds) of ``durable_reply_spin_us = None`` when polling pays.
AUTO_BUDGET_US = 200
#: Budgets in a row that ran out before the reply came, after which polling rests.
MISSES_BEFORE_REST = 8
#: Replies awaited by blocking while polling rests.
REST_WAITS = 256

#: ``select.poll`` is missing on some platforms (Windows): replies are then always awaited
#: by blocking.
CAN_POLL = hasattr(select, "poll")

# Per process: a forked pool process starts with its parent's budget (set before the fork).
_budget_ns = [0]


def set_budget(microseconds: int) -> None:
    """Poll for up to ``microseconds`` before blocking on a reply (0: never poll; always 0
    where the platform has no ``select.poll``)."""
    _budget_ns[0] = max(0, int(microseconds)) * 1000 if CAN_POLL else 0


def budget_us() -> int:
    """This process's budget, microseconds."""
    return _budget_ns[0] // 1000


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def budget_for(setting: int | None, tasks_at_once: int, cores: int) -> int:
    """The budget (microseconds) for a worker running ``tasks_at_once`` tasks on ``cores``.

    ``setting`` is ``durable_reply_spin_us``: a number is used as given; None chooses
    :data:`AUTO_BUDGET_US` when a core is left for Redis and the worker's own loop
    (``tasks_at_once < cores``), else 0, since pollers would take CPU from each other.
    """
    if setting is not None:
        return setting
    return AUTO_BUDGET_US if tasks_at_once < cores else 0


class ReplyWait:
    """Polls one thread's store connection for its next reply (see the module doc)."""

    __slots__ = ("_sock", "_poller", "_misses", "_resting")

    def __init__(self) -> None:
        self._sock: Any = None
        self._poller: Any = None
        self._misses = 0
        self._resting = 0

    def before_read(self, conn: Any) -> None:
        """Return once a reply can be read on ``conn`` without blocking, or once the budget
        is spent (the read then blocks as usual). Call after sending, before reading."""
        budget = _budget_ns[0]
        if not budget:
            return
        if self._resting:
            self._resting -= 1
            return
        sock = getattr(conn, "_sock", None)
        if sock is None or isinstance(sock, ssl.SSLSocket):
            return  # TLS may hold a decrypted reply the socket does not show as readable
        if sock is not self._sock:
            self._poller = select.poll()
            self._poller.register(sock, select.POLLIN)
            self._sock = sock
        poll = self._poller.poll
        deadline = time.perf_counter_ns() + budget
        while not poll(0):
            if time.perf_counter_ns() > deadline:
                self._misses += 1
                if self._misses >= MISSES_BEFORE_REST:
                    self._misses = 0
                    self._resting = REST_WAITS
                return
        self._misses = 0
