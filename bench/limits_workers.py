"""``celery worker`` subprocesses of the limits benchmark, stopped by PID; and which process
owns which TCP connection to Redis (to attribute the commands Redis sees).

Each worker starts in a new session, so its process group id is its PID: :meth:`Workers.stop`
signals only the PID (and the group) of a worker this benchmark started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .limits_app import ENV_URL

ROOT = Path(__file__).resolve().parent.parent
APP_REF = "bench.limits_app:app"
#: Seconds to wait for a worker to log "ready.", and for a stopped worker to exit.
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


@dataclass
class Worker:
    """A ``celery worker`` main process this benchmark started."""

    proc: subprocess.Popen[bytes]
    name: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


@dataclass
class Workers:
    """Starts ``count`` workers (``-P <pool> -c <concurrency>``) on one queue; stops them all."""

    redis_url: str
    queue: str
    pool: str = "threads"
    concurrency: int = 6
    label: str = "limits"
    keep_logs: bool = False
    workers: list[Worker] = field(default_factory=list)

    def spawn(self, index: int) -> Worker:
        name = f"{self.label}{index}@%h"
        log = tempfile.NamedTemporaryFile(prefix=f"bench-{self.label}{index}-", suffix=".log",
                                          delete=False)
        cmd = [sys.executable, "-m", "celery", "-A", APP_REF, "worker", "-P", self.pool,
               "-c", str(self.concurrency), "-Q", self.queue, "-n", name, "--loglevel=INFO",
               "--without-gossip", "--without-mingle", "--without-heartbeat"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), ENV_URL: self.redis_url}
        try:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        worker = Worker(proc, name, Path(log.name))
        self.workers.append(worker)
        return worker

    def wait_ready(self, worker: Worker, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker {worker.name} exited with {worker.proc.returncode}:"
                                   f"\n{worker.log_tail()}")
            if " ready." in worker.log_text():
                return
            time.sleep(0.05)
        raise RuntimeError(f"worker {worker.name} not ready after {timeout_s:g} s:\n"
                           f"{worker.log_tail()}")

    def start(self, count: int) -> None:
        started = [self.spawn(i + 1) for i in range(count)]
        for worker in started:
            self.wait_ready(worker)

    def check_alive(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker {worker.name} exited with {worker.proc.returncode}:"
                                   f"\n{worker.log_tail()}")

    def errors_logged(self) -> list[str]:
        """ERROR/CRITICAL lines and tracebacks the workers logged (for the report)."""
        lines = []
        for worker in self.workers:
            for line in worker.log_text().splitlines():
                if "ERROR/" in line or "CRITICAL/" in line or line.startswith("Traceback"):
                    lines.append(f"{worker.name}: {line}")
        return lines

    def stop(self, worker: Worker) -> None:
        """SIGTERM (warm shutdown), then SIGKILL to the worker's own process group."""
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
            try:
                worker.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(worker.pid, signal.SIGKILL)  # anything it left behind in its group
        except (ProcessLookupError, PermissionError):
            pass
        try:
            worker.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"warning: worker {worker.name} (pid {worker.pid}) did not exit",
                  file=sys.stderr)
        self.workers.remove(worker)
        if self.keep_logs:
            print(f"worker log kept: {worker.log_path}", file=sys.stderr)
        else:
            worker.log_path.unlink(missing_ok=True)

    def stop_all(self) -> None:
        for worker in list(self.workers):
            try:
                self.stop(worker)
            except Exception as exc:  # keep stopping the others
                print(f"warning: could not stop worker {worker.name}: {exc}", file=sys.stderr)


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def local_ports(pid: int) -> set[int]:
    """Local TCP ports of the sockets process ``pid`` has open (Linux ``/proc``; empty
    elsewhere)."""
    inodes = _socket_inodes(pid)
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}", encoding="ascii") as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) > 9 and int(parts[9]) in inodes:
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (its threads included; 0.0 if it
    is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
