"""DurableTask (the celery.Task subclass) and the @durable_task decorator."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from celery import Task, shared_task
from celery.exceptions import TimeLimitExceeded
from celery.result import AsyncResult
from celery.utils import uuid

from . import metrics, otel
from .admission import After, admit_and_publish
from .attempt import (
    IDEMPOTENCY_HEADER,
    RECORDED_HEADER,
    encode_arguments,
    publish_queue,
    run_attempt,
)
from .bootsteps import install
from .context import describe_error
from .durability import MODES
from .errors import ConfigurationError, StoreError
from .idempotency import check_conflict, check_key, claim_key, fingerprint
from .identity import current_worker_id
from .payloads import dump_models, validate_call
from .publisher import producer_for
from .rates import RateSpec
from .requeue import encode_options, resume_info
from .retry import RetryPolicy, to_seconds
from .store import store_for
from .versions import check_policy, check_version

logger = logging.getLogger("celery_durable")

F = TypeVar("F", bound=Callable[..., Any])

#: Options of @app.task that Celery understands besides the Task class attributes.
CELERY_DECORATOR_OPTIONS = frozenset({
    "name", "bind", "base", "shared", "lazy", "filter", "queue", "routing_key", "exchange",
    "exchange_type", "delivery_mode", "compression", "pydantic", "pydantic_strict",
    "pydantic_context", "pydantic_dump_kwargs", "autoretry_for", "dont_autoretry_for",
    "retry_kwargs", "retry_backoff", "retry_backoff_max", "retry_jitter",
})



#: Celery autoretry options replaced by ``retry=RetryPolicy(...)``.
_AUTORETRY_OPTIONS = frozenset({
    "autoretry_for", "dont_autoretry_for", "retry_kwargs", "retry_backoff",
    "retry_backoff_max", "retry_jitter",
})


def _celery_task_attributes() -> frozenset[str]:
    return frozenset(
        name for name in dir(Task)
        if not name.startswith("_") and not callable(getattr(Task, name, None))
    )


def _policy(value: Any, where: str) -> RetryPolicy:
    if not isinstance(value, RetryPolicy):
        raise ConfigurationError(f"{where} must be a RetryPolicy, got {type(value).__name__}")
    return value


def _function(purpose: str) -> Callable[[Any, str], Any]:
    def convert(value: Any, where: str) -> Any:
        if not callable(value):
            raise ConfigurationError(f"{where} must be a function of the task's arguments "
                                     f"returning {purpose}")
        return staticmethod(value)

    return convert


def _positive_seconds(value: Any, where: str) -> float:
    seconds = to_seconds(value, where)
    if seconds <= 0:
        raise ConfigurationError(f"{where} must be more than 0 seconds, got {value!r}")
    return seconds


def _debounce_mode(value: Any, where: str) -> str:
    if value not in ("last", "first"):
        raise ConfigurationError(
            f"{where} must be 'last' (the run gets the last call's arguments) or 'first', "
            f"got {value!r}")
    return str(value)


def _rate(value: Any, where: str) -> RateSpec:
    return RateSpec.parse(value, where=where)


def _burst(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{where} must be an int >= 1 (starts allowed at once), "
                                 f"got {value!r}")
    return value


def _rate_mode(value: Any, where: str) -> str:
    if value not in ("wait", "drop"):
        raise ConfigurationError(
            f"{where} must be 'wait' (a run over the rate waits for its turn) or 'drop' "
            f"(it is cancelled), got {value!r}")
    return str(value)


def _durability(value: Any, where: str) -> str:
    if value not in MODES:
        raise ConfigurationError(
            f"{where} must be one of {', '.join(repr(m) for m in MODES)} (what a step's "
            f"commit waits for: nothing, replicas, the AOF fsync), got {value!r}")
    return str(value)


def _limit(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{where} must be an int >= 0, got {value!r}")
    return value


#: celery-durable's decorator options: the class attribute each one sets, and its check.
DURABLE_OPTIONS: dict[str, tuple[str, Callable[[Any, str], Any]]] = {
    "retry": ("durable_retry", _policy),
    "idempotency_key": ("durable_idempotency_key",
                        _function("the call's idempotency key (or pass idempotency_key= "
                                  "to apply_async)")),
    "idempotency_ttl": ("durable_idempotency_ttl", to_seconds),
    "run_timeout": ("durable_run_timeout", to_seconds),
    "concurrency_limit": ("durable_concurrency_limit", _limit),
    "concurrency_key": ("durable_concurrency_key",
                        _function("the key (a tenant, a user) the limit applies to")),
    "version": ("durable_version", check_version),
    "version_policy": ("durable_version_policy", check_policy),
    "fairness_key": ("durable_fairness_key",
                     _function("the key (a tenant) waiting runs take turns by")),
    "rate_limit": ("durable_rate_limit", _rate),
    "rate_key": ("durable_rate_key",
                 _function("the key (a tenant, an API account) the rate applies to")),
    "rate_burst": ("durable_rate_burst", _burst),
    "rate_mode": ("durable_rate_mode", _rate_mode),
    "debounce": ("durable_debounce", _positive_seconds),
    "debounce_key": ("durable_debounce_key",
                     _function("the key calls are debounced by (a user, a document)")),
    "debounce_mode": ("durable_debounce_mode", _debounce_mode),
    "debounce_max": ("durable_debounce_max", _positive_seconds),
    "commit_durability": ("durable_commit_durability", _durability),
}


def durable_attributes(options: dict[str, Any], where: str) -> dict[str, Any]:
    """Check celery-durable's options in ``options``; return the class attributes they set.

    Raises:
        ConfigurationError: naming the option and what it must be.
    """
    attrs = {}
    for name, (attr, convert) in DURABLE_OPTIONS.items():
        if name in options:
            attrs[attr] = convert(options[name], f"{where}({name}=...)")
    needs_rate = {"rate_key", "rate_burst", "rate_mode"} & set(options)
    if needs_rate and options.get("rate_limit") is None:
        raise ConfigurationError(
            f"{where}({sorted(needs_rate)[0]}=...) needs rate_limit='<starts>/<period>', "
            "e.g. rate_limit='100/m'")
    needs_debounce = {"debounce_key", "debounce_mode", "debounce_max"} & set(options)
    if needs_debounce and options.get("debounce") is None:
        raise ConfigurationError(
            f"{where}({sorted(needs_debounce)[0]}=...) needs debounce=<quiet period in "
            "seconds>")
    if options.get("debounce") is not None and options.get("idempotency_key") is not None:
        raise ConfigurationError(
            f"{where} takes debounce= or idempotency_key=, not both: a debounced burst "
            "already makes one run")
    if "concurrency_key" in options and options.get("concurrency_limit") is None:
        raise ConfigurationError(
            f"{where}(concurrency_key=...) needs concurrency_limit=N: the number of runs "
            "allowed at once per key")
    return attrs


def validate_options(options: dict[str, Any], base: type[Task[Any, Any]]) -> None:
    """Raise ConfigurationError for an unknown or invalid decorator option."""
    known = CELERY_DECORATOR_OPTIONS | set(DURABLE_OPTIONS) | _celery_task_attributes()
    for name, value in options.items():
        if name in _AUTORETRY_OPTIONS:
            raise ConfigurationError(
                f"@durable_task does not take {name}=: durable tasks retry through "
                "retry=RetryPolicy(max_attempts=..., retry_on=(...), give_up_on=(...)), "
                "which resumes from the last committed step"
            )
        if name not in known and not hasattr(base, name):
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigurationError(f"@durable_task got an unknown option {name!r}{hint}")
        if name == "bind" and not isinstance(value, bool):
            raise ConfigurationError("@durable_task(bind=...) must be True or False")
        if name in ("name", "queue") and value is not None and not isinstance(value, str):
            raise ConfigurationError(f"@durable_task({name}=...) must be a str")
    durable_attributes(options, "@durable_task")


class DurableTask(Task[Any, Any]):
    """A Celery task whose steps are checkpointed in Redis and whose retries resume.

    Use it through ``@durable_task`` or as ``@app.task(base=DurableTask)``. Defaults differ
    from Celery's where durability needs it: ``acks_late`` (a message is acknowledged only
    after the attempt ends) and ``reject_on_worker_lost`` (a crashed attempt is redelivered);
    ``max_retries=None`` because the retry policy counts attempts itself.
    """

    acks_late = True
    reject_on_worker_lost = True
    max_retries = None
    #: The task's retry policy; None means the ``durable_default_retry`` setting.
    durable_retry: ClassVar[RetryPolicy | None] = None
    #: Function of the task's arguments giving the idempotency key of a call (or None).
    durable_idempotency_key: ClassVar[Callable[..., str] | None] = None
    #: Seconds an idempotency key names its run; None means ``durable_idempotency_ttl_s``.
    durable_idempotency_ttl: ClassVar[float | None] = None
    #: Seconds a run may take from its creation, across attempts, sleeps and waits.
    durable_run_timeout: ClassVar[float | None] = None
    #: Runs of this task allowed at once across the cluster (per key); None = no limit.
    durable_concurrency_limit: ClassVar[int | None] = None
    #: Function of the task's arguments giving the key the limit applies to (a tenant).
    durable_concurrency_key: ClassVar[Callable[..., str] | None] = None
    #: The task's code version (``version=``); None: a digest of its and its steps' source.
    durable_version: ClassVar[str | None] = None
    #: What a run does when it resumes on another code version: continue, fail or route.
    durable_version_policy: ClassVar[str] = "continue"
    #: Function of the task's arguments giving the key waiting runs take turns by.
    durable_fairness_key: ClassVar[Callable[..., str] | None] = None
    #: Starts allowed per period across the cluster (Celery's rate_limit, made global).
    durable_rate_limit: ClassVar[RateSpec | None] = None
    #: Function of the task's arguments giving the key the rate applies to.
    durable_rate_key: ClassVar[Callable[..., str] | None] = None
    #: Starts allowed at once on top of the steady rate.
    durable_rate_burst: ClassVar[int] = 1
    #: "wait": a run over the rate waits for its turn; "drop": it is cancelled.
    durable_rate_mode: ClassVar[str] = "wait"
    #: Quiet period (seconds) that ends a burst of calls; None = no debounce.
    durable_debounce: ClassVar[float | None] = None
    #: Function of the task's arguments giving the key calls are debounced by.
    durable_debounce_key: ClassVar[Callable[..., str] | None] = None
    #: Which call's arguments a debounced run gets: "last" or "first".
    durable_debounce_mode: ClassVar[str] = "last"
    #: Longest wait (seconds) from a burst's first call to its run; None = no bound.
    durable_debounce_max: ClassVar[float | None] = None
    #: What this task's step commits wait for (None: ``durable_commit_durability``).
    durable_commit_durability: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # @app.task(base=DurableTask, retry=RetryPolicy(...), ...) puts our options in the
        # class dict ("retry" would even shadow Task.retry()): move them where they belong.
        options = {
            name: cls.__dict__[name] for name in DURABLE_OPTIONS
            if name in cls.__dict__ and not (name == "retry" and callable(cls.__dict__[name]))
        }
        for name in options:
            delattr(cls, name)
        for attr, value in durable_attributes(options, f"task {cls.__name__}").items():
            setattr(cls, attr, value)

    @classmethod
    def on_bound(cls, app: Any) -> None:
        # Every worker of an app with durable tasks runs the heartbeat/reaper bootstep.
        install(app)

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:
        """Fail the run when Celery's hard time limit killed its attempt.

        This hook runs in the worker's main process then (the pool process is gone, so the
        attempt could not end itself); every other failure was already recorded by the
        attempt."""
        if isinstance(exc, TimeLimitExceeded):
            error = describe_error(exc)
            error["error_message"] = (f"the attempt exceeded the task's hard time limit "
                                      f"({exc}); raise time_limit or split the work in steps")
            try:
                store = store_for(self.app)
                if store.fail_held_run(task_id, current_worker_id(None), error):
                    meters = metrics.meters_for(store.settings, self.name)
                    if meters is not None:
                        meters.run_finished("failed")
            except StoreError:
                logger.exception("run %s: could not record its time limit", task_id)
        super().on_failure(exc, task_id, args, kwargs, einfo)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.request.called_directly:
            # A plain function call (not through a worker or apply()): no run, no checkpoints.
            return super().__call__(*args, **kwargs)
        return run_attempt(self, args, kwargs)

    def apply_async(  # type: ignore[override]
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        **options: Any,
    ) -> AsyncResult:  # type: ignore[type-arg]
        """Publish the task like Celery does, after recording the run as ``pending``.

        Besides Celery's options it takes ``idempotency_key`` (a str: the first call with a
        key creates the run, later calls within the TTL return an AsyncResult with the same
        id and publish nothing), ``idempotency_ttl`` (seconds or timedelta) and
        ``idempotency_conflict`` (``"error"``, the default, raises IdempotencyConflictError
        when a key is reused with other arguments; ``"ignore"`` returns the existing run).

        The run id is the task id. A continuation of an existing run (a retry, a deferred
        duplicate) carries ``retries`` in its options and does not record anything.

        Raises:
            PayloadValidationError: an argument does not match its pydantic annotation.
            IdempotencyConflictError: see ``idempotency_conflict``.
            StoreError: Redis is unreachable (nothing was published).
        """
        key = options.pop("idempotency_key", None)
        ttl = options.pop("idempotency_ttl", None)
        on_conflict = options.pop("idempotency_conflict", "error")
        if "retries" in options or self.app.conf.task_always_eager:
            return self._celery_apply_async(args, kwargs, task_id, options)
        # The run is recorded here (before or after it is published): its claim need not
        # list it. Every later message of the run carries the headers on.
        options["headers"] = {**(options.get("headers") or {}), RECORDED_HEADER: 1}
        if otel.ENABLED:
            # The run's attempts continue the caller's trace (Celery keeps the headers).
            otel.inject(options["headers"])
        args, kwargs = validate_call(self.name, self.run, args, kwargs)
        if key is None and self.durable_idempotency_key is not None:
            key = self.durable_idempotency_key(*(args or ()), **(kwargs or {}))
        args, kwargs = dump_models(args, kwargs)
        if key is not None:
            return self._apply_idempotent(args, kwargs, task_id, key, ttl, on_conflict, options)
        if self.durable_debounce is not None:
            return self._apply_debounced(args, kwargs, task_id, options)
        task_id = task_id or uuid()
        queue = publish_queue(self, args, kwargs, options)
        self._record(task_id, args, kwargs, options, queue)
        result, after = self._admit_and_publish(args, kwargs, task_id, queue, options)
        if after is not None:
            after()
        return result

    def _celery_apply_async(self, args: Any, kwargs: Any, task_id: str | None,
                            options: dict[str, Any]) -> AsyncResult:  # type: ignore[type-arg]
        """Celery's own apply_async, on celery-durable's producer (publisher.py) unless the
        caller gave one or nothing is published (eager)."""
        if "producer" in options or self.app.conf.task_always_eager:
            return super().apply_async(args, kwargs, task_id=task_id, **options)
        with producer_for(self.app) as producer:
            return super().apply_async(args, kwargs, task_id=task_id, producer=producer,
                                       **options)

    def _record(self, run_id: str, args: Any, kwargs: Any, options: dict[str, Any],
                queue: str, key: str = "") -> None:
        store_for(self.app).create_run(
            run_id, self.name, encode_arguments(list(args or ())),
            encode_arguments(dict(kwargs or {})), queue, encode_options(options), key,
        )

    def _admit_and_publish(
        self, args: Any, kwargs: Any, run_id: str, queue: str, options: dict[str, Any]
    ) -> tuple[AsyncResult, After]:  # type: ignore[type-arg]
        """See admission.admit_and_publish (``publish`` is Celery's own apply_async)."""
        def publish(opts: dict[str, Any]) -> AsyncResult:  # type: ignore[type-arg]
            return self._celery_apply_async(args, kwargs, run_id, opts)

        return admit_and_publish(self, args, kwargs, run_id, queue, options, publish)

    def _apply_debounced(
        self, args: Any, kwargs: Any, task_id: str | None, options: dict[str, Any]
    ) -> AsyncResult:  # type: ignore[type-arg]
        """Join the open burst of calls with this call's debounce key, or open one: the
        burst's run starts (from a Redis timer) once calls pause for the quiet period."""
        store = store_for(self.app)
        assert self.durable_debounce is not None
        key_fn = self.durable_debounce_key
        key = "" if key_fn is None else str(key_fn(*(args or ()), **(kwargs or {})))
        queue = publish_queue(self, args, kwargs, options)
        info = resume_info(self.name, args, kwargs, queue, options.get("headers"), options)
        redis_key = store.keys.debounce(self.name, key)
        longest = self.durable_debounce_max
        run_id, opened, _, _ = store.debounce_call(
            redis_key, task_id or uuid(), int(self.durable_debounce * 1000),
            int(longest * 1000) if longest else 0, self.durable_debounce_mode, info)
        if opened:
            # If this process dies here, the run is still started by the debounce timer
            # (and recorded by the worker that claims it).
            self._record(run_id, args, kwargs, options, queue)
        return self.AsyncResult(run_id)

    def _apply_idempotent(
        self,
        args: Any,
        kwargs: Any,
        task_id: str | None,
        key: Any,
        ttl: Any,
        on_conflict: str,
        options: dict[str, Any],
    ) -> AsyncResult:  # type: ignore[type-arg]
        if on_conflict not in ("error", "ignore"):
            raise ConfigurationError("idempotency_conflict must be 'error' or 'ignore'")
        store = store_for(self.app)
        key = check_key(key)
        ttl_s = to_seconds(ttl if ttl is not None else self.durable_idempotency_ttl
                           or store.settings.idempotency_ttl_s, "idempotency_ttl")
        fp = fingerprint(args, kwargs)
        claim = claim_key(store, self.name, key, task_id or uuid(), fp, ttl_s)
        options["headers"] = {**(options.get("headers") or {}), IDEMPOTENCY_HEADER: claim.redis_key}
        if not claim.won:
            check_conflict(claim, fp, self.name, key, on_conflict)
            if (claim.fingerprint != fp or not claim.may_be_orphaned()
                    or store.run_exists(claim.run_id)):
                return self.AsyncResult(claim.run_id)
            # The key has named, for a while, a run that was never recorded: its caller died
            # between claiming the key and publishing. Publish it now (a second copy would
            # be harmless: the run's claim lets one execute).
        # Publish first, then record: once the key is claimed, a crash can no longer leave
        # a key that names a run with no message (the worker records the run if we cannot).
        # (A run parked for a slot is recorded after it is parked, for the same reason.)
        queue = publish_queue(self, args, kwargs, options)
        result, after = self._admit_and_publish(args, kwargs, claim.run_id, queue, options)
        try:
            if after is None and not encode_options(options):
                # Published now and no canvas to keep: nothing waits for the record.
                store.record_published_run(
                    claim.run_id, self.name, encode_arguments(list(args or ())),
                    encode_arguments(dict(kwargs or {})), queue, key)
            else:
                self._record(claim.run_id, args, kwargs, options, queue, key)
        except StoreError:
            logger.warning("run %s: published, but not recorded yet (the worker will)",
                           claim.run_id, exc_info=True)
            return result
        if after is not None:
            after()
        return result


def durable_task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Declare a durable task: ``@durable_task`` or ``@durable_task(retry=..., queue=...)``.

    Registers like Celery's ``shared_task`` (with every app, works with autodiscovery) and
    accepts every ``@app.task`` option, plus ``retry`` (a RetryPolicy for the whole run),
    ``concurrency_limit`` (runs allowed at once across all workers), ``concurrency_key``
    (a function of the task's arguments: the limit then applies per key),
    ``idempotency_key`` (a function of the task's arguments returning the key of a call,
    used by ``.delay()``, ``.apply_async()`` and canvas), ``idempotency_ttl`` (seconds or
    a timedelta; default ``durable_idempotency_ttl_s``), ``run_timeout`` (seconds a run may
    take across all its attempts and waits), ``version`` (the code version runs record;
    default: a digest of the source of the task and its steps) and ``version_policy``
    (``"continue"``, ``"fail"`` or ``"route"``: what a run does when it resumes on code of
    another version; see ``celery_durable.versions``).

    Raises:
        ConfigurationError: at decoration time, for an unknown or invalid option.
    """
    base = options.get("base", DurableTask)
    if not (isinstance(base, type) and issubclass(base, DurableTask)):
        raise ConfigurationError(
            f"@durable_task(base=...) must be a subclass of DurableTask, got {base!r}"
        )
    validate_options(options, base)

    def create(fun: Callable[..., Any]) -> Any:
        if not callable(fun):
            raise ConfigurationError(f"@durable_task must decorate a function, got {fun!r}")
        opts = {k: v for k, v in options.items() if k not in DURABLE_OPTIONS}
        opts["base"] = base
        opts.update(durable_attributes(options, "@durable_task"))
        return shared_task(**opts)(fun)

    if fn is not None:
        return create(fn)
    return create
