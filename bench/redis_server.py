"""A throwaway redis-server on a free loopback port, stopped by PID when done."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

#: How long (seconds) to wait for the server to answer PING, and then to exit.
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RedisServer:
    """A redis-server process this benchmark started (and must stop)."""

    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path

    @property
    def url(self) -> str:
        """The server's URL without a database number."""
        return f"redis://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(exe: str, port: int, workdir: Path, extra: tuple[str, ...] = ()
           ) -> subprocess.Popen[bytes]:
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--logfile", str(workdir / "redis.log"),
            "--maxmemory-policy", "noeviction", "--daemonize", "no", *extra]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float) -> bool:
    """Poll PING until it answers (True), the process exits or ``timeout_s`` passes (False)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                time.sleep(0.02)
        return False
    finally:
        client.close()


def start_redis_server(exe: str = "redis-server", attempts: int = 3,
                       extra: tuple[str, ...] = ()) -> RedisServer:
    """Start redis-server without persistence on a free port (retried if the port was taken);
    ``extra`` arguments override the defaults (e.g. ``("--appendonly", "yes")``)."""
    path = shutil.which(exe)
    if path is None:
        raise RuntimeError(f"{exe} not found: install redis-server (apt-get install redis-server)")
    for _ in range(attempts):
        workdir = Path(tempfile.mkdtemp(prefix="durable-bench-redis-"))
        port = free_port()
        server = RedisServer(_spawn(path, port, workdir, extra), port, workdir)
        if _wait_ready(server.proc, server.url, START_TIMEOUT_S):
            return server
        stop_redis_server(server)
    raise RuntimeError(f"redis-server did not start after {attempts} attempts")


def stop_redis_server(server: RedisServer) -> None:
    """Stop the server by its PID (SIGTERM, then SIGKILL) and remove its directory."""
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=STOP_TIMEOUT_S)
    shutil.rmtree(server.workdir, ignore_errors=True)


@contextmanager
def throwaway_redis(exe: str = "redis-server", extra: tuple[str, ...] = ()
                    ) -> Iterator[RedisServer]:
    """A running throwaway server for the duration of the ``with`` block (stopped on error)."""
    server = start_redis_server(exe, extra=extra)
    try:
        yield server
    finally:
        stop_redis_server(server)


def server_version(url: str) -> str:
    """The ``redis_version`` the server at ``url`` reports."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return str(client.info("server")["redis_version"])
    finally:
        client.close()
