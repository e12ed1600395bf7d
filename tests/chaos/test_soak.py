"""Many runs across three workers while one of them is SIGKILLed and restarted every few
seconds: no run is lost, and no committed step runs again.

The CI version runs 60 runs for ~20 s of chaos; the long one (250 runs, 60 s of chaos) is
marked ``soak`` and runs with ``DURABLE_SOAK=1 pytest -m soak tests/chaos``.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from celery_durable import RunStatus
from tests.workers import spawn_worker, stop_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

STEPS = 10


def test_soak_with_a_worker_killed_every_few_seconds(
    redis_base_url, tasks, client, token
) -> None:
    soak(redis_base_url, tasks, client, token, runs=60, chaos_s=20.0)


@pytest.mark.soak
@pytest.mark.skipif(os.environ.get("DURABLE_SOAK") != "1", reason="set DURABLE_SOAK=1")
def test_long_soak(redis_base_url, tasks, client, token) -> None:
    soak(redis_base_url, tasks, client, token, runs=250, chaos_s=60.0)


def soak(redis_base_url, tasks, client, token, *, runs: int, chaos_s: float) -> None:  # type: ignore[no-untyped-def]
    queue = "chaos-soak"
    rng = random.Random(7)
    names = ["s1", "s2", "s3"]
    workers = {n: spawn_worker(redis_base_url, pool="prefork", queue=queue, concurrency=2,
                               name=n) for n in names}
    kills = 0
    try:
        results = [
            tasks.chaos_pipeline.apply_async((f"{token}:{i}", STEPS, 0.05), queue=queue)
            for i in range(runs)
        ]
        deadline = time.monotonic() + chaos_s
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(2.0, 4.0))
            victim = rng.choice(names)
            os.kill(workers[victim].pid, signal.SIGKILL)
            kills += 1
            stop_worker(workers[victim])
            workers[victim] = spawn_worker(redis_base_url, pool="prefork", queue=queue,
                                           concurrency=2, name=victim)
        try:
            outcomes = [r.get(timeout=120) for r in results]
        except Exception:
            stuck = [client.get_run(r.id) for r in results if not r.ready()]
            raise AssertionError(
                f"{len(stuck)} runs unfinished: "
                + "; ".join(f"{x.id} {x.status.value} attempt={x.attempt} "
                            f"steps={x.step_count} events={[e.type for e in x.events][-6:]}"
                            for x in stuck[:5])
            ) from None
    finally:
        for proc in workers.values():
            stop_worker(proc)
    assert kills >= 4
    assert outcomes == [list(range(STEPS))] * runs
    crashed_runs = 0
    for i, r in enumerate(results):
        run = client.get_run(r.id)
        assert run.status is RunStatus.COMPLETED
        counts = [tasks.count(f"{token}:{i}", f"exec:{s}") for s in range(STEPS)]
        crashes = int(client.store.client.hget(client.store.keys.run(r.id).run, "crashes") or 0)
        crashed_runs += crashes > 0
        # Each crash re-executes at most the one step that was in flight; never a committed one.
        assert all(c >= 1 for c in counts), counts
        assert sum(counts) - STEPS <= crashes, (counts, crashes)
    assert crashed_runs >= 1, "the chaos never hit a running run: the test proved nothing"
