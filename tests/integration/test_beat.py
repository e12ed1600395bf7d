"""Two real `celery beat` processes with the same schedule (one restarted mid-way) start
each tick of a durable task once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from celery_durable import RunStatus
from tests.chaos.helpers import wait_for
from tests.workers import ROOT, celery_worker

pytestmark = pytest.mark.slow
EVERY = 2


SCHEDULERS = {
    "default": "celery_durable.beat:DurableScheduler",
    "redbeat": "tests.beat_schedulers:DurableRedBeatScheduler",
}


def start_beat(redis_base_url: str, entry: str, queue: str, workdir: Path,
               name: str, scheduler: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DURABLE_TEST_REDIS_URL": redis_base_url, "PYTHONPATH": str(ROOT),
           "DURABLE_TEST_BEAT_ENTRY": entry, "DURABLE_TEST_BEAT_EVERY": str(EVERY),
           "DURABLE_TEST_QUEUE": queue, "DURABLE_TEST_BEAT_SCHEDULER": SCHEDULERS[scheduler]}
    log = open(workdir / f"{name}.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.app", "beat", "--loglevel=INFO",
         "-s", str(workdir / f"{name}-schedule"), "--pidfile="],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return proc


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def sends(workdir: Path, entry: str) -> int:
    return sum((workdir / f).read_text().count(f"Sending due task {entry} ")
               for f in os.listdir(workdir) if f.endswith(".log"))


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_two_beats_start_each_tick_once(redis_base_url, test_app, tasks, client,
                                        scheduler) -> None:
    import tests.long_tasks as long_tasks

    entry = f"tick-{time.time_ns()}"
    name = long_tasks.scheduled_tick.name
    queue = "beat"
    with tempfile.TemporaryDirectory(prefix="durable-beat-") as tmp, \
            celery_worker(redis_base_url, pool="threads", queue=queue, concurrency=2,
                          name="beat-worker"):
        workdir = Path(tmp)
        # Given two beats with the same 2 s schedule
        # (with redbeat, one holds its lock and the other waits to take over)
        a = start_beat(redis_base_url, entry, queue, workdir, "a", scheduler)
        b = start_beat(redis_base_url, entry, queue, workdir, "b", scheduler)
        try:
            wait_for(lambda: sends(workdir, entry) >= 6, 60, "both beats to send ticks")
            # When one of them is killed and restarts (its schedule file may lag behind)
            stop(a, signal.SIGKILL)
            a = start_beat(redis_base_url, entry, queue, workdir, "a2", scheduler)
            wait_for(lambda: sends(workdir, entry) >= 12, 60, "more ticks")
        finally:
            stop(a)
            stop(b)
        sent = sends(workdir, entry)
        mine = [r for r in client.list_runs(task=name, limit=1000)
                if client.get_run(r.id).args == [entry]]
        wait_for(lambda: all(client.get_run(r.id).status is RunStatus.COMPLETED
                             for r in mine), 60, "the scheduled runs to finish")
    store = client.store
    keys = sorted(str(k) for k in store.client.scan_iter(
        match=store.keys.idempotency(name, f"beat:{entry}:*"), count=1000))
    ticks = [k.rsplit(f"beat:{entry}:", 1)[1] for k in keys]
    # Then every tick (a multiple of 2 s since the epoch) has one key and one run ...
    assert len(ticks) == len(mine) >= 4, (ticks, [r.id for r in mine])
    assert all(int(t[17:19]) % EVERY == 0 and t[19:] == ".000+00:00" for t in ticks), ticks
    # ... each run executed its step once ...
    executed = tasks.counters.lrange(f"{entry}:ticks", 0, -1)
    assert sorted(executed) == sorted(r.id for r in mine)
    # ... although both default beats published (nearly) every tick.
    assert sent >= 12
    if scheduler == "default":
        assert sent > len(mine) + 4, (sent, len(mine))
