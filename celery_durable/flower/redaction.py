"""Redaction and truncation of run payloads before Flower shows them.

Arguments, step results and trace fields are user data: a value whose key (a dict key, a
keyword argument, a trace field) matches one of ``durable_flower_redact``'s patterns is
replaced by ``REDACTED`` in every page and in the JSON API. Free text (an error message,
a log line) is not parsed: keep secrets out of messages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: What a redacted value is shown as.
REDACTED = "[redacted]"
#: Characters of a value shown before "show more".
PREVIEW_CHARS = 600
#: Nesting depth below which values are shown as "..." (a guard against deep payloads).
MAX_DEPTH = 40


class Redactor:
    """Replaces the values of keys matching any pattern (searched, case-insensitive)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self._regex = (re.compile("|".join(f"(?:{p})" for p in self.patterns), re.IGNORECASE)
                       if self.patterns else None)

    def secret(self, key: str) -> bool:
        """Whether values under ``key`` are hidden."""
        return self._regex is not None and self._regex.search(key) is not None

    def value(self, value: Any, depth: int = 0) -> Any:
        """A copy of a JSON-like ``value`` with secret keys' values replaced."""
        if depth > MAX_DEPTH:
            return "..."
        if isinstance(value, Mapping):
            return {str(k): REDACTED if self.secret(str(k)) else self.value(v, depth + 1)
                    for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v, depth + 1) for v in value]
        return value

    def fields(self, fields: Mapping[str, str]) -> dict[str, str]:
        """Trace event fields with secret ones replaced (``payload`` fields are parsed as
        JSON and redacted inside)."""
        out = {}
        for name, text in fields.items():
            if self.secret(name):
                out[name] = REDACTED
            elif name in ("payload", "data", "value") and text[:1] in "[{":
                out[name] = _redact_json_text(self, text)
            else:
                out[name] = text
        return out


def _redact_json_text(redactor: Redactor, text: str) -> str:
    try:
        return json.dumps(redactor.value(json.loads(text)), ensure_ascii=False)
    except ValueError:
        return text


@dataclass(frozen=True, slots=True)
class Shown:
    """A value as a page shows it: a preview and, when longer, the full text."""

    preview: str
    full: str

    @property
    def truncated(self) -> bool:
        return len(self.full) > len(self.preview)


def show(value: Any, redactor: Redactor, limit: int = PREVIEW_CHARS) -> Shown:
    """Pretty JSON of a redacted ``value``, cut to ``limit`` characters for the preview."""
    text = json.dumps(redactor.value(value), indent=2, ensure_ascii=False, default=str,
                      sort_keys=False)
    if len(text) <= limit:
        return Shown(text, text)
    return Shown(text[:limit] + " ...", text)
