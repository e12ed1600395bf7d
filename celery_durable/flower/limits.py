"""The concurrency limits the limits page and the metrics show.

Known limits are those set in code (durable tasks with ``concurrency_limit``, registered on
the Flower process's app), ``durable_queue_limits``, and every (limit, concurrency key) pair
with runs waiting (the registry the slot sweep keeps). Per-key limits appear per key while
runs wait for that key; their slots in use are otherwise counted under the limit's name only
when keys are not used.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..client import DurableClient
from ..concurrency import NO_KEY, SlotRef
from ..models import RateLimitInfo, by_priority
from ..queries import durable_task_names
from ..rates import known_rates


@dataclass(frozen=True, slots=True)
class LimitRow:
    """One limit (and concurrency key): its value in code and at runtime, and its slots."""

    name: str
    key: str | None
    coded: int | None
    runtime: int | None
    holders: list[str]
    parked: list[str]
    parked_by_priority: dict[int, int]

    @property
    def effective(self) -> int | None:
        return self.runtime if self.runtime is not None else self.coded


def coded_limits(client: DurableClient) -> dict[str, int]:
    """Limits set in code or settings, by base name (``task:<name>``, ``queue:<name>``)."""
    app = client.app
    coded: dict[str, int] = {}
    for name in durable_task_names(app):
        limit = getattr(app.tasks[name], "durable_concurrency_limit", None)
        if limit is not None:
            coded[f"task:{name}"] = int(limit)
    coded.update({f"queue:{q}": n for q, n in client.store.settings.queue_limits.items()})
    return coded


def limit_rows(client: DurableClient) -> list[LimitRow]:
    """Every known limit with its state (a few round trips per limit)."""
    coded = coded_limits(client)
    pairs = {(base, NO_KEY) for base in coded}
    for member in client.store.waiting_limits():
        ref = SlotRef.from_member(member)
        pairs.add((ref.base, ref.sub))
        coded.setdefault(ref.base, ref.default)
    rows = []
    for base, sub in sorted(pairs):
        info = client.concurrency_limit(base, None if sub == NO_KEY else sub)
        rows.append(LimitRow(name=base, key=None if sub == NO_KEY else sub,
                             coded=coded.get(base), runtime=info.limit,
                             holders=info.holders, parked=info.parked,
                             parked_by_priority=info.parked_by_priority))
    return rows


def rate_rows(client: DurableClient) -> list[RateLimitInfo]:
    """Every rate limit set in code that the Flower process knows (its durable tasks', and
    the steps of the task modules it imported), with its runtime rate, free turns and
    waiting runs; and every per-key rate limit while runs wait for a turn of it."""
    known = known_rates(client.app)
    rows = [client.rate_limit(base) for base in known]
    rows += [client.rate_limit(base, key) for base, key in client.rate_queues()
             if key is not None]
    return rows


__all__ = ["LimitRow", "by_priority", "coded_limits", "limit_rows", "rate_rows"]
