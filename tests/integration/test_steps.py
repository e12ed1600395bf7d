"""Step identity, determinism, encoding of step results."""

from __future__ import annotations

import pytest

from celery_durable import CheckpointEncodeError, NondeterminismError, RunStatus


def test_nondeterministic_step_order_is_an_error(worker, tasks, client, token) -> None:
    result = tasks.nondeterministic_task.delay(token)
    with pytest.raises(NondeterminismError) as info:
        result.get(timeout=30)
    message = str(info.value)
    assert "'step_a'" in message and "'step_b'" in message and "position 0" in message
    run = client.get_run(result.id)
    assert run.status is RunStatus.FAILED
    assert run.attempt == 2  # not retried again: the code, not the world, is wrong


def test_unencodable_step_result_fails_the_run_clearly(worker, tasks, client) -> None:
    result = tasks.unencodable_task.delay()
    with pytest.raises(CheckpointEncodeError) as info:
        result.get(timeout=30)
    assert "'make_object'" in str(info.value) and "builtins.object" in str(info.value)
    run = client.get_run(result.id)
    assert run.status is RunStatus.FAILED
    assert run.attempt == 1
    assert run.error is not None and "builtins.object" in run.error.message


def test_pydantic_and_dataclass_results_round_trip(worker, tasks, client, token) -> None:
    result = tasks.models_task.delay(token)
    assert result.get(timeout=30) == {
        "invoice": "INV-1", "carrier": "post", "issued": "2026-01-02T03:04:05+00:00"
    }
    assert tasks.count(token, "invoice") == 1
    assert tasks.count(token, "shipment") == 1
    run = client.get_run(result.id)
    assert run.attempt == 2
    assert isinstance(run.steps[0].value, tasks.Invoice)


def test_loop_steps_are_numbered_and_resume_at_the_failed_call(
    worker, tasks, client, token
) -> None:
    # An agent loop of 50 calls whose 37th call (index 36) fails once
    result = tasks.agent_loop.delay(token, 50, 36)
    answers = result.get(timeout=60)
    assert answers == [f"answer {i}" for i in range(50)]
    run = client.get_run(result.id)
    names = [s.name for s in run.steps]
    assert names[:3] == ["llm_call", "llm_call#2", "llm_call#3"]
    assert names[-1] == "llm_call#50"
    # Calls before the failure ran once; the failed call twice; the rest once.
    assert [tasks.count(token, f"llm:{i}") for i in range(50)] == [1] * 36 + [2] + [1] * 13
    assert {s.attempt for s in run.steps[:36]} == {1}
    assert {s.attempt for s in run.steps[36:]} == {2}


def test_run_context_step_and_bound_tasks(worker, tasks, token) -> None:
    assert tasks.add_one.delay(41).get(timeout=30) == 42
    assert tasks.bound_task.delay(token).get(timeout=30) == "tests.tasks.bound_task:True"


def test_step_key_is_stable_across_attempts(worker, tasks, client, token) -> None:
    result = tasks.keyed_payment.delay(token)
    key = result.get(timeout=30)
    assert key == f"{result.id}:charge_with_key"
    assert tasks.counters.lrange(f"{token}:keys", 0, -1) == [key, key]


def test_oversized_checkpoint_fails_clearly(worker, tasks, client) -> None:
    from celery_durable import CheckpointTooLargeError

    result = tasks.oversized_task.delay()
    with pytest.raises(CheckpointTooLargeError, match="durable_max_checkpoint_bytes"):
        result.get(timeout=30)
    run = client.get_run(result.id)
    assert run.status is RunStatus.FAILED and run.attempt == 1 and run.steps == []


def test_apply_runs_a_durable_task_in_process(test_app, tasks, client) -> None:
    eager = tasks.add_one.apply(args=(1,))
    assert eager.get() == 2
    assert client.get_run(eager.id).status is RunStatus.COMPLETED
