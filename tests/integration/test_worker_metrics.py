"""Prometheus metrics scraped over HTTP from a real prefork worker (two pool processes).

The worker runs with PROMETHEUS_MULTIPROC_DIR, so the exporter in its main process adds up
what each pool process recorded, the pool process that was SIGKILLed included.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from celery_durable import RunStatus
from tests.conftest import free_port
from tests.workers import celery_worker, spawn_worker, stop_worker

pytestmark = pytest.mark.slow


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the worker's /metrics page, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _exporter_up(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def test_metrics_of_retries_crashes_slot_waits_and_failures(
        redis_base_url, tasks, client, token, tmp_path) -> None:
    from tests import tasks_obs

    queue, port = f"metrics-{token}", free_port()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DURABLE_TEST_METRICS_PORT": str(port)}
    counters_name = tasks.counters_task.name
    chaos_name = tasks.chaos_pipeline.name
    limited_name = tasks_obs.one_at_a_time.name
    failing_name = tasks.non_retryable_task.name
    with celery_worker(redis_base_url, pool="prefork", concurrency=2, queue=queue, extra_env=env):
        wait_for(lambda: _exporter_up(port), "the worker's exporter")
        # A run that fails once and is retried: 3 steps committed, 2 replayed.
        retried = tasks.counters_task.apply_async((f"{token}:c",), {"failures": 1}, queue=queue)
        assert retried.get(timeout=60) == {"result": 20}

        # A run whose pool process is SIGKILLed after its first step: resumed (a crash).
        crashed = tasks.chaos_pipeline.apply_async((f"{token}:k", 3, 0.7), queue=queue)
        wait_for(lambda: client.get_run(crashed.id).step_count >= 1, "the first step")
        victim = client.get_run(crashed.id)
        os.kill(int(client.store.client.hget(client.store.keys.run(crashed.id).run,
                                             "lease_pid")), signal.SIGKILL)
        assert crashed.get(timeout=60) == [0, 1, 2]
        assert victim.attempt == 1

        # Three runs of a task limited to one at a time. The second waits for the slot,
        # parked by its publisher (this process, which counts it)...
        waits_here = ("durable_slot_waits_total", {"task": limited_name})
        before = REGISTRY.get_sample_value(*waits_here) or 0.0
        first = tasks_obs.one_at_a_time.apply_async((token, 1), queue=queue)
        wait_for(lambda: tasks.count(token, "holding:1") == 1, "the first run to hold")
        second = tasks_obs.one_at_a_time.apply_async((token, 2), queue=queue)
        assert any(e.type == "slot_denied" for e in client.get_run(second.id).events)
        assert REGISTRY.get_sample_value(*waits_here) == before + 1
        # ...the third, sent by name (no slot taken at publish), by the worker.
        third = tasks.counters_task.app.send_task(limited_name, (token, 3), queue=queue)
        wait_for(lambda: client.store.run_exists(third.id) and any(
            e.type == "slot_denied" for e in client.get_run(third.id).events),
            "the third run to be parked (and recorded) by the worker")
        tasks.counters.set(f"{token}:release", 1)
        assert first.get(timeout=60) == 1 and second.get(timeout=60) == 2
        assert third.get(timeout=60) == 3

        # A run that fails for good.
        failed = tasks.non_retryable_task.apply_async((f"{token}:f",), queue=queue)
        with pytest.raises(Exception, match="card declined"):
            failed.get(timeout=60)

        samples = scrape(port)

    crash_run = client.get_run(crashed.id)
    assert crash_run.status is RunStatus.COMPLETED and crash_run.attempt == 2
    # Steps the resumed attempt took from checkpoints (1 or 2, depending on where the kill
    # landed): the replay counter must say the same.
    replayed_after_crash = int(next(e for e in crash_run.events
                                    if e.type == "run_completed").fields["replayed"])
    assert replayed_after_crash >= 1

    committed = "durable_steps_committed_total"
    assert sample(samples, committed, task=counters_name) == 3
    assert sample(samples, committed, task=chaos_name) == 3  # each step commits once
    assert sample(samples, committed, task=limited_name) == 3
    assert sample(samples, committed, task=failing_name) == 1
    assert sample(samples, "durable_steps_replayed_total", task=counters_name) == 2
    assert sample(samples, "durable_steps_replayed_total", task=chaos_name) == \
        replayed_after_crash
    assert sample(samples, "durable_run_retries_total", task=counters_name) == 1
    assert sample(samples, "durable_run_retries_total", task=failing_name) == 0
    assert sample(samples, "durable_crash_resumes_total", task=chaos_name) == 1
    assert sample(samples, "durable_crash_resumes_total", task=counters_name) == 0
    assert sample(samples, "durable_slot_waits_total", task=limited_name) == 1
    finished = "durable_runs_finished_total"
    for name, n in ((counters_name, 1), (chaos_name, 1), (limited_name, 3)):
        assert sample(samples, finished, task=name, status="completed") == n
    assert sample(samples, finished, task=failing_name, status="failed") == 1
    assert sample(samples, finished, task=counters_name, status="failed") == 0

    hist = "durable_step_duration_seconds"
    assert sample(samples, f"{hist}_count", task=chaos_name) == 3
    assert sample(samples, f"{hist}_bucket", task=chaos_name, le="+Inf") == 3
    assert sample(samples, f"{hist}_bucket", task=chaos_name, le="0.5") == 0  # 0.7 s each
    assert sample(samples, f"{hist}_sum", task=chaos_name) >= 3 * 0.7
    # Labels are task names (and statuses), never run ids.
    assert not any(retried.id in str(labels) for _, labels in samples)


def test_a_missing_multiprocess_directory_stops_the_worker_with_a_clear_error(
        redis_base_url, token, tmp_path) -> None:
    missing = tmp_path / "not-created"
    proc = spawn_worker(redis_base_url, pool="prefork", queue=f"metrics-bad-{token}",
                        extra_env={"PROMETHEUS_MULTIPROC_DIR": str(missing),
                                   "DURABLE_TEST_METRICS_PORT": str(free_port())})
    try:
        assert proc.wait(timeout=60) != 0
        with open(proc.log_path) as log:  # type: ignore[attr-defined]
            output = log.read()
    finally:
        stop_worker(proc)
    assert f"PROMETHEUS_MULTIPROC_DIR={missing} is not a directory" in output
