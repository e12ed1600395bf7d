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

Stopping beat (SIGTERM, SIGINT, SIGHUP) waits until a tick being published is published. A
beat killed outright between claiming a tick's key and publishing its run (a window of a
few milliseconds) leaves the tick with a key and no run; every beat notes each tick in
``Pbeat:<entry>:ticks`` before claiming it, and every few seconds publishes the noted ticks
whose key names a run that was never recorded, once that claim counts as orphaned (10 s):
the other beat, the restarted one, or redbeat's next lock holder starts the tick then.

A tick's key is kept when its run fails (a restarted beat does not start the tick again) for
``durable_idempotency_ttl_s`` or two schedule periods, whichever is longer. Tasks that are not
durable are published unchanged.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry
from celery.schedules import crontab, schedstate, schedule

from .attempt import KEEP_KEY_HEADER
from .config import settings_for
from .idempotency import ORPHAN_AFTER_S
from .store import now_ms, store_for
from .task import DurableTask

logger = logging.getLogger("celery_durable.beat")

#: Message header carrying the scheduled time of the tick a beat published (UTC ISO 8601).
TICK_HEADER = "durable_tick"
#: How often (seconds) a beat looks for ticks that were claimed and never published.
RECHECK_EVERY_S = 5.0
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
    return f"beat:{name}:{_iso(tick)}"


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
        keyed = self._keyed_options(entry, tick)
        if advance:
            self.reserve(entry)  # type: ignore[attr-defined]
        store = store_for(self.app)
        # Noted before the key is claimed: if this beat dies before publishing, any beat
        # finds the tick there and publishes it (see recheck_ticks).
        store.note_tick(str(entry.name), _iso(tick), int(keyed["idempotency_ttl"] * 1000))
        result = self._publish_keyed(entry, keyed, producer, kwargs)
        if result is not None and store.run_exists(result.id):
            store.forget_tick(str(entry.name), _iso(tick))
        return result

    def _keyed_options(self, entry: ScheduleEntry, tick: dt.datetime) -> dict[str, Any]:
        """The entry's publish options for ``tick``: its idempotency key and headers."""
        options = dict(entry.options or {})
        period = interval_of(entry) or (_next_after(entry.schedule, tick, tick) - tick
                                        ).total_seconds()
        ttl = max(settings_for(self.app).idempotency_ttl_s, 2 * period, 1.0)
        return {
            **options,
            "idempotency_key": tick_key(str(entry.name), tick),
            "idempotency_ttl": ttl,
            # Other arguments for the same tick (a schedule changed in one beat only) must
            # not start a second run.
            "idempotency_conflict": "ignore",
            "headers": {**(options.get("headers") or {}), TICK_HEADER: _iso(tick),
                        KEEP_KEY_HEADER: 1},
        }

    def _publish_keyed(self, entry: ScheduleEntry, keyed: dict[str, Any], producer: Any,
                       kwargs: dict[str, Any]) -> Any:
        # The entry's options change for this publish only (entries of some schedulers,
        # redbeat's, cannot be copied; beat publishes from one thread).
        options = entry.options
        entry.options = keyed
        try:
            with _signals_deferred():
                return super().apply_async(  # type: ignore[misc]
                    entry, producer=producer, advance=False, **kwargs)
        finally:
            entry.options = options

    def recheck_ticks(self, now: int | None = None) -> int:
        """Publish ticks that a beat claimed and never published (it died in between), once
        their claim counts as orphaned. ``now`` is epoch ms. Returns how many it published.
        """
        now = now_ms() if now is None else now
        store = store_for(self.app)
        published = 0
        for entry in list(self.schedule.values()):  # type: ignore[attr-defined]
            task = self.app.tasks.get(entry.task)
            if not isinstance(task, DurableTask):
                continue
            name = str(entry.name)
            for iso in store.ticks_older_than(name, now - int(ORPHAN_AFTER_S * 1000)):
                tick = dt.datetime.fromisoformat(iso)
                run_id = store.idempotency_run(store.keys.idempotency(
                    task.name, tick_key(name, tick)))
                if run_id is not None and not store.run_exists(run_id):
                    logger.warning("beat: tick %s of %s was claimed but never published (its "
                                   "beat died?): publishing it", iso, name)
                    self._publish_keyed(entry, self._keyed_options(entry, tick), None, {})
                    published += 1
                    if not store.run_exists(run_id):
                        continue  # the claim is not old enough yet: next time
                store.forget_tick(name, iso)
        return published

    def tick(self, *args: Any, **kwargs: Any) -> float:
        delay = float(super().tick(*args, **kwargs))  # type: ignore[misc]
        checked = self.__dict__.get("_durable_checked", 0.0)
        if time.monotonic() - checked >= RECHECK_EVERY_S:
            self.__dict__["_durable_checked"] = time.monotonic()
            try:
                self.recheck_ticks()
            except Exception:
                logger.exception("beat: could not check for unpublished ticks")
        return min(delay, RECHECK_EVERY_S)


def _iso(tick: dt.datetime) -> str:
    return tick.astimezone(dt.UTC).isoformat(timespec="milliseconds")


#: Signals that stop beat (its handler raises SystemExit wherever the main thread is).
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold back stop signals while a tick's key is claimed and its run published, so that
    stopping beat cannot leave a claimed key without a run (they are handled right after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class DurableScheduler(DurableSchedulerMixin, PersistentScheduler):
    """Celery's default scheduler (schedule kept in a local file) with one run per tick:
    ``celery -A proj beat -S celery_durable.beat:DurableScheduler``."""


__all__ = ["DurableScheduler", "DurableSchedulerMixin", "tick_key", "tick_time"]
