"""@step: mark a function as a checkpointed step of whatever durable run calls it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar, overload

from .context import get_run_context
from .durability import MODES
from .errors import ConfigurationError
from .rates import STEP_RATES, RateKey, RateSpec, rate_ref
from .retry import RetryPolicy, to_seconds
from .timeouts import with_timeout

P = ParamSpec("P")
R = TypeVar("R")


def _validate(name: str | None, retry: RetryPolicy | None, durability: str | None) -> None:
    """Check the options of @step (raises ConfigurationError naming the option)."""
    if durability is not None and durability not in MODES:
        raise ConfigurationError(
            f"@step(durability=...) must be one of {', '.join(repr(m) for m in MODES)} (what "
            f"the step's commit waits for), got {durability!r}")
    if name is not None and (not isinstance(name, str) or not name or "#" in name):
        raise ConfigurationError(
            f"@step(name=...) must be a non-empty str without '#' (used for occurrence "
            f"numbers), got {name!r}"
        )
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise ConfigurationError(
            f"@step(retry=...) must be a RetryPolicy, got {type(retry).__name__}"
        )


def _timeout(value: Any) -> float | None:
    if value is None:
        return None
    seconds = to_seconds(value, "@step(timeout=...)")
    if seconds <= 0:
        raise ConfigurationError(f"@step(timeout=...) must be > 0 seconds, got {value!r}")
    return seconds


def _step_rate(rate_limit: Any, rate_key: Any, rate_burst: Any,
               rate_mode: Any) -> tuple[RateSpec | None, RateKey | None, str]:
    if rate_limit is None:
        if rate_key is not None or rate_burst is not None or rate_mode != "wait":
            raise ConfigurationError(
                "@step(rate_key=/rate_burst=/rate_mode=...) needs rate_limit='<starts>/"
                "<period>', e.g. rate_limit='60/m'")
        return None, None, "wait"
    spec = RateSpec.parse(rate_limit, rate_burst, where="@step(rate_limit=...)")
    if rate_key is not None and not callable(rate_key):
        raise ConfigurationError("@step(rate_key=...) must be a function of the step's "
                                 "arguments returning the key the rate applies to")
    if rate_mode not in ("wait", "drop"):
        raise ConfigurationError(
            f"@step(rate_mode=...) must be 'wait' (the step waits for its turn) or 'drop' "
            f"(it is skipped and returns None), got {rate_mode!r}")
    return spec, rate_key, str(rate_mode)


def _wrap(fn: Callable[P, R], name: str | None, retry: RetryPolicy | None,
          rate: tuple[RateSpec | None, RateKey | None, str] = (None, None, "wait"),
          timeout: float | None = None, durability: str | None = None) -> Callable[P, R]:
    if not callable(fn):
        raise ConfigurationError(f"@step must decorate a function, got {fn!r}")
    step_name = name or getattr(fn, "__name__", None) or repr(fn)
    spec, key_fn, mode = rate
    if spec is not None:
        STEP_RATES[f"step:{step_name}"] = spec

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        ctx = get_run_context()
        if ctx is None:
            return fn(*args, **kwargs)
        if spec is not None:
            ref = rate_ref(f"step:{step_name}", spec, key_fn, args, kwargs)
            if ref is not None and not ctx.take_turn(step_name, ref, mode):
                return None  # type: ignore[return-value]  # a lossy rate limit skipped it
        body = fn
        if timeout is not None and ctx.current_step is None:
            body = with_timeout(fn, timeout,
                                lambda: f"step {ctx.current_step!r} of run {ctx.id}")
        return ctx.run_step(step_name, body, args, kwargs, retry, durability,
                            record_inputs=True)

    wrapper.__durable_step__ = step_name  # type: ignore[attr-defined]
    return wrapper


@overload
def step(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def step(
    *, name: str | None = None, retry: RetryPolicy | None = None,
    rate_limit: str | float | None = None, rate_key: RateKey | None = None,
    rate_burst: int | None = None, rate_mode: str = "wait",
    timeout: float | timedelta | None = None, durability: str | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def step(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    rate_limit: str | float | None = None,
    rate_key: RateKey | None = None,
    rate_burst: int | None = None,
    rate_mode: str = "wait",
    timeout: float | timedelta | None = None,
    durability: str | None = None,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Checkpoint each call of the decorated function inside a durable run.

    Inside a run, the first call of a step executes it and commits its result before
    returning; in later attempts of the same run the committed result is returned and the
    function is not called. Outside a run the function is called as usual.

    Args:
        name: step name (default: the function's ``__name__``). Calls are numbered per run:
            ``fetch``, ``fetch#2``, ... so a step called in a loop is one step per call.
        retry: retry this step inside the attempt (sleeping between tries) before the
            error reaches the task's own retry policy.
        rate_limit: starts of this step allowed per period across the cluster, e.g.
            ``"60/m"`` (every task calling the step shares it); ``rate_key`` (a function of
            the step's arguments) makes it per key, ``rate_burst`` allows that many at once.
            A step over the rate waits for its turn (in place, or suspended if the turn is
            more than ``durable_inline_sleep_s`` away); with ``rate_mode="drop"`` it is
            skipped instead: not executed, it returns None, and the trace says why.
        timeout: seconds (or a timedelta) one execution of the step may take; an overrun
            interrupts it with StepTimeoutError, which the retry policies then handle.
            See ``celery_durable.timeouts`` for how (and its limits in C calls).
        durability: what this step's commit waits for (``"none"``, ``"replica"``,
            ``"aof"``), overriding the task's ``commit_durability`` and
            ``durable_commit_durability`` (see durability.py).
    """
    _validate(name, retry, durability)
    rate = _step_rate(rate_limit, rate_key, rate_burst, rate_mode)
    seconds = _timeout(timeout)
    if fn is not None:
        return _wrap(fn, name, retry, rate, seconds, durability)

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        return _wrap(func, name, retry, rate, seconds, durability)

    return decorate


def step_name_of(fn: Any) -> str | None:
    """The step name of a function decorated with @step, else None."""
    return getattr(fn, "__durable_step__", None)
