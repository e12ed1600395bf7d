"""The Celery app: ``celery -A proj worker``. ``REDIS_URL`` is the broker and the backend."""

from __future__ import annotations

import os

from celery import Celery

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("crm", broker=REDIS_URL, backend=REDIS_URL, include=["tasks"])
app.conf.update(
    broker_connection_retry_on_startup=True,
    result_expires=3600,
    worker_prefetch_multiplier=1,  # recommended with celery-durable
)
