"""The run trace as the page shows it: a waterfall of steps, attempts, waits and logs.

Pure functions over a :class:`~celery_durable.models.RunInfo` (no I/O), so the page and its
tests see the same thing. Offsets and widths are percentages of the run's span (creation
to end, or to now for a run still going).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from ..children import child_event_key
from ..models import ErrorInfo, LogRecordInfo, RunInfo, RunSummary, TraceEvent
from .redaction import Redactor, Shown, show

#: Narrowest bar drawn (percent of the span), so instant steps stay visible.
MIN_BAR_PCT = 0.6
#: Trace events listed on the page (the newest; the JSON API has them all).
MAX_EVENTS_SHOWN = 1000


@dataclass(frozen=True, slots=True)
class FailureRow:
    """One failed try of a step (from its ``step_failed`` trace event)."""

    error: ErrorInfo
    attempt: str
    try_number: str
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class StepRow:
    """One step of the waterfall: committed (with a value) or failed and not committed."""

    position: int | None
    name: str
    attempt: int
    state: str  # "committed" or "failed"
    offset_pct: float
    width_pct: float
    duration_ms: float | None
    started_at: dt.datetime | None
    value: Shown | None
    failures: list[FailureRow]
    #: The step's arguments, when ``durable_record_step_inputs`` kept them.
    inputs: Shown | None = None


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One delivery of the run to a worker and how it ended."""

    attempt: int
    worker: str
    started_at: dt.datetime
    outcome: str
    error: ErrorInfo | None = None
    retry_in_s: str = ""


@dataclass(frozen=True, slots=True)
class WaitRow:
    """A suspension (a sleep, an event wait, a child wait) or a wait for a concurrency
    slot (``reason == "slot"``, ``key`` = the limit, ``detail`` = position and use)."""

    at: dt.datetime
    reason: str
    step: str
    key: str
    until: dt.datetime | None
    child_id: str | None
    detail: str = ""


@dataclass(slots=True)
class TraceView:
    run: RunInfo
    duration_ms: float | None
    elapsed_ms: float
    queued_ms: float | None
    worker: str
    steps: list[StepRow] = field(default_factory=list)
    attempts: list[AttemptRow] = field(default_factory=list)
    waits: list[WaitRow] = field(default_factory=list)
    current_wait: WaitRow | None = None
    open_wait: WaitRow | None = None  # the last wait not followed by an attempt
    logs: list[LogRecordInfo] = field(default_factory=list)
    events: list[tuple[TraceEvent, dict[str, str]]] = field(default_factory=list)
    events_total: int = 0
    children: list[tuple[str, RunSummary | None]] = field(default_factory=list)
    forks: list[tuple[str, str]] = field(default_factory=list)
    args: Shown | None = None
    kwargs: Shown | None = None
    result: Shown | None = None


def _ms(at: dt.datetime | None) -> float | None:
    return at.timestamp() * 1000 if at is not None else None


def _span(run: RunInfo, now_ms: float) -> tuple[float, float]:
    """From the first attempt's start (queueing before it is shown apart) to the end."""
    started = next((ev.at for ev in run.events if ev.type == "attempt_started"), None)
    start = _ms(started) or _ms(run.created_at) or now_ms
    ends = [_ms(run.finished_at)] + [_ms(s.finished_at) for s in run.steps]
    end = max([e for e in ends if e is not None] + [start + 1])
    if run.finished_at is None:
        end = max(end, now_ms)
    return start, end


def _error(fields: dict[str, str]) -> ErrorInfo:
    return ErrorInfo(type=fields.get("error_type", ""), message=fields.get("error_message", ""),
                     traceback=fields.get("traceback", ""))


def _child_of(key: str) -> str | None:
    prefix = child_event_key("")
    return key.removeprefix(prefix) if key.startswith(prefix) else None


