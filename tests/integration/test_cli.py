"""``celery -A proj durable ...`` as a user runs it: a real subprocess against real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from celery_durable import RunStatus

ROOT = Path(__file__).resolve().parent.parent.parent


def cli(redis_base_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DURABLE_TEST_REDIS_URL": redis_base_url, "PYTHONPATH": str(ROOT)}
    if redis_base_url != os.environ.get("DURABLE_TEST_REDIS_URL"):
        env.pop("DURABLE_TEST_STORE_URL", None)  # another server: the store is there too
    return subprocess.run([sys.executable, "-m", "celery", "-A", "tests.app", "durable", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_runs_show_and_json(worker, tasks, redis_base_url, token) -> None:
    result = tasks.counters_task.delay(token, failures=1)
    result.get(timeout=30)
    listing = cli(redis_base_url, "runs", "--task", tasks.counters_task.name, "--limit", "5")
    assert listing.returncode == 0, listing.stderr
    assert result.id in listing.stdout and "completed" in listing.stdout
    lines = cli(redis_base_url, "runs", "--status", "completed", "--json", "--limit", "1000")
    assert result.id in {json.loads(line)["id"] for line in lines.stdout.splitlines()}
    shown = cli(redis_base_url, "show", result.id)
    assert shown.returncode == 0, shown.stderr
    assert "flaky_save" in shown.stdout and "builtins.ConnectionError" in shown.stdout
    as_json = json.loads(cli(redis_base_url, "show", result.id, "--json").stdout)
    assert as_json["status"] == "completed" and len(as_json["steps"]) == 3


def test_clear_errors_and_exit_codes(redis_base_url) -> None:
    missing = cli(redis_base_url, "show", "no-such-run")
    assert missing.returncode == 1 and "no durable run 'no-such-run'" in missing.stderr
    bad = cli(redis_base_url, "send-event", "k", "--data", "{not json")
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr
    down = cli("redis://127.0.0.1:1", "runs")
    assert down.returncode == 1 and "Redis" in down.stderr


def test_send_event_cancel_replay_limits(worker, tasks, client, redis_base_url, token) -> None:
    waiting = tasks.approval_flow.delay(token)
    deadline = time.monotonic() + 20
    while client.get_run(waiting.id).status is not RunStatus.SUSPENDED:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    sent = cli(redis_base_url, "send-event", f"approve:{token}", "--data",
               '{"approved": true, "by": "cli"}')
    assert sent.returncode == 0 and waiting.id in sent.stdout, sent.stderr
    assert waiting.get(timeout=20) == {"approved": True, "by": "cli"}

    parked = tasks.approval_flow.delay(f"{token}:2")
    while client.get_run(parked.id).status is not RunStatus.SUSPENDED:
        time.sleep(0.05)
    cancelled = cli(redis_base_url, "cancel", parked.id)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    replayed = cli(redis_base_url, "replay", parked.id)
    assert replayed.returncode == 0 and parked.id in replayed.stdout
    assert client.get_run(parked.id).status in (RunStatus.PENDING, RunStatus.RUNNING,
                                                RunStatus.SUSPENDED)
    client.cancel(parked.id)

    name = tasks.adjustable.name
    changed = cli(redis_base_url, "limits", name, "3")
    assert changed.returncode == 0 and f"task:{name}: limit set to 3" in changed.stdout
    shown = cli(redis_base_url, "limits")
    assert f"task:{name}" in shown.stdout and "task:tests.tasks.limited" in shown.stdout
    cli(redis_base_url, "limits", name, "1")


def test_limits_show_runs_waiting_for_a_rate_per_key_and_priority(tasks, redis_base_url,
                                                                   token) -> None:
    # One start a minute per key: the first run takes it, the others wait in the key's queue
    # (published to a queue no worker reads, so they stay there).
    queue = "rates-cli-nowhere"
    tasks.rate_keyed.apply_async((token, 0), queue=queue)
    tasks.rate_keyed.apply_async((token, 1), queue=queue)
    tasks.rate_keyed.apply_async((token, 2), queue=queue, priority=0)  # Redis: 0 goes first
    shown = cli(redis_base_url, "limits", tasks.rate_keyed.name)
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if token in line)
    assert "task:tests.tasks.rate_keyed" in row and "1/m" in row
    assert " 2 " in row and "rank 9: 1, rank 0: 1" in row
    as_json = [json.loads(line) for line in cli(redis_base_url, "limits", "--json",
                                                tasks.rate_keyed.name).stdout.splitlines()]
    keyed = next(r for r in as_json if r.get("key") == token)
    assert keyed["waiting"] == 2 and keyed["waiting_by_priority"] == {"9": 1, "0": 1}


@pytest.mark.slow
def test_gc_and_doctor(redis_base_url, client) -> None:
    store = client.store
    store.client.zadd(store.keys.all_runs, {"expired-run": 1})
    gc = cli(redis_base_url, "gc")
    assert gc.returncode == 0 and "removed" in gc.stdout
    assert store.client.zscore(store.keys.all_runs, "expired-run") is None
    doctor = cli(redis_base_url, "doctor")
    # The test server runs without AOF: doctor says so, but nothing is fatal.
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "WARN  Redis runs without AOF" in doctor.stdout
