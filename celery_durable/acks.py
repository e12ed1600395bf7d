"""The message of a completed run, acknowledged by the script that completes it.

A durable task is ``acks_late``: Celery acknowledges its message after the body returns,
which on kombu's Redis transport is one more round trip (a MULTI/EXEC that removes the
delivery tag from kombu's ``unacked`` hash and ``unacked_index`` zset). When the broker is
that transport on the checkpoint store's Redis server and db (one Redis URL for everything)
and the worker's request lives in this process (solo, threads, gevent/eventlet pools: the
pool runs the task where the consumer received its message), end_attempt.lua removes those
two entries itself in the round trip that completes the run, and :func:`settle` then does
the in-memory part of kombu's acknowledgement, so Celery does not send it again.

Nothing changes for a prefork pool (the message lives in the parent process), another
broker, a message acknowledged early, an attempt that ends otherwise than completed, or
one fenced out (the script removes nothing then, and Celery acknowledges as usual). The
ack is fenced like the end itself, so it can never consume a message whose run a later
attempt holds; and the run is completed in the same atomic call, so no crash can leave a
completed run with its message still due for redelivery, nor an acknowledged message with
its run unfinished.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery.worker import state
from kombu.transport.redis import Channel as RedisChannel
from kombu.transport.virtual import QoS as VirtualQoS

from .connections import server_of

if TYPE_CHECKING:
    from celery import Task

    from .store import RunStore

#: Per store, whether each kombu channel (one per worker connection) reaches the store's
#: keys: fixed by their connection settings, so decided once per channel, not per run.
_shared: weakref.WeakKeyDictionary[Any, weakref.WeakKeyDictionary[Any, bool]] = (
    weakref.WeakKeyDictionary())


@dataclass(frozen=True, slots=True)
class FusedAck:
    """What end_attempt.lua needs to acknowledge the run's message: kombu's ``unacked``
    hash and ``unacked_index`` zset (with the transport's ``global_keyprefix``) and the
    delivery tag; plus the worker's request and message, settled after the script."""

    unacked_key: str
    index_key: str
    tag: str
    request: Any
    message: Any


def for_completed_run(task: Task[Any, Any], store: RunStore) -> FusedAck | None:
    """The acknowledgement end_attempt.lua can make for the current request, or None when
    Celery must make it (see the module docstring)."""
    if not task.acks_late or not store.single_server:
        return None
    req = task.request
    if req.is_eager or req.called_directly:
        return None
    request = _worker_request(str(req.id))
    if request is None or request.acknowledged:
        return None
    message: Any = request.message
    channel = getattr(message, "channel", None)
    tag = getattr(message, "delivery_tag", None)
    if not tag or not isinstance(channel, RedisChannel) or message.acknowledged:
        return None
    if not _reaches_store(store, channel):
        return None
    prefix = channel.global_keyprefix or ""
    return FusedAck(unacked_key=f"{prefix}{channel.unacked_key}",
                    index_key=f"{prefix}{channel.unacked_index_key}", tag=str(tag),
                    request=request, message=message)


def settle(ack: FusedAck) -> None:
    """The script removed the message's unacked entries: do what kombu's acknowledgement
    does in memory (the channel's prefetch count, the message's state) and mark Celery's
    request acknowledged, so neither sends it again."""
    message = ack.message
    VirtualQoS.ack(message.channel.qos, message.delivery_tag)
    message._state = "ACK"
    ack.request.acknowledged = True


def _worker_request(run_id: str) -> Any:
    """The worker's request of ``run_id`` if this process accepted it (a pool in the
    worker's process: Celery keeps the request where it was accepted); None if there is
    none, or several (copies of one message: which is this attempt's is not known)."""
    pid = os.getpid()
    for _ in range(5):
        try:
            found = [request for request in state.active_requests
                     if request.id == run_id and request.worker_pid == pid]
        except RuntimeError:  # the set changed while we read it (another pool thread)
            continue
        return found[0] if len(found) == 1 else None
    return None


def _reaches_store(store: RunStore, channel: Any) -> bool:
    known = _shared.setdefault(store, weakref.WeakKeyDictionary())
    shared = known.get(channel)
    if shared is None:
        where = server_of(store.client)
        shared = known[channel] = where is not None and where == server_of(channel.client)
    return shared
