"""The Celery app of the test suite; also started by subprocess workers (``celery -A tests.app``).

Redis comes from ``DURABLE_TEST_REDIS_URL`` (a server the session fixture started), using
db 0 as the broker, result backend and checkpoint store (so completed runs' results are
written by the end of their attempt, see celery_durable/results.py) and db 3 for counters.
``DURABLE_TEST_BROKER_URL`` (RabbitMQ runs, see tests/brokers.py) replaces the broker; the
checkpoint store then stays on db 0 unless ``DURABLE_TEST_STORE_URL`` moves it.
"""

from __future__ import annotations

import json
import os

from celery import Celery

BASE_URL = os.environ.get("DURABLE_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")

BROKER_URL = os.environ.get("DURABLE_TEST_BROKER_URL") or f"{BASE_URL}/0"

app = Celery(
    "durable_tests",
    broker=BROKER_URL,
    backend=f"{BASE_URL}/0",
    include=["tests.tasks", "tests.tasks_obs", "tests.long_tasks"],
    # RabbitMQ runs: this run's queues have unique names (see tests/brokers.py).
    amqp="tests.brokers:RunAMQP" if os.environ.get("DURABLE_TEST_QUEUE_RUN") else None,
)
# Shared tasks resolve through the current app, which is per thread: make this app the
# default so tests that call tasks from threads find it.
app.set_default()
app.conf.update(
    task_default_queue=os.environ.get("DURABLE_TEST_QUEUE", "celery"),
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    result_expires=3600,
)
if os.environ.get("DURABLE_TEST_LEASE_TTL_S"):
    app.conf.durable_lease_ttl_s = float(os.environ["DURABLE_TEST_LEASE_TTL_S"])
if os.environ.get("DURABLE_TEST_MAX_CRASHES"):
    app.conf.durable_max_crashes = int(os.environ["DURABLE_TEST_MAX_CRASHES"])
if os.environ.get("DURABLE_TEST_STORE_URL"):
    app.conf.durable_redis_url = os.environ["DURABLE_TEST_STORE_URL"]
elif not BROKER_URL.startswith(("redis", "sentinel")):
    app.conf.durable_redis_url = f"{BASE_URL}/0"
if BROKER_URL.startswith("sentinel"):
    # A Sentinel broker; the store follows it (same Sentinels, same master name).
    app.conf.broker_transport_options = {
        "master_name": os.environ["DURABLE_TEST_SENTINEL_MASTER"]}
if os.environ.get("DURABLE_TEST_VT"):
    # A short visibility timeout with fast kombu sweeps, to prove the heartbeat keeps long
    # tasks from being redelivered.
    app.conf.broker_transport_options = {
        "visibility_timeout": float(os.environ["DURABLE_TEST_VT"]),
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
if os.environ.get("DURABLE_TEST_QUEUE_LIMITS"):
    app.conf.durable_queue_limits = json.loads(os.environ["DURABLE_TEST_QUEUE_LIMITS"])
# Observability tests: log capture settings and the worker's metrics exporter.
for _name, _kind in (("log_level", str), ("log_max_records", int), ("log_max_chars", int),
                     ("metrics_port", int), ("log_capture", lambda v: v == "1")):
    if os.environ.get(f"DURABLE_TEST_{_name.upper()}"):
        app.conf[f"durable_{_name}"] = _kind(os.environ[f"DURABLE_TEST_{_name.upper()}"])
if os.environ.get("DURABLE_TEST_KEY_PREFIX"):
    app.conf.durable_key_prefix = os.environ["DURABLE_TEST_KEY_PREFIX"]
if os.environ.get("DURABLE_TEST_OFFLOAD_BYTES"):
    app.conf.durable_offload_bytes = int(os.environ["DURABLE_TEST_OFFLOAD_BYTES"])
if os.environ.get("DURABLE_TEST_BEAT_ENTRY"):
    # One interval entry of a durable task, for the tests that run `celery beat`.
    app.conf.beat_scheduler = os.environ.get("DURABLE_TEST_BEAT_SCHEDULER",
                                             "celery_durable.beat:DurableScheduler")
    app.conf.beat_max_loop_interval = 1
    # redbeat: schedule and lock in Redis, a short lock so that a killed beat is replaced.
    app.conf.redbeat_redis_url = f"{BASE_URL}/0"
    app.conf.redbeat_key_prefix = f"redbeat-{os.environ['DURABLE_TEST_BEAT_ENTRY']}:"
    app.conf.redbeat_lock_timeout = 3
    app.conf.beat_schedule = {
        os.environ["DURABLE_TEST_BEAT_ENTRY"]: {
            "task": "tests.long_tasks.scheduled_tick",
            "schedule": float(os.environ.get("DURABLE_TEST_BEAT_EVERY", "2")),
            "args": (os.environ["DURABLE_TEST_BEAT_ENTRY"],),
            "options": {"queue": os.environ.get("DURABLE_TEST_QUEUE", "celery")},
        },
    }
