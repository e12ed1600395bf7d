"""Events, cancellation, replay and fork, with a real worker and real Redis."""

from __future__ import annotations

import time

import pytest
from celery.exceptions import TaskRevokedError

from celery_durable import RunStatus


def wait_status(client, run_id: str, status: RunStatus, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while client.get_run(run_id).status is not status:
        assert time.monotonic() < deadline, f"run {run_id} never became {status.value}"
        time.sleep(0.05)


def test_approval_flow_resumes_with_the_payload(worker, tasks, client, token) -> None:
    result = tasks.approval_flow.delay(token)
    wait_status(client, result.id, RunStatus.SUSPENDED)
    assert client.send_event(f"approve:{token}", {"approved": True, "by": "ana"}) == [result.id]
    assert result.get(timeout=20) == {"approved": True, "by": "ana"}
    run = client.get_run(result.id)
    assert [s.name for s in run.steps] == ["load", "approval"]
    assert run.steps[1].value == {"key": f"approve:{token}",
                                  "payload": {"approved": True, "by": "ana"}}
    assert tasks.count(token, "load") == 1 and tasks.count(token, "after_wait") == 1


def test_an_event_sent_before_the_wait_is_delivered(worker, tasks, token) -> None:
    from tests.tasks import Approval

    assert worker is not None
    from celery_durable import DurableClient
    from tests.app import app

    DurableClient(app).send_event(f"approve:{token}", Approval(approved=True, by="early"))
    assert tasks.approval_flow.delay(token).get(timeout=20) == {"approved": True,
                                                               "by": "early"}


def test_wait_timeout_raises_wait_timeout_in_the_task(worker, tasks, client, token) -> None:
    result = tasks.approval_flow.delay(token, timeout=2.0)
    assert result.get(timeout=20) == {"approved": False, "by": "timeout"}
    run = client.get_run(result.id)
    assert run.steps[1].value == {"key": f"approve:{token}", "timeout": 2.0}
    assert tasks.count(token, "after_wait") == 0


def test_cancel_a_suspended_run(worker, tasks, client, token) -> None:
    result = tasks.approval_flow.delay(token)
    wait_status(client, result.id, RunStatus.SUSPENDED)
    assert client.cancel(result.id) is RunStatus.SUSPENDED
    with pytest.raises(TaskRevokedError):
        result.get(timeout=10)
    run = client.get_run(result.id)
    assert run.status is RunStatus.CANCELLED
    # An event sent later does not revive it.
    client.send_event(f"approve:{token}", {"approved": True, "by": "late"})
    time.sleep(1.5)
    assert client.get_run(result.id).status is RunStatus.CANCELLED
    assert tasks.count(token, "after_wait") == 0


def test_cancel_a_running_attempt_at_its_next_step(worker, tasks, client, token) -> None:
    result = tasks.slow_steps.delay(token, 20, 0.2)
    deadline = time.monotonic() + 20
    while client.get_run(result.id).step_count < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client.cancel(result.id)
    time.sleep(1.0)
    run = client.get_run(result.id)
    assert run.status is RunStatus.CANCELLED
    executed = sum(tasks.count(token, f"slow{i}") for i in range(20))
    assert executed <= run.step_count + 1 < 20
    with pytest.raises(TaskRevokedError):
        result.get(timeout=10)


def test_replay_a_failed_run_from_its_last_checkpoint(worker, tasks, client, token) -> None:
    result = tasks.three_steps.delay(token, fail_at=1)
    with pytest.raises(RuntimeError):
        result.get(timeout=20)
    assert client.get_run(result.id).status is RunStatus.FAILED
    assert client.replay(result.id) == result.id
    # A fresh AsyncResult: the old one cached the failure it already returned.
    assert tasks.three_steps.AsyncResult(result.id).get(timeout=20) == ["a0", "a1", "a2"]
    run = client.get_run(result.id)
    assert run.status is RunStatus.COMPLETED
    assert [tasks.count(token, f"s{i}") for i in range(3)] == [1, 2, 1]
    assert any(e.type == "run_replayed" for e in run.events)


def test_fork_from_a_middle_step_with_new_arguments(worker, tasks, client, token) -> None:
    original = tasks.three_steps.delay(token)
    assert original.get(timeout=20) == ["a0", "a1", "a2"]
    fork_id = client.replay(original.id, from_step="s1", args=[token], kwargs={"label": "b"})
    assert fork_id != original.id
    fork = tasks.three_steps.AsyncResult(fork_id)
    # s0 comes from the original's checkpoint; s1 and s2 run again with the new label.
    assert fork.get(timeout=20) == ["a0", "b1", "b2"]
    assert [tasks.count(token, f"s{i}") for i in range(3)] == [1, 2, 2]
    run = client.get_run(fork_id)
    assert any(e.type == "run_forked_from" and e.fields["origin"] == original.id
               for e in run.events)
    assert any(e.type == "run_forked" and e.fields["fork"] == fork_id
               for e in client.get_run(original.id).events)
