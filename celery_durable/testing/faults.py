"""Make a step fail on purpose: the first N executions of a named step raise.

The fault is installed in this process only, so it reaches embedded workers
(:func:`~celery_durable.testing.durable_worker`), not worker subprocesses. A replayed step
is not executed, so it consumes no fault: this is how a test proves that a retry resumes
from the failed step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..context import RunContext
from ..errors import ConfigurationError

_lock = threading.Lock()
_active: list[_Fault] = []
_original: Callable[..., Any] | None = None


@dataclass
class _Fault:
    """``times`` executions of step ``name`` raise ``error(message)``; ``calls`` counts the
    executions seen (failed or not) while the fault was installed."""

    name: str
    times: int
    error: type[BaseException]
    message: str
    calls: int = 0
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def faulty(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                self.calls += 1
                fail = self.failed < self.times
                if fail:
                    self.failed += 1
                    n = self.failed
            if fail:
                raise self.error(f"{self.message} ({n} of {self.times})")
            return fn(*args, **kwargs)

        return faulty


@contextmanager
def fail_step(name: str, times: int = 1, error: type[BaseException] = ConnectionError,
              message: str | None = None) -> Iterator[_Fault]:
    """Within the block, the first ``times`` executions of the step ``name`` raise
    ``error``, before the step's function is called.

    ``name`` is the step's name (``@step(name=...)`` or the function's name), which matches
    every occurrence (``name``, ``name#2``, ...). The yielded object counts ``calls`` (every
    execution seen) and ``failed``. Step and task retry policies apply as for a real error.

    Raises:
        ConfigurationError: ``times`` is negative or ``error`` is not an exception class.
    """
    if times < 0:
        raise ConfigurationError(f"fail_step({name!r}): times must be >= 0, got {times}")
    if not (isinstance(error, type) and issubclass(error, BaseException)):
        raise ConfigurationError(f"fail_step({name!r}): error must be an exception class, "
                                 f"got {error!r}")
    fault = _Fault(name, times, error, message or f"injected failure of step {name!r}")
    with _lock:
        if not _active:
            _install()
        _active.append(fault)
    try:
        yield fault
    finally:
        with _lock:
            _active.remove(fault)
            if not _active:
                _uninstall()


def _install() -> None:
    global _original
    original = RunContext.run_step
    _original = original

    def run_step(self: RunContext, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any], policy: Any, *more: Any, **options: Any) -> Any:
        if self.current_step is None:  # a nested call belongs to its outer step
            for fault in list(_active):
                if fault.name == name:
                    fn = fault.wrap(fn)
                    break
        return original(self, name, fn, args, kwargs, policy, *more, **options)

    RunContext.run_step = run_step  # type: ignore[method-assign]


def _uninstall() -> None:
    global _original
    if _original is not None:
        RunContext.run_step = _original  # type: ignore[method-assign]
        _original = None
