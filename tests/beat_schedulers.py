"""A redbeat scheduler with one run per tick of a durable task (used by tests/app.py)."""

from __future__ import annotations

from redbeat import RedBeatScheduler

from celery_durable.beat import DurableSchedulerMixin


class DurableRedBeatScheduler(DurableSchedulerMixin, RedBeatScheduler):  # type: ignore[misc]
    """redbeat (schedule and lock in Redis) plus tick idempotency keys."""
