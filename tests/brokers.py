"""The test app's broker: the session's Redis (default) or RabbitMQ (``DURABLE_TEST_BROKER=
rabbitmq``), and broker-neutral helpers for tests that look at a queue.

On RabbitMQ, queues outlive the test run, so every queue of a run gets a unique name without
a vhost: the logical queue ``q`` becomes the queue and (topic) exchange ``q.<run id>``, bound
with routing key ``q``. Celery code (and celery-durable, which reads a message's queue from its
routing key) still sees ``q``; the session deletes the queues it created at the end.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.app.amqp import AMQP, Queues
from kombu import Connection, Exchange, Queue

#: The RabbitMQ the RabbitMQ runs use (guest/guest on the default vhost).
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
#: Set by the session fixture: the suffix of this run's RabbitMQ queues.
RUN_ENV = "DURABLE_TEST_QUEUE_RUN"


def run_queue(name: str, run: str) -> Queue:
    """The queue the logical queue ``name`` is in this run."""
    unique = f"{name}.{run}"
    # A topic exchange: Celery publishes to a direct one through the default exchange with
    # the queue's (unique) name as routing key, and the worker would see that name.
    return Queue(unique, Exchange(unique, "topic"), routing_key=name, alias=name)


class RunQueues(Queues):  # type: ignore[misc]
    """Celery's queue map, creating missing queues under this run's unique names."""

    def new_missing(self, name: str) -> Queue:
        return run_queue(name, os.environ[RUN_ENV])


class RunAMQP(AMQP):  # type: ignore[misc]
    """Celery's AMQP helper with :class:`RunQueues`, the default queue included."""

    queues_cls = RunQueues

    def Queues(self, queues: Any, *args: Any, **kwargs: Any) -> Queues:
        if not queues and self.app.conf.task_default_queue:
            queues = (run_queue(self.app.conf.task_default_queue, os.environ[RUN_ENV]),)
        return super().Queues(queues, *args, **kwargs)


def amqp_problem(url: str) -> str | None:
    """Why RabbitMQ at ``url`` cannot be used (None when it answers)."""
    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        return f"RabbitMQ at {url} does not answer ({exc})"
    return None


def _bound(app: Celery, conn: Any, name: str) -> Any:
    return app.amqp.queues[name](conn.default_channel)


def queue_length(app: Celery, name: str) -> int:
    """Messages ready on the logical queue ``name``, on whichever broker the app uses."""
    with app.connection_for_write() as conn:
        return int(_bound(app, conn, name).queue_declare().message_count)


def purge_queue(app: Celery, name: str) -> None:
    """Drop every message of the logical queue ``name`` (a fresh start for a test)."""
    with app.connection_for_write() as conn:
        queue = _bound(app, conn, name)
        queue.declare()
        queue.purge()


def delete_run_queues(app: Celery, logical: set[str]) -> None:
    """Delete this run's RabbitMQ queues and exchanges (their unique names only)."""
    from celery_durable.versions import extra_queues

    run = os.environ[RUN_ENV]
    unique = {f"{name}.{run}" for name in logical}
    # Workers also consume version-tagged queues named after the (unique) queue names.
    unique |= set(extra_queues(app, sorted(unique)))
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for name in sorted(unique):
            channel.queue_delete(name)
            channel.exchange_delete(name)
