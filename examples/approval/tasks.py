"""An expense approval: notify the approver, wait for the decision, then pay or not.

The wait holds no worker: the run is ``suspended`` in Redis until an event is sent to its key
(``expense:<request id>``), from the CLI, ``DurableClient.send_event`` or Flower, or until
the timeout. The decision is checkpointed like a step, so branching on it is deterministic.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from celery_durable import RetryPolicy, WaitTimeout, current_run, durable_task, step


class Decision(BaseModel):
    """The payload an approver sends."""

    approved: bool
    by: str
    note: str = ""


# The approvers' chat API takes 120 messages a minute, whichever worker sends them.
@step(rate_limit="120/m", rate_burst=20)
def notify_approver(request_id: str, amount_cents: int) -> str:
    print(f"expense {request_id} ({amount_cents} cents) waits for a decision:\n"
          f"  celery -A proj durable send-event expense:{request_id} "
          f"--data '{{\"approved\": true, \"by\": \"you\"}}'", flush=True)
    return f"notified about {request_id}"


@step
def pay_out(request_id: str, amount_cents: int) -> str:
    return f"payout-{request_id}-{amount_cents}"


@durable_task(retry=RetryPolicy(max_attempts=3, min_delay=1, max_delay=5))
def expense_approval(request_id: str, amount_cents: int,
                     timeout_s: float = 3 * 86400) -> dict[str, Any]:
    notify_approver(request_id, amount_cents)
    try:
        decision = current_run().wait_for_event(
            "decision", key=f"expense:{request_id}", timeout=timeout_s, model=Decision)
    except WaitTimeout:
        return {"request": request_id, "status": "expired"}
    if not decision.approved:
        return {"request": request_id, "status": "rejected", "by": decision.by,
                "note": decision.note}
    return {"request": request_id, "status": "paid", "by": decision.by,
            "payout": pay_out(request_id, amount_cents)}
