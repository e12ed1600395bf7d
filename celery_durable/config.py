"""DurableSettings: the ``durable_*`` keys of ``app.conf``, read once per app and validated."""

from __future__ import annotations

import logging
import re
import weakref
from typing import Any, Literal

from celery import Celery
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigurationError
from .retry import RetryPolicy

#: Completed, failed and cancelled runs are kept this long (seconds), then expire.
DEFAULT_RETENTION_S = 7 * 24 * 3600
#: An unfinished run with no attempt for this long (seconds) expires: an owner for every key.
DEFAULT_ACTIVE_TTL_S = 30 * 24 * 3600
#: How long (seconds) an attempt's lease lasts without renewal (the heartbeat renews it).
DEFAULT_LEASE_TTL_S = 15.0
#: Seconds between two heartbeats of a worker (liveness, lease renewal, reaper sweep).
DEFAULT_HEARTBEAT_INTERVAL_S = 1.0
#: A worker whose last heartbeat is older than this (seconds) is dead; its runs are resumed.
DEFAULT_WORKER_TTL_S = 4.0
#: Crashes (attempts whose worker died) after which a run fails instead of resuming again.
DEFAULT_MAX_CRASHES = 5
#: Trace stream entries kept per run (approximate, ``XADD MAXLEN ~``).
DEFAULT_TRACE_MAXLEN = 10_000
#: Largest encoded step or task result (bytes) stored as a checkpoint.
DEFAULT_MAX_CHECKPOINT_BYTES = 1024 * 1024
#: Largest encoded progress value (bytes) a step may save with current_run().progress().
DEFAULT_MAX_PROGRESS_BYTES = 64 * 1024
#: How long (seconds) an idempotency key maps to its run, unless the call says otherwise.
DEFAULT_IDEMPOTENCY_TTL_S = 24 * 3600
#: Prefix of every Redis key the package writes.
DEFAULT_KEY_PREFIX = "durable:"
#: Socket timeout (seconds) of the store's Redis client; no command of ours blocks longer.
DEFAULT_REDIS_SOCKET_TIMEOUT_S = 10.0
#: Regular expressions (case-insensitive, searched in a key name) whose values the Flower
#: views and JSON API show as redacted.
DEFAULT_FLOWER_REDACT = ("password", "passwd", "secret", "token", "api[_-]?key",
                         "authorization", "credential", "private[_-]?key", "cookie")

#: Log records captured into a run's trace per attempt (later ones are counted, not kept).
DEFAULT_LOG_MAX_RECORDS = 1000
#: Characters kept of a captured log message (the rest is cut, with a marker).
DEFAULT_LOG_MAX_CHARS = 4000

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
#: ``durable_redis_url`` schemes of a Redis Cluster (see connections.py).
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
#: ``durable_redis_url`` scheme of Redis Sentinel (kombu's form; see connections.py).
SENTINEL_SCHEME = "sentinel://"
_STORE_SCHEMES = (*_REDIS_SCHEMES, *CLUSTER_SCHEMES, SENTINEL_SCHEME)


