"""A throwaway ``redis-server`` on a free loopback port, for integration tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from ..errors import HarnessError

#: How long (seconds) a fresh server may take to answer PING.
START_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server(*extra_args: str) -> Iterator[str]:
    """Run ``redis-server`` on a free port for the duration of the block; yield its URL.

    The server never evicts keys (``maxmemory-policy noeviction``, as celery-durable needs)
    and persists nothing unless ``extra_args`` say so (e.g. ``"--appendonly", "yes"``). Its
    data directory is removed afterwards.

    Raises:
        HarnessError: redis-server is not installed, or did not answer in time.
    """
    exe = shutil.which("redis-server")
    if exe is None:
        raise HarnessError("redis-server is not installed: install it (apt-get install "
                           "redis-server) or point the tests at a server you run")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="durable-test-redis-")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--maxmemory-policy", "noeviction", *extra_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}"
    try:
        _wait_until_up(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_until_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if proc.poll() is not None:
                    raise HarnessError(
                        f"redis-server exited with status {proc.returncode} before answering "
                        f"on {url}") from None
                if time.monotonic() > deadline:
                    raise HarnessError(
                        f"redis-server did not answer on {url} within {START_TIMEOUT_S:g} s"
                    ) from None
                time.sleep(0.02)
    finally:
        client.close()
