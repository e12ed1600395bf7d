"""DurableClient: read runs (and, as features land, act on them) from any process."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery

from . import signals
from .children import child_event_key
from .codec import JsonCodec
from .concurrency import NO_KEY, limit_base, publish_woken, sweep
from .errors import CheckpointDecodeError, ConfigurationError, RunNotFoundError
from .events import trace_events
from .models import (
    TERMINAL_STATUSES,
    ErrorInfo,
    LimitInfo,
    LogRecordInfo,
    RateLimitInfo,
    RunInfo,
    RunPage,
    RunStatus,
    RunSummary,
    StepInfo,
    TraceEvent,
    ms_to_datetime,
)
from .queries import RunQuery, search_runs
from .rates import RateSpec, coded_rate, dispatch_queue, parse_member, rate_base
from .store import RunStore, now_ms, store_for, waiting_by_rank
from .waits import fork_run, publish_run, send_event

_codec = JsonCodec()
#: The largest page list_runs returns.
MAX_LIST_LIMIT = 1000


def _int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def _decode(text: str | None) -> Any:
    if not text:
        return None
    try:
        return _codec.loads(text)
    except CheckpointDecodeError as exc:
        return {"undecodable": str(exc)}


def _error(text: str | None) -> ErrorInfo | None:
    if not text:
        return None
    data = json.loads(text)
    return ErrorInfo(type=data.get("error_type", ""), message=data.get("error_message", ""),
                     traceback=data.get("traceback", ""))


def _summary_fields(run_id: str, raw: Mapping[str, str]) -> dict[str, Any]:
    return {
        "id": run_id,
        "task": raw.get("task", ""),
        "status": RunStatus(raw.get("status", "pending")),
        "attempt": int(raw.get("attempt") or 0),
        "created_at": ms_to_datetime(_int(raw.get("created_ms"))),
        "updated_at": ms_to_datetime(_int(raw.get("updated_ms"))),
        "finished_at": ms_to_datetime(_int(raw.get("finished_ms"))),
        "step_count": int(raw.get("step_count") or 0),
        "queue": raw.get("queue") or None,
        "error": _error(raw.get("error")),
        "version": raw.get("version") or None,
        "idempotency_key": raw.get("idempotency_key") or None,
    }


def _error_of(fields: Mapping[str, str]) -> ErrorInfo:
    return ErrorInfo(type=fields.get("error_type", ""), message=fields.get("error_message", ""),
                     traceback=fields.get("traceback", ""))


def _logs(events: list[TraceEvent]) -> list[LogRecordInfo]:
    records = []
    for ev in events:
        if ev.type != "log":
            continue
        f = ev.fields
        ms = _int(f.get("ms"))
        records.append(LogRecordInfo(
            at=ms_to_datetime(ms) if ms is not None else ev.at,  # type: ignore[arg-type]
            level=f.get("level", ""), logger=f.get("logger", ""), message=f.get("message", ""),
            step=f.get("step", ""), attempt=_int(f.get("attempt")) or 0))
    return records


def _steps(records: Mapping[int, dict[str, Any]], events: list[TraceEvent],
           blobs: Mapping[str, str]) -> list[StepInfo]:
    failures: dict[str, list[ErrorInfo]] = {}
    for ev in events:
        if ev.type == "step_failed":
            failures.setdefault(ev.fields.get("step", ""), []).append(_error_of(ev.fields))
    steps = []
    for pos in sorted(records):
        rec = records[pos]
        t0, t1 = rec.get("t0"), rec.get("t1")
        steps.append(StepInfo(
            position=pos, name=rec["id"], attempt=int(rec.get("a", 0)),
            started_at=ms_to_datetime(t0), finished_at=ms_to_datetime(t1),
            duration_ms=(t1 - t0) if t0 is not None and t1 is not None else None,
            value=_decode(blobs.get(str(pos)) if "o" in rec else json.dumps(rec.get("v"))),
            failures=failures.get(rec["id"], []), offloaded_bytes=rec.get("o"),
            inputs=_decode(json.dumps(rec["in"])) if "in" in rec else None,
        ))
    return steps


class DurableClient:
    """The admin API of celery-durable for one Celery app (any process, no worker needed)."""

    def __init__(self, app: Celery, store: RunStore | None = None) -> None:
        self.app = app
        self.store = store if store is not None else store_for(app)

    def get_run(self, run_id: str) -> RunInfo:
        """The run with its arguments, result, steps, attempt errors and trace.

        Raises:
            RunNotFoundError: no such run (never created, or expired after retention).
        """
        raw, raw_steps, trace = self.store.read_run(run_id)
        if not raw:
            raise RunNotFoundError(
                f"no durable run {run_id!r}: check the id, or it expired after "
                f"durable_retention_s={self.store.settings.retention_s:g} s",
                run_id=run_id,
            )
        records = {int(pos): json.loads(text) for pos, text in raw_steps.items()}
        events = trace_events(trace, records)
        offloaded = any("o" in record for record in records.values())
        blobs = self.store.read_blobs(run_id) if offloaded else {}
        return RunInfo(
            **_summary_fields(run_id, raw),
            args=_decode(raw.get("args")),
            kwargs=_decode(raw.get("kwargs")),
            result=_decode(raw.get("result")),
            steps=_steps(records, events, blobs),
            attempt_errors=[_error_of(e.fields) for e in events
                            if e.type in ("attempt_failed", "run_failed")],
            lease_owner=raw.get("lease_owner") or None,
            parent_id=raw.get("parent") or None,
            children=self.store.children_of(run_id),
            forked_from=raw.get("forked_from") or None,
            events=events,
            logs=_logs(events),
        )

    def cancel(self, run_id: str, reason: str = "cancelled by an operator") -> RunStatus:
        """Cancel a run: a suspended or waiting run at once, a running attempt at its next
        step boundary (it raises RunCancelled, which user code cannot catch with ``except
        Exception``). The Celery result becomes REVOKED. Returns the status the run had;
        a run that already ended is left alone.

        Raises:
            RunNotFoundError: no such run.
        """
        prev = self.store.cancel_run(run_id, reason)
        if not prev:
            raise RunNotFoundError(f"no durable run {run_id!r} to cancel", run_id=run_id)
        if RunStatus(prev) in TERMINAL_STATUSES:
            return RunStatus(prev)
        self.app.backend.mark_as_revoked(run_id, reason)
        signals.run_cancelled.send(sender=None, run_id=run_id, reason=reason)
        for child in self.store.children_of(run_id):
            self.cancel(child, f"parent run {run_id} was cancelled")
        parent = self.store.client.hget(self.store.keys.run(run_id).run, "parent")
        if parent:
            send_event(self.app, self.store, child_event_key(run_id), {
                "ok": False, "status": "cancelled",
                "error_type": "celery_durable.errors.RunCancelled", "error_message": reason,
                "traceback": ""})
        return RunStatus(prev)

    def replay(
        self,
        run_id: str,
        from_step: str | None = None,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> str:
        """Run a failed or cancelled run again from its last checkpoint (its attempt budget
        reset), or, with ``from_step``, fork a **new** run that reuses the checkpoints
        before that step and executes from it (with new ``args``/``kwargs`` if given).
        Returns the id of the run that was published.

        Raises:
            RunNotFoundError: no such run, or no step ``from_step`` in it.
            ConfigurationError: replaying (not forking) a run that has not ended in
                failure or cancellation.
        """
        if from_step is not None:
            return fork_run(self.app, self.store, run_id, from_step, args, kwargs)
        if args is not None or kwargs is not None:
            raise ConfigurationError("new arguments need from_step=...: they start a fork")
        prev = self.store.reopen_run(run_id)
        if not prev:
            raise RunNotFoundError(f"no durable run {run_id!r} to replay", run_id=run_id)
        if prev not in (RunStatus.FAILED.value, RunStatus.CANCELLED.value):
            raise ConfigurationError(
                f"run {run_id} is {prev}: only failed or cancelled runs can be replayed "
                "(use from_step=... to fork a new run from any run)")
        self.app.backend.forget(run_id)
        publish_run(self.app, self.store, run_id)
        return run_id

    def send_event(self, key: str, payload: Any = None) -> list[str]:
        """Deliver ``payload`` (JSON types, models, ... as for step results) to the runs
        waiting on ``key``, or keep it for the next one to wait (FIFO, for
        ``durable_event_ttl_s``). Returns the ids of the runs that were waiting."""
        return send_event(self.app, self.store, key, payload)

    def set_concurrency_limit(self, name: str, limit: int) -> None:
        """Change a concurrency limit at runtime (no worker restart): ``name`` is a task
        name (or ``task:<name>``) or ``queue:<name>``; for a per-key task limit the new
        value applies to every key. Runs waiting for a slot are woken if it grew."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigurationError(f"a concurrency limit must be an int >= 0, got {limit!r}")
        base = limit_base(name, self.app)
        store = self.store
        store.client.hset(store.keys.limit(base, NO_KEY).config, "limit", limit)
        publish_woken(self.app, sweep(store, base))

    def concurrency_limit(self, name: str, key: str | None = None) -> LimitInfo:
        """The state of a limit: its value, slots in use, runs waiting."""
        base = limit_base(name, self.app)
        k = self.store.keys.limit(base, key or NO_KEY)
        with self.store.client.pipeline(False) as pipe:
            pipe.hget(k.config, "limit")
            pipe.zrange(k.holders, 0, -1)
            pipe.zrange(k.parked, 0, -1)
            pipe.hgetall(k.fair)
            override, holders, parked, fair = pipe.execute()
        return LimitInfo(name=base, key=key, limit=int(override) if override else None,
                         holders=[str(h) for h in holders], parked=[str(p) for p in parked],
                         parked_by_priority=waiting_by_rank(fair))

    def versions(self, task: str | None = None) -> dict[str, dict[str, int]]:
        """In-flight runs (not ended) per task and code version: ``{task: {version: n}}``.
        A version no longer listed has no run left that needs it. Runs that have not
        started an attempt yet record no version (listed as ``""``)."""
        counts: dict[str, dict[str, int]] = {}
        keys = self.store.keys
        for status in RunStatus:
            if status.is_terminal:
                continue
            start = 0
            while True:
                ids = self.store.index_page(keys.status_index(status), start, 500)
                if not ids:
                    break
                start += len(ids)
                for raw in self.store.read_summaries(ids):
                    if not raw or raw.get("status") != status.value:
                        continue
                    if task is not None and raw.get("task") != task:
                        continue
                    per_task = counts.setdefault(raw.get("task", ""), {})
                    version = raw.get("version", "")
                    per_task[version] = per_task.get(version, 0) + 1
        return counts

    def set_rate_limit(self, name: str, rate: str | float | None,
                       burst: int | None = None) -> None:
        """Change a rate limit at runtime (no worker restart): ``name`` is a task name (or
        ``task:<name>``) or ``step:<step name>``; ``rate`` as in code (``"100/m"``), or None
        to go back to the coded one. For a per-key limit it applies to every key.

        Raises:
            ConfigurationError: an unknown name or an invalid rate.
        """
        base = rate_base(name, self.app)
        config = self.store.keys.rate(base, "_")[0]
        if rate is None:
            self.store.set_rate_config(config, None)
            self._wake_rate_queues(base)
            return
        spec = RateSpec.parse(rate, burst if burst is not None else 1, where="rate")
        self.store.set_rate_config(config, spec.count, spec.period_ms, spec.burst)
        self._wake_rate_queues(base)

    def _wake_rate_queues(self, base: str) -> None:
        """A changed rate applies at once: the turns booked at the old rate are forgotten
        (the limit starts afresh, idle, at the new rate) and the dispatchers of its waiting
        runs run now."""
        queues = {m: parse_member(m) for m in self.store.rate_queue_members()}
        members = [m for m, (limit, _) in queues.items() if limit == base]
        subs = {NO_KEY, *(queues[m][1] for m in members)}
        self.store.reset_rate_states([self.store.keys.rate(base, sub)[1] for sub in subs])
        self.store.wake_rate_queues(members)
        for member in members:
            dispatch_queue(self.app, self.store, member)  # or a worker's reaper, if first

    def rate_queues(self, name: str | None = None) -> list[tuple[str, str | None]]:
        """The rate limits (``(base, key)``; key None for a limit without a rate key) that
        have runs waiting for a turn, all of them or those of ``name``."""
        base = rate_base(name, self.app) if name else None
        found = []
        for member in self.store.rate_queue_members():
            limit, sub = parse_member(member)
            if base is None or limit == base:
                found.append((limit, None if sub == NO_KEY else sub))
        return sorted(found, key=lambda item: (item[0], item[1] or ""))

    def rate_limit(self, name: str, key: str | None = None) -> RateLimitInfo:
        """The state of a rate limit: coded and runtime rate, starts allowed right now,
        and when the next turn is free."""
        base = rate_base(name, self.app)
        coded = coded_rate(base, self.app)
        config, tat = self.store.rate_state(self.store.keys.rate(base, key or "_"))
        waiting, ranks = self.store.rate_waiting(self.store.keys.rate_queue(base, key or "_"))
        runtime = (RateSpec(float(config["count"]), int(config["period_ms"]),
                            int(config.get("burst") or 1)) if config.get("count") else None)
        spec = runtime or coded
        available, wait = (0, 0)
        if spec is not None:
            interval = spec.period_ms / spec.count
            ahead = max(0.0, tat - now_ms())  # how far the limit is booked ahead
            available = max(0, int((interval * spec.burst - ahead) // interval))
            wait = 0 if available else int(ahead - interval * (spec.burst - 1))
        return RateLimitInfo(name=base, key=key, coded=str(coded) if coded else None,
                             runtime=str(runtime) if runtime else None,
                             available_now=available, next_turn_in_ms=max(0, wait),
                             waiting=waiting, waiting_by_priority=ranks)

    def reset_idempotency_key(self, task: str, key: str) -> bool:
        """Forget ``key`` of ``task``: the next call with it creates a new run. Returns
        whether the key existed."""
        return self.store.release_idempotency(self.store.keys.idempotency(task, key))

    def list_runs(
        self,
        status: RunStatus | str | None = None,
        task: str | None = None,
        limit: int = 100,
        offset: int = 0,
        version: str | None = None,
        in_flight: bool = False,
    ) -> list[RunSummary]:
        """Runs, newest first, optionally only those with ``status``, of ``task``, recording
        code ``version``, or (``in_flight``) not ended yet.

        Indexes may briefly lag the run records; every returned run is checked against its
        record, so a run is never listed under a status it does not have.
        """
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise ConfigurationError(f"list_runs(limit=...) must be 1..{MAX_LIST_LIMIT}")
        want = RunStatus(status) if status is not None else None
        keys = self.store.keys
        index = (keys.status_index(want) if want is not None
                 else keys.task_index(task) if task is not None else keys.all_runs)
        found: list[RunSummary] = []
        skipped = 0
        start = 0
        page = max(limit * 2, 50)
        while len(found) < limit:
            ids = self.store.index_page(index, start, page)
            if not ids:
                break
            start += len(ids)
            for run_id, raw in zip(ids, self.store.read_summaries(ids), strict=True):
                if not raw or (want is not None and raw.get("status") != want.value):
                    continue
                if task is not None and raw.get("task") != task:
                    continue
                if version is not None and raw.get("version") != version:
                    continue
                if in_flight and RunStatus(raw.get("status", "pending")).is_terminal:
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                found.append(RunSummary(**_summary_fields(run_id, raw)))
                if len(found) == limit:
                    break
        return found

    def search_runs(self, query: RunQuery) -> RunPage:
        """One page of runs matching ``query`` (status, task, queue, creation time window,
        exact run id or idempotency key), newest first, with the counts per status. Pages
        are read from the indexes server-side; pass ``next_cursor`` back as ``cursor``."""
        return search_runs(self.app, self.store, query, _summary)

    def run_counts(self) -> dict[str, int]:
        """How many runs have each status (index sizes; they may lag by a moment)."""
        return self.store.status_counts()

    def summaries(self, run_ids: Sequence[str]) -> list[RunSummary | None]:
        """The summaries of ``run_ids`` in order (None for a run that does not exist)."""
        raws = self.store.read_summaries(list(run_ids))
        return [_summary(r, raw) if raw else None for r, raw in zip(run_ids, raws, strict=True)]


def _summary(run_id: str, raw: Mapping[str, str]) -> RunSummary:
    return RunSummary(**_summary_fields(run_id, raw))

