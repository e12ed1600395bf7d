"""An order pipeline: reserve the stock, charge the card, ship.

Each call to a service is a step. A committed step is never executed again for the run; a
step that was executing when its worker died is executed again by the next attempt, so the
charge passes ``current_run().step_key`` to the gateway: the same key in every attempt, and
the gateway charges once. The task's idempotency key makes a repeated submission of the
same order return the first run instead of starting a second one.
"""

from __future__ import annotations

import time
from typing import Any

import services

from celery_durable import RetryPolicy, current_run, durable_task, step

PRICES_CENTS = {"mug": 1200, "tea": 850}


@step
def reserve_inventory(order_id: str, items: dict[str, int]) -> str:
    print(f"[attempt {current_run().attempt}] reserving stock for {order_id}", flush=True)
    return services.reserve_stock(order_id, items)


@step(retry=RetryPolicy(max_attempts=3, min_delay=0.5, max_delay=2))
def charge_payment(order_id: str, amount_cents: int, settle_s: float) -> str:
    print(f"[attempt {current_run().attempt}] charging {amount_cents} cents for {order_id}",
          flush=True)
    charge_id = services.charge(order_id, amount_cents, idempotency_key=current_run().step_key)
    time.sleep(settle_s)  # waiting for the gateway to confirm the charge
    return charge_id


@step
def ship_order(order_id: str, reservation: str) -> str:
    print(f"[attempt {current_run().attempt}] shipping {order_id}", flush=True)
    return services.ship(order_id, reservation)


@durable_task(
    retry=RetryPolicy(max_attempts=5, min_delay=1, max_delay=5),
    # A customer who clicks "buy" twice gets one run: the same key gives the same run id.
    idempotency_key=lambda order_id, *args, **kwargs: f"order:{order_id}",
)
def place_order(order_id: str, items: dict[str, int], settle_s: float = 0.0) -> dict[str, Any]:
    """``settle_s``: how long the gateway takes to confirm a charge (seconds)."""
    amount = sum(PRICES_CENTS[sku] * n for sku, n in items.items())
    reservation = reserve_inventory(order_id, items)
    charge_id = charge_payment(order_id, amount, settle_s)
    tracking = ship_order(order_id, reservation)
    return {"order": order_id, "amount_cents": amount, "charge": charge_id,
            "tracking": tracking}
