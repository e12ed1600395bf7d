"""Helpers for the example tests: each example runs as a user runs it, from its own
directory, with real ``celery -A proj worker`` subprocesses, on a redis-server of its own
(started per test on a free port, so no database is shared with other tests)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis
from celery import Celery

from celery_durable import HarnessError
from celery_durable.testing import redis_server

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "examples"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


class Example:
    """An example directory and the environment its processes get."""

    def __init__(self, name: str, redis_base_url: str) -> None:
        self.name = name
        self.dir = EXAMPLES / name
        self.url = f"{redis_base_url}/0"
        self.env = {"REDIS_URL": self.url, "PYTHONPATH": str(self.dir)}
        self.redis = redis.Redis.from_url(self.url, decode_responses=True)
        # An app of this test's own to read the example's runs and results. Not the current
        # app: shared tasks of other tests must not resolve to it.
        self.app = Celery(f"check-{name}", broker=self.url, backend=self.url,
                          set_as_current=False)

    def run(self, *args: str, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``python ARGS`` (or ``celery ...`` as ``-m celery``) in the example's dir."""
        return subprocess.run([sys.executable, *args], cwd=cwd or self.dir, env=self.process_env(),
                              capture_output=True, text=True, timeout=timeout)

    def run_shell(self, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a shell script of the example, with this venv's ``celery`` and ``python``
        first on PATH."""
        return subprocess.run(["bash", script], cwd=self.dir, env=self.process_env(),
                              capture_output=True, text=True, timeout=timeout)

    def process_env(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        env.pop("DURABLE_TEST_REDIS_URL", None)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env


@pytest.fixture
def example(request: pytest.FixtureRequest) -> Iterator[Example]:
    """The example named by the test module (``test_<name>.py``), on a fresh redis-server."""
    name = Path(str(request.node.fspath)).stem.removeprefix("test_")
    with ExitStack() as stack:
        try:
            url = stack.enter_context(redis_server())
        except HarnessError as exc:
            if IN_CI:
                pytest.fail(str(exc))
            pytest.skip(str(exc))
        ex = Example(name, url)
        stack.callback(ex.redis.close)
        # Results of ex.app are finalised when collected, and their result consumer then
        # talks to this server: collect them before it stops (see test_redis_outage.py).
        stack.callback(gc.collect)
        yield ex
