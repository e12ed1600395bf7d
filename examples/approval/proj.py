"""The Celery app of the approval flow: ``celery -A proj worker``.

``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) is the broker, the result backend and
the checkpoint store.
"""

from __future__ import annotations

import os

from celery import Celery

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("approval", broker=REDIS_URL, backend=REDIS_URL, include=["tasks"])
app.conf.update(
    worker_prefetch_multiplier=1,  # a worker holds no message it cannot run yet
    worker_redirect_stdouts_level="INFO",
    broker_connection_retry_on_startup=True,
    result_expires=3600,
)
