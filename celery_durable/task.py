"""DurableTask (the celery.Task subclass) and the @durable_task decorator."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from celery import Task, shared_task
from celery.result import AsyncResult
from celery.utils import uuid

from .attempt import encode_arguments, queue_of, run_attempt
from .bootsteps import install
from .errors import ConfigurationError
from .retry import RetryPolicy
from .store import store_for

F = TypeVar("F", bound=Callable[..., Any])

#: Options of @app.task that Celery understands besides the Task class attributes.
CELERY_DECORATOR_OPTIONS = frozenset({
    "name", "bind", "base", "shared", "lazy", "filter", "queue", "routing_key", "exchange",
    "exchange_type", "delivery_mode", "compression", "pydantic", "pydantic_strict",
    "pydantic_context", "pydantic_dump_kwargs", "autoretry_for", "dont_autoretry_for",
    "retry_kwargs", "retry_backoff", "retry_backoff_max", "retry_jitter",
})

#: Options that belong to celery-durable (the rest pass through to Celery).
DURABLE_OPTIONS = frozenset({"retry"})

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


def validate_options(options: dict[str, Any], base: type[Task[Any, Any]]) -> None:
    """Raise ConfigurationError for an unknown or invalid decorator option."""
    known = CELERY_DECORATOR_OPTIONS | DURABLE_OPTIONS | _celery_task_attributes()
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
        if name == "retry" and not isinstance(value, RetryPolicy):
            raise ConfigurationError(
                f"@durable_task(retry=...) must be a RetryPolicy, got {type(value).__name__}"
            )
        if name == "bind" and not isinstance(value, bool):
            raise ConfigurationError("@durable_task(bind=...) must be True or False")
        if name in ("name", "queue") and value is not None and not isinstance(value, str):
            raise ConfigurationError(f"@durable_task({name}=...) must be a str")


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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # @app.task(base=DurableTask, retry=RetryPolicy(...)) puts the policy in the class
        # dict under "retry", which would shadow Task.retry(): move it where it belongs.
        policy = cls.__dict__.get("retry")
        if isinstance(policy, RetryPolicy):
            cls.durable_retry = policy
            delattr(cls, "retry")
        elif policy is not None and not callable(policy):
            raise ConfigurationError(
                f"task {cls.__name__}: retry= must be a RetryPolicy, got {type(policy).__name__}"
            )

    @classmethod
    def on_bound(cls, app: Any) -> None:
        # Every worker of an app with durable tasks runs the heartbeat/reaper bootstep.
        install(app)

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

        The run id is the task id. A continuation of an existing run (a retry, a deferred
        duplicate) carries ``retries`` in its options and does not record anything.
        """
        task_id = task_id or uuid()
        if "retries" not in options and not self.app.conf.task_always_eager:
            store_for(self.app).create_run(
                task_id,
                self.name,
                encode_arguments(list(args or ())),
                encode_arguments(dict(kwargs or {})),
                queue_of(self, options),
            )
        return super().apply_async(args, kwargs, task_id=task_id, **options)


def durable_task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Declare a durable task: ``@durable_task`` or ``@durable_task(retry=..., queue=...)``.

    Registers like Celery's ``shared_task`` (with every app, works with autodiscovery) and
    accepts every ``@app.task`` option, plus ``retry`` (a RetryPolicy for the whole run).

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
        opts = dict(options)
        opts["base"] = base
        policy = opts.pop("retry", None)
        if policy is not None:
            opts["durable_retry"] = policy
        return shared_task(**opts)(fun)

    if fn is not None:
        return create(fn)
    return create
