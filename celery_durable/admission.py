"""What happens before a new run is put on its queue: its turn of a rate limit, its slots.

``apply_async`` of a durable task calls :func:`admit_and_publish` once the run is known. A
run over its task's rate waits for its turn without a worker: an ETA message when its turn
comes within the lookahead and nobody waits before it, else in the limit's queue, from which
a dispatcher hands turns out best first (priority, fairness keys); with
``rate_mode="drop"`` it is cancelled instead;
a run over a full concurrency limit is parked in Redis instead of being published. A run
that reaches a worker without having taken its turn (sent by name, published with a
countdown) takes it there: :func:`take_turn_in_worker`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from celery.exceptions import Ignore
from celery.result import AsyncResult

from . import signals
from .concurrency import (
    HANDED_HEADER,
    SlotRef,
    acquire,
    fairness_key_of,
    note_parked,
    priority_rank,
    publish_woken,
    release,
    slots_for,
)
from .publisher import capture
from .rates import RATE_HEADER, RateRef, delay_ms, rate_ref, reserve, take
from .requeue import request_options, resume_info
from .store import RunStore, now_ms, store_for

if TYPE_CHECKING:
    from .task import DurableTask

logger = logging.getLogger("celery_durable")
#: What the caller runs once the run is recorded (trace events need the record).
After = Callable[[], None] | None
Publish = Callable[[dict[str, Any]], "AsyncResult[Any]"]


def task_rate(task: DurableTask, args: Any, kwargs: Any) -> RateRef | None:
    """The rate limit a call of ``task`` takes its turn of, if it has one."""
    spec = task.durable_rate_limit
    if spec is not None:
        spec = replace(spec, burst=task.durable_rate_burst)
    return rate_ref(f"task:{task.name}", spec, task.durable_rate_key, args or (), kwargs or {})


def admit_and_publish(
    task: DurableTask, args: Any, kwargs: Any, run_id: str, queue: str,
    options: dict[str, Any], publish: Publish,
) -> tuple[AsyncResult[Any], After]:
    """Publish a new run now, later (its rate turn), or not at all (parked for a slot,
    dropped by a lossy rate); returns its result and what to do once it is recorded."""
    store = store_for(task.app)
    delayed = bool(options.get("countdown") or options.get("eta"))
    rate = None if delayed else task_rate(task, args, kwargs)
    if rate is not None:
        if task.durable_rate_mode == "drop":
            start = reserve(store, rate, "drop")
            if start is None:
                return task.AsyncResult(run_id), lambda: _drop(task, run_id, rate)
        else:
            info = resume_info(task.name, args, kwargs, queue, options.get("headers"), options)
            turn = take(store, rate, run_id, info,
                        rank=priority_rank(task.app, options.get("priority", task.priority)),
                        fairness_key=fairness_key_of(task, args or (), kwargs or {}))
            if turn.start_ms is None:
                return task.AsyncResult(run_id), lambda: _note_waiting(task, store, run_id,
                                                                       rate, turn.position)
            start = turn.start_ms
        options["headers"] = {**(options.get("headers") or {}), RATE_HEADER: start}
        wait_ms = delay_ms(start)
        if wait_ms > 0:
            # A turn within the lookahead: the message waits for it as an ETA.
            result = publish({**options, "countdown": wait_ms / 1000})
            return result, lambda: _note_turn(task, store, run_id, rate, start, wait_ms)
    refs = [] if delayed else slots_for(task, args or (), kwargs or {}, queue, store.settings)
    if not refs:
        return publish(options), None
    info = resume_info(task.name, args, kwargs, queue, options.get("headers"), options)
    built = _build_message(task, store, refs, options, publish)
    admission = acquire(store, run_id, refs, info,
                        hold_ms=int(store.settings.slot_handoff_s * 1000),
                        rank=priority_rank(task.app, options.get("priority", task.priority)),
                        fairness_key=fairness_key_of(task, args or (), kwargs or {}),
                        message=built[1] if built else None)
    publish_woken(task.app, admission.woken)
    result = built[0] if built else task.AsyncResult(run_id)
    if not admission.admitted:
        return result, lambda: note_parked(store, task.name, run_id, admission)
    if built:
        return result, None  # slots.lua published it with the slot
    try:
        return publish(options), None
    except BaseException:
        publish_woken(task.app, release(store, run_id, refs))
        raise


def _build_message(task: DurableTask, store: RunStore, refs: list[SlotRef],
                   options: dict[str, Any], publish: Publish
                   ) -> tuple[AsyncResult[Any], tuple[str, str]] | None:
    """The run's message, built now (by Celery, kept by ``publisher.capture``) for slots.lua
    to put on its queue: with the slot if one is free, else the moment a release hands the
    run one. That saves a round trip at publish, and the release's reply and a publish from
    the releasing worker on every hand-over, while a slot stays idle. Its header says it
    was handed a slot (its attempt takes the slot in the claim's round trip).

    None (the run is published, or re-published, by Python as before) unless the store is
    one Redis server that is the broker's, with one limit to take (the message must go out
    once every slot is held) and nothing that ties the message to the time it is sent
    (``expires``) or to a caller's producer."""
    if (len(refs) != 1 or not store.single_server or "producer" in options
            or options.get("expires") is not None or task.expires is not None
            or task.app.conf.task_always_eager):
        return None
    headers = {**(options.get("headers") or {}), HANDED_HEADER: 1}
    built = capture(task.app, store.client,
                    lambda producer: publish({**options, "headers": headers,
                                              "producer": producer}))
    if built is not None and json.loads(built[1][1]).get("headers", {}).get("expires"):
        return None  # set by a route: the message is published when the run has its slot
    return built


