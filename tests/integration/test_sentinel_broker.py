"""A worker whose broker and checkpoint store are reached through Redis Sentinel (the
session's server as the master): a task longer than the worker TTL runs once, its message is
never taken for a dead worker's."""

from __future__ import annotations

import pytest

from celery_durable import RunStatus
from tests.cluster import start_sentinel, stop_servers
from tests.workers import celery_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_a_long_task_on_a_sentinel_broker_runs_once(redis_base_url, tasks, client,
                                                    token) -> None:
    sentinel = start_sentinel(int(redis_base_url.rsplit(":", 1)[1]), "durable-broker")
    env = {"DURABLE_TEST_BROKER_URL": f"{sentinel.url}/0",
           "DURABLE_TEST_SENTINEL_MASTER": "durable-broker"}
    try:
        with celery_worker(redis_base_url, pool="prefork", queue="sentinel-broker",
                           concurrency=2, name="sb", extra_env=env) as worker:
            # Longer than durable_worker_ttl_s (4 s): a message whose unacked entry is not
            # refreshed would be restored as a dead worker's and delivered again.
            result = tasks.long_single_step.apply_async((token, 7.0), queue="sentinel-broker")
            assert result.get(timeout=60) == "done"
            with open(worker.log_path) as log:  # type: ignore[attr-defined]
                text = log.read()
        assert "sentinel://" in text  # the worker really used the Sentinel broker
        assert "reserved by a dead worker" not in text
    finally:
        stop_servers(sentinel)
    run = client.get_run(result.id)
    assert run.status is RunStatus.COMPLETED and run.attempt == 1
    assert tasks.count(token, "crunch") == 1
    assert not {e.type for e in run.events} & {"duplicate_deferred", "run_reaped"}
