"""Two durable tasks: an order whose payment fails once, and a catalog import to crash.

``process_order``: an order pipeline of three steps whose payment step fails on the first
attempt. Attempt 1 reserves the stock, then the (simulated) payment API times out: the attempt
fails and the run is retried. Attempt 2 gets the reservation back from its checkpoint, without
executing ``reserve_stock`` again, charges the card and sends the receipt.

``import_catalog``: imports a batch page by page, one ``import_page`` step per page (about
0.8 s each), so that there is time to kill its worker mid-run (``run_crash_demo.py``). Another
worker resumes the run: the pages committed before the crash are not imported again.
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


@step
def import_page(batch_id: str, page: int) -> dict[str, Any]:
    say(f"import_page: executing page {page} (batch {batch_id})")
    time.sleep(0.8)  # fetching and writing one page of products
    return {"page": page, "products": 50}


@durable_task(retry=RetryPolicy(max_attempts=3, min_delay=1, max_delay=2))
def import_catalog(batch_id: str, pages: int = 6) -> dict[str, Any]:
    """One step per page: the steps are named import_page, import_page#2, ... in call order."""
    say(f"import_catalog: starting (batch {batch_id}, {pages} pages)")
    imported = [import_page(batch_id, page) for page in range(1, pages + 1)]
    say(f"import_catalog: done (batch {batch_id})")
    return {"batch_id": batch_id, "pages": len(imported),
            "products": sum(p["products"] for p in imported)}
