"""publisher.py on a real Redis broker: the message ListProducer puts on a queue is the one
kombu's own path puts there, and what it does not handle still goes through kombu."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Exchange, Queue

from celery_durable import DurableTask
from celery_durable.concurrency import HANDED_HEADER, QUEUED, publish_woken, release, slots_for
from celery_durable.publisher import ListProducer, capture, producer_for
from celery_durable.requeue import publish_resume, resume_info
from celery_durable.store import store_for

DB = 14
ETA = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


@pytest.fixture
def server(redis_base_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"{redis_base_url}/{DB}")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def make_app(redis_base_url: str, **conf: Any) -> Celery:
    app = Celery("publisher_tests", broker=f"{redis_base_url}/{DB}", set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=True, **conf)
    return app


@pytest.fixture
def app(redis_base_url: str, server: redis.Redis) -> Iterator[Celery]:
    app = make_app(redis_base_url)
    yield app
    app.close()


def pop(server: redis.Redis, key: str) -> dict[str, Any]:
    """The one message on list ``key``, its per-message delivery tag left out."""
    raws = server.lrange(key, 0, -1)
    assert len(raws) == 1, f"{key}: {raws}"
    server.delete(key)
    message: dict[str, Any] = json.loads(raws[0])
    message["properties"].pop("delivery_tag")
    return message


def both_ways(app: Celery, server: redis.Redis, key: str, **options: Any
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The message kombu's own path publishes, and the one ListProducer publishes."""
    options = {"args": [1, "é"], "kwargs": {"k": [2]}, "task_id": "r-1", "queue": "q",
               "headers": {"durable_x": 1}, "eta": ETA, **options}
    app.send_task("t.task", **options)
    theirs = pop(server, key)
    with producer_for(app) as producer:
        assert isinstance(producer, ListProducer)
        app.send_task("t.task", producer=producer, **options)
    return theirs, pop(server, key)


def commands(server: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(stat["calls"])
            for name, stat in server.info("commandstats").items()}


def test_the_message_is_the_one_kombu_sends(app: Celery, server: redis.Redis) -> None:
    theirs, ours = both_ways(app, server, "q", time_limit=30, soft_time_limit=20,
                             group_id="g-1", root_id="root-1", parent_id="parent-1")
    assert ours == theirs
    assert ours["headers"]["durable_x"] == 1 and ours["headers"]["root_id"] == "root-1"


def test_a_priority_puts_it_on_kombus_list_for_that_priority(
        app: Celery, server: redis.Redis) -> None:
    theirs, ours = both_ways(app, server, "q\x06\x163", priority=3)
    assert ours == theirs


def test_the_transport_key_prefix_applies(redis_base_url: str, server: redis.Redis) -> None:
    app = make_app(redis_base_url, broker_transport_options={"global_keyprefix": "pfx:"})
    try:
        theirs, ours = both_ways(app, server, "pfx:q")
    finally:
        app.close()
    assert ours == theirs


def test_one_lpush_and_nothing_else_per_message(app: Celery, server: redis.Redis) -> None:
    both_ways(app, server, "q")  # connections made, queue declared
    before = commands(server)
    with producer_for(app) as producer:
        for i in range(5):
            app.send_task("t.task", args=[i], queue="q", producer=producer)
    sent = {name: calls - before.get(name, 0) for name, calls in commands(server).items()
            if calls != before.get(name, 0) and name != "info"}
    assert sent == {"lpush": 5}
    assert server.llen("q") == 5


def lists(server: redis.Redis) -> dict[str, list[bytes]]:
    """Every queue list on the server (kombu's binding sets left out), emptied."""
    found = {key.decode(): server.lrange(key, 0, -1) for key in server.keys("*")
             if server.type(key) == b"list"}
    if found:
        server.delete(*found)
    return found


def test_a_routing_exchange_goes_through_kombu(redis_base_url: str,
                                               server: redis.Redis) -> None:
    topic = Exchange("events", type="topic")
    app = make_app(redis_base_url, task_queues=[
        Queue("audit", topic, routing_key="order.#"), Queue("mail", topic, routing_key="#")])
    try:
        with app.connection_for_write() as conn:  # both queues bound, as a worker would
            for queue in app.amqp.queues.values():
                queue(conn.default_channel).declare()
        app.send_task("t.task", args=[1], queue="audit", routing_key="order.paid")
        theirs = lists(server)
        before = commands(server)
        with producer_for(app) as producer:
            app.send_task("t.task", args=[1], queue="audit", routing_key="order.paid",
                          producer=producer)
        ours = lists(server)
    finally:
        app.close()
    # Routed by the exchange's bindings, which kombu reads (SMEMBERS) per message.
    assert sorted(ours) == sorted(theirs) == ["audit", "mail"]
    assert commands(server).get("smembers", 0) > before.get("smembers", 0)


