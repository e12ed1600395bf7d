"""celery-durable: durable Celery tasks with per-step checkpoints in Redis.

Swap ``@app.task`` for ``@durable_task``, mark steps with ``@step``, keep running
``celery -A proj worker``: a retried or recovered run resumes from its last committed step.
"""

from __future__ import annotations

from ._version import __version__
from .client import DurableClient
from .context import RunContext, current_run
from .errors import (
    CheckpointDecodeError,
    CheckpointEncodeError,
    CheckpointError,
    CheckpointTooLargeError,
    ChildRunFailed,
    ConfigurationError,
    DurableError,
    HarnessError,
    IdempotencyConflictError,
    LeaseLostError,
    NondeterminismError,
    NonRetryableError,
    NotInRunError,
    PayloadValidationError,
    ProgressTooLargeError,
    RunCancelled,
    RunCrashedError,
    RunNotFoundError,
    RunTimeoutError,
    RunWaitTimeoutError,
    StepTimeoutError,
    StoreError,
    VersionMismatchError,
    WaitTimeout,
)
from .models import (
    ErrorInfo,
    LimitInfo,
    LogRecordInfo,
    RunInfo,
    RunStatus,
    RunSummary,
    StepInfo,
    TraceEvent,
)
from .retry import RetryPolicy
from .steps import step
from .task import DurableTask, durable_task

__all__ = [
    "CheckpointDecodeError",
    "CheckpointEncodeError",
    "CheckpointError",
    "CheckpointTooLargeError",
    "ChildRunFailed",
    "ConfigurationError",
    "DurableClient",
    "DurableError",
    "DurableTask",
    "ErrorInfo",
    "HarnessError",
    "IdempotencyConflictError",
    "LeaseLostError",
    "LimitInfo",
    "LogRecordInfo",
    "NonRetryableError",
    "NondeterminismError",
    "NotInRunError",
    "PayloadValidationError",
    "ProgressTooLargeError",
    "RetryPolicy",
    "RunCancelled",
    "RunContext",
    "RunCrashedError",
    "RunInfo",
    "RunNotFoundError",
    "RunStatus",
    "RunSummary",
    "RunTimeoutError",
    "RunWaitTimeoutError",
    "StepInfo",
    "StepTimeoutError",
    "StoreError",
    "TraceEvent",
    "VersionMismatchError",
    "WaitTimeout",
    "__version__",
    "current_run",
    "durable_task",
    "step",
]
