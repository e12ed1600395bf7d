"""Run searches for the admin views: filters, time windows and server-side pages.

A search reads one index (the status index when a status is given, else the task index,
else the index of all runs), a window of it at a time, newest first, and checks every
candidate against its run record (indexes may lag, and the other filters live in the
record). It never loads an index whole: each page scans at most ``MAX_SCAN`` entries and
hands back a cursor (a position in the index window) to go on from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery

from .errors import ConfigurationError
from .models import RunPage, RunStatus, RunSummary
from .store import RunStore

#: The largest page a search returns.
MAX_PAGE = 500
#: Index entries one page may examine before it returns (possibly short) with a cursor.
MAX_SCAN = 5000


@dataclass(frozen=True, slots=True)
class RunQuery:
    """What to look for. Times are epoch milliseconds of the run's creation (inclusive);
    ``search`` is a run id or an idempotency key (exact); ``cursor`` comes from the previous
    page's ``next_cursor``."""

    status: RunStatus | None = None
    task: str | None = None
    queue: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    search: str | None = None
    limit: int = 50
    cursor: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_PAGE:
            raise ConfigurationError(f"a page holds 1..{MAX_PAGE} runs, got limit={self.limit}")
        if self.cursor < 0:
            raise ConfigurationError(f"cursor must be >= 0, got {self.cursor}")
        if (self.since_ms is not None and self.until_ms is not None
                and self.since_ms > self.until_ms):
            raise ConfigurationError("the time range is empty: since is after until")

    def matches(self, raw: Mapping[str, str]) -> bool:
        """Whether a run record passes every filter but the search."""
        if not raw:
            return False
        if self.status is not None and raw.get("status") != self.status.value:
            return False
        if self.task is not None and raw.get("task") != self.task:
            return False
        if self.queue is not None and raw.get("queue") != self.queue:
            return False
        created = int(raw.get("created_ms") or 0)
        if self.since_ms is not None and created < self.since_ms:
            return False
        return self.until_ms is None or created <= self.until_ms


Summarize = Callable[[str, Mapping[str, str]], RunSummary]


def durable_task_names(app: Celery) -> list[str]:
    """Names of the durable tasks registered on ``app`` (to look idempotency keys up)."""
    from .task import DurableTask

    return sorted(name for name, task in app.tasks.items() if isinstance(task, DurableTask))


def search_runs(app: Celery, store: RunStore, query: RunQuery, summarize: Summarize) -> RunPage:
    """One page of runs matching ``query`` (see the module docstring)."""
    counts = store.status_counts()
    if query.search:
        return RunPage(runs=_exact(app, store, query, summarize), next_cursor=None,
                       counts=counts)
    keys = store.keys
    if query.status is not None:
        # Scored by last update, which is never before creation: a valid lower bound.
        index, low, high = keys.status_index(query.status), query.since_ms, None
    elif query.task is not None:
        index, low, high = keys.task_index(query.task), query.since_ms, query.until_ms
    else:
        index, low, high = keys.all_runs, query.since_ms, query.until_ms
    found: list[RunSummary] = []
    position = query.cursor
    scanned = 0
    batch = min(max(query.limit * 2, 50), MAX_SCAN)
    while len(found) < query.limit and scanned < MAX_SCAN:
        ids = store.index_window(index, low, high, position, batch)
        if not ids:
            return RunPage(runs=found, next_cursor=None, counts=counts)
        for run_id, raw in zip(ids, store.read_summaries(ids), strict=True):
            position += 1
            scanned += 1
            if query.matches(raw):
                found.append(summarize(run_id, raw))
                if len(found) == query.limit:
                    break
    more = bool(store.index_window(index, low, high, position, 1))
    return RunPage(runs=found, next_cursor=position if more else None, counts=counts)


def _exact(app: Celery, store: RunStore, query: RunQuery,
           summarize: Summarize) -> list[RunSummary]:
    """Runs whose id is ``query.search``, then the runs its idempotency key names (for
    ``query.task``, or for every durable task of the app)."""
    term = str(query.search)
    tasks = [query.task] if query.task else durable_task_names(app)
    named = store.idempotency_runs([store.keys.idempotency(t, term) for t in tasks])
    ids = list(dict.fromkeys([term, *(r for r in named if r)]))
    found = []
    for run_id, raw in zip(ids, store.read_summaries(ids), strict=True):
        if query.matches(raw):
            found.append(summarize(run_id, raw))
    return found[:query.limit]


def parse_status(value: Any) -> RunStatus | None:
    """A status filter given as text (``""``/None = any), with an error naming the values."""
    if value in (None, ""):
        return None
    try:
        return RunStatus(value)
    except ValueError:
        allowed = ", ".join(s.value for s in RunStatus)
        raise ConfigurationError(f"unknown run status {value!r}: use one of {allowed}") from None
