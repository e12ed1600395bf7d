"""An order pipeline of three steps whose payment step fails on the first attempt.

Attempt 1 reserves the stock, then the (simulated) payment API times out: the attempt fails
and the run is retried. Attempt 2 gets the reservation back from its checkpoint, without
executing ``reserve_stock`` again, charges the card and sends the receipt.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from celery_durable import RetryPolicy, current_run, durable_task, step


def say(message: str) -> None:
    """One line in the worker log, tagged with the attempt that is running."""
    print(f"[attempt {current_run().attempt}] {message}", flush=True)


@step
def reserve_stock(order_id: str) -> dict[str, Any]:
    say(f"reserve_stock: executing (order {order_id})")
    time.sleep(0.05)  # the inventory service at work
    return {"reservation": f"res-{order_id}", "items": 2, "total_cents": 4200}


@step
def charge_card(order_id: str, amount_cents: int) -> str:
    say(f"charge_card: executing (order {order_id}, {amount_cents} cents)")
    time.sleep(0.05)
    # A flaky payment API: it times out the first time. The decision is taken inside the
    # step, where it cannot change which steps the task body calls (branching on the attempt
    # number in the task body itself would break the step order between attempts).
    if current_run().attempt == 1:
        say(f"charge_card: payment API timed out (order {order_id})")
        raise ConnectionError("payment API timed out (simulated)")
    # The same key in every attempt: a real payment API would deduplicate the charge with it.
    key = current_run().step_key
    return "ch_" + hashlib.sha256(key.encode()).hexdigest()[:12]


@step
def send_receipt(order_id: str, charge_id: str) -> str:
    say(f"send_receipt: executing (order {order_id}, charge {charge_id})")
    time.sleep(0.02)
    return f"receipt for {order_id} ({charge_id}) sent"


@durable_task(retry=RetryPolicy(max_attempts=3, min_delay=1, max_delay=2))
def process_order(order_id: str) -> dict[str, Any]:
    # Printing the attempt number is fine here; branching on it would not be.
    say(f"process_order: starting (order {order_id})")
    reservation = reserve_stock(order_id)
    charge_id = charge_card(order_id, reservation["total_cents"])
    receipt = send_receipt(order_id, charge_id)
    say(f"process_order: done (order {order_id})")
    return {"order_id": order_id, "reservation": reservation["reservation"],
            "charge_id": charge_id, "receipt": receipt}