def build_trace(
    run: RunInfo,
    redactor: Redactor,
    children: list[tuple[str, RunSummary | None]],
    now: dt.datetime | None = None,
) -> TraceView:
    """Everything the trace page shows, from the run record and its trace."""
    now_ms = _ms(now or dt.datetime.now(dt.UTC)) or 0.0
    start, end = _span(run, now_ms)
    span = max(end - start, 1.0)
    finished = _ms(run.finished_at)
    created = _ms(run.created_at) or start
    view = TraceView(run=run, duration_ms=(finished - created) if finished else None,
                     elapsed_ms=max(0.0, now_ms - created),
                     queued_ms=max(0.0, start - created) if run.attempt else None,
                     worker=run.lease_owner or "",
                     children=children, logs=list(run.logs),
                     args=show(run.args, redactor), kwargs=show(run.kwargs, redactor),
                     result=show(run.result, redactor) if run.result is not None else None)
    failed: dict[str, list[FailureRow]] = {}
    for ev in run.events:
        if ev.type == "step_failed":
            failed.setdefault(ev.fields.get("step", ""), []).append(FailureRow(
                error=_error(ev.fields), attempt=ev.fields.get("attempt", ""),
                try_number=ev.fields.get("try", ""), at=ev.at))
    for step in run.steps:
        t0, t1 = _ms(step.started_at), _ms(step.finished_at)
        offset = ((t0 - start) / span * 100) if t0 is not None else 0.0
        width = ((t1 - t0) / span * 100) if t0 is not None and t1 is not None else 0.0
        view.steps.append(StepRow(
            position=step.position, name=step.name, attempt=step.attempt, state="committed",
            offset_pct=_clamp(offset), width_pct=max(MIN_BAR_PCT, min(width, 100 - offset)),
            duration_ms=step.duration_ms, started_at=step.started_at,
            value=show(step.value, redactor), failures=failed.get(step.name, []),
            inputs=show(step.inputs, redactor) if step.inputs is not None else None))
    for ev in run.events:
        _collect(view, ev, redactor)
    committed = {s.name for s in run.steps}
    for name, failures in failed.items():
        if name in committed:
            continue
        at = _ms(failures[0].at) or start
        view.steps.append(StepRow(
            position=None, name=name, attempt=int(failures[-1].attempt or 0),
            state="failed", offset_pct=_clamp((at - start) / span * 100),
            width_pct=MIN_BAR_PCT, duration_ms=None, started_at=failures[0].at, value=None,
            failures=failures))
    if run.status.value in ("suspended", "pending", "retrying"):
        view.current_wait = view.open_wait
    view.events_total = len(view.events)
    view.events = view.events[-MAX_EVENTS_SHOWN:]
    return view


def _ordinal(zero_based: str) -> str:
    """``"0"`` -> ``"1st"``: the rank of a parked run (stored 0-based)."""
    if not zero_based.isdigit():
        return "?"
    n = int(zero_based) + 1
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _clamp(pct: float) -> float:
    return max(0.0, min(pct, 100.0 - MIN_BAR_PCT))


def _collect(view: TraceView, ev: TraceEvent, redactor: Redactor) -> None:
    f = ev.fields
    view.events.append((ev, redactor.fields({k: v for k, v in f.items() if k != "type"})))
    if ev.type == "attempt_started":
        view.open_wait = None
        view.worker = f.get("worker", "") or view.worker
        view.attempts.append(AttemptRow(attempt=int(f.get("attempt") or 0),
                                        worker=f.get("worker", ""), started_at=ev.at,
                                        outcome="running"))
    elif ev.type in _OUTCOMES and view.attempts and view.attempts[-1].outcome == "running":
        # The first event that ends an attempt says how (a later cancel of a suspended
        # run, say, does not rewrite how its last attempt ended).
        last = view.attempts[-1]
        error = _error(f) if f.get("error_type") else None
        view.attempts[-1] = AttemptRow(attempt=last.attempt, worker=last.worker,
                                       started_at=last.started_at, outcome=_OUTCOMES[ev.type],
                                       error=error, retry_in_s=f.get("retry_in_s", ""))
    if ev.type == "run_suspended":
        until = f.get("until_ms", "")
        key = f.get("key", "")
        view.waits.append(WaitRow(
            at=ev.at, reason=f.get("reason", ""), step=f.get("step", ""), key=key,
            until=dt.datetime.fromtimestamp(int(until) / 1000, tz=dt.UTC) if until else None,
            child_id=_child_of(key)))
        view.open_wait = view.waits[-1]
    elif ev.type == "slot_denied":
        view.waits.append(WaitRow(
            at=ev.at, reason="slot", step="", key=f.get("limit", ""), until=None,
            child_id=None, detail=f"{_ordinal(f.get('position', ''))} in line, "
                                  f"{f.get('held', '?')}/{f.get('max', '?')} in use"))
        view.open_wait = view.waits[-1]
    elif ev.type == "run_forked":
        view.forks.append((f.get("fork", ""), f.get("from_step", "")))


#: Trace event types that end an attempt, and how the attempts table names them.
_OUTCOMES = {
    "attempt_failed": "failed, retrying",
    "run_failed": "failed",
    "run_completed": "completed",
    "run_suspended": "suspended",
    "run_cancelled": "cancelled",
    "attempt_retrying": "retrying",
    "attempt_interrupted": "interrupted",
    "attempt_rejected": "rejected",
    "attempt_fenced": "fenced out",
    "crash_detected": "worker died",
    "run_reaped": "worker died (reaped)",
}