def test_a_queue_with_an_expiry_goes_through_kombu(redis_base_url: str,
                                                   server: redis.Redis) -> None:
    app = make_app(redis_base_url, task_queues=[Queue("brief", expires=60)])
    try:
        with producer_for(app) as producer:
            app.send_task("t.task", args=[1], queue="brief", producer=producer)
    finally:
        app.close()
    assert server.llen("brief") == 1
    assert 0 < server.pttl("brief") <= 60_000  # the expiry kombu's own put sets


def test_a_dropped_connection_is_reconnected(app: Celery, server: redis.Redis) -> None:
    both_ways(app, server, "q")
    server.client_kill_filter(_type="normal", skipme=True)
    with producer_for(app) as producer:
        app.send_task("t.task", args=[1], queue="q", producer=producer)
    assert server.llen("q") == 1


def test_another_transport_gets_celerys_own_producer() -> None:
    app = Celery("publisher_memory", broker="memory://", set_as_current=False)
    try:
        with producer_for(app) as producer:
            assert not isinstance(producer, ListProducer)
            app.send_task("t.task", args=[1], queue="q", producer=producer)
            assert producer.channel.queues["q"].qsize() == 1
    finally:
        app.close()


def test_a_run_published_again_keeps_its_canvas_and_adds_the_headers(
        app: Celery, server: redis.Redis) -> None:
    info = resume_info("t.task", [1], {"k": 2}, "q", {"durable_recorded": 1},
                       {"root_id": "root-1", "parent_id": "parent-1", "priority": 3,
                        "time_limit": 30})
    assert publish_resume(app, "r-2", info, headers={"durable_slot_handed": 1})
    message = pop(server, "q\x06\x163")
    headers = message["headers"]
    assert (headers["id"], headers["root_id"], headers["parent_id"]) == ("r-2", "root-1",
                                                                         "parent-1")
    assert headers["durable_recorded"] == 1 and headers["durable_slot_handed"] == 1
    assert headers["timelimit"] == [30, None]
    assert message["properties"]["priority"] == 3


def test_first_puts_the_message_where_consumers_take_the_next_one(
        app: Celery, server: redis.Redis) -> None:
    for i in range(3):
        app.send_task("t.task", args=[i], queue="q")
    with producer_for(app, first=True) as producer:
        app.send_task("t.task", args=["handed"], queue="q", producer=producer)
    with producer_for(app) as producer:
        assert producer.first is False  # the pooled producer's next user queues as usual
        app.send_task("t.task", args=[3], queue="q", producer=producer)
    # kombu's consumers BRPOP: the right end of the list is delivered next.
    order = [json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0]
             for raw in reversed(server.lrange("q", 0, -1))]
    assert order == ["handed", 0, 1, 2, 3]


def test_runs_handed_a_slot_are_delivered_first_in_the_order_they_were_woken(
        app: Celery, server: redis.Redis) -> None:
    app.send_task("t.task", args=["queued"], queue="q")
    publish_woken(app, [("r-3", resume_info("t.task", ["woken"], {}, "q", {})),
                        ("r-4", resume_info("t.task", ["next"], {}, "q", {}))])
    # kombu's consumers BRPOP: the right end of the list is delivered next.
    delivered = [json.loads(raw)["headers"] for raw in reversed(server.lrange("q", 0, -1))]
    assert [h["id"] for h in delivered[:2]] == ["r-3", "r-4"]
    assert all(h[HANDED_HEADER] == 1 for h in delivered[:2])
    assert len(delivered) == 3


def test_a_new_queue_is_declared_on_its_first_message_only(
        app: Celery, server: redis.Redis) -> None:
    def declares(queue: str, producer: Any = None) -> int:
        before = commands(server).get("sadd", 0)
        for i in range(3):
            app.send_task("t.task", args=[i], queue=queue, producer=producer)
        return commands(server).get("sadd", 0) - before

    theirs = declares("fresh-1")  # kombu's own path
    with producer_for(app) as producer:
        ours = declares("fresh-2", producer)
    assert ours == theirs > 0  # kombu's bindings, written once per queue
    assert server.smembers("_kombu.binding.fresh-2") and server.llen("fresh-2") == 3


# -- capture: a message built now, put on its queue later by slots.lua ----------------------


def kept(app: Celery, store_client: Any, **options: Any) -> tuple[Any, tuple[str, str]] | None:
    return capture(app, store_client,
                   lambda producer: app.send_task("t.task", producer=producer, **options))


@pytest.fixture
def store_client(redis_base_url: str) -> Iterator[redis.Redis]:
    """A client of the broker's server and db, as the checkpoint store's is by default."""
    client = redis.Redis.from_url(f"{redis_base_url}/{DB}", decode_responses=True)
    yield client
    client.close()


