"""A fake LLM client that rate-limits, like a real provider under load.

Every call is recorded in Redis (outside the worker), so a run's calls can be counted
across attempts and worker processes. ``rate_limit_at`` makes the first call of that
iteration of a session fail with :class:`RateLimitError`; the next call succeeds.
"""

from __future__ import annotations

import os
import time

import redis

db = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                          decode_responses=True)


class RateLimitError(Exception):
    """HTTP 429 from the provider; ``retry_after`` in seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FakeLLM:
    """``complete()`` returns a deterministic answer after ``latency_s`` seconds."""

    def __init__(self, tenant: str, session: str, rate_limit_at: int | None = None,
                 latency_s: float = 0.02) -> None:
        self.tenant = tenant
        self.session = session
        self.rate_limit_at = rate_limit_at
        self.latency_s = latency_s

    def complete(self, iteration: int, prompt: str) -> str:
        db.rpush(f"agent:calls:{self.session}", iteration)
        if iteration == self.rate_limit_at and db.set(
                f"agent:limited:{self.session}:{iteration}", 1, nx=True):
            raise RateLimitError(f"429 Too Many Requests (tenant {self.tenant})",
                                 retry_after=0.5)
        # Count the calls of this tenant in flight; keep the highest count seen.
        active = db.incr(f"agent:active:{self.tenant}")
        db.zadd("agent:max-active", {self.tenant: active}, gt=True)
        try:
            time.sleep(self.latency_s)
        finally:
            db.decr(f"agent:active:{self.tenant}")
        return f"finding {iteration + 1} on {prompt.splitlines()[0]}"


def calls(session: str) -> list[int]:
    """The iterations the LLM was called for, in call order."""
    return [int(i) for i in db.lrange(f"agent:calls:{session}", 0, -1)]


def max_active(tenant: str) -> int:
    """The most calls of ``tenant`` that were ever in flight at once."""
    return int(db.zscore("agent:max-active", tenant) or 0)
