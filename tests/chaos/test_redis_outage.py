"""Redis itself fails under load: restarted with AOF, or briefly unreachable. No committed
checkpoint is lost and every run completes."""

from __future__ import annotations

import gc
import shutil
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from celery_durable import DurableClient, RunStatus
from tests.chaos.helpers import wait_for
from tests.conftest import start_redis_server
from tests.workers import celery_worker, worker_log

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RUNS = 12
STEPS = 8


@pytest.fixture
def aof_redis() -> Iterator[dict[str, Any]]:
    """A redis-server with AOF fsync on every write, restartable on the same port."""
    proc, url, workdir = start_redis_server("--appendonly", "yes", "--appendfsync", "always")
    server = {"proc": proc, "url": url, "workdir": workdir,
              "port": int(url.rsplit(":", 1)[1])}
    yield server
    # Results of a client app whose backend is this server are finalised when collected,
    # and a result consumer then talks to its server: collect them while it still answers
    # (later, in another test, the finaliser would retry for 20 s and raise).
    gc.collect()
    server["proc"].terminate()
    server["proc"].wait(timeout=10)
    shutil.rmtree(workdir, ignore_errors=True)


def client_app(broker: str, store: str | None = None) -> Celery:
    app = Celery("outage-client", broker=f"{broker}/0", backend=f"{broker}/1",
                 set_as_current=False)
    if store:
        app.conf.durable_redis_url = f"{store}/0"
    import tests.tasks  # noqa: F401 - registers the shared tasks with this app

    return app


