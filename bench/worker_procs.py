"""Real ``celery worker`` subprocesses for the crash-recovery benchmark, stopped by PID.

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

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_contains(self, needle: str) -> bool:
        try:
            return needle in self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False


@dataclass
class WorkerSet:
    """Starts workers of one app on one queue and stops every one of them (by PID)."""

    app_ref: str  # ``module:attribute`` for ``celery -A``
    queue: str
    env: dict[str, str]
    label: str
    keep_logs: bool = False
    workers: list[Worker] = field(default_factory=list)
    _count: int = 0

    def spawn(self, concurrency: int = 1) -> Worker:
        """Start ``celery -A <app> worker -P prefork -c <concurrency>`` (not yet ready)."""
        self._count += 1
        name = f"{self.label}{self._count}@%h"
        log = tempfile.NamedTemporaryFile(prefix=f"bench-{self.label}{self._count}-",
                                          suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "celery", "-A", self.app_ref, "worker", "-P", "prefork",
               "-c", str(concurrency), "-Q", self.queue, "-n", name, "--loglevel=INFO",
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
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker {worker.name} exited with {worker.proc.returncode}:"
                                   f"\n{worker.log_tail()}")
            if worker.log_contains(" ready."):
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
