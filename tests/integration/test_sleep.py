"""Durable sleeps: the worker is free while a run sleeps; nothing is slept twice."""

from __future__ import annotations

import time

import pytest

from celery_durable import RunStatus
from tests.workers import celery_worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_sleep_frees_the_worker_and_resumes(redis_base_url, tasks, client, token) -> None:
    queue = "sleep"
    with celery_worker(redis_base_url, pool="solo", queue=queue, concurrency=1, name="s1"):
        started = time.time()
        sleeping = tasks.sleeper.apply_async((token, 3.0), queue=queue)
        time.sleep(0.5)
        # The only worker (solo pool) runs another task while the first run sleeps.
        assert tasks.quick.apply_async((token,), queue=queue).get(timeout=10) == "quick"
        assert time.time() - started < 2.5
        assert client.get_run(sleeping.id).status is RunStatus.SUSPENDED
        before, after = sleeping.get(timeout=30)
    assert after - before >= 3.0
    assert time.time() - started < 8
    run = client.get_run(sleeping.id)
    assert run.status is RunStatus.COMPLETED and run.attempt == 2
    assert [s.name for s in run.steps] == ["before", "nap", "after"]
    assert tasks.count(token, "body") == 2  # the body re-ran; the steps did not
    assert any(e.type == "run_suspended" and e.fields["reason"] == "sleep" for e in run.events)


def test_hour_long_sleep_is_a_timer_not_an_eta(redis_base_url, tasks, client, token) -> None:
    # A 10 s visibility timeout would redeliver an ETA message of an hour again and again.
    queue = "sleep-long"
    env = {"DURABLE_TEST_VT": "10"}
    with celery_worker(redis_base_url, pool="prefork", queue=queue, concurrency=1, name="s2",
                       extra_env=env):
        result = tasks.sleeper.apply_async((token, 3600.0), queue=queue)
        deadline = time.time() + 20
        while client.get_run(result.id).status is not RunStatus.SUSPENDED:
            assert time.time() < deadline
            time.sleep(0.1)
        time.sleep(13)  # longer than the visibility timeout
        run = client.get_run(result.id)
        assert run.status is RunStatus.SUSPENDED and run.attempt == 1
        assert tasks.count(token, "body") == 1
        due = client.store.client.zscore(client.store.keys.timers, result.id)
        assert due is not None and due > (time.time() + 3500) * 1000
    # Cancelling a sleeping run ends it at once and removes its timer.
    assert client.cancel(result.id) is RunStatus.SUSPENDED
    assert client.get_run(result.id).status is RunStatus.CANCELLED
    assert client.store.client.zscore(client.store.keys.timers, result.id) is None


def test_run_timeout_fails_a_sleeping_run_at_its_deadline(worker, tasks, client,
                                                         token) -> None:
    from celery_durable import RunTimeoutError

    started = time.time()
    result = tasks.bounded.delay(token)
    with pytest.raises(RunTimeoutError, match="exceeded its run_timeout"):
        result.get(timeout=20)
    assert time.time() - started < 8  # woken at the 2 s deadline, not after the 30 s nap
    run = client.get_run(result.id)
    assert run.status is RunStatus.FAILED and tasks.count(token, "after_nap") == 0


def test_a_worker_crash_during_a_sleep_does_not_repeat_it(redis_base_url, tasks, client,
                                                          token) -> None:
    import os
    import signal

    queue = "sleep-crash"
    with celery_worker(redis_base_url, pool="prefork", queue=queue, concurrency=1,
                       name="c1") as first, \
            celery_worker(redis_base_url, pool="prefork", queue=queue, concurrency=1,
                          name="c2") as second:
        started = time.time()
        result = tasks.sleeper.apply_async((token, 3.0), queue=queue)
        deadline = time.time() + 20
        while client.get_run(result.id).status is not RunStatus.SUSPENDED:
            assert time.time() < deadline
            time.sleep(0.05)
        run = client.get_run(result.id)
        holder = int(next(e for e in run.events if e.type == "attempt_started")
                     .fields["worker"].split("|")[1])
        os.kill(holder, signal.SIGKILL)
        assert holder in (first.pid, second.pid)
        before, after = result.get(timeout=30)
        # Measured before the workers stop: their shutdown is not the run's time.
        finished = time.time()
    assert 3.0 <= after - before and finished - started < 10
    run = client.get_run(result.id)
    attempts = [s.attempt for s in run.steps]
    # The nap was recorded once, by the first attempt. The next attempt is the timer's; on
    # RabbitMQ one more may come first (the killed worker's message, redelivered before its
    # ack was sent: it replays both steps and suspends again), so the last step's attempt
    # is 2 on Redis and 2 or 3 on RabbitMQ.
    assert attempts[:2] == [1, 1] and attempts[2] in (2, 3), attempts
