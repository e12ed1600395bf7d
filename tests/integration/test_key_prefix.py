"""Two apps sharing one Redis with different ``durable_key_prefix`` values do not see each
other: runs, listings, concurrency limits, idempotency keys, worker registries, the CLI and
the Flower API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery import Celery

from celery_durable import DurableClient, RunNotFoundError, RunStatus
from tests.chaos.helpers import run_with, wait_for
from tests.workers import celery_worker

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent.parent


def tenant_app(redis_base_url: str, prefix: str) -> Celery:
    app = Celery(f"tenant-{prefix}", broker=f"{redis_base_url}/0",
                 backend=f"{redis_base_url}/0", set_as_current=False)
    app.conf.durable_key_prefix = prefix
    # The test app imported the task modules: their shared tasks bind to this app too.
    app.finalize()
    return app


def cli(redis_base_url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DURABLE_TEST_REDIS_URL": redis_base_url, "PYTHONPATH": str(ROOT),
           "DURABLE_TEST_KEY_PREFIX": prefix}
    return subprocess.run([sys.executable, "-m", "celery", "-A", "tests.app", "durable", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def flower_run_ids(redis_base_url: str, prefix: str, foreign_run: str) -> set[str]:
    """Start ``celery flower`` for the app with ``prefix``; return the run ids its JSON API
    lists, after checking that it does not know ``foreign_run``."""
    import base64
    import urllib.error
    import urllib.request

    from celery_durable.flower import CONF_PATH
    from tests.conftest import free_port

    port = free_port()
    env = {**os.environ, "DURABLE_TEST_REDIS_URL": redis_base_url, "PYTHONPATH": str(ROOT),
           "DURABLE_TEST_KEY_PREFIX": prefix}
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.app", "flower", f"--port={port}",
         "--address=127.0.0.1", "--basic-auth=ops:prefix-test", f"--conf={CONF_PATH}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> tuple[int, bytes]:
        request = urllib.request.Request(base + path, headers={
            "Authorization": "Basic " + base64.b64encode(b"ops:prefix-test").decode()})
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, b""

    def up() -> bool:
        try:
            return get("/healthcheck")[0] == 200
        except OSError:
            return False

    try:
        wait_for(up, 60, "flower to answer")
        status, body = get("/api/durable/runs")
        assert status == 200
        assert get(f"/api/durable/runs/{foreign_run}")[0] == 404
        return {run["id"] for run in json.loads(body)["runs"]}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_two_prefixes_on_one_redis_are_isolated(redis_base_url, test_app, tasks, token) -> None:
    stamp = time.time_ns()
    pa, pb = f"ta{stamp}:", f"tb{stamp}:"
    app_a, app_b = tenant_app(redis_base_url, pa), tenant_app(redis_base_url, pb)
    client_a, client_b = DurableClient(app_a), DurableClient(app_b)
    counters, limited = tasks.counters_task.name, tasks.limited.name
    # Given app A's limit paused (0): only A's runs of `limited` must wait
    client_a.set_concurrency_limit(limited, 0)
    with celery_worker(redis_base_url, pool="threads", queue="prefix-a", concurrency=2,
                       name="pa", extra_env={"DURABLE_TEST_KEY_PREFIX": pa}), \
            celery_worker(redis_base_url, pool="threads", queue="prefix-b", concurrency=2,
                          name="pb", extra_env={"DURABLE_TEST_KEY_PREFIX": pb}):
        run_a = app_a.tasks[counters].apply_async((f"{token}:a", 0), queue="prefix-a")
        run_b = app_b.tasks[counters].apply_async((f"{token}:b", 0), queue="prefix-b")
        # The same idempotency key in both apps names two different runs.
        idem_a = app_a.tasks[tasks.add_one.name].apply_async(
            (1,), queue="prefix-a", idempotency_key="shared-key")
        idem_b = app_b.tasks[tasks.add_one.name].apply_async(
            (2,), queue="prefix-b", idempotency_key="shared-key")
        again_a = app_a.tasks[tasks.add_one.name].apply_async(
            (1,), queue="prefix-a", idempotency_key="shared-key")
        parked_a = app_a.tasks[limited].apply_async((f"{token}:la", 1, 0.0), queue="prefix-a")
        free_b = app_b.tasks[limited].apply_async((f"{token}:lb", 1, 0.0), queue="prefix-b")

        assert run_a.get(timeout=60) == {"result": 20}
        assert run_b.get(timeout=60) == {"result": 20}
        assert idem_a.id != idem_b.id and again_a.id == idem_a.id
        assert (idem_a.get(timeout=60), idem_b.get(timeout=60)) == (2, 3)
        assert free_b.get(timeout=60) == 1
        wait_for(lambda: client_a.concurrency_limit(limited).parked == [parked_a.id], 30,
                 "A's run to be parked by A's paused limit")
        assert client_b.concurrency_limit(limited).parked == []

        # Listings and reads see only their own app's runs.
        ids_a = {r.id for r in client_a.list_runs(limit=1000)}
        ids_b = {r.id for r in client_b.list_runs(limit=1000)}
        assert ids_a == {run_a.id, idem_a.id, parked_a.id}
        assert ids_b == {run_b.id, idem_b.id, free_b.id}
        with pytest.raises(RunNotFoundError):
            client_a.get_run(run_b.id)
        with pytest.raises(RunNotFoundError):
            client_b.get_run(run_a.id)
        # Each app's heartbeat registry holds its own worker only.
        store_a, store_b = client_a.store, client_b.store
        workers_a = store_a.client.zrange(store_a.keys.workers, 0, -1)
        workers_b = store_b.client.zrange(store_b.keys.workers, 0, -1)
        assert len(workers_a) == len(workers_b) == 1
        assert workers_a[0].startswith("pa@") and workers_b[0].startswith("pb@")

        # The CLI of each app lists its own runs and limits.
        listed_a = cli(redis_base_url, pa, "runs", "--json", "--limit", "1000")
        assert listed_a.returncode == 0, listed_a.stderr
        assert {json.loads(line)["id"] for line in listed_a.stdout.splitlines()} == ids_a
        listed_b = cli(redis_base_url, pb, "runs", "--json")
        assert {json.loads(line)["id"] for line in listed_b.stdout.splitlines()} == ids_b
        shown = cli(redis_base_url, pb, "show", run_a.id)
        assert shown.returncode == 1 and "no durable run" in shown.stderr
        limits_a = json.loads(cli(redis_base_url, pa, "limits", limited, "--json").stdout)
        limits_b = json.loads(cli(redis_base_url, pb, "limits", limited, "--json").stdout)
        assert (limits_a["limit"], limits_a["parked"]) == (0, [parked_a.id])
        assert (limits_b["limit"], limits_b["parked"]) == (None, [])

        # Flower of app A shows A's runs only.
        assert flower_run_ids(redis_base_url, pa, run_b.id) == ids_a

        # Resuming A's limit lets its parked run go; B was never involved.
        client_a.set_concurrency_limit(limited, 2)
        assert parked_a.get(timeout=60) == 1
        wait_for(lambda: run_with(client_a, parked_a.id,
                                  lambda r: r.status is RunStatus.COMPLETED), 10, "A's run")

    # Every key of ours that mentions a run of one app carries that app's prefix (Celery's
    # result keys are Celery's: the workers' result backend shares the store's db).
    raw = store_a.client
    for run_id, prefix in [(run_a.id, pa), (idem_a.id, pa), (run_b.id, pb), (idem_b.id, pb)]:
        found = [str(k) for k in raw.scan_iter(match=f"*{run_id}*", count=1000)
                 if not str(k).startswith("celery-task-meta-")]
        assert found and all(k.startswith(prefix) for k in found), found
    for key in raw.scan_iter(match="*shared-key*", count=1000):
        assert str(key) in (f"{pa}idem:{tasks.add_one.name}:shared-key",
                            f"{pb}idem:{tasks.add_one.name}:shared-key")