class DurableSettings(BaseModel):
    """Validated ``durable_*`` settings; field ``x`` is read from ``app.conf.durable_x``."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    redis_url: str
    #: The master name the Sentinels monitor (``sentinel://`` URLs only).
    redis_sentinel_master: str | None = None
    #: The password of the Sentinels themselves (the URL's password is the master's).
    redis_sentinel_password: str | None = None
    key_prefix: str = DEFAULT_KEY_PREFIX
    retention_s: float = Field(default=DEFAULT_RETENTION_S, gt=0)
    active_ttl_s: float = Field(default=DEFAULT_ACTIVE_TTL_S, gt=0)
    lease_ttl_s: float = Field(default=DEFAULT_LEASE_TTL_S, gt=0)
    heartbeat_interval_s: float = Field(default=DEFAULT_HEARTBEAT_INTERVAL_S, gt=0)
    worker_ttl_s: float = Field(default=DEFAULT_WORKER_TTL_S, gt=0)
    max_crashes: int = Field(default=DEFAULT_MAX_CRASHES, ge=0)
    reaper: bool = True
    idempotency_ttl_s: float = Field(default=DEFAULT_IDEMPOTENCY_TTL_S, gt=0)
    idempotency_release_on_failure: bool = True
    queue_limits: dict[str, int] = Field(default_factory=dict)
    inline_sleep_s: float = Field(default=1.0, ge=0)
    event_ttl_s: float = Field(default=7 * 24 * 3600, gt=0)
    child_recheck_s: float = Field(default=60.0, gt=0)
    max_countdown_s: float = Field(default=10.0, ge=0)
    slot_handoff_s: float = Field(default=60.0, gt=0)
    #: Keep each step's arguments with its checkpoint, for the trace views (bytes per step).
    record_step_inputs: bool = False
    #: Waiting runs that one priority rank lets a run overtake (see concurrency.py).
    priority_step: int = Field(default=10, ge=0)
    trace_maxlen: int = Field(default=DEFAULT_TRACE_MAXLEN, ge=100)
    max_checkpoint_bytes: int = Field(default=DEFAULT_MAX_CHECKPOINT_BYTES, ge=1024)
    max_progress_bytes: int = Field(default=DEFAULT_MAX_PROGRESS_BYTES, ge=64)
    offload_bytes: int | None = Field(default=None, ge=1)
    #: How a completed run keeps its checkpoints and trace (archive.py): packed into one
    #: key, zlib-compressed ("zlib") or not ("plain"), or left as they were ("off").
    archive: Literal["zlib", "plain", "off"] = "zlib"
    redis_socket_timeout_s: float = Field(default=DEFAULT_REDIS_SOCKET_TIMEOUT_S, gt=0)
    default_retry: RetryPolicy = Field(default_factory=RetryPolicy)
    eviction_check: Literal["warn", "error", "ignore"] = "warn"
    flower_redact: tuple[str, ...] = DEFAULT_FLOWER_REDACT
    flower_metrics_interval_s: float = Field(default=15.0, gt=0)
    #: Capture log records emitted inside a run into its trace (see logcapture.py).
    log_capture: bool = True
    #: Lowest level captured (a name such as "INFO" or a number); stored as the number.
    log_level: int = logging.INFO
    log_max_records: int = Field(default=DEFAULT_LOG_MAX_RECORDS, ge=0)
    log_max_chars: int = Field(default=DEFAULT_LOG_MAX_CHARS, ge=100)
    #: Record Prometheus metrics in workers (needs the ``prometheus`` extra).
    metrics: bool = True
    #: Port of the worker's Prometheus exporter (main process); None: no exporter.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_addr: str = "0.0.0.0"
    #: What a step's commit waits for: "none" (Redis applied it), "replica" (WAIT for
    #: ``commit_replicas`` replicas) or "aof" (fsynced to the AOF); see durability.py.
    commit_durability: Literal["none", "replica", "aof"] = "none"
    commit_replicas: int = Field(default=1, ge=1)
    #: How long (seconds) a commit waits for its acknowledgement before DurabilityError.
    commit_wait_timeout_s: float = Field(default=1.0, gt=0)
    #: How long (microseconds) a worker polls for a store reply before blocking on it
    #: (spin.py); None: 200 when the pool runs fewer tasks at once than there are cores,
    #: else 0 (never poll).
    reply_spin_us: int | None = Field(default=None, ge=0, le=100_000)

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("must be a level name such as 'INFO' or a number")
        if isinstance(value, int):
            if value < 0:
                raise ValueError("must be >= 0")
            return value
        if isinstance(value, str):
            level = logging.getLevelName(value.strip().upper())
            if isinstance(level, int):
                return level
        raise ValueError(
            f"unknown log level {value!r}: use DEBUG, INFO, WARNING, ERROR, CRITICAL or a number")

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(_STORE_SCHEMES):
            raise ValueError(
                "must start with redis://, rediss:// or unix:// (one server), "
                "redis+cluster:// or rediss+cluster:// (Redis Cluster) or sentinel:// "
                "(Redis Sentinel)")
        return value

    @model_validator(mode="after")
    def _sentinel(self) -> DurableSettings:
        if self.redis_url.startswith(SENTINEL_SCHEME) and not self.redis_sentinel_master:
            raise ValueError(
                "durable_redis_url is a sentinel:// URL but no master name is set: set "
                "durable_redis_sentinel_master = '<name>' (the name the Sentinels monitor), "
                "or broker_transport_options['master_name'] when the store uses the "
                "broker's URL")
        return self

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or "{" in value or "}" in value:
            raise ValueError("must be non-empty and contain no '{' or '}' (hash tags are ours)")
        return value

    @field_validator("queue_limits")
    @classmethod
    def _queue_limits(cls, value: dict[str, int]) -> dict[str, int]:
        for queue, limit in value.items():
            if limit < 0:
                raise ValueError(f"the limit of queue {queue!r} must be >= 0, got {limit}")
        return value

    @field_validator("flower_redact")
    @classmethod
    def _redact_patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _timings(self) -> DurableSettings:
        if self.worker_ttl_s < 2 * self.heartbeat_interval_s:
            raise ValueError(
                "durable_worker_ttl_s must be at least 2 x durable_heartbeat_interval_s, or a "
                "slow heartbeat makes a live worker look dead"
            )
        if self.lease_ttl_s < 3 * self.heartbeat_interval_s:
            raise ValueError(
                "durable_lease_ttl_s must be at least 3 x durable_heartbeat_interval_s, so "
                "that a live attempt's lease is renewed before it expires"
            )
        return self

    @property
    def retention_ms(self) -> int:
        return int(self.retention_s * 1000)

    @property
    def active_ttl_ms(self) -> int:
        return int(self.active_ttl_s * 1000)

    @property
    def commit_wait_timeout_ms(self) -> int:
        return max(1, int(self.commit_wait_timeout_s * 1000))

    @property
    def lease_ttl_ms(self) -> int:
        return int(self.lease_ttl_s * 1000)

    @property
    def worker_ttl_ms(self) -> int:
        return int(self.worker_ttl_s * 1000)

    @property
    def rate_lookahead_ms(self) -> int:
        """How far ahead a rate limit's dispatcher hands out turns (ms): the runs it hands
        a turn wait for it as ETA messages, and it runs again before those turns are used up.
        Dispatchers are due timers read once per heartbeat, so two beats (plus a margin)
        keep a busy limit's turns from going unused; a run that waits can be overtaken by a
        better one only until its turn comes within this window."""
        return int(2 * self.heartbeat_interval_s * 1000) + 250

    @property
    def lease_renew_every_s(self) -> float:
        """How often the heartbeat renews leases: a third of the lease (two renewals can be
        missed before it expires), at least one beat."""
        return max(self.heartbeat_interval_s, self.lease_ttl_s / 3)


_cache: weakref.WeakKeyDictionary[Celery, DurableSettings] = weakref.WeakKeyDictionary()


def _read(app: Celery) -> DurableSettings:
    raw: dict[str, Any] = {}
    for key in list(app.conf.keys()):
        if isinstance(key, str) and key.startswith("durable_"):
            raw[key.removeprefix("durable_")] = app.conf[key]
    if raw.get("redis_url") is None:
        broker = app.conf.broker_url or ""
        if not isinstance(broker, str) or not broker.startswith(
                (*_REDIS_SCHEMES, SENTINEL_SCHEME)):
            raise ConfigurationError(
                "durable_redis_url is not set and the broker is not Redis "
                f"({str(broker).split('://')[0] or 'none'}://): set "
                "app.conf.durable_redis_url = 'redis://host:6379/0' for the checkpoint store"
            )
        raw["redis_url"] = broker
        if broker.startswith(SENTINEL_SCHEME):
            # The store shares the broker's Sentinels: and, unless told otherwise, its master.
            options = app.conf.broker_transport_options or {}
            raw.setdefault("redis_sentinel_master", options.get("master_name"))
            sentinel_kwargs = options.get("sentinel_kwargs") or {}
            raw.setdefault("redis_sentinel_password", sentinel_kwargs.get("password"))
    try:
        return DurableSettings(**raw)
    except ValidationError as exc:
        problems = "; ".join(
            (f"durable_{'.'.join(str(p) for p in err['loc'])}: " if err["loc"] else "")
            + err["msg"].removeprefix("Value error, ")
            for err in exc.errors()
        )
        raise ConfigurationError(f"invalid celery-durable settings: {problems}") from None


def settings_for(app: Celery) -> DurableSettings:
    """Return the app's validated settings (read on first use, then cached on the app)."""
    settings = _cache.get(app)
    if settings is None:
        settings = _cache[app] = _read(app)
    return settings


def forget_settings(app: Celery) -> None:
    """Drop the cached settings of ``app`` (tests and apps that reconfigure at runtime)."""
    _cache.pop(app, None)