def test_capture_keeps_the_message_it_would_have_sent(
        app: Celery, server: redis.Redis, store_client: redis.Redis) -> None:
    options = {"args": [1, "é"], "kwargs": {"k": [2]}, "task_id": "r-1", "queue": "q",
               "headers": {"durable_x": 1}, "priority": 3}
    app.send_task("t.task", **options)
    theirs = pop(server, "q\x06\x163")
    got = kept(app, store_client, **options)
    assert got is not None
    result, (key, body) = got
    assert result.id == "r-1" and key == "q\x06\x163"
    message = json.loads(body)
    message["properties"].pop("delivery_tag")
    assert message == theirs
    assert lists(server) == {}  # nothing was sent


def test_captured_list_keys_carry_the_transport_key_prefix(
        redis_base_url: str, server: redis.Redis, store_client: redis.Redis) -> None:
    app = make_app(redis_base_url, broker_transport_options={"global_keyprefix": "pfx:"})
    try:
        got = kept(app, store_client, args=[1], queue="q")
    finally:
        app.close()
    assert got is not None and got[1][0] == "pfx:q"


def test_nothing_is_captured_unless_the_store_is_the_brokers_db(
        app: Celery, server: redis.Redis, redis_base_url: str) -> None:
    calls: list[Any] = []
    other = redis.Redis.from_url(f"{redis_base_url}/{DB - 1}")
    try:
        assert capture(app, other, calls.append) is None
    finally:
        other.close()
    assert calls == []  # not even built


def test_what_kombu_must_send_itself_is_not_captured(
        redis_base_url: str, server: redis.Redis, store_client: redis.Redis) -> None:
    app = make_app(redis_base_url, task_queues=[Queue("brief", expires=60)])
    try:
        assert kept(app, store_client, args=[1], queue="brief") is None
        with producer_for(app) as producer:  # the pooled producer is left as it was
            assert isinstance(producer, ListProducer) and producer.captured is None
    finally:
        app.close()
    assert lists(server) == {}  # and not sent either


def test_a_limited_run_goes_out_with_its_slot_or_when_handed_one(
        app: Celery, server: redis.Redis) -> None:
    def body(i: int) -> int:
        return i

    limited = app.task(base=DurableTask, name="t.limited", shared=False,
                       durable_concurrency_limit=1)(body)
    store = store_for(app)
    results = [limited.apply_async((i,), queue="q") for i in range(3)]
    # The first holds the slot and is on the queue; the others wait, their messages kept.
    queued = [json.loads(raw) for raw in server.lrange("q", 0, -1)]
    assert [m["headers"]["id"] for m in queued] == [results[0].id]
    assert queued[0]["headers"][HANDED_HEADER] == 1
    k = store.keys.limit("task:t.limited", "_")
    assert sorted(server.hkeys(k.messages)) == sorted(r.id.encode() for r in results[1:])
    # The release hands the slot over and puts the next run's message on the queue itself.
    woken = release(store, results[0].id, slots_for(limited, (0,), {}, "q", store.settings))
    assert woken == [(results[1].id, QUEUED)]
    publish_woken(app, woken)  # nothing left to publish
    delivered = [json.loads(raw)["headers"] for raw in reversed(server.lrange("q", 0, -1))]
    assert [h["id"] for h in delivered] == [results[1].id, results[0].id]
    assert delivered[0][HANDED_HEADER] == 1 and delivered[0]["task"] == "t.limited"
    assert json.loads(base64.b64decode(json.loads(server.lrange("q", -1, -1)[0])["body"])
                      )[0] == [1]


@pytest.mark.parametrize("where", ["task", "call"])
def test_a_run_whose_message_expires_is_published_when_it_gets_its_slot(
        app: Celery, server: redis.Redis, where: str) -> None:
    # A kept message would expire while its run waits: such runs are published by Python,
    # as a new message, once they hold a slot.
    def body(i: int) -> int:
        return i

    limited = app.task(base=DurableTask, name=f"t.expiring-{where}", shared=False,
                       durable_concurrency_limit=1,
                       **({"expires": 600} if where == "task" else {}))(body)
    call = {"expires": 600} if where == "call" else {}
    store = store_for(app)
    first, second = (limited.apply_async((i,), queue="q", **call) for i in range(2))
    assert server.llen("q") == 1
    k = store.keys.limit(f"task:{limited.name}", "_")
    assert server.hlen(k.messages) == 0 and server.hexists(k.info, second.id)
    woken = release(store, first.id, slots_for(limited, (0,), {}, "q", store.settings))
    assert [run for run, _ in woken] == [second.id] and woken[0][1] != QUEUED
    publish_woken(app, woken)
    assert json.loads(server.lrange("q", -1, -1)[0])["headers"]["id"] == second.id
