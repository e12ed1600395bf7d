"""One attempt of a durable run: claim the lease, replay/execute the body, end the attempt.

This is what ``DurableTask.__call__`` runs in the worker. The attempt's outcome is mapped
onto Celery's own control flow: success returns the value, a retry goes through
``Task.retry`` (same task id, so the next attempt replays the committed steps), a final
failure re-raises the exception so Celery stores FAILURE, and an attempt that must not
touch the run (fenced out, duplicate delivery) raises ``Ignore``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from celery.exceptions import Ignore, Reject, Retry

from . import acks, logcapture, metrics, otel, results, signals
from .admission import take_turn_in_worker
from .children import notify_parent
from .codec import JsonCodec, Unencodable, describe_unencodable
from .concurrency import (
    HANDED_HEADER,
    Admission,
    SlotRef,
    acquire,
    acquire_with_claim,
    fairness_key_of,
    note_parked,
    priority_rank,
    publish_woken,
    release,
    release_keys,
    settle,
    slots_for,
    woken_of,
)
from .context import RunContext, SuspendRun, bind_context, describe_error, unbind_context
from .errors import LeaseLostError, RunCancelled, RunCrashedError, StoreError
from .identity import current_worker_id
from .keys import LimitKeys
from .models import TERMINAL_STATUSES, RunStatus
from .payloads import coerce_call
from .requeue import encode_options, publish_resume, request_options, resume_info
from .store import Claim, RunStore, now_ms, store_for
from .versions import RouteRun, apply_policy, code_version

if TYPE_CHECKING:
    from .task import DurableTask

logger = logging.getLogger("celery_durable")
#: Message header naming the idempotency key of a run (to release it if the run fails).
IDEMPOTENCY_HEADER = "durable_idempotency_key"
#: Message header asking to keep the idempotency key when the run fails (a beat tick).
KEEP_KEY_HEADER = "durable_keep_idempotency_key"
#: Message header counting how often a duplicate delivery was deferred (for its backoff).
DEFERRALS_HEADER = "durable_deferrals"
#: Message header of a run that ``DurableTask.apply_async`` recorded (or is recording): its
#: claim need not list it. Without it (``send_task`` by name), the claim lists the run.
RECORDED_HEADER = "durable_recorded"
_codec = JsonCodec()


def encode_arguments(value: Any) -> str:
    """Task arguments as stored in the run record (for display and replay)."""
    try:
        return _codec.dumps(value)
    except Unencodable:
        return json.dumps({"__cd__": "repr", "v": repr(value)[:2000]})


def queue_of(task: DurableTask, options: dict[str, Any]) -> str:
    """The queue name a publish with ``options`` goes to, as far as the caller can tell."""
    queue = options.get("queue") or getattr(task, "queue", None)
    if queue is None:
        delivery = options.get("delivery_info") or {}
        queue = delivery.get("routing_key")
    name = getattr(queue, "name", queue)
    return str(name or task.app.conf.task_default_queue)


def publish_queue(task: DurableTask, args: Any, kwargs: Any, options: dict[str, Any]) -> str:
    """The queue a publish of ``task`` with ``options`` goes to, resolved like Celery does:
    an explicit ``queue``, else the task's own, else ``task_routes``, else the default."""
    if options.get("queue") or getattr(task, "queue", None) or not task.app.conf.task_routes:
        return queue_of(task, options)
    route = task.app.amqp.router.route(dict(options), task.name, args, kwargs)
    name = getattr(route.get("queue"), "name", route.get("queue"))
    return str(name or task.app.conf.task_default_queue)


