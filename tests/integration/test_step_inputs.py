"""durable_record_step_inputs: a step's arguments kept with its checkpoint, for the traces."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_durable import DurableClient, DurableTask, step


@step
def greet(name: str, punctuation: str = "!") -> str:
    return f"hello {name}{punctuation}"


@step
def swallow(blob: Any) -> int:
    return len(str(blob))


@pytest.fixture
def inputs_app(redis_base_url: str) -> Iterator[Celery]:
    app = Celery("inputs", broker=f"{redis_base_url}/9", backend=f"{redis_base_url}/9",
                 set_as_current=False)
    app.conf.durable_redis_url = f"{redis_base_url}/9"
    app.conf.durable_record_step_inputs = True
    yield app


def test_step_inputs_are_kept_when_asked(inputs_app: Celery) -> None:
    @inputs_app.task(base=DurableTask, name="inputs.flow")
    def flow() -> list[Any]:
        return [greet("ada", punctuation="?"), swallow("x" * 10_000), swallow(object())]

    result = flow.apply()
    assert result.get()[0] == "hello ada?"
    steps = DurableClient(inputs_app).get_run(result.id).steps
    assert steps[0].inputs == {"args": ["ada"], "kwargs": {"punctuation": "?"}}
    assert steps[1].inputs["omitted_bytes"] > 10_000  # large inputs: the size only
    assert steps[2].inputs["repr"].startswith("((<object object")  # not JSON: a repr


def test_step_inputs_are_not_kept_by_default(redis_base_url: str, tasks: Any,
                                             client: DurableClient, token: str) -> None:
    result = tasks.counters_task.apply((token,), {"failures": 0})
    assert result.get() == {"result": 20}
    assert all(s.inputs is None for s in client.get_run(result.id).steps)
