"""Put a reaped run back on its queue: restore its own unacked message, else re-publish."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from .codec import JsonCodec
from .errors import CheckpointDecodeError

logger = logging.getLogger("celery_durable.reaper")
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


def _decode(text: str, fallback: Any) -> Any:
    try:
        return _codec.loads(text) if text else fallback
    except CheckpointDecodeError:
        return fallback


def requeue_run(app: Celery, run_id: str, reaped: list[str]) -> str:
    """Make the run's next attempt start: returns ``restored`` or ``republished``.

    ``reaped`` is what reap_run.lua returned: delivery tag, task, args, kwargs, queue, holder.
    A second copy of the message (kombu's own sweep restoring it too) is harmless: the first
    copy to claim the run executes it, the other finds it running or done.
    """
    tag, task, args, kwargs, queue = reaped[:5]
    if tag and broker_is_redis(app) and restore_message(app, tag):
        return "restored"
    app.send_task(task, args=_decode(args, []), kwargs=_decode(kwargs, {}), task_id=run_id,
                  queue=queue or None)
    return "republished"