def run_attempt(task: DurableTask, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Execute one attempt of the run whose id is the current Celery task id."""
    store = store_for(task.app)
    req = task.request
    run_id = str(req.id)
    owner = current_worker_id(req.hostname)
    properties = req.properties or {}
    queue = queue_of(task, {"delivery_info": req.delivery_info or {}})
    version = code_version(task)
    try:
        take_turn_in_worker(task, store, run_id, args, kwargs, queue,
                            lambda: _record_if_missing(task, store, run_id, args, kwargs, queue))
        claim_with = functools.partial(_claim, task, store, run_id, owner, args, kwargs,
                                       properties, queue, version)
        slots, claim = _take_slots_and_claim(task, store, run_id, args, kwargs, queue,
                                             claim_with)
    except StoreError as exc:
        # Redis is unreachable: nothing ran; try again later with the same message id.
        delay = min(60.0, 2.0 ** min(int(req.retries or 0), 6)) * random.uniform(0.5, 1.0)
        logger.error("%s; retrying run %s in %.1f s", exc, run_id, delay)
        _retry(task, exc, delay)
    if claim.outcome in ("crashed", "done"):
        _give_back_slots(task, store, run_id, slots)
    meters = metrics.meters_for(store.settings, task.name)
    if claim.outcome == "crashed":
        _release_idempotency_key(task, store, run_id)
        if meters is not None:
            meters.run_finished("failed")
        raise RunCrashedError(
            f"run {run_id}: its worker died {claim.crashes} times; the run is failed "
            f"(durable_max_crashes={store.settings.max_crashes})",
            run_id=run_id, crashes=claim.crashes,
        )
    if claim.outcome == "done":
        return _already_done(run_id, claim)
    if claim.outcome == "busy":
        _defer_duplicate(task, store, run_id, claim, args, kwargs)
    settings = store.settings
    if settings.log_capture:
        logcapture.install()
    # The previous attempt never ended (its worker or pool process died): a crash resume.
    recovered = claim.status == RunStatus.RUNNING.value
    if recovered and meters is not None:
        meters.crash_resumed()
    ctx = RunContext(
        run_id=run_id,
        attempt=claim.attempt,
        task_name=task.name,
        token=claim.token,
        owner=owner,
        store=store,
        checkpoints=claim.checkpoints if claim.checkpoints is not None else {},
        slots=slots,
        failures=claim.failures,
        app=task.app,
        deadline_ms=(max(claim.created_ms + int(task.durable_run_timeout * 1000),
                         claim.deadline_ms)
                     if task.durable_run_timeout is not None else None),
        logs=logcapture.RunLogs(settings, claim.attempt) if settings.log_capture else None,
        meters=meters,
        code_version=version,
        recorded_version=claim.version,
        durability=task.durable_commit_durability,
    )
    bound = bind_context(ctx)
    signals.run_started.send(sender=task.name, run_id=run_id, attempt=ctx.attempt,
                             resumed=claim.status == RunStatus.SUSPENDED.value,
                             recovered=recovered)
    try:
        with otel.attempt_span(task.name, run_id, ctx.attempt, req.headers) as span:
            ctx.traced = span is not None and span.is_recording()
            try:
                value = _run_body(task, store, ctx, args, kwargs, queue)
            except Retry:
                otel.set_outcome(span, "retrying")
                raise
            except Ignore:
                otel.set_outcome(span, "ended")  # suspended, fenced, parked or cancelled
                raise
            except BaseException as exc:
                otel.set_outcome(span, "failed", exc)
                raise
            otel.set_outcome(span, "completed")
            return value
    finally:
        _leave(ctx, bound)


def _leave(ctx: RunContext, bound: Any) -> None:
    """However the attempt ended: store the records logged after its last write (signal
    receivers, cleanup), unbind its context, count its replayed steps."""
    logcapture.flush(ctx)
    unbind_context(bound)
    if ctx.meters is not None:
        ctx.meters.step_replayed(ctx.replayed)


def _take_slots_and_claim(
    task: DurableTask,
    store: RunStore,
    run_id: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    queue: str,
    claim_with: Callable[..., Claim],
) -> tuple[list[SlotRef], Claim]:
    """Hold a slot of every concurrency limit of this call and claim the run; or park the
    run and stop (``Ignore``) if a limit is full.

    A run just handed its slots (by a release: ``HANDED_HEADER``) is expected to be
    admitted: on one Redis server its acquires ride in the claim's round trip, and the
    claim script refuses the claim unless the run holds every slot (so a stale header
    cannot start a run over its limit). Otherwise the slots are taken first, then the run
    is claimed: a parked delivery never counts as an attempt."""
    slots = slots_for(task, args, kwargs, queue, store.settings)
    if not slots or task.request.is_eager:
        return [], claim_with()
    req = task.request
    info = resume_info(task.name, args, kwargs, queue, _carried_headers(task),
                       request_options(req))
    rank = priority_rank(task.app, (req.delivery_info or {}).get("priority"))
    fairness_key = fairness_key_of(task, args, kwargs)
    if (req.headers or {}).get(HANDED_HEADER) and store.single_server:
        claim = claim_with(acquire=acquire_with_claim(store, run_id, slots, info, rank,
                                                      fairness_key))
        admission = settle(store, run_id, slots, claim.slot_replies)
        publish_woken(task.app, admission.woken)
        if not admission.admitted:
            _wait_for_slot(task, store, run_id, args, kwargs, queue, slots, admission)
        if claim.outcome != "noslot":
            return slots, claim
        # Admitted, yet refused: the slot went away in between (not expected); start over.
    admission = acquire(store, run_id, slots, info, rank=rank, fairness_key=fairness_key)
    publish_woken(task.app, admission.woken)
    if not admission.admitted:
        _wait_for_slot(task, store, run_id, args, kwargs, queue, slots, admission)
    return slots, claim_with()


def _wait_for_slot(
    task: DurableTask,
    store: RunStore,
    run_id: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    queue: str,
    slots: list[SlotRef],
    admission: Admission,
) -> NoReturn:
    """The run was parked on a full limit: record it if it is new and stop this delivery
    (its message is acknowledged; the release that frees a slot publishes it again)."""
    if not _record_if_missing(task, store, run_id, args, kwargs, queue):
        status = (store.read_summaries([run_id])[0] or {}).get("status", "")
        if status in TERMINAL_STATUSES:
            # A stray copy of a run that already ended (a restored message, a deferred
            # duplicate): leave the queue rather than take a slot from a waiting run later.
            publish_woken(task.app, release(store, run_id, slots))
            logger.info("run %s already %s; ignoring a duplicate delivery", run_id, status)
            raise Ignore()
    note_parked(store, task.name, run_id, admission)
    raise Ignore()


def _record_if_missing(task: DurableTask, store: RunStore, run_id: str,
                       args: tuple[Any, ...], kwargs: dict[str, Any], queue: str) -> bool:
    """Record a run that waits before its first attempt: one sent by name (no slot or rate
    turn taken at publish) may not be recorded yet, and must be listed, with a trace that
    says why it waits. Returns False if the run was recorded already."""
    return store.create_run(run_id, task.name, encode_arguments(list(args)),
                            encode_arguments(kwargs), queue,
                            encode_options(request_options(task.request)))


def _give_back_slots(
    task: DurableTask, store: RunStore, run_id: str, slots: list[SlotRef]
) -> None:
    if slots:
        publish_woken(task.app, release(store, run_id, slots))


def _claim(
    task: DurableTask,
    store: RunStore,
    run_id: str,
    owner: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    properties: dict[str, Any],
    queue: str,
    version: str,
    acquire: Sequence[tuple[LimitKeys, list[Any]]] = (),
) -> Claim:
    """Claim the run (``queue`` and ``version`` as run_attempt computed them once), with
    the slot acquires of ``_take_slots_and_claim`` in the same round trip."""
    claim_with = functools.partial(
        store.claim,
        run_id,
        owner=owner,
        task=task.name,
        args_json=encode_arguments(list(args)),
        kwargs_json=encode_arguments(kwargs),
        queue=queue,
        pid=os.getpid(),
        delivery_tag=str(properties.get("delivery_tag") or ""),
        version=version,
        listed=bool((task.request.headers or {}).get(RECORDED_HEADER)),
    )
    claim = claim_with(nonce=os.urandom(16).hex(), acquire=acquire)
    if claim.outcome == "busy" and claim.owner == owner and _is_dead(claim.holder_pid):
        # A pool process of this very worker held the run and died (SIGKILL, OOM): its
        # message came back before the heartbeat freed the lease. Take over at once.
        taken = claim.slot_replies  # the slots are held now: they are not taken again
        claim = dataclasses.replace(
            claim_with(nonce=os.urandom(16).hex(), dead_pid=claim.holder_pid),
            slot_replies=taken)
    return claim


def _is_dead(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _run_body(
    task: DurableTask,
    store: RunStore,
    ctx: RunContext,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    queue: str,
) -> Any:
    try:
        ctx.check_deadline("when the attempt started")
        if not task.request.is_eager:
            apply_policy(task, store, ctx, queue)
        args, kwargs = coerce_call(task.run, args, kwargs)
        value = task.run(*args, **kwargs)
    except LeaseLostError as exc:
        logger.warning("%s", exc)
        _note_fenced(store, ctx)
        raise Ignore() from exc
    except RunCancelled as exc:
        # cancel() already ended the run; this attempt only gives its slots back.
        logger.info("run %s was cancelled; attempt %s stops", ctx.id, ctx.attempt)
        _give_back_slots(task, store, ctx.id, ctx.slots)
        raise Ignore() from exc
    except RouteRun as route:
        _route(task, store, ctx, route)
    except SuspendRun as suspend:
        _park(task, store, ctx, suspend.due_ms, RunStatus.SUSPENDED,
              {"type": "run_suspended", "reason": suspend.reason,
               "until_ms": suspend.due_ms or "", **suspend.details})
    except Retry:
        # The task called self.retry() itself: the next message is already published.
        _end(store, ctx, task, RunStatus.RETRYING, {"type": "attempt_retrying"})
        if ctx.meters is not None:
            ctx.meters.run_retrying()
        raise
    except Reject as exc:
        requeue = bool(getattr(exc, "requeue", False))
        status = RunStatus.RETRYING if requeue else RunStatus.FAILED
        _end(store, ctx, task, status, {"type": "attempt_rejected", "requeue": int(requeue)})
        raise
    except Ignore:
        _end(store, ctx, task, RunStatus.CANCELLED,
             {"type": "run_cancelled", "reason": "the task raised celery.exceptions.Ignore"})
        raise
    except Exception as exc:
        _handle_failure(task, store, ctx, exc)
    except BaseException:
        # Worker shutdown (SystemExit, KeyboardInterrupt): free the lease so that the
        # redelivered message can start the next attempt at once.
        _end(store, ctx, task, RunStatus.RETRYING, {"type": "attempt_interrupted"}, strict=False)
        raise
    return _complete(task, store, ctx, value)


def _complete(task: DurableTask, store: RunStore, ctx: RunContext, value: Any) -> Any:
    try:
        result_json = _codec.dumps(value)
    except Unencodable as err:
        exc = describe_unencodable(err, f"task {task.name} (run {ctx.id})")
        _fail(store, ctx, task, exc)
        raise exc from None
    event = {"type": "run_completed", "attempt": ctx.attempt, "steps": ctx.position,
             "replayed": ctx.replayed}
    celery_result = results.for_completed_run(task, store, value)
    ack = acks.for_completed_run(task, store)
    if _end(store, ctx, task, RunStatus.COMPLETED, event, result_json=result_json,
            celery_result=celery_result, ack=ack) is None:
        _note_fenced(store, ctx)
        raise Ignore()
    if ack is not None:
        acks.settle(ack)
    if celery_result is not None:
        results.stored(task)
    _notify_parent(task, store, ctx.id, {"ok": True, "result": value})
    signals.run_completed.send(sender=task.name, run_id=ctx.id, attempt=ctx.attempt,
                               result=value)
    if ctx.meters is not None:
        ctx.meters.run_finished("completed")
    return value


def _notify_parent(task: DurableTask, store: RunStore, run_id: str,
                   outcome: dict[str, Any]) -> None:
    try:
        notify_parent(task.app, store, run_id, task.request.headers, outcome)
    except Exception:
        # The parent re-reads this run's record on its safety timer.
        logger.exception("run %s: could not notify its parent run", run_id)


def _handle_failure(
    task: DurableTask, store: RunStore, ctx: RunContext, exc: Exception
) -> NoReturn:
    policy = task.durable_retry or store.settings.default_retry
    failure = ctx.failures + 1  # this attempt's failure, counted as the policy counts
    if not policy.should_retry(exc, failure):
        _fail(store, ctx, task, exc)
        raise exc
    delay = policy.delay_for(failure)
    error = describe_error(exc)
    if delay > store.settings.max_countdown_s:
        # A long backoff waits in a Redis timer, not as an ETA message in a worker.
        _park(task, store, ctx, now_ms() + int(delay * 1000), RunStatus.RETRYING,
              {"type": "attempt_failed", "attempt": ctx.attempt, "retry_in_s": f"{delay:.3f}",
               **error}, error_json=json.dumps(error))
    event = {"type": "attempt_failed", "attempt": ctx.attempt, "retry_in_s": f"{delay:.3f}",
             **error}
    try:
        # The next attempt takes a slot when it starts (it may wait out its backoff first).
        ended = _end_releasing(task, store, ctx, RunStatus.RETRYING, event,
                               error_json=json.dumps(error))
    except StoreError:
        # Redis is unreachable: the retry message still carries the run forward.
        logger.exception("run %s: could not record the failure of attempt %s", ctx.id, ctx.attempt)
        ended = "unknown"
    if ended is None:
        _note_fenced(store, ctx)
        raise Ignore() from exc
    signals.run_retrying.send(sender=task.name, run_id=ctx.id, attempt=ctx.attempt,
                              exception=exc, delay_s=delay)
    if ctx.meters is not None:
        ctx.meters.run_retrying()
    _retry(task, exc, delay)


def _park(
    task: DurableTask,
    store: RunStore,
    ctx: RunContext,
    due_ms: int | None,
    status: RunStatus,
    event: dict[str, Any],
    error_json: str = "",
) -> NoReturn:
    """End the attempt and let a Redis timer (or an event) publish the run again.

    The timer is set before the attempt ends: if the worker dies in between, the timer
    still fires and the next attempt takes over the run; the other way round, a crash
    could leave a suspended run that nothing wakes.
    """
    if ctx.deadline_ms is not None:
        # A suspended run is woken at its deadline at the latest, to be failed then.
        due_ms = ctx.deadline_ms if due_ms is None else min(due_ms, ctx.deadline_ms)
    req = task.request
    info = resume_info(task.name, req.args, req.kwargs,
                       queue_of(task, {"delivery_info": req.delivery_info or {}}),
                       _next_headers(task), request_options(req))
    store.schedule(ctx.id, due_ms, info)
    if _end(store, ctx, task, status, event, error_json=error_json) is None:
        _note_fenced(store, ctx)
    elif status is RunStatus.SUSPENDED:
        signals.run_suspended.send(sender=task.name, run_id=ctx.id, attempt=ctx.attempt,
                                   reason=event.get("reason", ""), until_ms=due_ms)
    else:
        signals.run_retrying.send(sender=task.name, run_id=ctx.id, attempt=ctx.attempt,
                                  exception=None, delay_s=(due_ms or now_ms()) / 1000
                                  - now_ms() / 1000)
        if ctx.meters is not None:
            ctx.meters.run_retrying()
    raise Ignore()


def _route(task: DurableTask, store: RunStore, ctx: RunContext, route: RouteRun) -> NoReturn:
    """Hand the run to workers of the version it recorded (``version_policy="route"``).

    The run is published to the version-tagged queue before this attempt ends: a crash in
    between leaves a second copy, which defers to (or finds done) the first; the other
    order could leave a run with no message."""
    req = task.request
    publish_resume(task.app, ctx.id, resume_info(task.name, req.args, req.kwargs, route.queue,
                                                 _next_headers(task), request_options(req)))
    event = {"type": "run_routed", "queue": route.queue, "recorded_version": route.recorded,
             "running_version": route.running}
    if _end(store, ctx, task, RunStatus.RETRYING, event) is None:
        _note_fenced(store, ctx)
    logger.info("run %s: recorded code version %s, this worker runs %s; routed to %s",
                ctx.id, route.recorded, route.running, route.queue)
    raise Ignore()


def _carried_headers(task: DurableTask) -> dict[str, Any]:
    """This message's headers that a later message of the run carries on (all but the
    hand-over hint, which only the release that hands a slot sets)."""
    headers = dict(task.request.headers or {})
    headers.pop(HANDED_HEADER, None)
    return headers


def _next_headers(task: DurableTask) -> dict[str, Any]:
    """Headers of the message of the run's next attempt: this one's, with the current trace
    context, so that every attempt of a run lands in one trace."""
    headers = _carried_headers(task)
    otel.inject(headers)
    return headers


def _retry(task: DurableTask, exc: Exception, delay: float) -> NoReturn:
    """Publish the next attempt (same task id) in ``delay`` seconds; if even that fails,
    requeue this message rather than lose the run."""
    try:
        raise task.retry(exc=exc, countdown=delay, max_retries=None,
                         headers=_next_headers(task))
    except Reject as rej:
        raise Reject(getattr(rej, "reason", None), requeue=True) from exc


def _note_fenced(store: RunStore, ctx: RunContext) -> None:
    """Leave a trace of a fenced-out attempt (unfenced: the run belongs to another now)."""
    try:
        store.append_event(ctx.id, "attempt_fenced", {"attempt": ctx.attempt})
    except StoreError:
        logger.exception("run %s: could not record that attempt %s was fenced",
                         ctx.id, ctx.attempt)


def _fail(store: RunStore, ctx: RunContext, task: DurableTask, exc: BaseException) -> None:
    error = describe_error(exc)
    event = {"type": "run_failed", "attempt": ctx.attempt, **error}
    if _end(store, ctx, task, RunStatus.FAILED, event, error_json=json.dumps(error),
            strict=False) is not None:
        _release_idempotency_key(task, store, ctx.id)
        _notify_parent(task, store, ctx.id, {"ok": False, "status": "failed", **error})
        signals.run_failed.send(sender=task.name, run_id=ctx.id, attempt=ctx.attempt,
                                exception=exc)
        if ctx.meters is not None:
            ctx.meters.run_finished("failed")


def _release_idempotency_key(task: DurableTask, store: RunStore, run_id: str) -> None:
    """A failed run frees its idempotency key (by default), so the caller can try again."""
    headers = task.request.headers or {}
    redis_key = headers.get(IDEMPOTENCY_HEADER)
    if not redis_key or not store.settings.idempotency_release_on_failure:
        return
    if headers.get(KEEP_KEY_HEADER):
        return
    try:
        store.release_idempotency(str(redis_key), run_id)
    except StoreError:
        logger.exception("run %s: could not release its idempotency key", run_id)


def _end(
    store: RunStore,
    ctx: RunContext,
    task: DurableTask,
    status: RunStatus,
    event: dict[str, Any],
    *,
    result_json: str = "",
    error_json: str = "",
    celery_result: results.CeleryResult | None = None,
    ack: acks.FusedAck | None = None,
    strict: bool = True,
) -> str | None:
    event.setdefault("attempt", ctx.attempt)
    try:
        return _end_releasing(
            task, store, ctx, status, event, result_json=result_json, error_json=error_json,
            checkpoints=ctx.checkpoints if status is RunStatus.COMPLETED else None,
            celery_result=celery_result, ack=ack)
    except StoreError:
        if strict:
            raise
        logger.exception("run %s: could not record status %s", ctx.id, status.value)
        return "unknown"


def _end_releasing(
    task: DurableTask,
    store: RunStore,
    ctx: RunContext,
    status: RunStatus,
    event: dict[str, Any],
    **fields: Any,
) -> str | None:
    """End the attempt with its buffered logs and give its slots back (the store skips the
    release for a fenced-out attempt; on one Redis server it rides in the same round trip);
    publish the runs handed those slots. Returns the previous status (None: fenced out).
    ``fields``: ``result_json``, ``error_json``, ``checkpoints`` of ``end_attempt``,
    ``celery_result``, ``ack``."""
    prev, released = store.end_attempt_releasing(
        ctx.id, ctx._token, status, event, task=task.name, owner=ctx.owner,
        logs=ctx.take_logs(), release=release_keys(store, ctx.slots), **fields)
    publish_woken(task.app, woken_of(released))
    return prev


def _already_done(run_id: str, claim: Claim) -> Any:
    """A message for a run that already ended (a duplicate delivery): do not run it again."""
    if claim.status == RunStatus.COMPLETED.value and claim.result:
        logger.info("run %s already completed; returning its stored result", run_id)
        return _codec.loads(claim.result)
    logger.info("run %s already %s; ignoring a duplicate delivery", run_id, claim.status)
    raise Ignore()


def _defer_duplicate(
    task: DurableTask,
    store: RunStore,
    run_id: str,
    claim: Claim,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> NoReturn:
    """Another attempt holds a live lease: check again later.

    The message is never dropped: if the other attempt ends, the deferred copy finds the run
    done and ends quietly; if the other attempt's worker died, the copy takes over. The
    first checks come soon (a dead holder's lease is usually freed within a heartbeat or
    two), later ones back off up to the lease's expiry.
    """
    req = task.request
    deferrals = int((req.headers or {}).get(DEFERRALS_HEADER) or 0)
    interval = store.settings.heartbeat_interval_s
    lease_left = max(0.5, (claim.lease_expires_ms - now_ms()) / 1000)
    wait_s = min(lease_left, 2 * interval * 2 ** min(deferrals, 10)) + random.uniform(0, 0.25)
    headers = {**_carried_headers(task), DEFERRALS_HEADER: deferrals + 1}
    task.signature_from_request(
        req, args, kwargs, countdown=wait_s, headers=headers
    ).apply_async()
    store.append_event(run_id, "duplicate_deferred",
                       {"holder": claim.owner, "retry_in_s": f"{wait_s:.3f}"})
    raise Ignore()
