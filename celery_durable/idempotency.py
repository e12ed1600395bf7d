"""Idempotency keys: one run per (task, key) within a TTL, whoever calls and how often.

The caller's ``apply_async`` claims the key atomically (``claim_idempotency.lua``); the
winner publishes the run, everybody else gets an ``AsyncResult`` with the winner's id. The
arguments' fingerprint is stored with the key, so reusing a key with different arguments is
an error instead of a silent deduplication.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .codec import Unencodable, to_jsonable
from .errors import ConfigurationError, IdempotencyConflictError
from .store import RunStore, now_ms

#: Longest accepted idempotency key (characters).
MAX_KEY_LENGTH = 1024
#: A key claimed this long ago (seconds) whose run was never recorded lost its publisher.
ORPHAN_AFTER_S = 10.0

OnConflict = Literal["error", "ignore"]
KeyFunction = Callable[..., str]


def fingerprint(args: Any, kwargs: Any) -> str:
    """A stable digest of a call's arguments (canonical JSON of the checkpoint codec)."""
    try:
        canonical = json.dumps(to_jsonable([list(args or ()), dict(kwargs or {})]),
                               sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except Unencodable:
        canonical = repr((args, kwargs))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def check_key(key: Any) -> str:
    """Validate an idempotency key given by the caller or returned by a key function."""
    if not isinstance(key, str) or not key:
        raise ConfigurationError(
            f"an idempotency key must be a non-empty str, got {type(key).__name__} {key!r}"
        )
    if len(key) > MAX_KEY_LENGTH:
        raise ConfigurationError(
            f"an idempotency key must be at most {MAX_KEY_LENGTH} characters (got "
            f"{len(key)}): hash long keys first"
        )
    return key


@dataclass(frozen=True, slots=True)
class KeyClaim:
    """The outcome of claiming a key: ``won`` means this call's run owns it."""

    won: bool
    run_id: str
    fingerprint: str
    redis_key: str
    claimed_ms: int

    def may_be_orphaned(self) -> bool:
        """Whether the winner had time to publish (else it may still be publishing)."""
        return now_ms() - self.claimed_ms > ORPHAN_AFTER_S * 1000


def claim_key(
    store: RunStore, task: str, key: str, run_id: str, fp: str, ttl_s: float
) -> KeyClaim:
    """Claim ``key`` of ``task`` for ``run_id`` (one round trip)."""
    redis_key = store.keys.idempotency(task, key)
    won, value = store.claim_idempotency(redis_key, run_id, fp, now_ms(), int(ttl_s * 1000))
    data = json.loads(value)
    return KeyClaim(bool(won), str(data["run"]), str(data["fp"]), redis_key,
                    int(data.get("ms") or 0))


def check_conflict(claim: KeyClaim, fp: str, task: str, key: str, on_conflict: str) -> None:
    if claim.fingerprint != fp and on_conflict == "error":
        raise IdempotencyConflictError(
            f"idempotency key {key!r} of task {task} already names run {claim.run_id}, "
            "which was called with different arguments: use a new key for a different "
            "call, or pass idempotency_conflict='ignore' to get the existing run anyway",
            key=key, run_id=claim.run_id,
        )
