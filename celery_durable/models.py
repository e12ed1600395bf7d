"""Run, step and trace records as the admin API (DurableClient, CLI, Flower) returns them."""

from __future__ import annotations

import datetime as dt
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict


class RunStatus(str, Enum):
    """Where a run stands. ``suspended`` = sleeping or waiting for an event or a child."""

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


def ms_to_datetime(ms: int | None) -> dt.datetime | None:
    """Convert epoch milliseconds (as stored) to an aware UTC datetime."""
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class ErrorInfo(_Record):
    """An exception as recorded in the trace: type, message and formatted traceback."""

    type: str
    message: str
    traceback: str = ""


class StepInfo(_Record):
    """A committed step: its identity, when it ran, in which attempt, and its value."""

    position: int
    name: str
    attempt: int
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    duration_ms: float | None
    value: Any = None
    failures: list[ErrorInfo] = []
    #: The step's arguments, ``{"args": [...], "kwargs": {...}}``, when
    #: ``durable_record_step_inputs`` is on (else None).
    inputs: Any = None
    #: Size of the encoded result if it was offloaded out of the checkpoint (bytes).
    offloaded_bytes: int | None = None


class TraceEvent(_Record):
    """One event of a run's trace (a stored entry, or a step rebuilt from its checkpoint)."""

    id: str
    at: dt.datetime
    type: str
    fields: dict[str, str]


class LogRecordInfo(_Record):
    """A log record captured inside a run (a trace event of type ``log``)."""

    at: dt.datetime
    level: str
    logger: str
    message: str
    step: str
    attempt: int


class LimitInfo(_Record):
    """A concurrency limit as stored: the runtime value (None = the one set in code), the
    runs holding a slot and the runs waiting for one (oldest first)."""

    name: str
    key: str | None
    limit: int | None
    holders: list[str]
    parked: list[str]
    #: Waiting runs per priority rank (higher goes first).
    parked_by_priority: dict[int, int] = {}


class RateLimitInfo(_Record):
    """A rate limit as stored: the coded rate, the runtime one (None = the coded one
    applies), the starts it would allow right now, when the next turn is free and the runs
    waiting for one."""

    name: str
    key: str | None
    coded: str | None
    runtime: str | None
    available_now: int
    next_turn_in_ms: int
    #: Runs waiting in the limit's queue for a turn, and how many of each priority rank.
    waiting: int = 0
    waiting_by_priority: dict[int, int] = {}


class RunSummary(_Record):
    """The fields of a run shown in lists."""

    id: str
    task: str
    status: RunStatus
    attempt: int
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    finished_at: dt.datetime | None
    step_count: int
    queue: str | None = None
    error: ErrorInfo | None = None
    #: The task code version the run records (see celery_durable.versions).
    version: str | None = None
    idempotency_key: str | None = None


class RunInfo(RunSummary):
    """A run with its arguments, result, committed steps and the errors of failed attempts."""

    args: Any = None
    kwargs: Any = None
    result: Any = None
    steps: list[StepInfo] = []
    attempt_errors: list[ErrorInfo] = []
    lease_owner: str | None = None
    parent_id: str | None = None
    children: list[str] = []
    forked_from: str | None = None
    events: list[TraceEvent] = []
    logs: list[LogRecordInfo] = []


class RunPage(_Record):
    """One page of a run search: the runs (newest first), the cursor of the next page
    (None on the last one) and the number of runs per status (from the status indexes,
    which may lag the run records by a moment)."""

    runs: list[RunSummary]
    next_cursor: int | None
    counts: dict[str, int]


def by_priority(counts: dict[int, int]) -> str:
    """Waiting runs per priority rank, best first (``"rank 9: 1, rank 0: 20"``; ``"-"``
    for none), as the CLI and Flower show them."""
    return ", ".join(f"rank {rank}: {n}"
                     for rank, n in sorted(counts.items(), reverse=True)) or "-"
