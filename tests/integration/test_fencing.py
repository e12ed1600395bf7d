"""An attempt whose lease was taken over cannot commit or finish the run."""

from __future__ import annotations

import time

from celery_durable import RunStatus


def test_fenced_attempt_stops_without_committing(worker, tasks, client, token) -> None:
    result = tasks.takeover_task.delay(token)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        run = client.get_run(result.id)
        if any(e.type == "attempt_fenced" for e in run.events):
            break
        time.sleep(0.05)
    run = client.get_run(result.id)
    # The zombie's step was not committed, and its task body stopped right there.
    assert [s.name for s in run.steps] == ["load"]
    assert tasks.count(token, "after_takeover") == 0
    # The run belongs to the new attempt, untouched by the zombie.
    assert run.status is RunStatus.RUNNING
    assert run.lease_owner == "thief"
    assert run.attempt == 2
    assert result.state == "PENDING"  # Ignore: Celery stored no outcome for the zombie
    fenced = [e for e in run.events if e.type == "attempt_fenced"]
    assert [e.fields["attempt"] for e in fenced] == ["1"]
