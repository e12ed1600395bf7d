"""Idempotency keys and validated payloads, on real Redis and a real worker."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from celery_durable import IdempotencyConflictError, PayloadValidationError, RunStatus
from tests.brokers import purge_queue, queue_length


def test_concurrent_producers_get_one_run_per_key(tasks, client, test_app) -> None:
    # 8 threads x 200 calls over 50 keys, to a queue no worker consumes: count what lands.
    queue = f"idem-{uuid.uuid4().hex[:8]}"
    prefix = uuid.uuid4().hex[:8]
    seen: dict[str, set[str]] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def produce(thread: int) -> None:
        try:
            for i in range(200):
                key = f"{prefix}:{(thread * 7 + i) % 50}"
                result = tasks.add_one.apply_async((1,), idempotency_key=key, queue=queue)
                with lock:
                    seen.setdefault(key, set()).add(result.id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(seen) == 50
    assert all(len(ids) == 1 for ids in seen.values())
    assert queue_length(test_app, queue) == 50  # one message per key, nothing more
    run_ids = {next(iter(ids)) for ids in seen.values()}
    assert all(client.get_run(r).status is RunStatus.PENDING for r in run_ids)
    purge_queue(test_app, queue)


def test_key_function_delay_and_conflicts(worker, tasks, client) -> None:
    order = tasks.Order(order_id=uuid.uuid4().hex, quantity=2)
    first = tasks.place_order.delay(order)
    again = tasks.place_order.delay(order)
    assert again.id == first.id
    assert first.get(timeout=30) == {"order": order.order_id, "quantity": 2, "note": ""}
    # Same key (from the key function), different arguments.
    with pytest.raises(IdempotencyConflictError, match="different arguments"):
        tasks.place_order.delay(order, note="changed")
    ignored = tasks.place_order.apply_async((order,), {"note": "changed"},
                                            idempotency_conflict="ignore")
    assert ignored.id == first.id
    # A dict payload is validated and accepted like the model it describes.
    as_dict = tasks.place_order.delay({"order_id": order.order_id, "quantity": 2})
    assert as_dict.id == first.id


def test_invalid_payload_is_refused_before_publishing(tasks, client) -> None:
    with pytest.raises(PayloadValidationError) as info:
        tasks.place_order.apply_async(({"order_id": "o-9", "quantity": "many"},),
                                      idempotency_key=f"bad-{uuid.uuid4().hex}")
    message = str(info.value)
    assert "'order'" in message and "quantity" in message and "Nothing was published" in message


def test_failed_run_releases_its_key_and_reset(worker, tasks, client, token) -> None:
    key = f"retry-me-{token}"
    first = tasks.fail_once_per_key.apply_async((token,), idempotency_key=key)
    with pytest.raises(ValueError):
        first.get(timeout=30)
    assert client.get_run(first.id).status is RunStatus.FAILED
    second = tasks.fail_once_per_key.apply_async((token,), idempotency_key=key)
    assert second.id != first.id
    assert second.get(timeout=30) == "second run succeeds"
    # A completed run keeps its key...
    assert tasks.fail_once_per_key.apply_async((token,), idempotency_key=key).id == second.id
    # ...until an operator resets it.
    assert client.reset_idempotency_key(tasks.fail_once_per_key.name, key) is True
    third = tasks.fail_once_per_key.apply_async((token,), idempotency_key=key)
    assert third.id not in (first.id, second.id)
    assert third.get(timeout=30) == "second run succeeds"


def test_ttl_expiry_allows_a_new_run(worker, tasks) -> None:
    key = f"short-{uuid.uuid4().hex}"
    first = tasks.add_one.apply_async((5,), idempotency_key=key, idempotency_ttl=0.3)
    assert tasks.add_one.apply_async((5,), idempotency_key=key).id == first.id
    time.sleep(0.5)
    second = tasks.add_one.apply_async((5,), idempotency_key=key)
    assert second.id != first.id
    assert first.get(timeout=30) == second.get(timeout=30) == 6


def test_a_key_whose_run_was_never_published_is_repaired(worker, tasks, client) -> None:
    # A producer claimed the key, then died before publishing: the next caller publishes.
    key = f"orphan-{uuid.uuid4().hex}"
    store = client.store
    orphan_id = str(uuid.uuid4())
    from celery_durable.idempotency import ORPHAN_AFTER_S, fingerprint
    from celery_durable.store import now_ms

    claimed = now_ms() - int(ORPHAN_AFTER_S * 1000) - 1000
    store.claim_idempotency(store.keys.idempotency(tasks.add_one.name, key), orphan_id,
                            fingerprint((7,), {}), claimed, 60_000)
    result = tasks.add_one.apply_async((7,), idempotency_key=key)
    assert result.id == orphan_id
    assert result.get(timeout=30) == 8
