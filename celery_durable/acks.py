"""The message of a completed run, acknowledged by the script that completes it.

A durable task is ``acks_late``: Celery acknowledges its message after the body returns,
which on kombu's Redis transport is one more round trip (a MULTI/EXEC that removes the
delivery tag from kombu's ``unacked`` hash and ``unacked_index`` zset). When the broker is
that transport on the checkpoint store's Redis server and db (one Redis URL for everything)
and the worker's request lives in this process (solo, threads, gevent/eventlet pools: the
pool runs the task where the consumer received its message), end_attempt.lua removes those
two entries itself in the round trip that completes the run, and :func:`settle` makes
Celery's acknowledgement do only the in-memory part of kombu's (the channel's prefetch
count, the message's state), so the round trip is not sent again. Celery still makes that
acknowledgement itself, when and where it always does: its request's ``on_ack`` promise
hands it to the event loop (``call_soon``, which wakes the loop: the freed prefetch slot is
used at once), so kombu's state is only ever changed in the loop's thread.

Nothing changes for a prefork pool (the message lives in the parent process), another
broker, a message acknowledged early, an attempt that ends otherwise than completed, or
one fenced out (the script removes nothing then, and Celery acknowledges as usual). The
ack is fenced like the end itself, so it can never consume a message whose run a later
attempt holds; and the run is completed in the same atomic call, so no crash can leave a
completed run with its message still due for redelivery, nor an acknowledged message with
its run unfinished.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery.worker import state
from kombu.transport.redis import Channel as RedisChannel
from kombu.transport.virtual import QoS as VirtualQoS
from vine import promise

from .connections import shares_server
from .heartbeat import snapshot

if TYPE_CHECKING:
    from celery import Task

    from .store import RunStore



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
    if not _acks_through_kombu(request, message):
        return None
    if not shares_server(store.client, channel):
        return None
    prefix = channel.global_keyprefix or ""
    return FusedAck(unacked_key=f"{prefix}{channel.unacked_key}",
                    index_key=f"{prefix}{channel.unacked_index_key}", tag=str(tag),
                    request=request, message=message)


def settle(ack: FusedAck) -> None:
    """The script removed the message's unacked entries: Celery's coming acknowledgement
    (its request's ``on_ack`` promise, which the event loop runs) does the rest of what
    kombu's does, in memory, instead of sending the removal again."""
    ack.request._on_ack.args = (functools.partial(_ack_in_memory, ack.message),)


def _ack_in_memory(message: Any, logger: logging.Logger, errors: tuple[type[BaseException], ...],
                   multiple: bool = False) -> None:
    """kombu's ``Message.ack_log_error`` minus the Redis round trip (already made by
    end_attempt.lua): the channel's prefetch accounting and the message's state."""
    try:
        if not message.acknowledged:
            VirtualQoS.ack(message.channel.qos, message.delivery_tag)
            message._state = "ACK"
    except errors as exc:
        logger.critical("Couldn't ack %r, reason:%r", message.delivery_tag, exc, exc_info=True)


def _acks_through_kombu(request: Any, message: Any) -> bool:
    """Whether Celery will acknowledge ``request`` as its consumer set it up: a vine
    promise (``call_soon_ack`` in the event loop) of kombu's ``message.ack_log_error``,
    whose arguments :func:`settle` can swap."""
    on_ack = getattr(request, "_on_ack", None)
    return (isinstance(on_ack, promise) and isinstance(on_ack.args, tuple)
            and len(on_ack.args) == 1 and on_ack.args[0] == message.ack_log_error)


def _worker_request(run_id: str) -> Any:
    """The worker's request of ``run_id`` if this process accepted it (a pool in the
    worker's process: Celery keeps the request where it was accepted); None if there is
    none, or several (copies of one message: which is this attempt's is not known)."""
    pid = os.getpid()
    found = [request for request in snapshot(state.active_requests)
             if request.id == run_id and request.worker_pid == pid]
    return found[0] if len(found) == 1 else None

