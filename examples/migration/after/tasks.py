"""Sync a customer from the CRM to the warehouse: fetch, enrich, upload.

The services are stand-ins that count their calls in Redis; the warehouse upload times out
on its first call for each customer.
"""

from __future__ import annotations

import os
from typing import Any

import redis

from celery_durable import RetryPolicy, durable_task, step

db = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                          decode_responses=True)


def called(service: str, customer_id: str) -> int:
    return int(db.incr(f"migration:calls:{service}:{customer_id}"))


@step
def fetch_customer(customer_id: str) -> dict[str, Any]:
    called("fetch", customer_id)  # a slow CRM export
    return {"id": customer_id, "orders": 12}


@step
def enrich(customer: dict[str, Any]) -> dict[str, Any]:
    called("enrich", customer["id"])  # a paid geocoding API
    return {**customer, "segment": "loyal" if customer["orders"] > 10 else "new"}


@step
def upload(record: dict[str, Any]) -> str:
    if called("upload", record["id"]) == 1:
        raise ConnectionError("warehouse timed out")
    return f"row-{record['id']}"


@durable_task(retry=RetryPolicy(max_attempts=5, min_delay=1, max_delay=16,
                                retry_on=(ConnectionError,)))
def sync_customer(customer_id: str) -> dict[str, Any]:
    customer = fetch_customer(customer_id)
    record = enrich(customer)
    return {"customer": customer_id, "row": upload(record)}
