"""Put a reaped run back on its queue: restore its own unacked message, else re-publish."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery

from .codec import JsonCodec
from .errors import CheckpointDecodeError
from .publisher import producer_for

logger = logging.getLogger("celery_durable.reaper")
#: Stale unacked entries read per page, and skipped (not ours) at most, per sweep.
STALE_PAGE = 100
MAX_STALE_SCAN = 2000
_codec = JsonCodec()


def broker_is_redis(app: Celery) -> bool:
    url = app.conf.broker_url or ""
    return isinstance(url, str) and url.startswith(("redis://", "rediss://", "sentinel://"))


def restore_message(app: Celery, delivery_tag: str) -> bool:
    """Push the still-unacked message ``delivery_tag`` back to the head of its queue, with
    kombu's own restore (the one its visibility sweep uses). False if it is not unacked."""
    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        if not channel.client.hexists(channel.unacked_key, delivery_tag):
            return False
        channel.qos.restore_by_tag(delivery_tag, leftmost=True)
        return True


def _message_task(raw: Any) -> str | None:
    """The task name of an unacked kombu entry (``[message, exchange, routing_key]``)."""
    try:
        message = json.loads(raw)[0]
        return str(message["headers"]["task"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def restore_stale_messages(
    app: Celery, channel: Any, older_than_s: float, is_durable: Callable[[str], bool]
) -> int:
    """Restore unacked messages of durable tasks that no live worker has refreshed for
    ``older_than_s`` seconds: messages a dead worker had reserved but not started.

    Every worker's heartbeat refreshes the ``unacked_index`` score of the messages it holds,
    so a stale score means the holder is gone (kombu's own sweep would wait for the whole
    visibility timeout). Only durable tasks are touched: a duplicate delivery of a durable
    run is harmless, while other tasks may come from workers without this heartbeat.
    """
    client = channel.client
    horizon = time.time() - older_than_s
    restored = skipped = 0
    # Other apps' messages are skipped, not touched: page past them (up to a bound per
    # sweep) so that they can never hide a durable one.
    while skipped < MAX_STALE_SCAN:
        tags = client.zrangebyscore(channel.unacked_index_key, "-inf", horizon,
                                    start=skipped, num=STALE_PAGE)
        for raw_tag in tags:
            tag = raw_tag.decode() if isinstance(raw_tag, bytes) else str(raw_tag)
            name = _message_task(client.hget(channel.unacked_key, tag))
            if name is not None and is_durable(name):
                channel.qos.restore_by_tag(tag, leftmost=True)
                restored += 1
            else:
                skipped += 1
        if len(tags) < STALE_PAGE:
            break
    return restored


#: Publish options that tie a run into a canvas or a caller: the rest of its chain, its
#: callbacks and errbacks, its group and chord, its lineage and per-call limits. A run that is
#: published again (after a sleep, a wait, a long backoff, a wait for a slot or a crash) keeps
#: them, so a chain goes on after its durable link. ``expires`` is left out on purpose: it
#: bounds the first delivery, and a run resumed later must not be dropped as expired.
CANVAS_OPTIONS = ("chain", "link", "link_error", "chord", "group_id", "group_index",
                  "root_id", "parent_id", "shadow", "reply_to", "time_limit",
                  "soft_time_limit", "priority")


def canvas_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The :data:`CANVAS_OPTIONS` of a publish (or of a request's execution options) that
    are set."""
    if not options:
        return {}
    return {name: options[name] for name in CANVAS_OPTIONS
            if options.get(name) not in (None, [], (), "")}


def request_options(request: Any) -> dict[str, Any]:
    """The canvas options of the message a worker is executing (``task.request``)."""
    options = canvas_options(request.as_execution_options())
    priority = (request.delivery_info or {}).get("priority")
    if priority is not None:
        options["priority"] = priority
    return options


def encode_options(options: Mapping[str, Any] | None) -> str:
    """Canvas options as stored in a run record ('' when there are none)."""
    picked = canvas_options(options)
    return json.dumps(picked, default=str) if picked else ""


def resume_info(task_name: str, args: Any, kwargs: Any, queue: str,
                headers: dict[str, Any] | None, options: Mapping[str, Any] | None = None) -> str:
    """What a run needs to be published again later (parked, sleeping, waiting)."""
    return json.dumps({"task": task_name, "args": list(args or ()), "kwargs": kwargs or {},
                       "queue": queue, "headers": headers or {},
                       "options": canvas_options(options)}, default=str)


def publish_resume(app: Celery, run_id: str, info: str, *, countdown: float = 0,
                   headers: dict[str, Any] | None = None, first: bool = False) -> bool:
    """Publish run ``run_id`` again from :func:`resume_info` data (same run id), in
    ``countdown`` seconds if given, with ``headers`` added to the recorded ones; ``first``:
    ahead of the messages already in its queue (``publisher.producer_for``)."""
    try:
        data = json.loads(info)
    except ValueError:
        logger.error("celery-durable: run %s cannot be published again: its resume data is "
                     "unreadable", run_id)
        return False
    merged = {**(data.get("headers") or {}), **(headers or {})}
    extra: dict[str, Any] = {"countdown": countdown} if countdown > 0 else {}
    with producer_for(app, first=first) as producer:
        # Not a child of the task that publishes it (a release, a wake-up, the reaper).
        app.send_task(data["task"], args=data["args"], kwargs=data["kwargs"], task_id=run_id,
                      queue=data.get("queue") or None, headers=merged or None,
                      producer=producer, add_to_parent=False,
                      **canvas_options(data.get("options")), **extra)
    return True


def _decode(text: str, fallback: Any) -> Any:
    try:
        return _codec.loads(text) if text else fallback
    except CheckpointDecodeError:
        return fallback


def requeue_run(app: Celery, run_id: str, reaped: list[str]) -> str:
    """Make the run's next attempt start: returns ``restored`` or ``republished``.

    ``reaped`` is what reap_run.lua returned: delivery tag, task, args, kwargs, queue,
    holder, canvas options. A second copy of the message (kombu's own sweep restoring it
    too) is harmless: the first copy to claim the run executes it, the other finds it
    running or done.
    """
    tag, task, args, kwargs, queue = reaped[:5]
    if tag and broker_is_redis(app) and restore_message(app, tag):
        return "restored"
    canvas = reaped[6] if len(reaped) > 6 else ""
    publish_resume(app, run_id, stored_resume_info(task, args, kwargs, queue, canvas))
    return "republished"


def stored_resume_info(task: str, args_json: str, kwargs_json: str, queue: str,
                       canvas_json: str = "") -> str:
    """:func:`resume_info` from the arguments and canvas options as the run record stores
    them."""
    return resume_info(task, _decode(args_json, []), _decode(kwargs_json, {}), queue, None,
                       _options(canvas_json))


def _options(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
