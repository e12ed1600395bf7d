"""A run's trace as events: the stored entries plus one ``step_committed`` per checkpoint.

The trace list (see ``lua/_trace.lua``) holds JSON arrays ``[at_ms, steps, type, field,
value, ...]``: ``at_ms`` is the Redis server's clock (epoch ms) and ``steps`` the run's
committed step count when the entry was written. Steps are not stored in the trace: a
checkpoint already says which step it is and when it finished, so writing an entry per step
would only cost a write and about 60 bytes per step. The events of a step are rebuilt here and
put exactly where they happened, after the last entry written with fewer steps committed
(ordering by step count, not by clocks, so a worker clock that differs from Redis's cannot
reorder them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from .models import TraceEvent, ms_to_datetime


def trace_events(
    entries: Iterable[str], checkpoints: Mapping[int, Mapping[str, Any]]
) -> list[TraceEvent]:
    """The events of a run, oldest first.

    ``entries`` are the raw trace entries; ``checkpoints`` the decoded checkpoint records by
    position (``{"id", "t1", ...}``). Event ids are ``<at_ms>-<index>``, unique within the run
    as read (the trace is capped, so an index may name another event in a later read).
    """
    events: list[TraceEvent] = []
    positions = sorted(checkpoints)
    placed = 0
    last_ms = 0

    def add(at_ms: int, fields: dict[str, str]) -> None:
        events.append(TraceEvent(id=f"{at_ms}-{len(events)}", at=ms_to_datetime(at_ms),  # type: ignore[arg-type]
                                 type=fields.get("type", ""), fields=fields))

    def steps_before(count: int) -> None:
        nonlocal placed
        while placed < len(positions) and positions[placed] < count:
            pos = positions[placed]
            record = checkpoints[pos]
            add(int(record.get("t1") or last_ms), {"type": "step_committed",
                                                   "step": str(record.get("id", "")),
                                                   "pos": str(pos)})
            placed += 1

    for raw in entries:
        at_ms, steps, *flat = json.loads(raw)
        steps_before(int(steps))
        last_ms = int(at_ms)
        add(last_ms, {str(k): str(v) for k, v in zip(flat[::2], flat[1::2], strict=False)})
    steps_before(positions[-1] + 1 if positions else 0)  # steps after the last entry
    return events
