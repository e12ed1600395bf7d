"""Real ``celery worker`` subprocesses of the benchmarks, stopped by PID; and what a process
uses (its CPU time, which TCP connections it owns) read from Linux ``/proc``.

Each worker is started in a new session (its process group id is its PID), so that its pool
processes can be stopped with it: :meth:`WorkerSet.stop` signals the group of a worker this
benchmark started, never anything else.
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

ROOT = Path(__file__).resolve().parent.parent
#: Seconds to wait for a worker to log "ready.", and for a stopped worker to exit.
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


@dataclass
class Worker:
    """A ``celery worker`` main process this benchmark started."""

    proc: subprocess.Popen[bytes]
    name: str  # the node name (``name@host``)
    log_path: Path
    started_at: float  # time.time() at spawn
    ready_at: float = 0.0  # time.time() when "ready." was seen

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

    def log_contains(self, needle: str) -> bool:
        return needle in self.log_text()

    def check_running(self) -> None:
        """Raise if the worker has exited (with the end of its log)."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited with {self.proc.returncode}:"
                               f"\n{self.log_tail()}")


@dataclass
class WorkerSet:
    """Starts workers (``-P <pool> -c <concurrency>``) of one app on one queue and stops
    every one of them (by PID). Workers are named ``<label><n>@%h``, n = 1, 2, ..."""

    app_ref: str  # ``module:attribute`` for ``celery -A``
    queue: str
    env: dict[str, str]  # added to this process's environment
    label: str
    pool: str = "prefork"
    concurrency: int = 1  # of the workers started from now on
    keep_logs: bool = False
    #: ``--loglevel`` of the workers; below INFO, the app must log ``ready_line`` itself.
    loglevel: str = "INFO"
    ready_line: str = " ready."
    workers: list[Worker] = field(default_factory=list)
    _count: int = 0

    def spawn(self) -> Worker:
        """Start ``celery -A <app> worker -P <pool> -c <concurrency>`` (not yet ready)."""
        self._count += 1
        name = f"{self.label}{self._count}@%h"
        log = tempfile.NamedTemporaryFile(prefix=f"bench-{self.label}{self._count}-",
                                          suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "celery", "-A", self.app_ref, "worker", "-P", self.pool,
               "-c", str(self.concurrency), "-Q", self.queue, "-n", name,
               f"--loglevel={self.loglevel}",
               "--without-gossip", "--without-mingle", "--without-heartbeat"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        try:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        worker = Worker(proc, name, Path(log.name), time.time())
        self.workers.append(worker)
        return worker

    def wait_ready(self, worker: Worker, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Block until the worker logs that it is ready to consume."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            worker.check_running()
            if worker.log_contains(self.ready_line):
                worker.ready_at = time.time()
                return
            time.sleep(0.05)
        raise RuntimeError(f"worker {worker.name} not ready after {timeout_s:g} s:\n"
                           f"{worker.log_tail()}")

    def start(self, count: int) -> list[Worker]:
        """Start ``count`` workers and wait until all are ready."""
        started = [self.spawn() for _ in range(count)]
        for worker in started:
            self.wait_ready(worker)
        return started

    def by_pid(self, pid: int) -> Worker | None:
        return next((w for w in self.workers if w.pid == pid), None)

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.proc.poll() is None]

    def check_alive(self) -> None:
        """Raise if a worker has exited (with the end of its log)."""
        for worker in self.workers:
            worker.check_running()

    def errors_logged(self) -> list[str]:
        """ERROR/CRITICAL lines and tracebacks the workers logged (for the report)."""
        lines = []
        for worker in self.workers:
            for line in worker.log_text().splitlines():
                if "ERROR/" in line or "CRITICAL/" in line or line.startswith("Traceback"):
                    lines.append(f"{worker.name}: {line}")
        return lines

    def stop(self, worker: Worker) -> None:
        """Stop a worker and the rest of its process group: SIGTERM (warm shutdown), then
        SIGKILL to the group; reap it and remove its log (unless ``keep_logs``)."""
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
            try:
                worker.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(worker.pid, signal.SIGKILL)  # pool processes left behind, if any
        except (ProcessLookupError, PermissionError):
            pass
        try:
            worker.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"warning: worker {worker.name} (pid {worker.pid}) did not exit",
                  file=sys.stderr)
        if worker in self.workers:
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
