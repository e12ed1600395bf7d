"""Every exception celery-durable raises, under one base class.

The tree::

    DurableError                      base for everything this package raises
     ├─ ConfigurationError            bad durable_* setting or decorator option
     ├─ NotInRunError                 current_run() called outside a durable run
     ├─ NonRetryableError             raised by user code: fail the run at once
     ├─ StoreError                    Redis unreachable or a script failed
     │   └─ LeaseLostError            this attempt was fenced out by a newer one
     ├─ CheckpointError               a step result could not be stored or read
     │   ├─ CheckpointEncodeError     a step result the codec cannot encode
     │   ├─ CheckpointDecodeError     a stored payload the codec cannot read
     │   ├─ CheckpointTooLargeError   an encoded result above the size limit
     │   └─ ProgressTooLargeError     a progress value above its size limit
     ├─ NondeterminismError           the step order differs from the recorded one
     ├─ IdempotencyConflictError      a key reused with different arguments
     ├─ PayloadValidationError        an argument does not match its pydantic model
     ├─ RunCrashedError               the run's worker died too many times
     ├─ ChildRunFailed                a child run failed or was cancelled
     ├─ RunTimeoutError               the run exceeded its run_timeout
     ├─ StepTimeoutError              a step overran its @step(timeout=...)
     ├─ VersionMismatchError          a run resumed on code of another version
     ├─ WaitTimeout                   wait_for_event reached its timeout
     ├─ RunNotFoundError              an unknown run id
     └─ HarnessError                  a celery_durable.testing helper could not do its job
         └─ RunWaitTimeoutError       a run did not reach the awaited state in time
    RunCancelled(BaseException)       control flow: the run was cancelled (not catchable
                                      with ``except Exception``)

Each class says when it is raised; each message names the run, the step and the fix.
Errors that may cross processes (result backends, Flower) pickle through ``__reduce__``.
"""

from __future__ import annotations

from typing import Any


class DurableError(Exception):
    """Base class of every error raised by celery-durable.

    ``retryable`` tells the task's retry policy whether another attempt can help; errors
    caused by the code itself (nondeterminism, an unencodable result) are not.
    """

    retryable: bool = True

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.details))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[DurableError], message: str, details: dict[str, Any]) -> DurableError:
    err = cls.__new__(cls)
    DurableError.__init__(err, message, **details)
    return err


class ConfigurationError(DurableError):
    """A ``durable_*`` setting or a decorator option is invalid (raised at import/decoration)."""

    retryable = False


class NotInRunError(DurableError):
    """``current_run()`` (or a run-only API) was used outside a durable run."""

    retryable = False


class NonRetryableError(DurableError):
    """Raise it (or a subclass) from a task or step to fail the run at once, without retry."""

    retryable = False


class StoreError(DurableError):
    """Redis could not be reached or a script failed; the redis error is the ``__cause__``."""


class LeaseLostError(StoreError):
    """A newer attempt took over this run's lease; this attempt must stop without committing."""


class RunCrashedError(DurableError):
    """The run's worker died more than ``durable_max_crashes`` times; the run is failed."""

    retryable = False


class CheckpointError(DurableError):
    """A step's checkpoint could not be written or read."""

    retryable = False


class CheckpointEncodeError(CheckpointError):
    """A step (or task) result has a type the JSON codec cannot encode."""


class CheckpointDecodeError(CheckpointError):
    """A stored checkpoint cannot be decoded (corrupt, foreign, or its class is gone)."""


class CheckpointTooLargeError(CheckpointError):
    """An encoded step result is larger than ``durable_max_checkpoint_bytes``."""


class ProgressTooLargeError(CheckpointError):
    """A value passed to ``current_run().progress()`` is larger than
    ``durable_max_progress_bytes`` once encoded."""


class NondeterminismError(DurableError):
    """A step was called at a position where the run recorded a different step."""

    retryable = False


class IdempotencyConflictError(DurableError):
    """An idempotency key was reused with different arguments."""

    retryable = False


class PayloadValidationError(DurableError):
    """An argument annotated with a pydantic model failed validation (in the caller)."""

    retryable = False


class ChildRunFailed(DurableError):
    """A child run started with ``call()`` or ``gather()`` failed or was cancelled.

    ``child_id``, ``error_type``, ``error_message`` and ``child_traceback`` describe it.
    """

    retryable = False

    @property
    def child_id(self) -> str:
        return str(self.details.get("child_id", ""))

    @property
    def error_type(self) -> str:
        return str(self.details.get("error_type", ""))


class RunTimeoutError(DurableError):
    """The run exceeded its task's ``run_timeout`` (counted across all its attempts)."""

    retryable = False


class StepTimeoutError(DurableError):
    """A step ran longer than its ``@step(timeout=...)``; retried like any step failure.

    ``step`` and ``timeout_s`` say which step and what limit."""


class VersionMismatchError(DurableError):
    """A run started on one version of its task's code resumed on another, and the task's
    ``version_policy`` is ``"fail"``. ``recorded`` and ``running`` name both versions."""

    retryable = False


class WaitTimeout(DurableError):
    """``wait_for_event`` reached its timeout without an event (catchable in the task)."""

    retryable = False


class RunNotFoundError(DurableError):
    """No run with this id exists (never created, or expired after its retention)."""

    retryable = False


class HarnessError(DurableError):
    """A ``celery_durable.testing`` helper could not do its job (no redis-server, a worker
    that did not start, a crash that could not be caused)."""

    retryable = False


class RunWaitTimeoutError(HarnessError, TimeoutError):
    """A run did not reach the state a test waited for within its deadline."""


class RunCancelled(BaseException):
    """The run was cancelled: raised at the next step boundary of a running attempt.

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` in user code
    cannot swallow a cancellation; it is not a DurableError for the same reason.
    """


__all__ = [
    "CheckpointDecodeError",
    "CheckpointEncodeError",
    "CheckpointError",
    "CheckpointTooLargeError",
    "ChildRunFailed",
    "ConfigurationError",
    "DurableError",
    "HarnessError",
    "IdempotencyConflictError",
    "LeaseLostError",
    "NonRetryableError",
    "NondeterminismError",
    "NotInRunError",
    "PayloadValidationError",
    "ProgressTooLargeError",
    "RunCancelled",
    "RunCrashedError",
    "RunNotFoundError",
    "RunTimeoutError",
    "RunWaitTimeoutError",
    "StepTimeoutError",
    "StoreError",
    "VersionMismatchError",
    "WaitTimeout",
]
