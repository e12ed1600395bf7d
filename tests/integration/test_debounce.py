"""Debounce: a burst of calls with one key makes one run, after the calls pause."""

from __future__ import annotations

import time

import pytest

from celery_durable import ConfigurationError, RunStatus, durable_task


def test_a_burst_of_calls_makes_one_run_with_the_last_arguments(worker, tasks, client,
                                                                  token) -> None:
    results = []
    for n in range(50):  # 50 calls within about a second
        results.append(tasks.debounced.delay(token, n))
        time.sleep(0.02)
    assert len({r.id for r in results}) == 1
    assert results[0].get(timeout=30) == 49
    assert tasks.count(token, "runs") == 1
    run = client.get_run(results[0].id)
    assert run.status is RunStatus.COMPLETED and run.args == [token, 49]
    ended = [e for e in run.events if e.type == "debounce_ended"]
    assert [e.fields["calls"] for e in ended] == ["50"]
    # Once the run has started, the next call opens a new burst: a new run.
    again = tasks.debounced.delay(token, 100)
    assert again.id != results[0].id and again.get(timeout=30) == 100
    # Another key is debounced on its own.
    other = tasks.debounced.delay(f"{token}:other", 7)
    assert other.id not in (results[0].id, again.id) and other.get(timeout=30) == 7


def test_first_mode_keeps_the_first_calls_arguments(worker, tasks, token) -> None:
    results = [tasks.debounced_first.delay(token, n) for n in range(10)]
    assert {r.id for r in results} == {results[0].id}
    assert results[0].get(timeout=30) == 0
    assert tasks.count(token, "runs") == 1


def test_a_longest_wait_bounds_a_burst_that_never_pauses(worker, tasks, token) -> None:
    results = []
    started = time.monotonic()
    while time.monotonic() - started < 3.0:  # a call every 0.1 s, never a 0.8 s pause
        results.append(tasks.debounced_bounded.delay(token, len(results)))
        time.sleep(0.1)
    runs = list(dict.fromkeys(r.id for r in results))
    assert len(runs) >= 2  # the first burst was cut at 1 s (+ dispatch delay)
    for r in results:
        r.get(timeout=30)
    assert tasks.count(token, "runs") == len(runs)


def test_debounce_options_are_checked_at_decoration() -> None:
    with pytest.raises(ConfigurationError, match="debounce_key=...\\) needs debounce="):
        durable_task(debounce_key=lambda x: x)(lambda x: x)
    with pytest.raises(ConfigurationError, match="must be 'last'"):
        durable_task(debounce=1, debounce_mode="middle")(lambda x: x)
    with pytest.raises(ConfigurationError, match="more than 0 seconds"):
        durable_task(debounce=0)(lambda x: x)
    with pytest.raises(ConfigurationError, match="not both"):
        durable_task(debounce=1, idempotency_key=lambda x: x)(lambda x: x)
