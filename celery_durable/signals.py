"""Celery signals sent by celery-durable, for observers (metrics, alerts, audit).

Durability never depends on a receiver: Celery's ``Signal.send`` logs and swallows a
receiver's exception, and every signal is sent after the state it reports is stored.
Connect receivers with a module-level function (receivers are held weakly) or
``weak=False``. All are sent in the process that executes the attempt (a pool process),
except ``run_cancelled`` (the process that called ``cancel``), and ``slot_denied`` and
``rate_limited`` (the process that published the run, or the worker that received it).
Arguments:

- ``run_started``: sender=task name, run_id, attempt, resumed (bool: from a sleep or wait),
  recovered (bool: the previous attempt never ended, its worker died: a crash resume)
- ``step_committed``: sender=task name, run_id, attempt, step, position, duration_ms
- ``step_replayed``: sender=task name, run_id, attempt, step, position
- ``step_failed``: sender=task name, run_id, attempt, step, position, exception, try_number
- ``run_retrying``: sender=task name, run_id, attempt, exception, delay_s
- ``run_suspended``: sender=task name, run_id, attempt, reason, until_ms (None: an event)
- ``run_completed``: sender=task name, run_id, attempt, result
- ``run_failed``: sender=task name, run_id, attempt, exception
- ``run_cancelled``: sender=None, run_id, reason
- ``slot_denied``: sender=task name, run_id, limit, position
- ``rate_limited``: sender=task name, run_id, limit, start_ms (when its turn comes; None:
  it waits in the limit's queue, or a lossy limit dropped it), position (its place in the
  queue, 0-based; -1 when it has a turn or was dropped), dropped (bool)
- ``step_skipped``: sender=task name, run_id, attempt, step, reason (a lossy step rate limit)
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

run_started = Signal(name="durable_run_started",
                     providing_args=["run_id", "attempt", "resumed", "recovered"])
step_committed = Signal(name="durable_step_committed",
                        providing_args=["run_id", "attempt", "step", "position", "duration_ms"])
step_replayed = Signal(name="durable_step_replayed",
                       providing_args=["run_id", "attempt", "step", "position"])
step_failed = Signal(name="durable_step_failed",
                     providing_args=["run_id", "attempt", "step", "position", "exception",
                                     "try_number"])
run_retrying = Signal(name="durable_run_retrying",
                      providing_args=["run_id", "attempt", "exception", "delay_s"])
run_suspended = Signal(name="durable_run_suspended",
                       providing_args=["run_id", "attempt", "reason", "until_ms"])
run_completed = Signal(name="durable_run_completed",
                       providing_args=["run_id", "attempt", "result"])
run_failed = Signal(name="durable_run_failed",
                    providing_args=["run_id", "attempt", "exception"])
run_cancelled = Signal(name="durable_run_cancelled", providing_args=["run_id", "reason"])
slot_denied = Signal(name="durable_slot_denied",
                     providing_args=["run_id", "limit", "position"])
rate_limited = Signal(name="durable_rate_limited",
                      providing_args=["run_id", "limit", "start_ms", "position", "dropped"])
step_skipped = Signal(name="durable_step_skipped",
                      providing_args=["run_id", "attempt", "step", "reason"])

__all__ = [
    "rate_limited",
    "run_cancelled",
    "run_completed",
    "run_failed",
    "run_retrying",
    "run_started",
    "run_suspended",
    "slot_denied",
    "step_committed",
    "step_failed",
    "step_replayed",
    "step_skipped",
]
