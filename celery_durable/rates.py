"""Cluster-wide rate limits: at most N starts per period (plus a burst) for a task or a step,
whichever worker or producer starts them; per key (a tenant, an API account) if wanted.

Celery's own ``rate_limit`` is per worker: ten workers at ``"10/m"`` make 100 calls a minute.
Here every start takes its turn from one GCRA state in Redis (``rate.lua``). Lossless
(``rate_mode="wait"``, the default): a run that is over the rate gets its reserved start
time and waits for it without a worker (an ETA message when it is near, a Redis timer when it
is far); a step sleeps in place or suspends the run. Lossy (``"drop"``): a run over the rate
is cancelled at once, a step is skipped; both are recorded in the trace.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery

from .errors import ConfigurationError
from .requeue import publish_resume
from .store import RunStore, now_ms

logger = logging.getLogger("celery_durable")

#: Message header marking a run that already took its turn of its task's rate limit.
RATE_HEADER = "durable_rate_admitted"
_UNITS_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(\d*)\s*([smhd]))?\s*$")
RateKey = Callable[..., str]
#: Rate limits of the steps declared in this process (``step:<name>`` -> coded rate), so
#: that operators' views (CLI, Flower) can list them.
STEP_RATES: dict[str, RateSpec] = {}


@dataclass(frozen=True, slots=True)
class RateSpec:
    """``count`` starts per ``period_ms``, ``burst`` of them at once (>= 1)."""

    count: float
    period_ms: int
    burst: int = 1

    @classmethod
    def parse(cls, value: Any, burst: Any = None, where: str = "rate_limit") -> RateSpec:
        """``"100/m"``, ``"10/s"``, ``"5/10s"``, ``"1000/h"``, ``"20000/d"`` or a number
        (per second), as Celery writes rates.

        Raises:
            ConfigurationError: naming ``where`` and the accepted forms.
        """
        match = _RATE.match(value) if isinstance(value, str) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            count, period_ms = float(value), 1000
        elif match:
            count = float(match.group(1))
            period_ms = int(match.group(2) or 1) * _UNITS_MS[match.group(3) or "s"]
        else:
            raise ConfigurationError(
                f"{where} must be a rate such as '100/m', '10/s', '5/10s', '1000/h' or "
                f"'20000/d' (starts per period, cluster-wide), got {value!r}")
        if count <= 0 or period_ms <= 0:
            raise ConfigurationError(f"{where} must allow at least one start, got {value!r}")
        if burst is None:
            burst = 1
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ConfigurationError(
                f"{where} burst must be an int >= 1 (starts allowed at once), got {burst!r}")
        return cls(count, period_ms, burst)

    def __str__(self) -> str:
        count = f"{self.count:g}"
        for unit, ms in sorted(_UNITS_MS.items(), key=lambda item: -item[1]):
            if self.period_ms % ms == 0:
                n = self.period_ms // ms
                return f"{count}/{'' if n == 1 else n}{unit}"
        return f"{count}/{self.period_ms}ms"  # pragma: no cover - periods are whole seconds


@dataclass(frozen=True, slots=True)
class RateRef:
    """One rate limit a start must take its turn of: ``base`` (``task:<name>`` or
    ``step:<name>``), ``sub`` (the rate key, ``_`` for none) and the coded rate."""

    base: str
    sub: str
    spec: RateSpec

    @property
    def name(self) -> str:
        return self.base if self.sub == "_" else f"{self.base}[{self.sub}]"


def rate_ref(base: str, spec: RateSpec | None, key_fn: RateKey | None,
             args: Sequence[Any], kwargs: dict[str, Any]) -> RateRef | None:
    """The rate limit a call with these arguments takes its turn of, if any."""
    if spec is None:
        return None
    sub = "_" if key_fn is None else (str(key_fn(*args, **kwargs)) or "_")
    return RateRef(base, sub, spec)


def known_rates(app: Celery) -> list[str]:
    """Every rate limit set in code that this process knows: its durable tasks' and the
    steps declared in its imported modules."""
    names = [f"task:{name}" for name, task in app.tasks.items()
             if isinstance(getattr(task, "durable_rate_limit", None), RateSpec)]
    return sorted(names) + sorted(STEP_RATES)


def rate_base(name: str, app: Celery) -> str:
    """Normalize a rate limit name given by a user: ``task:<name>``, ``step:<name>`` or the
    name of a registered durable task."""
    if name.startswith(("task:", "step:")):
        return name
    if name in app.tasks:
        return f"task:{name}"
    raise ConfigurationError(
        f"unknown rate limit {name!r}: name it 'task:<task name>' or 'step:<step name>' (or "
        "pass the name of a registered task)")


def coded_rate(base: str, app: Celery) -> RateSpec | None:
    """The rate set in code for ``base`` (a step's if its module is imported here)."""
    if base.startswith("step:"):
        return STEP_RATES.get(base)
    if not base.startswith("task:"):
        return None
    task = app.tasks.get(base[len("task:"):])
    spec = getattr(task, "durable_rate_limit", None)
    if not isinstance(spec, RateSpec):
        return None
    return RateSpec(spec.count, spec.period_ms, int(getattr(task, "durable_rate_burst", 1)))


def reserve(store: RunStore, ref: RateRef, mode: str) -> int | None:
    """Take the next turn of ``ref``: the epoch ms at which the caller may start (now or
    later), or None when a lossy (``mode="drop"``) caller is over the rate."""
    start = store.rate_reserve(store.keys.rate(ref.base, ref.sub), ref.spec.count,
                               ref.spec.period_ms, ref.spec.burst, mode)
    return None if start < 0 else start


def delay_ms(start_ms: int) -> int:
    """Milliseconds from now until ``start_ms`` (0 if it has come)."""
    return max(0, start_ms - now_ms())


@dataclass(frozen=True, slots=True)
class Turn:
    """A run's turn of a rate limit: it starts at ``start_ms`` (now or soon), or, with
    ``start_ms`` None, it waits at ``position`` (0-based) in the limit's queue."""

    start_ms: int | None
    position: int = -1


def queue_member(ref: RateRef) -> str:
    """How the rate timers and the registry name the queue of ``ref``."""
    return json.dumps([ref.base, ref.sub])


def parse_member(member: str) -> tuple[str, str]:
    """``(base, sub)`` of a rate queue named by :func:`queue_member`.

    Raises:
        ValueError: ``member`` was not written by :func:`queue_member`.
    """
    try:
        base, sub = json.loads(member)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a rate queue name: {member!r}") from exc
    return str(base), str(sub)


def take(store: RunStore, ref: RateRef, run_id: str, info_json: str, *, rank: int = 0,
         fairness_key: str = "", first: bool = False) -> Turn:
    """A lossless run's turn of ``ref``: now or within the lookahead when nobody waits,
    else a place in the limit's queue (best ``rank`` first, fairness keys taking turns;
    ``first`` for a run that already had a turn and started late). ``info_json`` is what
    the dispatcher needs to publish the run when its turn comes."""
    start, position = store.rate_take(
        store.keys.rate_queue(ref.base, ref.sub), queue_member(ref), ref.spec.count,
        ref.spec.period_ms, ref.spec.burst, run_id, info_json, rank=rank,
        fairness_key=fairness_key, first=first)
    return Turn(None, position) if start == -2 else Turn(start)


def dispatch_queue(app: Celery, store: RunStore, member: str) -> int:
    """Run the dispatcher of the rate queue ``member`` (a due timer; exactly one worker
    wins it): publish the waiting runs whose turns have come, each with an ETA at its turn,
    and set the next dispatch. Returns how many runs were published."""
    try:
        base, sub = parse_member(member)
    except ValueError:
        logger.error("celery-durable: ignoring an unreadable rate timer %r", member)
        store.drop_rate_timer(member)
        return 0
    keys = store.keys.rate_queue(base, sub)
    reply = store.rate_dispatch(keys, member)
    if reply is None:
        return 0  # another worker dispatches it
    due, expiry, handed = int(reply[0]), int(reply[4]), reply[5:]
    published: list[str] = []
    for i in range(0, len(handed), 3):
        run_id, info, start = str(handed[i]), str(handed[i + 1]), int(handed[i + 2])
        try:
            if publish_resume(app, run_id, info, countdown=delay_ms(start) / 1000,
                              headers={RATE_HEADER: start}):
                published.append(run_id)
        except Exception:
            # Unconfirmed: after the hand-over TTL it waits first in the queue again.
            logger.exception("celery-durable: could not publish run %s for its rate turn",
                             run_id)
    if len(published) * 3 < len(handed):
        # Some were not published: look again when their hand-overs expire.
        expiry = now_ms() + int(store.settings.slot_handoff_s * 1000)
    store.rate_confirm(keys, member, published, _earliest(due, expiry))
    return len(published)


def _earliest(*times_ms: int) -> int:
    """The earliest of these epoch-ms times, ignoring -1 (none); -1 if all are -1."""
    known = [t for t in times_ms if t >= 0]
    return min(known) if known else -1


def sweep_queues(store: RunStore) -> int:
    """The safety net of rate queues: a queue with waiting runs but no dispatcher timer
    (its dispatcher died mid-way) gets one. Returns how many were missing."""
    return store.ensure_rate_timers(store.rate_queue_members())
