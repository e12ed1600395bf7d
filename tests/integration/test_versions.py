"""Runs resumed on changed code under each version policy, and patched() (real workers;
the "deployed" version comes from each worker's environment)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from celery_durable import RunStatus, VersionMismatchError
from tests.chaos.helpers import run_with, wait_for
from tests.integration.test_cli import cli
from tests.workers import celery_worker

pytestmark = pytest.mark.slow


def worker(redis_base_url: str, queue: str, version: str) -> Any:
    return celery_worker(redis_base_url, pool="solo", queue=queue, concurrency=1,
                         name=f"{queue}-{version}",
                         extra_env={"DURABLE_TEST_CODE_VERSION": version})


def suspended(client: Any, run_id: str) -> Any:
    return wait_for(lambda: run_with(client, run_id,
                                     lambda r: r.status is RunStatus.SUSPENDED), 60,
                    f"run {run_id} to wait for its event")


@pytest.fixture(scope="module")
def long_tasks(test_app):  # type: ignore[no-untyped-def]
    import tests.long_tasks as module

    return module


def test_continue_policy_and_patched(redis_base_url, long_tasks, tasks, client,
                                     token) -> None:
    queue = "ver-continue"
    # Given a run started (and waiting) on v1
    with worker(redis_base_url, queue, "v1"):
        old = long_tasks.versioned_continue.apply_async((f"{token}:old",), queue=queue)
        assert suspended(client, old.id).version == "v1"
    name = long_tasks.versioned_continue.name
    assert [r.id for r in client.list_runs(task=name, version="v1", in_flight=True)] == [
        old.id]
    listed = cli(redis_base_url, "versions", "--task", long_tasks.versioned_continue.name,
                 "--json")
    assert json.loads(listed.stdout)["in_flight"] == {
        long_tasks.versioned_continue.name: {"v1": 1}}
    # When v2 is deployed and a new run starts there too
    with worker(redis_base_url, queue, "v2"):
        new = long_tasks.versioned_continue.apply_async((f"{token}:new",), queue=queue)
        suspended(client, new.id)
        client.send_event(f"go:{token}:old", True)
        client.send_event(f"go:{token}:new", True)
        # Then the old run goes on with v2 code, on the old path; the new one takes the new
        assert old.get(timeout=60) == {"version": "v2", "patched": False}
        assert new.get(timeout=60) == {"version": "v2", "patched": True}
    run = client.get_run(old.id)
    assert run.version == "v2"
    (changed,) = [e for e in run.events if e.type == "version_changed"]
    assert (changed.fields["from"], changed.fields["to"]) == ("v1", "v2")
    raw = client.store.client
    assert raw.hget(client.store.keys.run(old.id).run, "patch:fast-path") == "0"
    assert raw.hget(client.store.keys.run(new.id).run, "patch:fast-path") == "1"
    assert client.list_runs(task=name, version="v1", in_flight=True) == []
    assert tasks.count(f"{token}:old", "first") == 1  # committed on v1, replayed on v2


def test_fail_policy(redis_base_url, long_tasks, client, token) -> None:
    queue = "ver-fail"
    with worker(redis_base_url, queue, "v1"):
        result = long_tasks.versioned_fail.apply_async((token,), queue=queue)
        suspended(client, result.id)
    with worker(redis_base_url, queue, "v2"):
        client.send_event(f"go:{token}", True)
        with pytest.raises(VersionMismatchError, match="'v1'.*'v2'"):
            result.get(timeout=60)
    run = client.get_run(result.id)
    assert run.status is RunStatus.FAILED and run.version == "v1"
    assert run.error is not None and run.error.type.endswith("VersionMismatchError")


def test_route_policy_sends_the_run_to_workers_of_its_version(redis_base_url, long_tasks,
                                                              client, token) -> None:
    from celery import chain

    queue = "ver-route"
    with worker(redis_base_url, queue, "v1"):
        # The old run is the first link of a chain: routing must keep the rest of it.
        last = chain(long_tasks.versioned_route.si(f"{token}:old").set(queue=queue),
                     long_tasks.echo.s().set(queue=queue)).apply_async()
        old = last.parent
        suspended(client, old.id)
    # Only v2 workers are running: the old run is routed to ver-route@v1 and waits there.
    with worker(redis_base_url, queue, "v2"):
        client.send_event(f"go:{token}:old", True)
        routed = wait_for(lambda: run_with(client, old.id, lambda r: any(
            e.type == "run_routed" for e in r.events)), 60, "the run to be routed")
        (event,) = [e for e in routed.events if e.type == "run_routed"]
        assert event.fields["queue"] == f"{queue}@v1"
        assert event.fields["running_version"] == "v2"
        new = long_tasks.versioned_route.apply_async((f"{token}:new",), queue=queue)
        suspended(client, new.id)
        client.send_event(f"go:{token}:new", True)
        assert new.get(timeout=60) == {"version": "v2", "patched": True}
        assert not old.ready()
    # A v1 worker (consuming ver-route, hence also ver-route@v1) finishes it on v1 code.
    with worker(redis_base_url, queue, "v1"):
        assert old.get(timeout=60) == {"version": "v1", "patched": False}
        assert last.get(timeout=60) == {"version": "v1", "patched": False}
    assert client.get_run(old.id).version == "v1"


def test_new_code_can_drain_an_old_versions_queue(redis_base_url, long_tasks, client,
                                                  token) -> None:
    queue = "ver-drain"
    with worker(redis_base_url, queue, "v1"):
        old = long_tasks.versioned_route.apply_async((token,), queue=queue)
        suspended(client, old.id)
    with worker(redis_base_url, queue, "v2"):
        client.send_event(f"go:{token}", True)
        wait_for(lambda: run_with(client, old.id, lambda r: any(
            e.type == "run_routed" for e in r.events)), 60, "the run to be routed")
    # v1 is retired: a v2 worker pointed at the old version's queue runs it on v2 code.
    with worker(redis_base_url, f"{queue}@v1", "v2"):
        assert old.get(timeout=60) == {"version": "v2", "patched": False}
    run = client.get_run(old.id)
    assert run.version == "v2"
    assert [e.type for e in run.events].count("run_routed") == 1
