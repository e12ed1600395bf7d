"""Cluster-wide concurrency limits: per task (optionally per key) and per Celery queue.

An attempt takes a slot of every limit that applies to it before it starts; if one is
full, the attempt is parked in Redis (its message acknowledged: it holds no worker) and the
run is re-published, in FIFO order, the moment a slot frees up. Slots are leases renewed by
the worker heartbeat, so a dead worker's slots come back within ``durable_lease_ttl_s``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery import Celery

from . import metrics, signals
from .config import DurableSettings
from .errors import ConfigurationError
from .keys import LimitKeys
from .requeue import publish_resume
from .store import RunStore

if TYPE_CHECKING:
    from .task import DurableTask

logger = logging.getLogger("celery_durable")

#: The concurrency key of a limit that has none.
NO_KEY = "_"
#: Header of a message that publishes a run just handed a slot (by a release or a sweep):
#: its attempt expects to hold the slot, so on one Redis server it takes the slot in the
#: claim's round trip (see ``acquire_with_claim``). A hint only: Redis decides.
HANDED_HEADER = "durable_slot_handed"
#: What slots.lua names, instead of a run's resume info, a run handed a slot whose message
#: it put on the queue itself (kept since the run was parked): nothing left to publish.
QUEUED = "queued"


@dataclass(frozen=True, slots=True)
class SlotRef:
    """One limit an attempt must hold a slot of: ``base`` (``task:<name>`` or
    ``queue:<name>``), ``sub`` (the concurrency key) and the limit set in code."""

    base: str
    sub: str
    default: int

    @property
    def name(self) -> str:
        return self.base if self.sub == NO_KEY else f"{self.base}[{self.sub}]"

    def member(self) -> str:
        """Its entry in the registry of limits with waiting runs."""
        return json.dumps([self.base, self.sub, self.default])

    @classmethod
    def from_member(cls, member: str) -> SlotRef:
        base, sub, default = json.loads(member)
        return cls(str(base), str(sub), int(default))


def limit_base(name: str, app: Celery | None = None) -> str:
    """Normalize a limit name given by a user: ``task:<name>``, ``queue:<name>`` or the
    name of a registered durable task."""
    if name.startswith(("task:", "queue:")):
        return name
    if app is not None and name in app.tasks:
        return f"task:{name}"
    raise ConfigurationError(
        f"unknown concurrency limit {name!r}: name it 'task:<task name>' or "
        "'queue:<queue name>' (or pass the name of a registered task)"
    )


def slots_for(
    task: DurableTask, args: Sequence[Any], kwargs: dict[str, Any], queue: str,
    settings: DurableSettings,
) -> list[SlotRef]:
    """The limits a call of ``task`` routed to ``queue`` must hold a slot of."""
    refs = []
    limit = task.durable_concurrency_limit
    if limit is not None:
        key_fn = task.durable_concurrency_key
        sub = NO_KEY if key_fn is None else str(key_fn(*args, **kwargs))
        refs.append(SlotRef(f"task:{task.name}", sub or NO_KEY, limit))
    queue_limit = settings.queue_limits.get(queue)
    if queue_limit is not None:
        refs.append(SlotRef(f"queue:{queue}", NO_KEY, queue_limit))
    return refs


Woken = list[tuple[str, str]]


@dataclass
class Admission:
    """Whether an attempt got all its slots; if not, where it waits."""

    admitted: bool
    denied: SlotRef | None = None
    position: int = -1
    held: int = 0
    limit: int = 0
    woken: Woken = field(default_factory=list)


def _woken(reply: Sequence[Any]) -> Woken:
    flat = list(reply[4:])
    return [(str(r), str(i)) for r, i in zip(flat[::2], flat[1::2], strict=True)]


def priority_rank(app: Celery, priority: Any) -> int:
    """The rank (higher goes first) of a Celery message priority among waiting runs.

    It follows the broker's own convention, so ``apply_async(priority=...)`` means the same
    to the queue and to a limit: with AMQP brokers (RabbitMQ) a higher number goes first;
    with kombu's virtual transports (Redis, SQS, ...) 0 goes first, 9 last."""
    if priority is None or isinstance(priority, bool):
        return 0
    try:
        value = int(priority)
    except (TypeError, ValueError):
        return 0
    url = str(app.conf.broker_url or "")
    if url.startswith(("amqp", "pyamqp", "librabbitmq")):
        return max(0, min(value, 255))
    return 9 - max(0, min(value, 9))


def fairness_key_of(task: DurableTask, args: Sequence[Any], kwargs: dict[str, Any]) -> str:
    """The key waiting runs of ``task`` take turns by ('' = one line, first come first
    served)."""
    fn = task.durable_fairness_key
    return "" if fn is None else str(fn(*args, **kwargs))


