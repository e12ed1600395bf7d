"""OpenTelemetry spans with the SDK's in-memory exporter: attempts, steps, propagation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@pytest.fixture(scope="session")
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter


def test_attempt_and_step_spans_continue_the_callers_trace(worker, tasks, token,
                                                           exporter) -> None:
    exporter.clear()
    run_id = str(uuid.uuid4())
    with trace.get_tracer("test").start_as_current_span("publish order") as publisher:
        tasks.counters_task.apply_async((token,), {"failures": 1}, task_id=run_id)
    assert tasks.counters_task.AsyncResult(run_id).get(timeout=30) == {"result": 20}
    spans = [s for s in exporter.get_finished_spans()
             if s.attributes.get("durable.run_id") == run_id]
    attempts = sorted((s for s in spans if s.name.startswith("durable.attempt")),
                      key=lambda s: s.attributes["durable.attempt"])
    assert [a.attributes["durable.outcome"] for a in attempts] == ["retrying", "completed"]
    trace_id = publisher.get_span_context().trace_id
    # One trace: the first attempt under the publisher, the retry under the first attempt.
    assert {a.context.trace_id for a in attempts} == {trace_id}
    assert attempts[0].parent.span_id == publisher.get_span_context().span_id
    assert attempts[1].parent.span_id == attempts[0].context.span_id
    steps = [s for s in spans if s.name.startswith("durable.step")]
    summary = [(s.attributes["durable.attempt"], s.attributes["durable.step"],
                s.attributes["durable.outcome"], s.attributes["durable.replayed"])
               for s in sorted(steps, key=lambda s: s.start_time)]
    assert summary == [
        (1, "load", "committed", False), (1, "enrich", "committed", False),
        (1, "flaky_save", "failed", False),
        (2, "load", "replayed", True), (2, "enrich", "replayed", True),
        (2, "flaky_save", "committed", False),
    ]
    by_attempt = {a.attributes["durable.attempt"]: a.context.span_id for a in attempts}
    assert all(s.parent.span_id == by_attempt[s.attributes["durable.attempt"]] for s in steps)


def test_child_runs_join_the_parents_trace(worker, tasks, client, token, exporter) -> None:
    exporter.clear()
    result = tasks.parent_calls.delay(token, 4)
    assert result.get(timeout=30) == 9
    child_id = client.get_run(result.id).children[0]
    spans = exporter.get_finished_spans()
    parent_traces = {s.context.trace_id for s in spans
                     if s.attributes.get("durable.run_id") == result.id}
    child_traces = {s.context.trace_id for s in spans
                    if s.attributes.get("durable.run_id") == child_id}
    assert len(parent_traces) == 1 and child_traces == parent_traces
