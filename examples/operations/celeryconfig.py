"""Recommended settings for a production app with durable tasks (``config_from_object``).

Every durable_* value here is the default except where a comment says why to change it.
"""

from __future__ import annotations

import os

redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

broker_url = redis_url
result_backend = redis_url
broker_connection_retry_on_startup = True

# Workers
worker_prefetch_multiplier = 1        # a worker holds no more than it runs
broker_transport_options = {
    "visibility_timeout": 300,        # safe: live messages are refreshed every beat
}
result_expires = 24 * 3600            # seconds; the run's own record lives longer

# celery-durable
durable_redis_url = redis_url         # the default with a Redis broker; set it for RabbitMQ
durable_retention_s = 7 * 24 * 3600   # finished runs stay inspectable for a week
durable_eviction_check = "error"      # refuse to start on a Redis that may evict keys
durable_queue_limits = {"images": 4}  # at most 4 runs of the images queue at once
