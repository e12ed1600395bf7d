"""Fixtures of the Flower tests: a real worker and real ``celery flower`` processes over the
session's redis-server, and durable runs seeded by really running tasks.

Flower runs as ``celery -A tests.flower.flowerapp flower --basic-auth=user:pw
--conf=<the conf file we ship>``, exactly as a user starts it.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from tests.conftest import free_port
from tests.workers import ROOT, stop_worker

USER, PASSWORD = "user", "pw"
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")


@dataclass
class Reply:
    status: int
    body: str
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FlowerServer:
    """A running ``celery flower``: its base URL (with the prefix) and HTTP helpers."""

    base: str
    proc: subprocess.Popen[bytes]

    def request(self, path: str, *, method: str = "GET", auth: str | None = AUTH,
                data: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={**({"Authorization": auth} if auth else {}),
                                              **(headers or {})})
        opener = urllib.request.build_opener(_NoRedirect())
        try:
            with opener.open(req, timeout=15) as resp:
                return Reply(resp.status, resp.read().decode(), dict(resp.headers))
        except urllib.error.HTTPError as err:
            return Reply(err.code, err.read().decode(), dict(err.headers))

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request(path, **kw)

    def post_json(self, path: str, body: dict[str, Any], **kw: Any) -> Reply:
        return self.request(path, method="POST", data=json.dumps(body).encode(),
                            headers={"Content-Type": "application/json", **kw.pop("headers", {})},
                            **kw)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _env(redis_base_url: str) -> dict[str, str]:
    return {**os.environ, "DURABLE_TEST_REDIS_URL": redis_base_url, "PYTHONPATH": str(ROOT)}


def _spawn(cmd: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    proc.log_path = log.name  # type: ignore[attr-defined]
    return proc


def _log_of(proc: subprocess.Popen[bytes]) -> str:
    with open(proc.log_path) as fh:  # type: ignore[attr-defined]
        return fh.read()[-4000:]


def start_flower(redis_base_url: str, *extra: str, basic_auth: bool = True) -> FlowerServer:
    from celery_durable.flower import CONF_PATH

    port = free_port()
    auth = [f"--basic-auth={USER}:{PASSWORD}"] if basic_auth else []
    cmd = [sys.executable, "-m", "celery", "-A", "tests.flower.flowerapp", "flower",
           f"--port={port}", "--address=127.0.0.1", *auth, f"--conf={CONF_PATH}", *extra]
    proc = _spawn(cmd, _env(redis_base_url), "flower")
    prefix = next((e.split("=", 1)[1].strip("/") for e in extra
                   if e.startswith("--url_prefix=")), "")
    server = FlowerServer(f"http://127.0.0.1:{port}" + (f"/{prefix}" if prefix else ""), proc)

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"flower exited with {proc.returncode}:\n{_log_of(proc)}")
        try:
            return server.get("/healthcheck").status == 200
        except OSError:
            return False

    try:
        wait_for("flower to answer /healthcheck", up, timeout=30)
    except BaseException:
        stop_process(proc)  # never leave a Flower behind a failed start
        raise
    return server


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    if os.environ.get("DURABLE_KEEP_WORKER_LOGS"):
        print(f"log kept: {proc.log_path}")  # type: ignore[attr-defined]
    else:
        os.unlink(proc.log_path)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def flower_app(redis_base_url: str) -> Iterator[Any]:
    """The Flower tests' Celery app, on clean databases 10 and 11."""
    for db in (10, 11):
        redis.Redis.from_url(f"{redis_base_url}/{db}").flushdb()
    from tests.flower import flowerapp

    yield flowerapp
    gc.collect()  # results unsubscribe when collected: while Redis is still up


@pytest.fixture(scope="session")
def flower(redis_base_url: str, flower_app: Any) -> Iterator[FlowerServer]:
    server = start_flower(redis_base_url)
    try:
        yield server
    finally:
        stop_process(server.proc)


@pytest.fixture(scope="session")
def flower_worker(redis_base_url: str, flower_app: Any) -> Iterator[subprocess.Popen[bytes]]:
    cmd = [sys.executable, "-m", "celery", "-A", "tests.flower.flowerapp", "worker", "-P",
           "threads", "-c", "2", "-Q", "flower-tests", "-n", "flower-tests@%h",
           "--loglevel=INFO", "--without-gossip", "--without-mingle"]
    proc = _spawn(cmd, _env(redis_base_url), "flower-worker")
    try:
        yield proc
    finally:
        stop_worker(proc)


@dataclass
class Seeded:
    """Ids of the runs the tests look at, each in the state its name says."""

    completed: str
    failed: str
    waiting: str
    hostile: str
    doomed: str
    waiting_key: str


def task(flower_app: Any, name: str) -> Any:
    """A task of the Flower tests' app (not the shared-task proxy, which follows whichever
    app is current in this process)."""
    return flower_app.app.tasks[f"flower_tests.{name}"]


def run_status(flower_app: Any, run_id: str) -> str:
    from celery_durable import DurableClient

    return DurableClient(flower_app.app).get_run(run_id).status.value


@pytest.fixture(scope="session")
def seeded(flower: FlowerServer, flower_worker: Any, flower_app: Any) -> Seeded:
    """Runs made by the real worker (Flower is up first, so its metrics see them finish)."""
    m = flower_app
    completed = task(m, "checkout").delay("o-1").id
    failed = task(m, "flaky").delay("o-2").id
    waiting = task(m, "approval").apply_async(("o-3",), idempotency_key="approve-o-3").id
    hostile = task(m, "hostile").delay("<script>window.__xss_payload=1</script>").id
    doomed = task(m, "doomed").delay().id
    wanted = {completed: "completed", failed: "failed", waiting: "suspended",
              hostile: "completed", doomed: "failed"}
    for run_id, status in wanted.items():
        wait_for(f"run {run_id} to be {status}",
                 lambda r=run_id, s=status: run_status(m, r) == s)
    return Seeded(completed=completed, failed=failed, waiting=waiting, hostile=hostile,
                  doomed=doomed, waiting_key="approve:o-3")
