"""The producer celery-durable publishes with: Celery's own, minus a client per message.

Every message celery-durable publishes (a run's first one from ``DurableTask.apply_async``,
and each time a run is published again: woken by a freed slot, after a sleep or a wait, by
the reaper) still goes through Celery's ``send_task``: routing, the message itself, the
``before_task_publish`` / ``after_task_publish`` signals, sent events and publish retries
are all Celery's and kombu's. Only the very last step differs, and only on kombu's Redis
transport: kombu makes a new redis-py client for every message (redis-py 8 builds a table
of ~200 response callbacks for each), which measured about 0.25 ms of the 0.5 ms of CPU a
publish costs on a 2-core VM. :class:`ListProducer` sends the same LPUSH of the same
message (built by kombu's own functions) on one client kept per channel.

Anything other than the common case takes kombu's own path unchanged: another transport,
an exchange that routes (Celery publishes to a direct queue through the anonymous exchange,
which is the case handled), a queue declared with an expiry, a batch publish. A connection
error is retried by kombu's ``ensure``, which revives the producer on a new channel (and so
a new client).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from celery import Celery
from kombu import Producer, Queue
from kombu.transport.redis import Channel as RedisChannel
from kombu.utils.json import dumps

from .connections import server_of

T = TypeVar("T")
#: The redis-py client each kombu Redis channel publishes with (made like kombu's own).
_clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
#: The ListProducer standing in for each producer of an app's pool.
_standins: weakref.WeakKeyDictionary[Any, ListProducer] = weakref.WeakKeyDictionary()


def _client_of(channel: Any) -> Any:
    client = _clients.get(channel)
    if client is None:
        client = _clients[channel] = channel._create_client()
    return client


def _is_redis(channel: Any) -> bool:
    return isinstance(channel, RedisChannel)


class ListProducer(Producer):
    """A kombu Producer whose publish to a Redis queue is one LPUSH on a kept client.

    With ``first`` set, the message goes to the end of the list that consumers pop (RPUSH,
    as kombu's own restore of an unacknowledged message does): it is delivered before the
    messages already waiting. For a run just handed a slot, which stays idle until the run
    starts: behind a backlog (other tasks' messages on the same queue, runs sent by name
    that park themselves on delivery) it would wait for every one of them first.
    """

    first = False
    #: Set by :func:`capture`: the message is kept here, as (list key, body), not sent.
    captured: list[tuple[str, str]] | None = None

    def _publish(self, body: Any, priority: Any, content_type: Any, content_encoding: Any,
                 headers: Any, properties: dict[str, Any], routing_key: Any, mandatory: Any,
                 immediate: Any, exchange: Any, declare: Any, timeout: Any = None,
                 confirm_timeout: Any = None, retry: bool = False,
                 retry_policy: Any = None) -> Any:
        channel: Any = self.channel
        if (exchange or not routing_key or not _is_redis(channel)
                or getattr(getattr(self, "_batch_local", None), "current", None) is not None):
            if self.captured is not None:
                raise _NotCapturable()
            return super()._publish(body, priority, content_type, content_encoding, headers,
                                    properties, routing_key, mandatory, immediate, exchange,
                                    declare, timeout, confirm_timeout, retry, retry_policy)
        message = channel.prepare_message(body, priority, content_type, content_encoding,
                                          headers, properties)
        declared = channel.connection.client.declared_entities
        for entity in declare or ():
            # kombu's maybe_declare binds a copy of the entity before it looks in the same
            # cache (~50 us per message here): look first.
            if not (entity.can_cache_declaration and hash(entity) in declared):
                self.maybe_declare(entity, retry=retry, **(retry_policy or {}))
        reply_to = properties.get("reply_to")
        if isinstance(reply_to, Queue):
            properties["reply_to"] = reply_to.name
        if routing_key in channel._expires:
            # A queue declared with an expiry: kombu's put renews it with the message.
            if self.captured is not None:
                raise _NotCapturable()
            return channel.basic_publish(message, exchange=exchange, routing_key=routing_key,
                                         mandatory=mandatory, immediate=immediate,
                                         timeout=timeout, confirm_timeout=confirm_timeout)
        # What the anonymous exchange's basic_publish and _put do, on a kept client.
        channel._inplace_augment_message(message, exchange, routing_key)
        queue = channel._q_for_pri(routing_key,
                                   channel._get_message_priority(message, reverse=False))
        if self.captured is not None:
            self.captured.append((channel.global_keyprefix + queue, dumps(message)))
            return None
        client = _client_of(channel)
        (client.rpush if self.first else client.lpush)(queue, dumps(message))
        return None


class _NotCapturable(Exception):
    """A message :class:`ListProducer` would hand to kombu: it cannot be kept instead."""


def _standin(pooled: Any) -> Any:
    """The ListProducer on ``pooled``'s channel (``pooled`` itself on another transport)."""
    channel = pooled.channel
    if not _is_redis(channel):
        return pooled
    standin = _standins.get(pooled)
    if standin is None or getattr(standin, "_channel", None) is not channel:
        standin = _standins[pooled] = ListProducer(
            channel, exchange=pooled.exchange, routing_key=pooled.routing_key,
            serializer=pooled.serializer, compression=pooled.compression, auto_declare=False)
    return standin


@contextmanager
def producer_for(app: Celery, *, first: bool = False) -> Iterator[Any]:
    """A producer for ``send_task(producer=...)``, taken from the app's producer pool (as
    Celery takes one when none is given) and given back on exit. ``first``: its messages
    are delivered before those already in the queue (on kombu's Redis transport; other
    brokers have no such order, the message is queued as usual)."""
    with app.producer_pool.acquire(block=True) as pooled:
        producer = _standin(pooled)
        if isinstance(producer, ListProducer):
            producer.first = first
        yield producer


def capture(app: Celery, store_client: Any,
            send: Callable[[Any], T]) -> tuple[T, tuple[str, str]] | None:
    """Build a message without sending it, for the checkpoint store to put on its queue
    later from a script (slots.lua): ``send(producer)`` publishes as usual (Celery's
    ``send_task``, its signals and sent event included) on a producer that keeps the message
    instead. Returns what ``send`` returned and (list key, body), the list key with kombu's
    ``global_keyprefix`` and priority suffix; None, without calling ``send`` when possible,
    unless the broker is kombu's Redis transport on the server and db of ``store_client``
    and the message is one :class:`ListProducer` would send itself (then nothing is sent)."""
    with app.producer_pool.acquire(block=True) as pooled:
        producer = _standin(pooled)
        if not isinstance(producer, ListProducer):
            return None
        where = server_of(store_client)
        if where is None or where != server_of(_client_of(producer.channel)):
            return None
        producer.first, producer.captured = False, []
        try:
            result = send(producer)
            kept = producer.captured
        except _NotCapturable:
            return None
        finally:
            producer.captured = None
    return (result, kept[0]) if len(kept) == 1 else None
