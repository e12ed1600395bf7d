"""celery_durable.testing, used as a user would: its pytest plugin and helpers run the test
suite of examples/testing, and a real worker subprocess is killed between two steps."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from celery_durable import HarnessError, RunStatus, RunWaitTimeoutError
from celery_durable.testing import (
    durable_worker,
    fail_step,
    kill_run_worker,
    redis_server,
    wait_for_run,
    wait_for_step,
    worker_process,
)
from tests.chaos.helpers import wait_for
from tests.workers import ROOT

STEPS = 5


def test_the_example_test_suite_passes_with_its_own_redis() -> None:
    """examples/testing: the plugin starts a redis-server, an embedded worker runs the runs,
    fail_step makes the charge fail once and for good, and a worker subprocess is killed
    between two steps."""
    env = {k: v for k, v in os.environ.items() if k != "DURABLE_TEST_REDIS_URL"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "examples/testing"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "4 passed" in proc.stdout


def test_redis_server_is_a_real_server_and_goes_away() -> None:
    import redis

    with redis_server() as url:
        client = redis.Redis.from_url(url)
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        client.set("k", "v")
        assert client.get("k") == b"v"
        client.close()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_timeout=1).ping()


def test_fail_step_rejects_bad_arguments() -> None:
    from celery_durable import ConfigurationError

    with pytest.raises(ConfigurationError, match="times must be >= 0"), fail_step("x", -1):
        pass
    with pytest.raises(ConfigurationError, match="exception class"), \
            fail_step("x", 1, error=42):  # type: ignore[arg-type]
        pass


def test_fail_step_leaves_nothing_behind() -> None:
    from celery_durable.context import RunContext

    original = RunContext.run_step
    with fail_step("a"), fail_step("b", times=2):
        assert RunContext.run_step is not original
    assert RunContext.run_step is original


def test_wait_for_run_names_the_state_it_saw(test_app) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RunWaitTimeoutError, match="not found.*is a worker consuming"):
        wait_for_run(test_app, "no-such-run", timeout=0.2)


@pytest.mark.slow
def test_a_crash_between_steps_resumes_on_the_other_worker(  # type: ignore[no-untyped-def]
        redis_base_url, test_app, tasks, token) -> None:
    queue = "testing-crash"
    env = {"DURABLE_TEST_REDIS_URL": redis_base_url, "DURABLE_TEST_QUEUE": queue,
           "PYTHONPATH": str(ROOT)}
    with worker_process("tests.app", cwd=ROOT, env=env, queues=[queue]) as a, \
            worker_process("tests.app", cwd=ROOT, env=env, queues=[queue]) as b:
        result = tasks.chaos_pipeline.apply_async((token, STEPS, 0.3), queue=queue)
        wait_for_step(test_app, result.id, "chaos_step#2", timeout=60)
        killed = kill_run_worker(test_app, result.id, [a, b])
        run = wait_for_run(test_app, result.id, timeout=90)
        with pytest.raises(HarnessError, match="not held by any"):
            kill_run_worker(test_app, result.id, [a, b])
    assert killed.killed and killed.proc.returncode is not None
    assert run.status is RunStatus.COMPLETED, run.attempt_errors
    assert run.result == list(range(STEPS))
    assert run.attempt >= 2
    counts = [tasks.count(token, f"exec:{i}") for i in range(STEPS)]
    # The two steps committed before the kill ran once; the one in flight at most twice.
    assert counts[:2] == [1, 1], counts
    assert all(c in (1, 2) for c in counts[2:]), counts
    assert any(e.type == "crash_detected" for e in run.events)


def test_injected_failures_count_against_the_step_policy(  # type: ignore[no-untyped-def]
        test_app, tasks, token) -> None:
    """step_with_policy retries itself up to 4 times inside the attempt: two injected
    failures are absorbed there, and the function runs once. (An embedded worker of its
    own, on its own queue: faults reach workers in this process only.)"""
    queue = f"faults-{os.getpid()}"
    with durable_worker(test_app, queues=[queue]), \
            fail_step("step_with_policy", times=2) as fault:
        result = tasks.step_policy_task.apply_async((token, 0), queue=queue)
        run = wait_for_run(test_app, result.id)
    assert run.status is RunStatus.COMPLETED and run.attempt == 1
    assert fault.calls == 3 and fault.failed == 2
    assert tasks.count(token, "policy") == 1
    assert [len(s.failures) for s in run.steps] == [2]


def test_a_tests_own_worker_stops_alone(worker, test_app, tasks) -> None:  # type: ignore[no-untyped-def]
    """Leaving durable_worker stops that worker only: the session's embedded worker (the
    ``worker`` fixture) keeps consuming. Celery's start_worker would stop both."""
    from celery.bootsteps import RUN

    queue = f"alone-{os.getpid()}"
    with durable_worker(test_app, queues=[queue]) as own:
        assert tasks.add_one.apply_async((1,), queue=queue).get(timeout=30) == 2
    assert own.blueprint.state != RUN
    assert worker.blueprint.state == RUN and worker.hostname != own.hostname
    assert tasks.add_one.delay(2).get(timeout=30) == 3  # the session worker's queue


def test_a_worker_that_does_not_stop_in_time_says_where_it_is(  # type: ignore[no-untyped-def]
        test_app, tasks, token) -> None:
    """A solo worker busy with a 3 s step cannot stop within 0.5 s: HarnessError shows its
    thread's stack; the worker still stops once the step ends, and the run completes."""
    import threading

    from celery_durable.testing.workers import _STOPPING, _stack_of

    queue = f"busy-{os.getpid()}"
    with pytest.raises(HarnessError, match=r"did not stop within 0\.5 s.*\n.*") as raised:
        with durable_worker(test_app, pool="solo", concurrency=1, queues=[queue],
                            shutdown_timeout=0.5) as own:
            result = tasks.long_single_step.apply_async((token, 3.0), queue=queue)
            wait_for(lambda: tasks.count(token, "crunch") == 1, 30, "the step to start")
    assert own.hostname in str(raised.value) and "File " in str(raised.value)
    thread = next(t for t in threading.enumerate() if t.name.endswith(own.hostname))
    thread.join(30)
    assert not thread.is_alive(), _stack_of(thread)
    assert thread.ident not in _STOPPING
    assert result.get(timeout=30) == "done"
