"""The Celery app of the quickstart example: ``celery -A proj worker``.

Redis comes from ``REDIS_URL`` (default ``redis://127.0.0.1:6379``): database 0 is the broker
and the checkpoint store, database 1 the result backend. ``REDIS_BROKER_DB``,
``REDIS_RESULT_DB`` and ``DURABLE_KEY_PREFIX`` move the example elsewhere on a shared server
(``scripts/demo`` uses databases 10 and 11 and the prefix ``durable-demo:``).
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from celery import Celery


def redis_db_url(base: str, db: int | str) -> str:
    """``base`` (``redis://host:port``, with or without a database) pointed at database ``db``."""
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
BROKER_URL = redis_db_url(REDIS_URL, os.environ.get("REDIS_BROKER_DB", "0"))
RESULT_URL = redis_db_url(REDIS_URL, os.environ.get("REDIS_RESULT_DB", "1"))

app = Celery("proj", broker=BROKER_URL, backend=RESULT_URL, include=["tasks"])
app.conf.update(
    # Checkpoints live next to the broker's data, under their own key prefix.
    durable_redis_url=BROKER_URL,
    durable_key_prefix=os.environ.get("DURABLE_KEY_PREFIX", "durable:"),
    # The steps print what they do: show it in the worker log as INFO, not WARNING.
    worker_redirect_stdouts_level="INFO",
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    result_expires=3600,
)
