"""Task arguments annotated with pydantic models: validated by the caller, coerced by the
worker.

``apply_async`` validates each such argument before anything is published (a bad payload
raises PayloadValidationError naming the task, the parameter and the field) and sends it as
plain JSON; the worker turns it back into the model before the task body runs.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from functools import cache
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import PayloadValidationError

Models = dict[str, type[BaseModel]]


@cache
def model_parameters(fn: Callable[..., Any]) -> tuple[inspect.Signature, Models]:
    """The signature of ``fn`` and its parameters annotated with a pydantic model class."""
    try:
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
    except (TypeError, ValueError, NameError):
        return inspect.Signature(), {}
    models = {
        name: hint for name, hint in hints.items()
        if name in signature.parameters and isinstance(hint, type) and issubclass(hint, BaseModel)
    }
    return signature, models


def _bind(
    fn: Callable[..., Any], args: Any, kwargs: Any
) -> tuple[inspect.BoundArguments, Models] | None:
    signature, models = model_parameters(fn)
    if not models:
        return None
    try:
        bound = signature.bind_partial(*(args or ()), **(kwargs or {}))
    except TypeError:
        return None  # Celery reports wrong arguments itself
    return bound, models


def validate_call(task_name: str, fn: Callable[..., Any], args: Any, kwargs: Any
                  ) -> tuple[Any, Any]:
    """Validate model-typed arguments in the caller; return args/kwargs with those
    arguments as model instances (dicts are validated into models)."""
    found = _bind(fn, args, kwargs)
    if found is None:
        return args, kwargs
    bound, models = found
    for name, model in models.items():
        if name not in bound.arguments:
            continue
        value = bound.arguments[name]
        try:
            instance = value if isinstance(value, model) else model.model_validate(value)
        except ValidationError as exc:
            fields = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
                for err in exc.errors()
            )
            raise PayloadValidationError(
                f"task {task_name}: argument {name!r} is not a valid {model.__name__}: "
                f"{fields}. Nothing was published",
                task=task_name, parameter=name,
            ) from None
        bound.arguments[name] = instance
    return tuple(bound.args), dict(bound.kwargs)


def dump_models(args: Any, kwargs: Any) -> tuple[Any, Any]:
    """Arguments ready for the broker's JSON: pydantic models become plain dicts."""

    def plain(value: Any) -> Any:
        return value.model_dump(mode="json") if isinstance(value, BaseModel) else value

    if not any(isinstance(v, BaseModel) for v in (*(args or ()), *(kwargs or {}).values())):
        return args, kwargs
    return [plain(v) for v in args or ()], {k: plain(v) for k, v in (kwargs or {}).items()}


def coerce_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
                ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """In the worker: turn model-typed arguments received as JSON back into models."""
    found = _bind(fn, args, kwargs)
    if found is None:
        return args, kwargs
    bound, models = found
    for name, model in models.items():
        value = bound.arguments.get(name)
        if value is not None and not isinstance(value, model):
            try:
                bound.arguments[name] = model.model_validate(value)
            except ValidationError as exc:
                raise PayloadValidationError(
                    f"argument {name!r} received by the worker is not a valid "
                    f"{model.__name__}: {exc}", parameter=name,
                ) from None
    return tuple(bound.args), dict(bound.kwargs)