def wait_all_completed(client: DurableClient, ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        for run_id in list(pending):
            try:
                if client.get_run(run_id).status is RunStatus.COMPLETED:
                    pending.discard(run_id)
            except Exception:
                pass
        time.sleep(0.2)
    assert not pending, f"{len(pending)} runs did not complete: {sorted(pending)[:3]}"


def step_counts(counters: redis.Redis, token: str, i: int) -> list[int]:
    return [int(counters.get(f"{token}:{i}:exec:{s}") or 0) for s in range(STEPS)]


def test_redis_restarted_with_aof_mid_load(aof_redis, token) -> None:
    url = aof_redis["url"]
    app = client_app(url)
    client = DurableClient(app)
    counters = redis.Redis.from_url(f"{url}/3", decode_responses=True)
    with celery_worker(url, pool="prefork", queue="outage", concurrency=2, name="o1"), \
            celery_worker(url, pool="prefork", queue="outage", concurrency=2, name="o2"):
        task = app.tasks["tests.tasks.chaos_pipeline"]
        ids = [task.apply_async((f"{token}:{i}", STEPS, 0.15), queue="outage").id
               for i in range(RUNS)]
        time.sleep(2.0)
        # (read_run: a run that completed keeps its checkpoints in its archive)
        before = {run_id: client.store.read_run(run_id)[1] for run_id in ids}
        assert sum(len(v) for v in before.values()) > 0, "nothing committed before the crash"
        # Crash Redis (no clean shutdown) and bring it back from its AOF.
        aof_redis["proc"].send_signal(signal.SIGKILL)
        aof_redis["proc"].wait(timeout=10)
        time.sleep(2.0)
        aof_redis["proc"], _, _ = start_redis_server(
            "--appendonly", "yes", "--appendfsync", "always",
            port=aof_redis["port"], workdir=aof_redis["workdir"])
        wait_all_completed(client, ids, timeout=180)
    for i, run_id in enumerate(ids):
        run = client.get_run(run_id)
        assert run.result == list(range(STEPS))
        after = client.store.read_run(run_id)[1]
        # Every checkpoint committed before the crash is still there, unchanged...
        assert {k: after[k] for k in before[run_id]} == before[run_id]
        # ...and its step never ran again.
        counts = step_counts(counters, token, i)
        assert all(counts[int(pos)] == 1 for pos in before[run_id]), counts


def test_store_unreachable_for_a_while(redis_base_url, aof_redis, token) -> None:
    # The broker stays up; only the checkpoint store goes away for a few seconds.
    store_url = aof_redis["url"]
    app = client_app(redis_base_url, store=store_url)
    client = DurableClient(app)
    counters = redis.Redis.from_url(f"{redis_base_url}/3", decode_responses=True)
    env = {"DURABLE_TEST_STORE_URL": f"{store_url}/0"}
    with celery_worker(redis_base_url, pool="prefork", queue="store-outage", concurrency=2,
                       name="u1", extra_env=env) as worker:
        task = app.tasks["tests.tasks.chaos_pipeline"]
        ids = [task.apply_async((f"{token}:{i}", STEPS, 0.15), queue="store-outage").id
               for i in range(RUNS)]
        wait_for(lambda: sum(len(client.store.read_run(r)[1]) for r in ids)
                   >= 3, 60, "a few steps committed")
        aof_redis["proc"].send_signal(signal.SIGKILL)
        aof_redis["proc"].wait(timeout=10)
        time.sleep(4.0)
        aof_redis["proc"], _, _ = start_redis_server(
            "--appendonly", "yes", "--appendfsync", "always",
            port=aof_redis["port"], workdir=aof_redis["workdir"])
        wait_all_completed(client, ids, timeout=180)
        text = worker_log(worker)
    # The outage shows up as clear errors that name the run, then the runs carry on.
    assert "celery-durable could not" in text
    for i, run_id in enumerate(ids):
        assert client.get_run(run_id).result == list(range(STEPS))
        assert all(c >= 1 for c in step_counts(counters, token, i))


def test_a_worker_started_while_the_store_is_down_waits_for_it(
        redis_base_url, aof_redis, token) -> None:
    store_url = aof_redis["url"]
    app = client_app(redis_base_url, store=store_url)
    client = DurableClient(app)
    aof_redis["proc"].send_signal(signal.SIGKILL)
    aof_redis["proc"].wait(timeout=10)
    env = {"DURABLE_TEST_STORE_URL": f"{store_url}/0"}
    with celery_worker(redis_base_url, pool="threads", queue="store-late", concurrency=2,
                       name="late", extra_env=env, ready=False) as worker:
        # The worker waits for the store rather than exit (it would, with the error).
        wait_for(lambda: "does not answer" in worker_log(worker), 30, "the retry warning")
        assert worker.poll() is None, worker_log(worker)[-2000:]
        aof_redis["proc"], _, _ = start_redis_server(
            "--appendonly", "yes", "--appendfsync", "always",
            port=aof_redis["port"], workdir=aof_redis["workdir"])
        task = app.tasks["tests.tasks.chaos_pipeline"]
        ids = [task.apply_async((f"{token}:{i}", 2, 0.0), queue="store-late").id
               for i in range(3)]
        wait_all_completed(client, ids, timeout=60)
        text = worker_log(worker)
    assert "Unrecoverable error" not in text
    assert "redis://127.0.0.1" in text and "trying again in" in text


def test_a_worker_waiting_for_the_store_stops_on_sigterm(redis_base_url, aof_redis) -> None:
    aof_redis["proc"].send_signal(signal.SIGKILL)
    aof_redis["proc"].wait(timeout=10)
    env = {"DURABLE_TEST_STORE_URL": f"{aof_redis['url']}/0"}
    with celery_worker(redis_base_url, pool="solo", queue="store-never", name="never",
                       extra_env=env, ready=False) as worker:
        wait_for(lambda: "does not answer" in worker_log(worker), 30, "the retry warning")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0, worker_log(worker)[-2000:]
    aof_redis["proc"], _, _ = start_redis_server(  # for the fixture's teardown
        "--appendonly", "yes", "--appendfsync", "always",
        port=aof_redis["port"], workdir=aof_redis["workdir"])
