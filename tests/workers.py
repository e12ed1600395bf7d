"""Real ``celery worker`` subprocesses for tests (prefork, threads, solo; crash tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Every queue a worker of this session consumed (RabbitMQ runs delete them at the end).
QUEUES_USED: set[str] = set()


def spawn_worker(
    redis_base_url: str, *, pool: str, queue: str, concurrency: int = 2,
    name: str | None = None, extra_env: dict[str, str] | None = None,
    node: str | None = None, also: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """Start ``celery -A tests.app worker`` consuming ``queue`` (and the queues ``also``;
    stop it with stop_worker). ``node`` is its full node name (default
    ``<name or queue>@<this host>``). Its output goes to a temporary file whose path is
    ``proc.log_path``."""
    QUEUES_USED.update((queue, *also))
    env = {**os.environ, "DURABLE_TEST_REDIS_URL": redis_base_url, "DURABLE_TEST_QUEUE": queue,
           "PYTHONPATH": str(ROOT), **(extra_env or {})}
    log = tempfile.NamedTemporaryFile(prefix=f"worker-{name or pool}-", suffix=".log",
                                      delete=False)
    cmd = [sys.executable, "-m", "celery", "-A", "tests.app", "worker", "-P", pool,
           "-c", str(concurrency), "-Q", ",".join((queue, *also)),
           "-n", node or f"{name or queue}@%h", "--loglevel=INFO",
           "--without-gossip", "--without-mingle",
           # On RabbitMQ the worker heartbeat's timer keeps kombu's event loop from
           # sleeping up to 10 s with a delivery (or a SIGTERM) waiting (see README).
           *(() if os.environ.get("DURABLE_TEST_BROKER_URL", "").startswith("amqp")
             else ("--without-heartbeat",))]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    proc.log_path = log.name  # type: ignore[attr-defined]
    return proc


@contextmanager
def celery_worker(
    redis_base_url: str, *, pool: str, queue: str, concurrency: int = 2,
    name: str | None = None, extra_env: dict[str, str] | None = None,
    node: str | None = None, also: tuple[str, ...] = (), ready: bool = True,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``celery -A tests.app worker`` (see :func:`spawn_worker`) and, with ``ready``,
    wait until it consumes (a worker takes a second or two to start; tests that time what
    it does must not count that); stop it by PID afterwards."""
    proc = spawn_worker(redis_base_url, pool=pool, queue=queue, concurrency=concurrency,
                        name=name, extra_env=extra_env, node=node, also=also)
    try:
        if ready:
            wait_ready(proc)
        yield proc
    finally:
        stop_worker(proc)


def worker_log(proc: subprocess.Popen[bytes]) -> str:
    """What a worker started by :func:`spawn_worker` has logged so far."""
    with open(proc.log_path, errors="replace") as log:  # type: ignore[attr-defined]
        return log.read()


def wait_ready(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait for the worker's "ready." log line (Celery logs it once it consumes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = worker_log(proc)
        if " ready." in text:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode} before it was "
                               f"ready:\n{text[-3000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"the worker was not ready within {timeout:g} s: see "
                       f"{proc.log_path}")  # type: ignore[attr-defined]


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """Stop a worker started by :func:`celery_worker` and every process of its group."""
    try:
        os.killpg(proc.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)
    log_path = getattr(proc, "log_path", None)
    if log_path and os.path.exists(log_path):
        if os.environ.get("DURABLE_KEEP_WORKER_LOGS"):
            print(f"worker log kept: {log_path}")
        else:
            os.unlink(log_path)
