"""Step timeouts: interrupt a step that runs longer than its ``@step(timeout=...)``.

Python cannot kill a thread, so an overrunning step is interrupted by raising an exception
inside it, the one way that works in every Celery pool:

- in a process's main thread (prefork pool processes, the solo pool), a ``SIGALRM`` timer
  (``setitimer``): its handler raises at once, even in ``time.sleep()`` or a blocking socket
  read, which the signal interrupts;
- in any other thread (the threads pool, an embedded worker) or when the process already
  uses ``SIGALRM`` for its own timer, a watchdog thread raises the exception in the step's
  thread (``PyThreadState_SetAsyncExc``). It is delivered at the next Python bytecode the
  thread runs: a step blocked inside one long C call (a ``time.sleep(600)``, a socket read
  without a timeout) is interrupted only when that call returns.

The step then fails with ``StepTimeoutError`` and goes through its retry policy (and then
the task's) like any other failure. Only steps called from the task body are timed: a step
called from inside another step is part of the outer step (and of its timeout).
"""

from __future__ import annotations

import ctypes
import functools
import signal
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from .errors import StepTimeoutError

P = ParamSpec("P")
R = TypeVar("R")


class _Overrun(BaseException):
    """Raised inside the step when its time is up (a BaseException, so ``except Exception``
    in the step does not swallow it); turned into StepTimeoutError by the caller."""


def _raise_in_thread(thread_id: int, exc: type[BaseException] | None) -> None:
    """Schedule ``exc`` in thread ``thread_id`` (None clears a pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None)


class _Guard:
    """One timed call: arms the interruption, and makes sure it can only hit that call."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()
        self.running = True
        self.fired = False
        self.thread_id = threading.get_ident()
        self.use_signal = (threading.current_thread() is threading.main_thread()
                           and signal.getitimer(signal.ITIMER_REAL)[0] == 0
                           and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL,
                                                                    signal.SIG_IGN, None))
        self.previous_handler: Any = None
        self.armed = False
        self.watchdog: threading.Timer | None = None

    def _on_alarm(self, signum: int, frame: Any) -> None:
        # Runs in this very thread, between two bytecodes: no lock (it could be held).
        if self.running:
            self.fired = True
            raise _Overrun()

    def _on_watchdog(self) -> None:
        with self.lock:
            if not self.running:
                return
            self.fired = True
            _raise_in_thread(self.thread_id, _Overrun)

    def arm(self) -> None:
        if self.use_signal:
            self.previous_handler = signal.signal(signal.SIGALRM, self._on_alarm)
            self.armed = True
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        else:
            self.watchdog = threading.Timer(self.seconds, self._on_watchdog)
            self.watchdog.daemon = True
            self.watchdog.start()

    def disarm(self) -> None:
        """Stop the timer; idempotent, because the interruption may cut a first call short
        (it is then called again)."""
        if self.use_signal:
            self.running = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            if self.armed:
                self.armed = False
                # A handler installed from C reads as None: give back the default then.
                signal.signal(signal.SIGALRM, self.previous_handler or signal.SIG_DFL)
            return
        with self.lock:
            self.running = False
            fired = self.fired
        if self.watchdog is not None:
            self.watchdog.cancel()
        if fired:
            # The exception may still be pending (not delivered yet): drop it.
            _raise_in_thread(self.thread_id, None)


def with_timeout(fn: Callable[P, R], seconds: float,
                 describe: Callable[[], str]) -> Callable[P, R]:
    """``fn`` interrupted with StepTimeoutError after ``seconds``; ``describe()`` names the
    step and run for the message."""

    @functools.wraps(fn)
    def timed(*args: P.args, **kwargs: P.kwargs) -> R:
        guard = _Guard(seconds)
        try:
            guard.arm()
            try:
                return fn(*args, **kwargs)
            finally:
                guard.disarm()
        except _Overrun:
            guard.disarm()
            raise StepTimeoutError(
                f"{describe()} ran longer than its timeout of {seconds:g} s and was "
                "interrupted: raise @step(timeout=...), or save progress with "
                "current_run().progress() so a retry goes on from there",
                timeout_s=seconds) from None

    return timed
