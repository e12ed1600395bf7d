"""Durable tasks exercised by the integration tests. Step bodies count their executions in
Redis (db 3), so the counts hold across threads and worker processes."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import redis
from celery import shared_task
from pydantic import BaseModel

from celery_durable import NonRetryableError, RetryPolicy, current_run, durable_task, step
from tests.app import BASE_URL

counters = redis.Redis.from_url(f"{BASE_URL}/3", decode_responses=True)
FAST = RetryPolicy(max_attempts=5, min_delay=0, max_delay=0, jitter=False)


def bump(token: str, name: str) -> int:
    """Count one execution of ``name`` for the test identified by ``token``."""
    return int(counters.incr(f"{token}:{name}"))


def count(token: str, name: str) -> int:
    return int(counters.get(f"{token}:{name}") or 0)


@step
def load(token: str) -> int:
    bump(token, "load")
    return 1


@step
def enrich(token: str, value: int) -> int:
    bump(token, "enrich")
    return value + 1


@step
def flaky_save(token: str, value: int, failures: int) -> int:
    if bump(token, "save") <= failures:
        raise ConnectionError(f"save failed (call {count(token, 'save')})")
    return value * 10


@durable_task(retry=FAST)
def counters_task(token: str, failures: int = 2) -> dict[str, int]:
    a = load(token)
    b = enrich(token, a)
    return {"result": flaky_save(token, b, failures)}


@step(retry=RetryPolicy(max_attempts=4, min_delay=0.01, max_delay=0.01, jitter=False))
def step_with_policy(token: str, failures: int) -> str:
    if bump(token, "policy") <= failures:
        raise TimeoutError("slow upstream")
    return "ok"


@durable_task(retry=RetryPolicy(max_attempts=1))
def step_policy_task(token: str, failures: int) -> str:
    return step_with_policy(token, failures)


@step
def refuse(token: str) -> None:
    bump(token, "refuse")
    raise NonRetryableError("card declined")


@durable_task(retry=FAST)
def non_retryable_task(token: str) -> None:
    load(token)
    refuse(token)


@step
def always_fails(token: str) -> None:
    raise ValueError(f"bad input #{bump(token, 'always')}")


@durable_task(retry=RetryPolicy(max_attempts=3, min_delay=0, max_delay=0, jitter=False))
def exhausted_task(token: str) -> None:
    load(token)
    always_fails(token)


@step
def fail_once(token: str) -> None:
    if bump(token, "fail_once") == 1:
        raise RuntimeError("first attempt fails")


@step
def step_a() -> str:
    return "a"


@step
def step_b() -> str:
    return "b"


@durable_task(retry=FAST)
def nondeterministic_task(token: str) -> str:
    # Branching on the attempt number outside a step changes the step order.
    first = step_a() if current_run().attempt == 1 else step_b()
    fail_once(token)
    return first


@step
def make_object() -> object:
    return object()


@durable_task(retry=FAST)
def unencodable_task() -> None:
    make_object()


class Invoice(BaseModel):
    number: str
    total_cents: int
    issued: dt.datetime
    tags: tuple[str, ...]


@dataclasses.dataclass
class Shipment:
    carrier: str
    weight_g: int


@step
def make_invoice(token: str) -> Invoice:
    bump(token, "invoice")
    return Invoice(number="INV-1", total_cents=1250,
                   issued=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), tags=("a", "b"))


@step
def make_shipment(token: str) -> Shipment:
    bump(token, "shipment")
    return Shipment(carrier="post", weight_g=300)


@durable_task(retry=FAST)
def models_task(token: str) -> dict[str, Any]:
    invoice = make_invoice(token)
    shipment = make_shipment(token)
    fail_once(token)
    # On the retry both values come from checkpoints: they must be the same types.
    assert isinstance(invoice, Invoice) and isinstance(shipment, Shipment)
    assert invoice.issued.tzinfo is not None and invoice.tags == ("a", "b")
    return {"invoice": invoice.number, "carrier": shipment.carrier,
            "issued": invoice.issued.isoformat()}


@step(name="llm_call")
def call_llm(token: str, i: int, fail_at: int) -> str:
    n = bump(token, f"llm:{i}")
    if i == fail_at and n == 1:
        raise ConnectionError("rate limited")
    return f"answer {i}"


@durable_task(retry=FAST)
def agent_loop(token: str, iterations: int, fail_at: int) -> list[str]:
    return [call_llm(token, i, fail_at) for i in range(iterations)]


@durable_task(retry=FAST)
def add_one(x: int) -> int:
    return int(current_run().step("add", lambda: x + 1))


@shared_task(name="tests.tasks.plain_add")
def plain_add(x: int, y: int) -> int:
    """A plain Celery task on the same worker (acknowledged by Celery as usual)."""
    return x + y


@durable_task(retry=FAST, bind=True)
def bound_task(self: Any, token: str) -> str:
    return f"{self.name}:{self.request.id == current_run().id}"


@step
def taken_over(run_id: str) -> str:
    """Simulate another worker taking the run over while this step executes."""
    from celery_durable.store import store_for
    from tests.app import app

    store = store_for(app)
    # This attempt's heartbeat may renew the lease between the expiry and the claim (the
    # claim then answers 'busy'): expire it again and retry, a bounded number of times.
    for _ in range(50):
        store.client.hset(store.keys.run(run_id).run, "lease_expires_ms", 1)
        thief = store.claim(run_id, owner="thief", nonce="thief-nonce", task="x",
                            args_json="[]", kwargs_json="{}", queue="celery")
        if thief.outcome != "busy":
            break
    assert thief.outcome == "claimed", thief
    return "zombie value"


@durable_task(retry=FAST)
def takeover_task(token: str) -> str:
    load(token)
    taken_over(current_run().id)
    bump(token, "after_takeover")
    return "finished by the zombie"


@step
def chaos_step(token: str, index: int, seconds: float) -> dict[str, Any]:
    """A step that takes ``seconds`` and records which process executed it."""
    import os
    import time

    bump(token, f"exec:{index}")
    time.sleep(seconds)
    return {"index": index, "pid": os.getpid()}


@durable_task(retry=FAST)
def chaos_pipeline(token: str, steps: int, seconds: float) -> list[int]:
    values = [chaos_step(token, i, seconds) for i in range(steps)]
    return [v["index"] for v in values]


@durable_task(retry=FAST)
def long_single_step(token: str, seconds: float) -> str:
    """One long step: longer than the lease and the visibility timeout of the test."""
    bump(token, "body")

    @step
    def crunch() -> str:
        import time

        bump(token, "crunch")
        time.sleep(seconds)
        return "done"

    return crunch()


class Order(BaseModel):
    order_id: str
    quantity: int


@durable_task(retry=FAST, idempotency_key=lambda order, note="": f"order:{order.order_id}")
def place_order(order: Order, note: str = "") -> dict[str, Any]:
    assert isinstance(order, Order), "the worker must coerce the payload into the model"
    return {"order": order.order_id, "quantity": order.quantity, "note": note}


@durable_task(retry=RetryPolicy(max_attempts=1))
def fail_once_per_key(token: str) -> str:
    if bump(token, "attempts") == 1:
        raise ValueError("first run fails")
    return "second run succeeds"


def record_span(token: str, label: str, seconds: float) -> None:
    """Sleep ``seconds``, recording [start, end, label] so tests can compute overlaps."""
    import json
    import time

    start = time.time()
    time.sleep(seconds)
    counters.rpush(f"{token}:spans", json.dumps([start, time.time(), label]))


@durable_task(retry=FAST, concurrency_limit=2)
def limited(token: str, i: int, seconds: float) -> int:
    current_run().step("work", record_span, token, str(i), seconds)
    return i


@durable_task(retry=FAST, concurrency_limit=1,
              concurrency_key=lambda token, tenant, i, seconds: tenant)
def per_tenant(token: str, tenant: str, i: int, seconds: float) -> str:
    current_run().step("work", record_span, token, tenant, seconds)
    return tenant


@durable_task(retry=RetryPolicy(max_attempts=3, min_delay=2, max_delay=2, jitter=False),
              concurrency_limit=1)
def flaky_limited(token: str, label: str, fail_first: bool) -> str:
    """Limit 1; with ``fail_first`` the first attempt fails and retries 2 s later."""
    if fail_first and counters.incr(f"{token}:{label}:tries") == 1:
        raise ConnectionError("the first attempt fails")
    current_run().step("work", record_span, token, label, 0.1)
    return label


@durable_task(retry=FAST, concurrency_limit=1)
def adjustable(token: str, i: int, seconds: float) -> int:
    current_run().step("work", record_span, token, str(i), seconds)
    return i


@durable_task(retry=FAST, concurrency_limit=1)
def limited_pipeline(token: str, steps: int, seconds: float) -> list[int]:
    values = [chaos_step(token, i, seconds) for i in range(steps)]
    return [v["index"] for v in values]


@step
def charge_with_key(token: str) -> str:
    key = current_run().step_key
    counters.rpush(f"{token}:keys", key)
    if counters.llen(f"{token}:keys") == 1:
        raise ConnectionError("the payment API timed out after taking the key")
    return key


@durable_task(retry=FAST)
def keyed_payment(token: str) -> str:
    load(token)
    return charge_with_key(token)


@step
def huge() -> str:
    return "x" * (2 * 1024 * 1024)


@durable_task(retry=FAST)
def oversized_task() -> None:
    huge()


@durable_task(retry=FAST)
def sleeper(token: str, seconds: float) -> list[float]:
    import time

    before = current_run().step("before", time.time)
    bump(token, "body")
    current_run().sleep("nap", seconds)
    after = current_run().step("after", time.time)
    return [before, after]


@durable_task(retry=FAST)
def quick(token: str) -> str:
    bump(token, "quick")
    return "quick"


class Approval(BaseModel):
    approved: bool
    by: str


@durable_task(retry=FAST)
def approval_flow(token: str, timeout: float | None = None) -> dict[str, Any]:
    from celery_durable import WaitTimeout

    load(token)
    try:
        decision = current_run().wait_for_event(
            "approval", key=f"approve:{token}", timeout=timeout, model=Approval)
    except WaitTimeout:
        return {"approved": False, "by": "timeout"}
    bump(token, "after_wait")
    return decision.model_dump()


@durable_task(retry=RetryPolicy(max_attempts=1))
def three_steps(token: str, fail_at: int = -1, label: str = "a") -> list[str]:
    out = []
    for i in range(3):
        out.append(current_run().step(f"s{i}", _labelled_step, token, i, fail_at, label))
    return out


def _labelled_step(token: str, i: int, fail_at: int, label: str) -> str:
    bump(token, f"s{i}")
    if i == fail_at and bump(token, f"fail{i}") == 1:
        raise RuntimeError(f"step s{i} fails the first time")
    return f"{label}{i}"


@durable_task(retry=FAST)
def slow_steps(token: str, steps: int, seconds: float) -> int:
    import time

    for i in range(steps):
        current_run().step(f"slow{i}", time.sleep, seconds)
        bump(token, f"slow{i}")
    return steps


@durable_task(retry=FAST)
def child_double(token: str, x: int, fail_first: bool = False) -> int:
    n = bump(token, f"child:{x}")
    if fail_first and n == 1:
        raise ConnectionError("child fails once")
    return x * 2


@durable_task(retry=RetryPolicy(max_attempts=1))
def child_broken(token: str) -> int:
    raise ValueError("the child is broken")


@durable_task(retry=FAST)
def parent_calls(token: str, x: int, fail_first: bool = False) -> int:
    load(token)
    value = current_run().call(child_double, token, x, fail_first=fail_first)
    bump(token, "parent_after")
    return int(value) + 1


@durable_task(retry=FAST)
def parent_gathers(token: str, n: int) -> list[int]:
    return [int(v) for v in current_run().gather(
        [child_double.s(token, i) for i in range(n)])]


@durable_task(retry=FAST)
def parent_of_broken(token: str) -> str:
    from celery_durable import ChildRunFailed

    try:
        current_run().call(child_broken, token)
    except ChildRunFailed as exc:
        return f"{exc.error_type}: {exc.details['error_message']}"
    return "unreachable"


@durable_task(retry=FAST)
def parent_of_held_child(token: str) -> int:
    # The child goes to a queue no test worker consumes: it stays pending.
    return int(current_run().call(child_double.s(token, 1).set(queue="held-children")))


@durable_task(retry=FAST)
def slow_double(token: str, x: int) -> int:
    import time

    bump(token, f"slow_child:{x}")
    current_run().step("think", time.sleep, 2.0)
    return x * 2


@durable_task(retry=FAST)
def parent_calls_slow(token: str, x: int) -> int:
    load(token)
    return int(current_run().call(slow_double, token, x)) + 1


@durable_task(retry=FAST, run_timeout=2)
def bounded(token: str) -> str:
    load(token)
    current_run().sleep("long-nap", 30)
    bump(token, "after_nap")
    return "never"


@durable_task(retry=FAST, time_limit=2)
def too_slow(token: str) -> str:
    import time

    load(token)
    bump(token, "too_slow_body")
    current_run().step("crawl", time.sleep, 10)
    return "never"


@durable_task(retry=FAST, concurrency_limit=1,
              fairness_key=lambda token, tenant, i, seconds: tenant)
def fair_share(token: str, tenant: str, i: int, seconds: float) -> str:
    current_run().step("work", record_span, token, f"{tenant}:{i}", seconds)
    return tenant


@durable_task(retry=FAST, debounce=0.8, debounce_key=lambda token, n: token)
def debounced(token: str, n: int) -> int:
    bump(token, "runs")
    return n


@durable_task(retry=FAST, debounce=0.8, debounce_key=lambda token, n: token,
              debounce_mode="first")
def debounced_first(token: str, n: int) -> int:
    bump(token, "runs")
    return n


@durable_task(retry=FAST, debounce=0.8, debounce_key=lambda token, n: token, debounce_max=1.0)
def debounced_bounded(token: str, n: int) -> int:
    bump(token, "runs")
    return n


def note_time(token: str, what: str, label: str) -> None:
    import json
    import time

    counters.rpush(f"{token}:{what}", json.dumps([time.time(), label]))


@durable_task(retry=FAST, rate_limit="10/s", rate_burst=2)
def rated(token: str, i: int) -> int:
    note_time(token, "starts", str(i))
    return i


@durable_task(retry=FAST, rate_limit="4/s", fairness_key=lambda token, tenant, i: tenant)
def rate_shared(token: str, tenant: str, i: int) -> str:
    """A rate shared by tenants (fairness key) and by priorities."""
    note_time(token, "starts", f"{tenant}:{i}")
    return f"{tenant}:{i}"


@durable_task(retry=FAST, rate_limit="1/m", rate_key=lambda token, i: token)
def rate_keyed(token: str, i: int) -> int:
    """One start a minute per token: the second call of a token waits in the queue."""
    return i


@durable_task(retry=FAST, rate_limit="1/m", rate_mode="drop",
              rate_key=lambda token, i: token)
def rated_lossy(token: str, i: int) -> int:
    bump(token, "runs")
    return i


@step(rate_limit="5/s")
def throttled_call(token: str, i: int) -> int:
    note_time(token, "throttled", str(i))
    return i


@step
def free_call(token: str, i: int) -> int:
    note_time(token, "free", str(i))
    return i


@durable_task(retry=FAST)
def step_throttled(token: str, n: int) -> list[int]:
    return [free_call(token, i) + throttled_call(token, i) for i in range(n)]


@step(rate_limit="1/m", rate_mode="drop", rate_key=lambda token: token)
def lossy_call(token: str) -> str:
    bump(token, "lossy")
    return "called"


@durable_task(retry=FAST)
def lossy_steps(token: str) -> list[str | None]:
    return [lossy_call(token), lossy_call(token)]


@step(name="replicated_piece")
def replicated_piece(i: int) -> int:
    return i * 2


@durable_task(commit_durability="replica")
def replicated_sum(n: int) -> int:
    """Every step commit waits for a replica's acknowledgement (tests/store)."""
    return sum(replicated_piece(i) for i in range(n))


@durable_task(retry=FAST)
def total(values: list[int]) -> int:
    """A chord's body: the sum of its header's results."""
    return int(current_run().step("sum", lambda: sum(values)))
