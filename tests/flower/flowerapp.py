"""The Celery app the Flower tests run (``celery -A tests.flower.flowerapp worker|flower``).

It uses databases 10 (broker and checkpoints) and 11 (results) of the test Redis, so the
other tests' data never shows up in its pages.
"""

from __future__ import annotations

import logging
import os

import redis
from celery import Celery

from celery_durable import NonRetryableError, RetryPolicy, current_run, durable_task, step

BASE_URL = os.environ.get("DURABLE_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")

app = Celery("flower_tests", broker=f"{BASE_URL}/10", backend=f"{BASE_URL}/11")
app.conf.update(
    task_default_queue="flower-tests",
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    durable_flower_metrics_interval_s=1.0,
    durable_queue_limits={"flower-tests": 50},
    durable_record_step_inputs=True,
    durable_flower_redact=("password", "secret", "token", "api_key", "authorization"),
)

partner_log = logging.getLogger("shop.partner")

#: Set this key plus ":<order id>" (in db 10) to make ``flaky(order_id)`` pass: the browser
#: test "fixes" the partner, then replays the failed run.
FIXED_KEY = "flower-tests:fixed"


def _flags() -> redis.Redis:
    return redis.Redis.from_url(f"{BASE_URL}/10", decode_responses=True)


@step
def fetch_order(order_id: str) -> dict[str, object]:
    return {"order": order_id, "amount": 42, "api_key": "sk-live-SECRET-123",
            "note": "x" * 900}


@step
def charge(order: dict[str, object]) -> str:
    return f"ch_{order['order']}"


@durable_task(name="flower_tests.checkout")
def checkout(order_id: str, password: str = "hunter2") -> dict[str, object]:
    order = fetch_order(order_id)
    return {"charge": charge(order), "token": "tok-SECRET"}


@step
def prepare() -> str:
    return "prepared"


@step(retry=RetryPolicy(max_attempts=2, min_delay=0.05, max_delay=0.05, jitter=False))
def call_partner(order_id: str) -> str:
    if not _flags().exists(f"{FIXED_KEY}:{order_id}"):
        partner_log.warning("partner down for %s, will retry", order_id)
        raise ValueError(f"partner rejected {order_id}")
    partner_log.info("partner accepted %s", order_id)
    return "accepted"


@durable_task(name="flower_tests.flaky", retry=RetryPolicy(max_attempts=1))
def flaky(order_id: str) -> str:
    prepare()
    return call_partner(order_id)


@durable_task(name="flower_tests.approval")
def approval(order_id: str) -> object:
    prepare()
    return current_run().wait_for_event("approval", key=f"approve:{order_id}")


@durable_task(name="flower_tests.hostile")
def hostile(text: str) -> str:
    current_run().step("<script>window.__xss_step=1</script>", lambda: text)
    return text


@durable_task(name="flower_tests.limited", concurrency_limit=3)
def limited() -> str:
    return "ok"


@durable_task(name="flower_tests.doomed")
def doomed() -> None:
    raise NonRetryableError("doomed on purpose")


@durable_task(name="flower_tests.child")
def child(n: int) -> int:
    return n * 2


@durable_task(name="flower_tests.parent")
def parent(n: int) -> int:
    return int(current_run().call(child, n)) + 1


@durable_task(name="flower_tests.napper")
def napper() -> str:
    prepare()
    current_run().sleep("nap", 3600)
    return "rested"


@durable_task(name="flower_tests.second_time",
              retry=RetryPolicy(max_attempts=2, min_delay=0.05, max_delay=0.05, jitter=False))
def second_time() -> int:
    prepare()
    if current_run().attempt == 1:
        raise ConnectionError("upstream hung up")
    return current_run().attempt


@step(rate_limit="30/m")
def call_api(n: int) -> int:
    return n


@durable_task(name="flower_tests.rated", rate_limit="10/s", rate_burst=2)
def rated(n: int) -> int:
    return call_api(n)


@durable_task(name="flower_tests.rated_per_tenant", rate_limit="1/m",
              rate_key=lambda tenant, n: tenant)
def rated_per_tenant(tenant: str, n: int) -> int:
    """One start a minute per tenant: a tenant's next runs wait in its queue."""
    return n
