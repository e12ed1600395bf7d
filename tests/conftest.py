"""Session fixtures: a real redis-server on a free port, the test app, an embedded worker.

Set ``DURABLE_TEST_REDIS_URL=redis://host:port`` to use an existing server instead (its
databases 0, 1 and 3 are flushed). Without redis-server the suite is skipped, or fails
under ``CI=true``.

``DURABLE_TEST_BROKER=rabbitmq`` makes RabbitMQ (``DURABLE_TEST_AMQP_URL``, default
guest@127.0.0.1:5672) the broker, with this run's queues under unique names (tests/brokers.py);
the session is skipped when RabbitMQ does not answer, and fails under ``CI=true``.
``DURABLE_TEST_STORE=cluster`` puts the checkpoint store on a real 3-master Redis Cluster
started for the session (the broker and result backend stay on the plain server); tests
that build their own store use :func:`store_url` and :func:`wipe_store`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: Where the checkpoint store lives: "redis" (the session's server) or "cluster".
STORE_KIND = os.environ.get("DURABLE_TEST_STORE", "redis")
#: The broker of the test app: "redis" (the session's server) or "rabbitmq".
BROKER_KIND = os.environ.get("DURABLE_TEST_BROKER", "redis")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis_server(
    *extra: str, port: int | None = None, workdir: str | None = None
) -> tuple[subprocess.Popen[bytes], str, str]:
    """Start a throwaway redis-server; returns the process, its URL and its directory.

    ``extra`` arguments override the defaults (no persistence); ``port`` and ``workdir``
    restart a server where a previous one ran."""
    exe = shutil.which("redis-server")
    if exe is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    port = port or free_port()
    workdir = workdir or tempfile.mkdtemp(prefix="durable-redis-")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--maxmemory-policy", "noeviction", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}"
    client = redis.Redis.from_url(url)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail(f"redis-server on port {port} did not start")
    client.close()
    return proc, url, workdir


@pytest.fixture(scope="session")
def redis_base_url() -> Iterator[str]:
    given = os.environ.get("DURABLE_TEST_REDIS_URL")
    if given:
        yield given.rstrip("/")
        return
    proc, url, workdir = start_redis_server()
    os.environ["DURABLE_TEST_REDIS_URL"] = url
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str | None]:
    """The ``redis+cluster://`` URL of the session's Redis Cluster under
    ``DURABLE_TEST_STORE=cluster`` (None otherwise); workers find it in
    ``DURABLE_TEST_STORE_URL``."""
    if STORE_KIND != "cluster":
        yield None
        return
    from tests.cluster import start_redis_cluster, stop_servers

    servers = start_redis_cluster()
    os.environ["DURABLE_TEST_STORE_URL"] = servers.url
    try:
        yield servers.url
    finally:
        os.environ.pop("DURABLE_TEST_STORE_URL", None)
        stop_servers(servers)


@pytest.fixture(scope="session")
def store_url(redis_base_url: str, cluster_url: str | None) -> Callable[[int], str]:
    """``store_url(db)``: the URL of a test's own checkpoint store: database ``db`` of the
    session's server, or the cluster (which has one database: isolate by key prefix)."""
    return lambda db: cluster_url or f"{redis_base_url}/{db}"


def wipe_store(client: Any, prefix: str) -> None:
    """Delete a test store's keys: its whole database on a plain server, its ``prefix``'s
    keys on the shared cluster."""
    from redis.cluster import RedisCluster

    if not isinstance(client, RedisCluster):
        client.flushdb()
        return
    for key in list(client.scan_iter(match=f"{prefix}*", count=500)):
        client.delete(key)


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str | None]:
    """The RabbitMQ URL under ``DURABLE_TEST_BROKER=rabbitmq`` (None: the Redis broker)."""
    if BROKER_KIND != "rabbitmq":
        yield None
        return
    from tests.brokers import DEFAULT_AMQP_URL, RUN_ENV, amqp_problem

    url = os.environ.get("DURABLE_TEST_AMQP_URL", DEFAULT_AMQP_URL)
    problem = amqp_problem(url)
    if problem:
        if IN_CI:
            pytest.fail(f"{problem}: CI runs the suite on RabbitMQ too")
        pytest.skip(f"{problem}: start RabbitMQ or unset DURABLE_TEST_BROKER")
    os.environ["DURABLE_TEST_BROKER_URL"] = url
    os.environ[RUN_ENV] = f"t{os.getpid()}x{time.time_ns() % 10**9}"
    yield url


@pytest.fixture(scope="session")
def test_app(redis_base_url: str, cluster_url: str | None,  # type: ignore[no-untyped-def]
             broker_url: str | None):
    for db in (0, 1, 3):
        redis.Redis.from_url(f"{redis_base_url}/{db}").flushdb()
    from tests.app import app

    app.loader.import_default_modules()
    yield app
    if broker_url is not None:
        from tests.brokers import delete_run_queues
        from tests.workers import QUEUES_USED

        delete_run_queues(app, set(app.amqp.queues.aliases) | QUEUES_USED)
    # Results still referenced by finished tests unsubscribe when collected: do it while
    # Redis is still up.
    gc.collect()


@pytest.fixture(scope="session")
def _embedded_worker(test_app):  # type: ignore[no-untyped-def]
    """Starts the embedded worker of the ``worker`` fixture, again if it has stopped.

    A test's own embedded workers (``durable_worker``) stop only themselves; this one is
    restarted if something else stopped it (a test stopping Celery's process-wide flag).
    """
    from celery.bootsteps import RUN

    from celery_durable.testing import durable_worker

    stack = contextlib.ExitStack()
    current: list[Any] = []

    def ensure() -> Any:
        if not current or current[-1].blueprint.state != RUN:
            current.append(stack.enter_context(durable_worker(
                test_app, pool="solo", concurrency=1, loglevel="WARNING",
                shutdown_timeout=10, queues=[test_app.conf.task_default_queue])))
        return current[-1]

    with stack:
        yield ensure


@pytest.fixture
def worker(_embedded_worker):  # type: ignore[no-untyped-def]
    """An embedded solo-pool worker (a thread of the test process) on the default queue."""
    return _embedded_worker()


@pytest.fixture
def token(request: pytest.FixtureRequest) -> str:
    """A unique prefix for this test's execution counters."""
    return f"{request.node.name}:{time.time_ns()}"


@pytest.fixture(scope="session")
def tasks(test_app):  # type: ignore[no-untyped-def]
    """The tests.tasks module (imported only after the Redis URL is known)."""
    import tests.tasks as module

    return module


@pytest.fixture(scope="session")
def client(test_app):  # type: ignore[no-untyped-def]
    from celery_durable import DurableClient

    return DurableClient(test_app)