def acquire(store: RunStore, run_id: str, refs: Sequence[SlotRef], info: str,
            hold_ms: int | None = None, rank: int = 0, fairness_key: str = "",
            message: tuple[str, str] | None = None) -> Admission:
    """Take a slot of every limit in ``refs``, or park the run on the first full one.

    ``hold_ms`` is how long the slot is held before it must be renewed: the lease TTL for
    an attempt that starts now (the default), the hand-over time for a run admitted when it
    is published (its message may wait in the queue; its first attempt renews the slot).
    A parked run waits behind runs parked before it, unless ``rank`` (its priority) lets it
    overtake up to ``rank × durable_priority_step`` of them; with a ``fairness_key``, keys
    take turns, so one key's backlog does not hold back another key's first run.
    ``message`` (one limit only; see ``admission._build_message``): the run's broker
    message, which slots.lua puts on its queue once the run holds the slot."""
    if message is not None and len(refs) != 1:
        raise ValueError("a message can be sent with the acquire of one limit only")
    if message is not None and not store.single_server:
        raise ValueError("a message cannot be kept on Redis Cluster: the queue's list is in "
                         "another hash slot than the limit's keys; publish it from Python")
    taken: list[SlotRef] = []
    woken: Woken = []
    for ref in refs:
        reply = store.slot_op(store.keys.limit(ref.base, ref.sub), "acquire", run_id,
                              ref.default, info, hold_ms, rank, fairness_key, message)
        woken += _woken(reply)
        if int(reply[0]) != 1:
            return _parked(store, run_id, ref, reply, taken, woken)
        taken.append(ref)
    return Admission(True, woken=woken)


def _parked(store: RunStore, run_id: str, ref: SlotRef, reply: Sequence[Any],
            others: Iterable[SlotRef], woken: Woken) -> Admission:
    """The run is parked on ``ref`` (its acquire's ``reply``): it gives back, or leaves the
    queue of, the ``others`` and registers ``ref`` as a limit with waiting runs."""
    woken = woken + release(store, run_id, others)
    store.client.sadd(store.keys.limits, ref.member())
    return Admission(False, ref, int(reply[3]), int(reply[1]), int(reply[2]), woken)


def acquire_with_claim(store: RunStore, run_id: str, refs: Sequence[SlotRef], info: str,
                       rank: int = 0, fairness_key: str = "") -> list[tuple[LimitKeys, list[Any]]]:
    """The acquires of ``refs`` (as :func:`acquire` sends them) for ``RunStore.claim``
    to send in its own round trip; :func:`settle` reads their replies."""
    return [(store.keys.limit(ref.base, ref.sub),
             store.slot_argv("acquire", run_id, ref.default, info, None, rank, fairness_key))
            for ref in refs]


def settle(store: RunStore, run_id: str, refs: Sequence[SlotRef],
           replies: Sequence[Sequence[Any]]) -> Admission:
    """The admission that acquires sent all at once (with the claim) amount to: the run
    waits on the first full limit only, so it gives back, or leaves the queue of, every
    other one (as :func:`acquire`, which stops at the first full limit, would have)."""
    woken = woken_of(replies)
    denied = next((i for i, reply in enumerate(replies) if int(reply[0]) != 1), None)
    if denied is None:
        return Admission(True, woken=woken)
    return _parked(store, run_id, refs[denied], replies[denied],
                   [r for i, r in enumerate(refs) if i != denied], woken)


def release_keys(store: RunStore, refs: Iterable[SlotRef]) -> list[tuple[LimitKeys, int]]:
    """``refs`` as ``RunStore.end_attempt_releasing`` takes them."""
    return [(store.keys.limit(ref.base, ref.sub), ref.default) for ref in refs]


def woken_of(replies: Iterable[Sequence[Any]]) -> Woken:
    """The runs that slots.lua replies (releases) handed a slot."""
    woken: Woken = []
    for reply in replies:
        woken += _woken(reply)
    return woken


def release(store: RunStore, run_id: str, refs: Iterable[SlotRef]) -> Woken:
    """Give back the run's slots; returns the parked runs that were handed them."""
    return woken_of(store.slot_op(keys, "release", run_id, default)
                    for keys, default in release_keys(store, refs))


def sweep(store: RunStore, base: str | None = None) -> Woken:
    """Hand free slots of every limit with waiting runs (of ``base`` only, if given) to
    them: the safety net for lost wake-ups (expired holders, hand-overs never taken) and
    the way a raised limit takes effect. Forgets limits nobody waits for."""
    woken: Woken = []
    for member in store.client.smembers(store.keys.limits):
        ref = SlotRef.from_member(str(member))
        if base is not None and ref.base != base:
            continue
        reply = store.slot_op(store.keys.limit(ref.base, ref.sub), "sweep", "", ref.default)
        woken += _woken(reply)
        if int(reply[3]) == 0:
            store.client.srem(store.keys.limits, str(member))
    return woken


def note_parked(store: RunStore, task_name: str, run_id: str, admission: Admission) -> None:
    """Tell observers and the run's trace that the run waits for a slot (and where)."""
    denied = admission.denied
    assert denied is not None
    signals.slot_denied.send(sender=task_name, run_id=run_id, limit=denied.name,
                             position=admission.position)
    meters = metrics.meters_for(store.settings, task_name)
    if meters is not None:
        meters.slot_waited()
    store.append_event(run_id, "slot_denied", {
        "limit": denied.name, "position": admission.position, "held": admission.held,
        "max": admission.limit})
    logger.info("run %s: concurrency limit %s is full (%d/%d); parked at position %d",
                run_id, denied.name, admission.held, admission.limit, admission.position)


def publish_woken(app: Celery, woken: Woken) -> None:
    """Re-publish the runs that were just handed a slot (same run id), ahead of the
    messages waiting in their queues: the slot is idle until the run starts. Each goes in
    front of the ones before it, so they are published last to first: the first one woken
    (best placed in the limit's queue) is delivered first."""
    for run_id, info in reversed(woken):
        if info != QUEUED:
            publish_resume(app, run_id, info, headers={HANDED_HEADER: 1}, first=True)
