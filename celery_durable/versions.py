"""Code versions: the version a run records, and what happens when it resumes on other code.

A task's version is its ``version=`` option, or else a digest of the source of the task
function and of the ``@step`` functions it refers to by name (directly, or through those
steps). The first attempt of a run records it; a later attempt on a worker whose code has
another version applies the task's ``version_policy``:

- ``continue`` (default): run on the new code (the trace records ``version_changed``, and
  the run's version becomes the new one);
- ``fail``: fail the run with VersionMismatchError;
- ``route``: hand the run to the queue ``<queue>@<recorded version>``, which every worker
  whose code has that version consumes besides its own queues (see :func:`extra_queues`).
  A worker of other code that consumes that queue explicitly (``-Q celery@v1``) runs the
  run on its own code instead, as with ``continue``: that is how an old version's
  leftovers are drained once its workers are gone.
"""

from __future__ import annotations

import hashlib
import inspect
import types
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError, VersionMismatchError

if TYPE_CHECKING:
    from .context import RunContext
    from .store import RunStore
    from .task import DurableTask

VERSION_POLICIES = ("continue", "fail", "route")
#: Separates a queue name from the version in the name of a version-tagged queue.
ROUTE_SEPARATOR = "@"
#: Hex digits of a computed version.
VERSION_DIGITS = 12


class RouteRun(BaseException):
    """Internal: end this attempt and publish the run to ``queue`` (a version-tagged queue).

    A BaseException so that ``except Exception`` in user code cannot swallow it."""

    def __init__(self, queue: str, recorded: str, running: str) -> None:
        super().__init__(queue)
        self.queue = queue
        self.recorded = recorded
        self.running = running


def check_version(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or ROUTE_SEPARATOR in value or "," in value:
        raise ConfigurationError(
            f"{where} must be a non-empty str without '{ROUTE_SEPARATOR}' or ',' (it names "
            f"a queue), got {value!r}")
    return value


def check_policy(value: Any, where: str) -> str:
    if value not in VERSION_POLICIES:
        raise ConfigurationError(f"{where} must be one of {', '.join(VERSION_POLICIES)}, "
                                 f"got {value!r}")
    return str(value)


def _code_names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    yield from code.co_freevars
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_names(const)


def _referenced(fn: Callable[..., Any]) -> list[Callable[..., Any]]:
    """The @step functions ``fn`` refers to by a global or closure name."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return []
    scope = dict(getattr(fn, "__globals__", {}))
    for name, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or (),
                          strict=False):
        try:
            scope[name] = cell.cell_contents
        except ValueError:  # an empty cell
            continue
    found = []
    for name in dict.fromkeys(_code_names(code)):
        value = scope.get(name)
        if callable(value) and getattr(value, "__durable_step__", None) is not None:
            found.append(value)
    return found


def _code_text(code: types.CodeType) -> str:
    """Bytecode, names and constants (nested functions included): the code without its
    source file."""
    consts = [_code_text(c) if isinstance(c, types.CodeType) else repr(c)
              for c in code.co_consts]
    return f"{code.co_code.hex()}|{code.co_names}|{consts}"


def _source(fn: Callable[..., Any]) -> str:
    target = inspect.unwrap(fn)
    try:
        return inspect.getsource(target)
    except (OSError, TypeError):
        # No source file (compiled from a string, a zip without sources): use the code.
        code = getattr(target, "__code__", None)
        return _code_text(code) if code is not None else repr(target)


def source_version(fn: Callable[..., Any]) -> str:
    """A digest of the source of ``fn`` and of the steps it refers to (transitively)."""
    digest = hashlib.sha256()
    seen: set[int] = set()
    pending = [fn]
    parts: list[tuple[str, str]] = []
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        target = inspect.unwrap(current)
        parts.append((f"{target.__module__}.{target.__qualname__}", _source(current)))
        pending.extend(_referenced(target))
    for name, text in sorted(parts):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:VERSION_DIGITS]


def code_version(task: DurableTask) -> str:
    """The version of ``task``'s code in this process (computed once per task class)."""
    given = task.durable_version
    if given is not None:
        return given
    cached = type(task).__dict__.get("_durable_code_version")
    if cached is None:
        run = task.run
        cached = source_version(getattr(run, "__func__", run))
        type(task)._durable_code_version = cached  # type: ignore[attr-defined]
    return str(cached)


def routed_queue(queue: str, version: str) -> str:
    """The version-tagged queue of ``queue`` (a queue already tagged is re-tagged)."""
    base = queue.rsplit(ROUTE_SEPARATOR, 1)[0] if ROUTE_SEPARATOR in queue else queue
    return f"{base}{ROUTE_SEPARATOR}{version}"


def extra_queues(app: Any, queues: list[str]) -> list[str]:
    """The version-tagged queues a worker consuming ``queues`` also consumes: one per queue
    and version of its tasks with ``version_policy="route"``."""
    from .task import DurableTask

    versions = sorted({code_version(t) for t in app.tasks.values()
                       if isinstance(t, DurableTask) and t.durable_version_policy == "route"})
    return [routed_queue(q, v) for q in queues if ROUTE_SEPARATOR not in q for v in versions]


def apply_policy(task: DurableTask, store: RunStore, ctx: RunContext, queue: str) -> None:
    """Compare the run's recorded version with this worker's; act on a mismatch.

    Raises:
        VersionMismatchError: ``version_policy="fail"``.
        RouteRun: ``version_policy="route"``.
    """
    running, recorded = ctx.code_version, ctx.recorded_version
    if not recorded or recorded == running:
        return
    policy = task.durable_version_policy
    if policy == "fail":
        raise VersionMismatchError(
            f"run {ctx.id} of {task.name} started on code version {recorded!r}, but this "
            f"worker runs version {running!r}: the task's version_policy is 'fail'. Replay "
            "it to run it on the new code, or keep workers of the old version",
            run_id=ctx.id, recorded=recorded, running=running)
    if policy == "route" and routed_queue(queue, recorded) != queue:
        raise RouteRun(routed_queue(queue, recorded), recorded, running)
    # continue, or a route-policy run taken from its own version-tagged queue by newer code
    # (an operator draining an old version's queue onto the new code): re-pin it.
    ctx._check_code(store.set_version(ctx._keys, ctx._token, running, recorded),
                    "record its new code version")
    ctx.recorded_version = running
