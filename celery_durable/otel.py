"""OpenTelemetry spans: one per attempt, one per step (only with the ``otel`` extra).

Uses ``opentelemetry-api`` only: spans are recorded when the application configures an SDK
(a TracerProvider), and cost next to nothing otherwise. The trace context travels in the
message headers (W3C ``traceparent``), injected by ``apply_async`` and by child starts, so
an attempt's span is a child of the publisher's span and a child run's of its parent's; the
same headers ``opentelemetry-instrumentation-celery`` uses, so both work side by side.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager, nullcontext
from typing import Any

try:  # the optional extra
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Status, StatusCode
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    trace = None  # type: ignore[assignment]

from ._version import __version__

ENABLED = trace is not None


def inject(headers: MutableMapping[str, Any]) -> None:
    """Add the current trace context to message headers (no-op without the extra)."""
    if ENABLED:
        propagate.inject(headers)


#: The package's tracer (a proxy: it follows a TracerProvider configured later).
_TRACER: Any = None


def _tracer() -> Any:
    global _TRACER
    if _TRACER is None:
        _TRACER = trace.get_tracer("celery_durable", __version__)
    return _TRACER


def _recording() -> bool:
    """Whether the application configured a TracerProvider (an SDK): until it does, the
    API's default provider makes spans that record nothing."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


@contextmanager
def attempt_span(task_name: str, run_id: str, attempt: int,
                 headers: dict[str, Any] | None) -> Iterator[Any]:
    """The span of one attempt, parented by the trace context of its message.

    Without an SDK and without a trace context in the message there is nothing to record
    or pass on, so no span is made (the per-attempt cost is then one isinstance check);
    with a context but no SDK, a non-recording span still carries it to the runs and
    messages the attempt starts.
    """
    if not ENABLED or (not _recording() and not (headers and "traceparent" in headers)):
        yield None
        return
    parent = propagate.extract(headers or {})
    with _tracer().start_as_current_span(
        f"durable.attempt {task_name}", context=parent,
        attributes={"durable.run_id": run_id, "durable.attempt": attempt,
                    "durable.task": task_name},
        record_exception=False, set_status_on_exception=False,
    ) as span:
        yield span


def set_outcome(span: Any, outcome: str, error: BaseException | None = None) -> None:
    """Record how an attempt or a step ended on its span."""
    if span is None:
        return
    span.set_attribute("durable.outcome", outcome)
    if error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def step_span(run_id: str, step: str, position: int, attempt: int, replayed: bool) -> Any:
    """A context manager for the span of one step (a null context without the extra)."""
    if not ENABLED:
        return nullcontext(None)
    return _tracer().start_as_current_span(
        f"durable.step {step}",
        attributes={"durable.run_id": run_id, "durable.step": step,
                    "durable.position": position, "durable.attempt": attempt,
                    "durable.replayed": replayed},
        record_exception=False, set_status_on_exception=False,
    )
