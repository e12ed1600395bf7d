"""RetryPolicy: how many attempts a task or a step gets, and how long to wait between them."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .errors import ConfigurationError, DurableError, NonRetryableError

Seconds = float | int | timedelta


def to_seconds(value: Seconds, what: str) -> float:
    """Return ``value`` in seconds; raise ConfigurationError naming ``what`` if it is invalid."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(
            f"{what} must be a number of seconds or a timedelta, got {type(value).__name__}"
        )
    if value != value or value < 0 or value == float("inf"):
        raise ConfigurationError(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)


def _exception_types(value: Any, what: str) -> tuple[type[BaseException], ...]:
    items = value if isinstance(value, Iterable) and not isinstance(value, type) else (value,)
    types = tuple(items)
    for item in types:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ConfigurationError(
                f"RetryPolicy.{what} must hold exception classes, got {item!r}"
            )
    return types


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts and exponential backoff for a durable task (or a single step).

    ``max_attempts`` counts every attempt, the first included (1 means "never retry").
    The delay before attempt ``n + 1`` is ``min_delay * factor ** (n - 1)`` seconds, capped at
    ``max_delay``; with ``jitter`` it is drawn uniformly from ``[delay / 2, delay]`` so that
    many runs failing together do not come back together. An exception is retried when it is
    an instance of ``retry_on`` and not of ``give_up_on``; ``NonRetryableError`` and errors of
    the code itself (nondeterminism, an unencodable result) are never retried.
    """

    max_attempts: int = 3
    factor: float = 2.0
    min_delay: Seconds = 1.0
    max_delay: Seconds = 60.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = field(default=(Exception,))
    give_up_on: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ConfigurationError("RetryPolicy.max_attempts must be an int >= 1")
        if self.max_attempts < 1:
            raise ConfigurationError(
                f"RetryPolicy.max_attempts must be >= 1 (1 = no retry), got {self.max_attempts}"
            )
        if isinstance(self.factor, bool) or not isinstance(self.factor, int | float):
            raise ConfigurationError("RetryPolicy.factor must be a number >= 1")
        if self.factor < 1:
            raise ConfigurationError(f"RetryPolicy.factor must be >= 1, got {self.factor}")
        lo = to_seconds(self.min_delay, "RetryPolicy.min_delay")
        hi = to_seconds(self.max_delay, "RetryPolicy.max_delay")
        if hi < lo:
            raise ConfigurationError(
                f"RetryPolicy.max_delay ({hi} s) must be >= min_delay ({lo} s)"
            )
        object.__setattr__(self, "min_delay", lo)
        object.__setattr__(self, "max_delay", hi)
        object.__setattr__(self, "factor", float(self.factor))
        object.__setattr__(self, "retry_on", _exception_types(self.retry_on, "retry_on"))
        object.__setattr__(self, "give_up_on", _exception_types(self.give_up_on, "give_up_on"))

    def delay_for(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one."""
        lo, hi = to_seconds(self.min_delay, "min_delay"), to_seconds(self.max_delay, "max_delay")
        delay = min(hi, lo * self.factor ** max(0, attempt - 1))
        if self.jitter and delay > 0:
            delay = random.uniform(delay / 2, delay)
        return delay

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether failed attempt ``attempt`` (1-based) with ``exc`` gets another attempt."""
        if attempt >= self.max_attempts or not isinstance(exc, Exception):
            return False
        if isinstance(exc, NonRetryableError):
            return False
        if isinstance(exc, DurableError) and not exc.retryable:
            return False
        if self.give_up_on and isinstance(exc, self.give_up_on):
            return False
        return isinstance(exc, self.retry_on)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly description, for traces and the admin API."""
        return {
            "max_attempts": self.max_attempts,
            "factor": self.factor,
            "min_delay": self.min_delay,
            "max_delay": self.max_delay,
            "jitter": self.jitter,
            "retry_on": [t.__qualname__ for t in self.retry_on],
            "give_up_on": [t.__qualname__ for t in self.give_up_on],
        }


#: A policy that never retries: one attempt.
NO_RETRY = RetryPolicy(max_attempts=1, min_delay=0, max_delay=0, jitter=False)
