"""@step: mark a function as a checkpointed step of whatever durable run calls it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, overload

from .context import get_run_context
from .errors import ConfigurationError
from .retry import RetryPolicy

P = ParamSpec("P")
R = TypeVar("R")


def _validate(name: str | None, retry: RetryPolicy | None) -> None:
    if name is not None and (not isinstance(name, str) or not name or "#" in name):
        raise ConfigurationError(
            f"@step(name=...) must be a non-empty str without '#' (used for occurrence "
            f"numbers), got {name!r}"
        )
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise ConfigurationError(
            f"@step(retry=...) must be a RetryPolicy, got {type(retry).__name__}"
        )


def _wrap(fn: Callable[P, R], name: str | None, retry: RetryPolicy | None) -> Callable[P, R]:
    if not callable(fn):
        raise ConfigurationError(f"@step must decorate a function, got {fn!r}")
    step_name = name or getattr(fn, "__name__", None) or repr(fn)

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        ctx = get_run_context()
        if ctx is None:
            return fn(*args, **kwargs)
        return ctx.run_step(step_name, fn, args, kwargs, retry)

    wrapper.__durable_step__ = step_name  # type: ignore[attr-defined]
    return wrapper


@overload
def step(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def step(
    *, name: str | None = None, retry: RetryPolicy | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def step(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
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
    """
    _validate(name, retry)
    if fn is not None:
        return _wrap(fn, name, retry)

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        return _wrap(func, name, retry)

    return decorate


def step_name_of(fn: Any) -> str | None:
    """The step name of a function decorated with @step, else None."""
    return getattr(fn, "__durable_step__", None)
