"""The Celery app of the image fan-out: ``celery -A proj worker -Q celery,images``.

``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) is the broker, the result backend and
the checkpoint store. Thumbnails go to the ``images`` queue, which at most 4 runs use at once
across every worker (``durable_queue_limits``), however many processes consume it.
"""

from __future__ import annotations

import os

from celery import Celery

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("fanout", broker=REDIS_URL, backend=REDIS_URL, include=["tasks"])
app.conf.update(
    task_routes={"tasks.make_thumbnail": {"queue": "images"}},
    durable_queue_limits={"images": 4},
    worker_prefetch_multiplier=1,
    worker_redirect_stdouts_level="INFO",
    broker_connection_retry_on_startup=True,
    result_expires=3600,
)
