"""examples/operations: redis.conf starts a real server that persists and never evicts, and
the doctor finds nothing to fix with celeryconfig.py against it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import redis
from celery import Celery

from celery_durable.checks import settings_problems
from celery_durable.config import settings_for
from celery_durable.testing.redis_server import free_port
from tests.examples.conftest import EXAMPLES

HERE = EXAMPLES / "operations"


@pytest.fixture
def configured_redis() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="durable-ops-")
    proc = subprocess.Popen([exe, str(HERE / "redis.conf"), "--port", str(port), "--bind",
                             "127.0.0.1", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert proc.poll() is None, "redis-server rejected examples/operations/redis.conf"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def test_redis_conf_persists_and_never_evicts(configured_redis: str) -> None:
    client = redis.Redis.from_url(configured_redis, decode_responses=True)
    assert client.config_get("appendonly")["appendonly"] == "yes"
    assert client.config_get("appendfsync")["appendfsync"] == "everysec"
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    client.close()


def test_celeryconfig_is_valid_and_fits_durable_runs() -> None:
    app = Celery("ops", set_as_current=False)
    sys.path.insert(0, str(HERE))
    try:
        app.config_from_object("celeryconfig")
        settings = settings_for(app)
    finally:
        sys.path.remove(str(HERE))
        sys.modules.pop("celeryconfig", None)
    assert settings.queue_limits == {"images": 4}
    assert settings.eviction_check == "error"
    assert settings_problems(app, settings) == []


def test_the_doctor_is_happy_with_both(configured_redis: str) -> None:
    env = {**os.environ, "REDIS_URL": configured_redis, "PYTHONPATH": str(HERE)}
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "proj", "durable", "doctor"],
                          cwd=HERE, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK    Redis at redis://127.0.0.1:"), proc.stdout
