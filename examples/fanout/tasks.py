"""An album: one child run per image, gathered in order.

``current_run().gather`` starts the 100 children at once and suspends the parent (its
worker is free) until all have ended; the results come back in the order of the signatures,
whichever child finished first. The children run on the ``images`` queue, limited to 4 at a
time: the others wait in Redis, not in a worker.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from celery_durable import current_run, durable_task, step

db = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                          decode_responses=True)


@step
def render(album_id: str, index: int) -> dict[str, Any]:
    # Count the thumbnails being rendered at this moment; keep the highest count seen.
    active = db.incr(f"fanout:active:{album_id}")
    db.zadd("fanout:max-active", {album_id: active}, gt=True)
    try:
        time.sleep(0.02)  # resizing
    finally:
        db.decr(f"fanout:active:{album_id}")
    return {"index": index, "path": f"thumbs/{album_id}/{index:03d}.webp"}


@durable_task
def make_thumbnail(album_id: str, index: int) -> dict[str, Any]:
    return render(album_id, index)


@durable_task
def process_album(album_id: str, count: int = 100) -> dict[str, Any]:
    thumbs = current_run().gather([make_thumbnail.s(album_id, i) for i in range(count)])
    return {"album": album_id, "thumbnails": [t["path"] for t in thumbs]}
