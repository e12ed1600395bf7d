"""Query parameters of the runs list (page and JSON API), parsed with errors that name them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from ..errors import ConfigurationError
from ..queries import MAX_PAGE, RunQuery, parse_status

#: Runs per page when the request does not say.
DEFAULT_PAGE = 50

Getter = Callable[[str], str | None]


def parse_time(name: str, text: str | None) -> int | None:
    """Epoch milliseconds from ``text``: digits (epoch ms) or ISO 8601 (``2026-12-01T18:30``,
    naive times are UTC). Empty means no bound."""
    if not text:
        return None
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigurationError(
            f"{name}={text!r} is not a time: give epoch milliseconds or ISO 8601 "
            "(e.g. 2026-12-01T18:30, UTC unless it has an offset)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def parse_int(name: str, text: str | None, default: int, low: int, high: int) -> int:
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigurationError(f"{name}={text!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigurationError(f"{name} must be {low}..{high}, got {value}")
    return value


def run_query(get: Getter) -> RunQuery:
    """A :class:`RunQuery` from request arguments ``status``, ``task``, ``queue``,
    ``since``, ``until``, ``q``, ``limit`` and ``cursor``."""
    return RunQuery(
        status=parse_status(get("status")),
        task=get("task") or None,
        queue=get("queue") or None,
        since_ms=parse_time("since", get("since")),
        until_ms=parse_time("until", get("until")),
        search=(get("q") or "").strip() or None,
        limit=parse_int("limit", get("limit"), DEFAULT_PAGE, 1, MAX_PAGE),
        cursor=parse_int("cursor", get("cursor"), 0, 0, 2**53),
    )
