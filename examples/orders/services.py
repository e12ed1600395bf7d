"""Stand-ins for the shop's inventory and payment services.

They keep their state in Redis, outside the worker, like real services: a worker that is
killed does not take them down. The payment gateway deduplicates charges by idempotency key,
as real payment APIs do (Stripe's ``Idempotency-Key`` header, for instance).
"""

from __future__ import annotations

import os
import uuid

import redis

db = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                          decode_responses=True)


def reserve_stock(order_id: str, items: dict[str, int]) -> str:
    """Take ``items`` (sku -> quantity) out of stock; return a reservation id."""
    db.incr(f"shop:calls:reserve:{order_id}")
    for sku, quantity in items.items():
        db.hincrby("shop:stock", sku, -quantity)
    return f"res-{order_id}"


def charge(order_id: str, amount_cents: int, idempotency_key: str) -> str:
    """Charge the customer, once per ``idempotency_key``; return the charge id.

    A second request with the same key returns the first charge instead of charging again.
    """
    db.incr(f"shop:calls:charge:{order_id}")
    charge_id = f"ch_{uuid.uuid4().hex[:12]}"
    if db.set(f"shop:payments:{idempotency_key}", charge_id, nx=True):
        db.rpush(f"shop:charges:{order_id}", f"{charge_id}:{amount_cents}")
        return charge_id
    return str(db.get(f"shop:payments:{idempotency_key}"))


def ship(order_id: str, reservation: str) -> str:
    """Hand the reserved items to the carrier; return a tracking number."""
    db.incr(f"shop:calls:ship:{order_id}")
    return f"track-{order_id}"


def charges(order_id: str) -> list[str]:
    """The charges really made for the order (``"<charge id>:<cents>"``)."""
    return list(db.lrange(f"shop:charges:{order_id}", 0, -1))


def calls(order_id: str, service: str) -> int:
    """How many requests the service got for the order."""
    return int(db.get(f"shop:calls:{service}:{order_id}") or 0)
