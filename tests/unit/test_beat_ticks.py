"""Tick identity of scheduled durable runs: the same in every beat, latest tick on catch-up."""

from __future__ import annotations

import datetime as dt

from celery import Celery
from celery.beat import ScheduleEntry
from celery.schedules import crontab, schedule

from celery_durable.beat import DurableSchedulerMixin, tick_key, tick_time

UTC = dt.UTC
app = Celery("beat-ticks", set_as_current=False)
app.conf.timezone = "UTC"


def entry(sched: object, last: dt.datetime | None) -> ScheduleEntry:
    return ScheduleEntry(name="e", task="t", last_run_at=last, schedule=sched, app=app)


def test_interval_ticks_are_multiples_of_the_interval() -> None:
    every = entry(schedule(dt.timedelta(seconds=2), app=app), None)
    now = dt.datetime(2026, 1, 1, 10, 0, 3, 500_000, tzinfo=UTC)
    assert tick_time(every, now) == dt.datetime(2026, 1, 1, 10, 0, 2, tzinfo=UTC)
    assert tick_key("e", tick_time(every, now)) == "beat:e:2026-01-01T10:00:02.000+00:00"


def test_a_crontab_catches_up_with_its_latest_missed_tick_only() -> None:
    # Beat was down from 09:00 to 10:07 with an entry every five minutes.
    five = entry(crontab(minute="*/5", app=app), dt.datetime(2026, 1, 1, 9, 0, tzinfo=UTC))
    now = dt.datetime(2026, 1, 1, 10, 7, 12, tzinfo=UTC)
    assert tick_time(five, now) == dt.datetime(2026, 1, 1, 10, 5, tzinfo=UTC)
    # On time, the tick is the one that just became due.
    on_time = entry(crontab(minute="*/5", app=app),
                    dt.datetime(2026, 1, 1, 10, 0, 0, 300_000, tzinfo=UTC))
    assert tick_time(on_time, dt.datetime(2026, 1, 1, 10, 5, 0, 200_000, tzinfo=UTC)) == \
        dt.datetime(2026, 1, 1, 10, 5, tzinfo=UTC)


def test_interval_entries_fire_on_the_epoch_grid() -> None:
    class Base:
        def is_due(self, entry: ScheduleEntry) -> object:
            raise AssertionError("interval entries are handled by the mixin")

    class Scheduler(DurableSchedulerMixin, Base):
        pass

    import time

    now = time.time()
    last = dt.datetime.fromtimestamp(now - (now % 10) + 0.001, tz=UTC)  # just after a tick
    due, wait = Scheduler().is_due(entry(schedule(dt.timedelta(seconds=10), app=app), last))
    assert not due and 0 < wait <= 10
    # The next check lands on the next multiple of 10 s, whatever the beat's start time.
    assert abs(((now + wait) % 10) - 10) < 0.05 or ((now + wait) % 10) < 0.05
