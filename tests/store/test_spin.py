"""ReplyWait on a real Redis socket: polling until the reply is there, giving up when the
budget is spent, resting after misses in a row; and the budget a worker chooses."""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from kombu.utils.imports import symbol_by_name

from celery_durable import spin
from celery_durable.bootsteps import tasks_at_once_of
from celery_durable.config import DurableSettings
from celery_durable.store import RunStore
from tests.conftest import wipe_store


@pytest.fixture
def budget() -> Iterator[Callable[[int], None]]:
    before = spin.budget_us()
    yield spin.set_budget
    spin.set_budget(before)


@pytest.fixture
def conn(redis_base_url: str) -> Iterator[Any]:
    client = redis.Redis.from_url(redis_base_url)
    connection = client.connection_pool.make_connection()
    connection.connect()
    yield connection
    connection.disconnect()
    client.close()


def send_blpop(conn: Any, seconds: float) -> None:
    """A command whose reply comes after ``seconds`` (BLPOP on a list nobody fills)."""
    conn.send_command("BLPOP", "spin-test:nothing", seconds)


def test_budget_for_uses_a_number_as_given_and_polls_only_with_a_core_to_spare() -> None:
    assert spin.budget_for(0, 1, 8) == 0
    assert spin.budget_for(750, 16, 2) == 750
    assert spin.budget_for(None, 1, 2) == spin.AUTO_BUDGET_US
    assert spin.budget_for(None, 2, 2) == 0
    assert spin.budget_for(None, 4, 2) == 0
    assert spin.budget_for(None, 3, 4) == spin.AUTO_BUDGET_US
    assert spin.budget_for(None, 1, 1) == 0


def test_set_budget_is_in_microseconds_and_never_negative(budget: Any) -> None:
    budget(350)
    assert spin.budget_us() == 350
    budget(-5)
    assert spin.budget_us() == 0


def test_without_select_poll_the_budget_stays_zero(budget: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spin, "CAN_POLL", False)
    budget(500)
    assert spin.budget_us() == 0


def test_polls_until_the_reply_arrives_within_the_budget(budget: Any, conn: Any) -> None:
    budget(2_000_000)  # 2 s: far more than the 50 ms the reply takes
    wait = spin.ReplyWait()
    send_blpop(conn, 0.05)
    assert not conn.can_read(timeout=0)
    wait.before_read(conn)
    assert conn.can_read(timeout=0), "returned before the reply was readable"
    assert conn.read_response() is None
    assert wait._misses == 0


def test_a_spent_budget_returns_before_the_reply_and_counts_a_miss(budget: Any,
                                                                   conn: Any) -> None:
    budget(1_000)  # 1 ms: the reply takes 100 ms
    wait = spin.ReplyWait()
    send_blpop(conn, 0.1)
    wait.before_read(conn)
    assert not conn.can_read(timeout=0), "waited for the reply past its budget"
    assert wait._misses == 1
    assert conn.read_response() is None  # the read blocks as before


def test_misses_in_a_row_make_it_rest_then_poll_again(budget: Any, conn: Any) -> None:
    budget(200)
    wait = spin.ReplyWait()
    for _ in range(spin.MISSES_BEFORE_REST):
        send_blpop(conn, 0.01)
        wait.before_read(conn)
        conn.read_response()
    assert wait._resting == spin.REST_WAITS
    # Resting: no polling, whatever the budget.
    budget(2_000_000)
    send_blpop(conn, 0.01)
    wait.before_read(conn)
    assert not conn.can_read(timeout=0)
    conn.read_response()
    assert wait._resting == spin.REST_WAITS - 1
    wait._resting = 1
    conn.send_command("PING")
    wait.before_read(conn)  # the last resting wait
    conn.read_response()
    send_blpop(conn, 0.01)
    wait.before_read(conn)  # polls again
    assert conn.can_read(timeout=0)
    conn.read_response()


def test_a_hit_clears_the_misses(budget: Any, conn: Any) -> None:
    wait = spin.ReplyWait()
    budget(200)
    send_blpop(conn, 0.01)
    wait.before_read(conn)
    conn.read_response()
    assert wait._misses == 1
    budget(2_000_000)
    conn.send_command("PING")
    wait.before_read(conn)
    conn.read_response()
    assert wait._misses == 0


def test_a_new_socket_is_polled_after_a_reconnect(budget: Any, conn: Any) -> None:
    budget(2_000_000)
    wait = spin.ReplyWait()
    conn.send_command("PING")
    wait.before_read(conn)
    conn.read_response()
    conn.disconnect()
    conn.connect()
    send_blpop(conn, 0.02)
    wait.before_read(conn)
    assert conn.can_read(timeout=0)
    conn.read_response()


def test_no_budget_means_no_polling(budget: Any, conn: Any) -> None:
    budget(0)
    wait = spin.ReplyWait()
    send_blpop(conn, 0.05)
    wait.before_read(conn)
    assert not conn.can_read(timeout=0)
    conn.read_response()


def test_the_store_waits_through_reply_wait(budget: Any, store_url: Callable[[int], str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    st = RunStore(DurableSettings(redis_url=store_url(5), key_prefix="spin:"))
    if not st._direct.enabled:
        pytest.skip("the store is on Redis Cluster: DirectLine is not used there")
    seen: list[Any] = []
    real = spin.ReplyWait.before_read

    def before_read(self: spin.ReplyWait, conn: Any) -> None:
        seen.append(conn)
        real(self, conn)

    monkeypatch.setattr(spin.ReplyWait, "before_read", before_read)
    budget(2_000_000)
    try:
        assert st._direct.call("PING") in (b"PONG", "PONG", True)
        assert st._direct.pipeline([("ECHO", "a"), ("ECHO", "b")]) in (
            [b"a", b"b"], ["a", "b"])
        assert len(seen) == 2  # once per round trip, not per reply
    finally:
        wipe_store(st.client, "spin:")
        st.close()


def fake_worker(pool_module: str, concurrency: int) -> Any:
    """What a worker's bootsteps see: Celery's pool class (resolved by setup_instance)."""
    pool_cls = symbol_by_name(f"{pool_module}:TaskPool")
    return types.SimpleNamespace(pool_cls=pool_cls, concurrency=concurrency)


def test_tasks_at_once_is_one_for_solo_and_the_concurrency_otherwise() -> None:
    assert tasks_at_once_of(fake_worker("celery.concurrency.solo", 8)) == 1
    assert tasks_at_once_of(fake_worker("celery.concurrency.prefork", 3)) == 3
    assert tasks_at_once_of(fake_worker("celery.concurrency.thread", 1)) == 1
    assert tasks_at_once_of(fake_worker("celery.concurrency.gevent", 100)) == 100


def test_a_started_worker_sets_the_budget_of_its_process(worker: Any) -> None:
    # The embedded worker of the test suite runs the solo pool in this process.
    assert spin.budget_us() == spin.budget_for(None, 1, spin.usable_cores())