def _note_turn(task: DurableTask, store: RunStore, run_id: str, rate: RateRef, start_ms: int,
               wait_ms: int) -> None:
    signals.rate_limited.send(sender=task.name, run_id=run_id, limit=rate.name,
                              start_ms=start_ms, position=-1, dropped=False)
    store.append_event(run_id, "rate_limited", {"limit": rate.name, "start_ms": start_ms,
                                                "wait_ms": wait_ms})
    logger.info("run %s: rate limit %s (%s) is busy; it starts in %.3f s", run_id, rate.name,
                rate.spec, wait_ms / 1000)


def _note_waiting(task: DurableTask, store: RunStore, run_id: str, rate: RateRef,
                  position: int) -> None:
    signals.rate_limited.send(sender=task.name, run_id=run_id, limit=rate.name,
                              start_ms=None, position=position, dropped=False)
    store.append_event(run_id, "rate_limited", {"limit": rate.name, "position": position})
    logger.info("run %s: rate limit %s (%s) is busy; it waits at position %d", run_id,
                rate.name, rate.spec, position)


def _drop(task: DurableTask, run_id: str, rate: RateRef) -> None:
    from .client import DurableClient

    signals.rate_limited.send(sender=task.name, run_id=run_id, limit=rate.name, start_ms=None,
                              position=-1, dropped=True)
    DurableClient(task.app).cancel(
        run_id, f"over the rate limit {rate.name} ({rate.spec}, rate_mode='drop')")


def on_time(turn: Any, rate: RateRef) -> bool:
    """Whether an attempt that took its turn at ``turn`` (epoch ms, from the message) starts
    close enough to it: within one emission interval, at most a second. A later start (the
    workers were busy or down, or this is a retry or a resumed run) takes a new turn, so a
    backlog never reaches the rate-limited service as one burst."""
    if isinstance(turn, bool) or not isinstance(turn, int | float) or turn <= 0:
        return False
    interval_ms = rate.spec.period_ms / rate.spec.count
    return now_ms() - turn <= min(max(interval_ms, 50.0), 1000.0)


def take_turn_in_worker(task: DurableTask, store: RunStore, run_id: str, args: Any,
                        kwargs: Any, queue: str, record: Callable[[], object]) -> None:
    """An attempt that did not take its rate turn (sent by name, delayed, a retry, resumed,
    or started late) takes it here: it starts now, or is published again for its turn (or
    cancelled, if lossy) and this attempt stops."""
    req = task.request
    if req.is_eager or task.durable_rate_limit is None:
        return
    if not isinstance(req.headers, dict):
        req.headers = {}  # a message without custom headers (send_task by name)
    headers: dict[str, Any] = req.headers
    rate = task_rate(task, args, kwargs)
    turn_header = headers.get(RATE_HEADER)
    if rate is None or on_time(turn_header, rate):
        return
    if task.durable_rate_mode == "drop":
        start = reserve(store, rate, "drop")
        headers[RATE_HEADER] = start or 0  # this attempt's turn, for the messages it publishes
        if start is None:
            record()
            _drop(task, run_id, rate)
            raise Ignore()
        return
    # A run that already had a turn (it started late, or is a retry or a resume) waits
    # first in the queue: it is already under way.
    info = resume_info(task.name, args, kwargs, queue, dict(headers), request_options(req))
    turn = take(store, rate, run_id, info,
                rank=priority_rank(task.app, (req.delivery_info or {}).get("priority")),
                fairness_key=fairness_key_of(task, args or (), kwargs or {}),
                first=bool(turn_header))
    if turn.start_ms is None:
        record()
        _note_waiting(task, store, run_id, rate, turn.position)
        raise Ignore()
    headers[RATE_HEADER] = turn.start_ms
    wait_ms = delay_ms(turn.start_ms)
    if wait_ms <= 0:
        return
    record()
    task.signature_from_request(req, args, kwargs, countdown=wait_ms / 1000,
                                headers=dict(headers)).apply_async()
    _note_turn(task, store, run_id, rate, turn.start_ms, wait_ms)
    raise Ignore()
