"""Commit durability: what a step's commit waits for before the step returns.

By default (``"none"``) a checkpoint counts as committed when Redis has applied it in memory;
how soon it reaches disk is the server's ``appendfsync`` policy (``everysec``: up to a second
of commits can be lost if the Redis host dies). The stronger modes wait, in the same round
trip as the commit (a pipeline: WAIT and WAITAOF only cover writes of their own connection):

- ``"aof"``: until the commit is fsynced to the server's append-only file. Feature-detected:
  ``WAITAOF 1 0 <timeout>`` on Redis >= 7.2 with ``appendonly yes``; on an older server with
  ``appendonly yes`` and ``appendfsync always`` every write is fsynced before its reply, so
  there is nothing to wait for; otherwise, if replicas are connected, it falls back to
  ``"replica"`` (logged once as a warning); otherwise it cannot be honoured.
- ``"replica"``: until ``durable_commit_replicas`` replicas acknowledged it (``WAIT``).

A mode that cannot be honoured, or a wait that times out (``durable_commit_wait_timeout_s``),
raises DurabilityError (a StoreError): the attempt fails and is retried, and the retry
replays the step from its checkpoint if the commit did reach Redis. The server's
capabilities are detected once per store and mode (INFO, CONFIG GET), again after an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import redis

from .errors import DurabilityError

logger = logging.getLogger(__name__)

Mode = Literal["none", "replica", "aof"]
MODES: tuple[str, ...] = ("none", "replica", "aof")
#: First Redis version with WAITAOF.
WAITAOF_VERSION = (7, 2)

_FIX = ("set durable_commit_durability='none' (or commit_durability='none' on the task) to "
        "commit without waiting")


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the server can acknowledge, as detected."""

    version: tuple[int, ...]
    aof_enabled: bool
    appendfsync: str | None  # None: CONFIG GET refused (renamed or ACL)
    role: str
    replicas: int

    @property
    def has_waitaof(self) -> bool:
        return self.version[:2] >= WAITAOF_VERSION


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def detect(client: redis.Redis) -> Capabilities:
    """Read the server's version, AOF and replication state (two or three commands)."""
    info = client.info()
    try:
        fsync = client.config_get("appendfsync").get("appendfsync")
    except redis.ResponseError:
        fsync = None
    return Capabilities(version=_version(str(info.get("redis_version", "0"))),
                        aof_enabled=str(info.get("aof_enabled", "0")) == "1",
                        appendfsync=None if fsync is None else str(fsync),
                        role=str(info.get("role", "master")),
                        replicas=int(info.get("connected_slaves", 0)))


@dataclass(frozen=True, slots=True)
class CommitWait:
    """The command a commit is followed by, and how to read its reply."""

    mode: str  # what is waited for: "aof" (WAITAOF), "replica" (WAIT) or "fsync-always"
    replicas: int
    timeout_ms: int

    def queue(self, pipe: Any) -> None:
        """Queue the wait on ``pipe`` (after the commit)."""
        if self.mode == "aof":
            pipe.execute_command("WAITAOF", 1, 0, self.timeout_ms)
        elif self.mode == "replica":
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms)

    @property
    def sends_command(self) -> bool:
        return self.mode in ("aof", "replica")

    def check(self, reply: Any, what: str) -> None:
        """Raise DurabilityError if ``reply`` (of the queued command) falls short."""
        if isinstance(reply, Exception):
            raise DurabilityError(f"celery-durable could not wait for the durability of "
                                  f"{what}: {reply}") from reply
        if self.mode == "aof":
            local = int(reply[0])
            if local < 1:
                raise DurabilityError(
                    f"{what} was not fsynced to the AOF within {self.timeout_ms} ms "
                    "(durable_commit_wait_timeout_s): the disk is slow or the AOF is off; "
                    f"raise the timeout or {_FIX}")
        elif self.mode == "replica":
            acked = int(reply)
            if acked < self.replicas:
                raise DurabilityError(
                    f"{what} was acknowledged by {acked} of {self.replicas} replica(s) "
                    f"within {self.timeout_ms} ms (durable_commit_wait_timeout_s): check the "
                    f"replicas, lower durable_commit_replicas, or {_FIX}")


def plan(mode: str, caps: Capabilities, replicas: int, timeout_ms: int) -> CommitWait | None:
    """What commits wait for in ``mode`` on a server with ``caps`` (None: nothing).

    Raises:
        DurabilityError: the server cannot honour ``mode``, with the way to fix it.
    """
    if mode == "none":
        return None
    if mode == "aof":
        if caps.aof_enabled and caps.has_waitaof:
            return CommitWait("aof", 0, timeout_ms)
        if caps.aof_enabled and caps.appendfsync == "always":
            return CommitWait("fsync-always", 0, timeout_ms)
        if caps.replicas >= replicas:
            logger.warning(
                "durable_commit_durability='aof': Redis %s cannot acknowledge AOF fsyncs "
                "(WAITAOF needs Redis >= 7.2 with appendonly yes, or appendfsync always); "
                "commits wait for %d replica(s) instead (WAIT)",
                ".".join(map(str, caps.version)), replicas)
            return CommitWait("replica", replicas, timeout_ms)
        version = ".".join(map(str, caps.version))
        raise DurabilityError(
            f"durable_commit_durability='aof' cannot be honoured by Redis {version} "
            f"(appendonly {'yes' if caps.aof_enabled else 'no'}, appendfsync "
            f"{caps.appendfsync or 'unknown'}, {caps.replicas} replica(s)): use Redis >= 7.2 "
            "with appendonly yes, or set appendfsync always, or connect a replica, or "
            f"{_FIX}")
    if mode == "replica":
        if caps.role != "master":
            raise DurabilityError(
                f"durable_commit_durability='replica': the store's Redis is a {caps.role}, "
                f"not a master; point durable_redis_url at the master, or {_FIX}")
        if caps.replicas < replicas:
            raise DurabilityError(
                f"durable_commit_durability='replica' needs {replicas} connected replica(s) "
                f"(durable_commit_replicas), the store's Redis has {caps.replicas}: connect "
                f"replicas (replicaof), lower durable_commit_replicas, or {_FIX}")
        return CommitWait("replica", replicas, timeout_ms)
    raise DurabilityError(f"unknown commit durability {mode!r}: use one of {', '.join(MODES)}")
