"""Admin-side operations on suspended and ended runs: send events, publish, fork."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from celery import Celery

from .codec import JsonCodec, Unencodable, describe_unencodable
from .errors import RunNotFoundError
from .requeue import publish_resume, stored_resume_info
from .store import RunStore, now_ms

_codec = JsonCodec()
logger = logging.getLogger("celery_durable")
#: If a sender dies after delivering an event, its waiters are still woken this much later.
WAKE_SAFETY_MS = 2000


def dispatch_timer(app: Celery, store: RunStore, run_id: str) -> bool:
    """Take the run's due timer and publish the run (exactly one dispatcher wins). If the
    run is not suspended yet, or publishing fails, its timer fires again a second later.
    Returns whether the run was published."""
    taken, info = store.take_timer(run_id)
    if not taken:
        return False  # another dispatcher has it
    try:
        if info is not None and publish_resume(app, run_id, info):
            return True
    except Exception:
        logger.exception("celery-durable: could not publish run %s; retrying", run_id)
    store.wake([run_id], now_ms() + 1000)
    return False


def dispatch_debounce(app: Celery, store: RunStore, redis_key: str) -> bool:
    """Start the run of a debounced burst whose quiet period has passed (exactly one
    dispatcher wins), with the arguments of its last (or first) call. Returns whether a
    run was published."""
    from .attempt import encode_arguments

    taken = store.take_debounce(redis_key)
    if taken is None or taken[1] != "fire":
        return False
    run_id, _, info, calls = taken
    try:
        data = json.loads(info)
        store.set_arguments(run_id, encode_arguments(data["args"]),
                            encode_arguments(data["kwargs"]))
        store.append_event(run_id, "debounce_ended", {"calls": calls})
        if publish_resume(app, run_id, info):
            return True
    except Exception:
        logger.exception("celery-durable: could not start debounced run %s; retrying", run_id)
    # The burst is closed: from here on the run's own timer carries it.
    store.schedule(run_id, now_ms() + 1000, info)
    return False


def dispatch(app: Celery, store: RunStore, run_ids: Sequence[str]) -> None:
    """Publish ``run_ids`` now through their timers (exactly once across dispatchers)."""
    store.wake(run_ids, now_ms())
    for run_id in run_ids:
        dispatch_timer(app, store, run_id)


def send_event(app: Celery, store: RunStore, key: str, payload: Any) -> list[str]:
    """Deliver ``payload`` on ``key`` and wake the runs waiting for it."""
    try:
        payload_json = _codec.dumps(payload)
    except Unencodable as err:
        raise describe_unencodable(err, f"the payload of event {key!r}") from None
    # Timers first: if this process dies after delivering, the waiters still wake up.
    store.wake(store.event_waiters(key), now_ms() + WAKE_SAFETY_MS)
    waiters = store.send_event(key, payload_json)
    dispatch(app, store, waiters)
    return waiters


def publish_run(app: Celery, store: RunStore, run_id: str) -> None:
    """Publish a recorded run again (same id) from its stored task and arguments."""
    raw = store.read_summaries([run_id])[0]
    if not raw:
        raise RunNotFoundError(f"no durable run {run_id!r}", run_id=run_id)
    info = raw.get("resume") or stored_resume_info(
        raw.get("task", ""), raw.get("args", ""), raw.get("kwargs", ""), raw.get("queue", ""),
        raw.get("canvas", ""))
    publish_resume(app, run_id, info)


def fork_run(
    app: Celery,
    store: RunStore,
    run_id: str,
    from_step: str,
    args: Sequence[Any] | None,
    kwargs: dict[str, Any] | None,
) -> str:
    """Start a new run that reuses the checkpoints of ``run_id`` before step ``from_step``
    and executes from it; returns the new run's id."""
    from .attempt import encode_arguments

    raw, steps, _ = store.read_run(run_id)
    if not raw:
        raise RunNotFoundError(f"no durable run {run_id!r} to fork", run_id=run_id)
    ordered = sorted(((int(pos), payload) for pos, payload in steps.items()))
    names = [json.loads(payload)["id"] for _, payload in ordered]
    if from_step not in names:
        raise RunNotFoundError(
            f"run {run_id} has no committed step {from_step!r} to fork from; its steps are "
            f"{names}", run_id=run_id, step=from_step)
    cut = names.index(from_step)
    new_id = str(uuid.uuid4())
    args_json = encode_arguments(list(args)) if args is not None else raw.get("args", "[]")
    kwargs_json = encode_arguments(kwargs) if kwargs is not None else raw.get("kwargs", "{}")
    kept = {str(p) for p, _ in ordered[:cut]}
    blobs = {p: v for p, v in store.read_blobs(run_id).items() if p in kept}
    store.create_fork(new_id, raw.get("task", ""), args_json, kwargs_json,
                      raw.get("queue", ""), dict((str(p), v) for p, v in ordered[:cut]),
                      origin=run_id, from_step=from_step, blobs=blobs)
    store.append_event(run_id, "run_forked", {"fork": new_id, "from_step": from_step})
    publish_resume(app, new_id, stored_resume_info(raw.get("task", ""), args_json, kwargs_json,
                                                   raw.get("queue", "")))
    return new_id
