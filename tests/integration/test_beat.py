"""Two real `celery beat` processes with the same schedule (one restarted mid-way) start
each tick of a durable task once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from celery_durable import RunStatus
from tests.chaos.helpers import run_with, wait_for
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
    store = client.store

    def named() -> dict[str, str]:
        """tick -> run id, from the tick keys of this entry."""
        keys = store.client.scan_iter(match=store.keys.idempotency(name, f"beat:{entry}:*"),
                                      count=1000)
        return {str(k).rsplit(f"beat:{entry}:", 1)[1]: json.loads(store.client.get(k))["run"]
                for k in keys}

    def finished() -> bool:
        runs = [run_with(client, run_id, lambda r: r.status is RunStatus.COMPLETED)
                for run_id in named().values()]
        return all(runs)

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
            killed = time.monotonic()
            a = start_beat(redis_base_url, entry, queue, workdir, "a2", scheduler)
            wait_for(lambda: sends(workdir, entry) >= 12, 60, "more ticks")
            # A tick the killed beat claimed but did not publish is published by a live beat
            # once the claim counts as orphaned (10 s, checked every 5 s): keep them running.
            wait_for(lambda: time.monotonic() - killed > 18, 30, "the orphan re-check")
        finally:
            stop(a)
            stop(b)
        sent = sends(workdir, entry)
        try:
            wait_for(finished, 60, "every tick's run to finish")
        except AssertionError:
            states = {tick: (run_id, store.client.hget(store.keys.run(run_id).run, "status"))
                      for tick, run_id in named().items()}
            raise AssertionError(f"runs of the tick keys did not all finish: {states}") \
                from None
    ticks = named()
    mine = {r.id for r in client.list_runs(task=name, limit=1000)
            if client.get_run(r.id).args == [entry]}
    # Then every tick (a multiple of 2 s since the epoch) has one key and one run ...
    assert len(ticks) >= 4 and set(ticks.values()) == mine, (ticks, mine)
    assert all(int(t[17:19]) % EVERY == 0 and t[19:] == ".000+00:00" for t in ticks), ticks
    # ... each run executed its step once ...
    executed = tasks.counters.lrange(f"{entry}:ticks", 0, -1)
    assert sorted(executed) == sorted(mine)
    # ... although both default beats published (nearly) every tick.
    assert sent >= 12
    if scheduler == "default":
        assert sent > len(mine) + 4, (sent, len(mine))


def test_a_tick_claimed_by_a_beat_that_died_is_published_by_another(test_app,
                                                                      client) -> None:
    import uuid
    from datetime import timedelta

    from celery.beat import ScheduleEntry, Scheduler
    from celery.schedules import schedule

    import tests.long_tasks as long_tasks
    from celery_durable.beat import DurableSchedulerMixin, tick_key, tick_time
    from celery_durable.idempotency import fingerprint
    from celery_durable.store import now_ms

    store = client.store
    name, entry_name = long_tasks.scheduled_tick.name, f"orphan-{time.time_ns()}"
    class MemoryScheduler(DurableSchedulerMixin, Scheduler):
        """The mixin over Celery's in-memory base scheduler."""

    entry = ScheduleEntry(name=entry_name, task=name, args=(entry_name,),
                          schedule=schedule(timedelta(hours=1), app=test_app),
                          options={"queue": "beat-orphan"}, app=test_app)
    beat = MemoryScheduler(app=test_app, schedule={entry_name: entry}, lazy=True)
    # Given a beat that claimed this tick's key and died before publishing the run
    key = store.keys.idempotency(name, tick_key(entry_name, tick_time(entry, test_app.now())))
    dead_run = str(uuid.uuid4())
    store.claim_idempotency(key, dead_run, fingerprint([entry_name], {}), now_ms(), 600_000)
    # When another beat publishes the same tick
    result = beat.apply_async(entry, advance=False)
    # Then it publishes nothing at once (the first beat may still be publishing) ...
    assert result.id == dead_run and not store.run_exists(dead_run)
    assert beat.recheck_ticks() == 0 and not store.run_exists(dead_run)
    # ... and once the claim counts as orphaned (as if 20 s had passed), it publishes it
    claim = json.loads(store.client.get(key))
    store.client.set(key, json.dumps({**claim, "ms": claim["ms"] - 20_000}), keepttl=True)
    assert beat.recheck_ticks(now=now_ms() + 20_000) == 1
    assert store.run_exists(dead_run)
    assert client.get_run(dead_run).args == [entry_name]
    # The tick is done with: nothing is published again.
    assert store.client.zcard(store.keys.beat_ticks(entry_name)) == 0
    assert beat.recheck_ticks(now=now_ms() + 40_000) == 0
