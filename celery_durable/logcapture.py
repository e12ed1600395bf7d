"""Per-run logs: records logged inside a run are kept in its trace as ``log`` events.

One ``logging.Handler`` per process sits on the root logger and on Celery's ``celery.task``
logger (which does not propagate in a worker), so it sees records of the task logger
(``get_task_logger``, ``self.get_logger()``) and of any ``logging`` logger. It keeps a record
only if the thread (or context) that logged it is executing a durable run: the run is found
through the run ContextVar, so records of other threads and other runs never leak in.

Records are buffered on the attempt and written with its next step commit, step failure or
end, in the same round trip (a pipeline), or in batches of ``FLUSH_BATCH`` during a long
step. A log write never fails a run. Each event has the fields ``level`` (level name),
``logger``, ``message`` (formatted, with the exception text if any; cut at
``durable_log_max_chars``), ``step`` (the step executing, or ""), ``attempt`` and ``ms``
(when it was logged, epoch ms).
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import TYPE_CHECKING, Any

from .config import DurableSettings

if TYPE_CHECKING:
    from .context import RunContext

#: Trace event type of a captured record.
LOG_EVENT = "log"
#: Values per record in the flat argument list of append_logs.lua.
FIELDS_PER_RECORD = 6
#: Buffered records that make a step flush them before its commit.
FLUSH_BATCH = 100
#: Logger name of the notice recorded when an attempt reaches durable_log_max_records.
NOTICE_LOGGER = "celery_durable.logs"
#: Attribute set on a record once captured (it may reach the handler through two loggers).
_MARK = "_durable_run_logs"
_formatter = logging.Formatter()
_local = threading.local()


def truncate(message: str, limit: int) -> str:
    """``message`` cut to ``limit`` characters, with a marker saying how much was cut."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... [truncated {len(message) - limit} characters]"


def format_message(record: logging.LogRecord) -> str:
    """The record's message with its arguments, and the exception (and stack) text."""
    try:
        message = record.getMessage()
    except Exception:  # bad %-arguments: keep what was logged
        message = f"{record.msg!s} {record.args!r}"
    if record.exc_info:
        message = f"{message}\n{_formatter.formatException(record.exc_info)}"
    elif record.exc_text:
        message = f"{message}\n{record.exc_text}"
    if record.stack_info:
        message = f"{message}\n{record.stack_info}"
    return message


class RunLogs:
    """The log records of one attempt not yet written, and the attempt's bound."""

    __slots__ = ("pending", "captured", "dropped", "level", "max_records", "max_chars",
                 "attempt")

    def __init__(self, settings: DurableSettings, attempt: int) -> None:
        #: Flat values for append_logs.lua (FIELDS_PER_RECORD per record).
        self.pending: list[str] = []
        self.captured = 0
        self.dropped = 0
        self.level = settings.log_level
        self.max_records = settings.log_max_records
        self.max_chars = settings.log_max_chars
        self.attempt = str(attempt)

    def add(self, record: logging.LogRecord, step: str) -> bool:
        """Buffer ``record``; returns whether enough records wait for a flush."""
        if self.captured >= self.max_records:
            if self.dropped == 0:
                self.pending += [
                    "WARNING", NOTICE_LOGGER,
                    f"log capture limit reached (durable_log_max_records={self.max_records}):"
                    " later records of this attempt are not kept", step, self.attempt,
                    str(int(record.created * 1000))]
            self.dropped += 1
            return False
        self.captured += 1
        self.pending += [record.levelname, record.name,
                         truncate(format_message(record), self.max_chars), step,
                         self.attempt, str(int(record.created * 1000))]
        return len(self.pending) >= FLUSH_BATCH * FIELDS_PER_RECORD

    def take(self) -> list[str]:
        """The buffered values, emptying the buffer."""
        pending, self.pending = self.pending, []
        return pending


class RunLogHandler(logging.Handler):
    """Routes records logged inside a durable run into that run's buffer."""

    def handle(self, record: logging.LogRecord) -> Any:
        # No handler lock: each run's buffer is only touched from the run's own context.
        rv = self.filter(record)
        if rv:
            self.emit(rv if isinstance(rv, logging.LogRecord) else record)
        return rv

    def emit(self, record: logging.LogRecord) -> None:
        from .context import get_run_context

        ctx = get_run_context()
        if ctx is None:
            return
        logs = ctx.logs
        if logs is None or record.levelno < logs.level or getattr(_local, "busy", False):
            return
        if record.__dict__.get(_MARK) is logs:
            return  # the same record, reaching us through a second logger
        record.__dict__[_MARK] = logs
        _local.busy = True  # records logged while we buffer or flush are not captured
        try:
            if logs.add(record, ctx.current_step or ""):
                flush(ctx)
        except Exception:
            pass  # a log record is never worth failing a run
        finally:
            _local.busy = False


_handler = RunLogHandler()
#: The loggers the handler is attached to (Celery's task logger does not propagate).
_LOGGERS = ("", "celery.task")


def install() -> None:
    """Attach the handler (once per process; cheap to call again, e.g. after Celery set
    up logging and replaced the root logger's handlers).

    Only to loggers that already handle records themselves (every worker configures
    both): a handler on an unconfigured root logger would stop ``logging.lastResort`` from
    printing warnings in a process that never set up logging.
    """
    for target in _targets():
        if _handler not in target.handlers and (target.handlers or not target.propagate):
            target.addHandler(_handler)


@functools.cache
def _targets() -> tuple[logging.Logger, ...]:
    """The loggers of ``_LOGGERS`` (looked up once: a logger object lives as long as the
    process, and ``getLogger`` takes the logging module's lock every call)."""
    return tuple(logging.getLogger(name) for name in _LOGGERS)


def uninstall() -> None:
    for target in _targets():
        target.removeHandler(_handler)


def flush(ctx: RunContext) -> None:
    """Write the attempt's buffered records now (one round trip); never raises."""
    logs = ctx.logs
    if logs is None or not logs.pending:
        return
    busy = getattr(_local, "busy", False)
    _local.busy = True
    try:
        ctx.store.append_logs(ctx.id, logs.take())
    except Exception:
        pass  # Redis unreachable: these records are lost, the run goes on
    finally:
        _local.busy = busy
