"""Scheduled durable runs: one run per schedule tick, however many beats publish it.

``DurableScheduler`` (or ``DurableSchedulerMixin`` over another scheduler, e.g. redbeat's)
gives every publish of a durable task by beat an idempotency key derived from the schedule
entry's name and the tick's scheduled time, ``beat:<entry name>:<tick, UTC ISO 8601>``. Two
beats with the same schedule, or a beat that restarts and publishes a tick again, hit the
same key, so the tick starts one run. Tick times are the same in every beat:

- crontab (and solar) schedules fire at fixed wall-clock times already;
- interval schedules (``schedule=30.0`` or a timedelta) are aligned to multiples of the
  interval since the Unix epoch (Celery's own scheduler counts from each beat's start, which
  differs between beats), so an entry every 30 s fires at :00 and :30.

Catch-up: a tick is the latest scheduled time at or before the moment beat publishes. A
beat that was down over several ticks publishes one run when it comes back, for the latest
missed tick (unless another beat already started it); earlier missed ticks are not run.

A tick's key is kept when its run fails (a restarted beat does not start the tick again) for
``durable_idempotency_ttl_s`` or two schedule periods, whichever is longer. Tasks that are not
durable are published unchanged.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry
from celery.schedules import crontab, schedstate, schedule

from .attempt import KEEP_KEY_HEADER
from .config import settings_for
from .task import DurableTask

#: Message header carrying the scheduled time of the tick a beat published (UTC ISO 8601).
TICK_HEADER = "durable_tick"
#: Most schedule times walked to find the latest tick of a crontab (a long beat outage).
MAX_TICK_WALK = 100_000


def interval_of(entry: ScheduleEntry) -> float | None:
    """The period (seconds) of an interval schedule entry, None for crontab, solar, ..."""
    sched = entry.schedule
    if type(sched) is schedule:
        seconds = float(sched.seconds)
        return seconds if seconds > 0 else None
    return None


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _next_after(sched: Any, when: dt.datetime, now: dt.datetime) -> dt.datetime:
    """The first scheduled time after ``when``."""
    if isinstance(sched, crontab):
        start, delta, _ = sched.remaining_delta(when)
        return _aware(start + delta)
    return now + dt.timedelta(seconds=sched.remaining_estimate(when).total_seconds())


def tick_time(entry: ScheduleEntry, now: dt.datetime) -> dt.datetime:
    """The tick being published at ``now``: the latest scheduled time at or before it."""
    now = _aware(now)
    every = interval_of(entry)
    if every is not None:
        stamp = math.floor(now.timestamp() / every) * every
        return dt.datetime.fromtimestamp(stamp, tz=dt.UTC)
    last = _aware(entry.last_run_at or now)
    tick = _next_after(entry.schedule, last, now)
    for _ in range(MAX_TICK_WALK):
        following = _next_after(entry.schedule, tick, now)
        if following > now or following <= tick:
            break
        tick = following
    return tick.astimezone(dt.UTC)


def tick_key(name: str, tick: dt.datetime) -> str:
    """The idempotency key of entry ``name``'s tick at ``tick``."""
    return f"beat:{name}:{tick.astimezone(dt.UTC).isoformat(timespec='milliseconds')}"


class DurableSchedulerMixin:
    """Mix into a ``celery.beat.Scheduler`` subclass: interval entries aligned to the epoch,
    and an idempotency key per tick for durable tasks."""

    app: Any

    def is_due(self, entry: ScheduleEntry) -> schedstate:
        every = interval_of(entry)
        if every is None:
            return super().is_due(entry)  # type: ignore[misc,no-any-return]
        now = time.time()
        last = _aware(entry.last_run_at).timestamp() if entry.last_run_at else now - every
        next_tick = (math.floor(last / every) + 1) * every
        if next_tick <= now:
            # Due; check again at the next multiple of the interval.
            return schedstate(True, every - (now % every))
        return schedstate(False, next_tick - now)

    def apply_async(self, entry: ScheduleEntry, producer: Any = None, advance: bool = True,
                    **kwargs: Any) -> Any:
        task = self.app.tasks.get(entry.task)
        if not isinstance(task, DurableTask):
            return super().apply_async(  # type: ignore[misc]
                entry, producer=producer, advance=advance, **kwargs)
        tick = tick_time(entry, self.app.now())
        options = dict(entry.options or {})
        period = interval_of(entry) or (_next_after(entry.schedule, tick, tick) - tick
                                        ).total_seconds()
        ttl = max(settings_for(self.app).idempotency_ttl_s, 2 * period, 1.0)
        keyed = {
            **options,
            "idempotency_key": tick_key(str(entry.name), tick),
            "idempotency_ttl": ttl,
            # Other arguments for the same tick (a schedule changed in one beat only) must
            # not start a second run.
            "idempotency_conflict": "ignore",
            "headers": {**(options.get("headers") or {}),
                        TICK_HEADER: tick.isoformat(timespec="milliseconds"),
                        KEEP_KEY_HEADER: 1},
        }
        if advance:
            self.reserve(entry)  # type: ignore[attr-defined]
        # The entry's options change for this publish only (entries of some schedulers,
        # redbeat's, cannot be copied; beat publishes from one thread).
        entry.options = keyed
        try:
            return super().apply_async(  # type: ignore[misc]
                entry, producer=producer, advance=False, **kwargs)
        finally:
            entry.options = options


class DurableScheduler(DurableSchedulerMixin, PersistentScheduler):
    """Celery's default scheduler (schedule kept in a local file) with one run per tick:
    ``celery -A proj beat -S celery_durable.beat:DurableScheduler``."""


__all__ = ["DurableScheduler", "DurableSchedulerMixin", "tick_key", "tick_time"]
