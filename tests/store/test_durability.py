"""Commit durability (durable_commit_durability) on real redis-servers with the AOF on,
and a real replica: what a commit waits for, the fallbacks, and the errors."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from celery_durable import DurabilityError, step
from celery_durable.archive import unpack
from celery_durable.config import DurableSettings
from celery_durable.store import RunStore
from tests.conftest import start_redis_server
from tests.workers import celery_worker

pytestmark = pytest.mark.slow


def _stop(proc: subprocess.Popen[bytes], workdir: str) -> None:
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def aof_everysec() -> Iterator[str]:
    proc, url, workdir = start_redis_server("--appendonly", "yes", "--appendfsync", "everysec")
    yield url
    _stop(proc, workdir)


@pytest.fixture
def aof_always() -> Iterator[str]:
    proc, url, workdir = start_redis_server("--appendonly", "yes", "--appendfsync", "always")
    yield url
    _stop(proc, workdir)


def _wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def replicated() -> Iterator[tuple[str, str]]:
    """A master (AOF on, everysec) and one replica in sync with it: their URLs."""
    mproc, murl, mdir = start_redis_server("--appendonly", "yes", "--repl-diskless-sync-delay", "0")
    mport = murl.rsplit(":", 1)[1]
    rproc, rurl, rdir = start_redis_server("--replicaof", "127.0.0.1", mport)
    master, replica = redis.Redis.from_url(murl), redis.Redis.from_url(rurl)
    try:
        _wait_for(lambda: master.info("replication")["connected_slaves"] == 1
                  and replica.info("replication")["master_link_status"] == "up",
                  30, "the replica to sync")
        yield murl, rurl
    finally:
        master.close()
        replica.close()
        _stop(rproc, rdir)
        _stop(mproc, mdir)


def make_store(url: str, mode: str, replicas: int = 1) -> RunStore:
    return RunStore(DurableSettings(redis_url=f"{url}/0", key_prefix="t:",
                                    commit_durability=mode, commit_replicas=replicas))


def start_run(store: RunStore, run_id: str) -> str:
    store.create_run(run_id, "t.task", "[]", "{}", "celery")
    got = store.claim(run_id, owner="w1", nonce=f"n-{run_id}", task="t.task", args_json="[]",
                      kwargs_json="{}", queue="celery")
    assert got.outcome == "claimed"
    return got.token


def commit(store: RunStore, run_id: str, token: str, pos: int = 0,
           mode: str | None = None) -> int:
    value = json.dumps({"id": f"s{pos}", "v": pos, "t0": 1, "t1": 2, "a": 1})
    return store.commit_step(store.keys.run(run_id), token, pos, f"s{pos}", value,
                             durability_mode=mode)


def test_aof_mode_on_a_server_that_cannot_acknowledge_fsyncs_is_a_clear_error(
    aof_everysec: str,
) -> None:
    store = make_store(aof_everysec, "aof")
    token = start_run(store, "r1")
    version = store.client.info("server")["redis_version"]
    if tuple(int(p) for p in version.split(".")[:2]) >= (7, 2):
        pytest.skip(f"Redis {version} has WAITAOF: the aof mode is honoured")
    with pytest.raises(DurabilityError) as err:
        commit(store, "r1", token)
    message = str(err.value)
    assert "durable_commit_durability='aof' cannot be honoured" in message
    assert "Redis >= 7.2" in message and "appendfsync always" in message
    assert "durable_commit_durability='none'" in message
    # The per-call override commits without waiting on the same store.
    assert commit(store, "r1", token, mode="none") == 1
    store.client.close()


def test_aof_mode_with_appendfsync_always_commits(aof_always: str) -> None:
    store = make_store(aof_always, "aof")
    token = start_run(store, "r1")
    assert commit(store, "r1", token, 0) == 1
    assert commit(store, "r1", token, 1) == 1
    wait = store.commit_wait("aof")
    assert wait is not None and wait.mode in ("aof", "fsync-always")
    assert store.client.hlen(store.keys.run("r1").steps) == 2
    store.client.close()


def test_replica_mode_returns_after_the_replica_has_the_checkpoint(
    replicated: tuple[str, str],
) -> None:
    murl, rurl = replicated
    store = make_store(murl, "replica")
    replica = redis.Redis.from_url(f"{rurl}/0", decode_responses=True)
    token = start_run(store, "r1")
    for pos in range(5):
        assert commit(store, "r1", token, pos) == 1
        # WAIT returned: the replica has applied the commit already (no polling).
        assert replica.hget(store.keys.run("r1").steps, str(pos)) is not None
    replica.close()
    store.client.close()


def test_aof_mode_falls_back_to_the_replica_with_a_warning(
    replicated: tuple[str, str], caplog: pytest.LogCaptureFixture,
) -> None:
    murl, _ = replicated
    store = make_store(murl, "aof")
    token = start_run(store, "r1")
    with caplog.at_level(logging.WARNING, logger="celery_durable.durability"):
        assert commit(store, "r1", token) == 1
    wait = store.commit_wait("aof")
    assert wait is not None
    if wait.mode == "replica":
        assert "commits wait for 1 replica(s) instead" in caplog.text
    else:  # Redis >= 7.2: WAITAOF itself
        assert wait.mode == "aof"
    store.client.close()


def test_replica_mode_without_enough_replicas_is_a_clear_error(
    replicated: tuple[str, str], aof_everysec: str,
) -> None:
    murl, _ = replicated
    store = make_store(murl, "replica", replicas=2)
    token = start_run(store, "r1")
    with pytest.raises(DurabilityError, match=r"needs 2 connected replica\(s\).*has 1"):
        commit(store, "r1", token)
    store.client.close()
    alone = make_store(aof_everysec, "replica")
    token = start_run(alone, "r2")
    with pytest.raises(DurabilityError, match="has 0: connect replicas"):
        commit(alone, "r2", token)
    alone.client.close()


@step(name="durable_piece")
def durable_piece(i: int) -> int:
    return i * 2


def test_a_task_option_makes_a_real_worker_wait_for_the_replica(
    replicated: tuple[str, str], redis_base_url: str,
) -> None:
    # A real worker process (broker on the session's Redis, checkpoints on the replicated
    # master) runs a task declared with commit_durability="replica".
    murl, rurl = replicated
    app = Celery("durability-client", broker=f"{redis_base_url}/0",
                 backend=f"{redis_base_url}/1", set_as_current=False)
    app.conf.durable_redis_url = f"{murl}/0"
    import tests.tasks  # noqa: F401 - registers the shared tasks with this app

    replica = redis.Redis.from_url(f"{rurl}/0")
    with celery_worker(redis_base_url, pool="solo", queue="replicated", name="replicated",
                       extra_env={"DURABLE_TEST_STORE_URL": f"{murl}/0"}):
        result = app.tasks["tests.tasks.replicated_sum"].apply_async((4,), queue="replicated")
        assert result.get(timeout=30) == 12
    store = RunStore(DurableSettings(redis_url=f"{murl}/0"))
    # The run completed, so its checkpoints are in its archive (archive.py).
    archive_key = store.keys.run(result.id).archive

    def replicated_steps() -> int:
        packed = replica.get(archive_key)
        return len(unpack(packed)[0]) if packed else 0

    _wait_for(lambda: replicated_steps() == 4, 10, "the replica to hold 4 checkpoints")
    assert store.commit_wait("replica") is not None
    replica.close()
    store.client.close()
    app.close()


@step(name="strict_piece", durability="aof")
def strict_piece(i: int) -> int:
    return i


@step(name="lax_piece", durability="none")
def lax_piece(i: int) -> int:
    return i


def test_a_step_option_overrides_the_task_and_the_setting(aof_everysec: str) -> None:
    from celery_durable.context import RunContext, bind_context, unbind_context

    version = redis.Redis.from_url(aof_everysec).info("server")["redis_version"]
    if tuple(int(p) for p in version.split(".")[:2]) >= (7, 2):
        pytest.skip(f"Redis {version} has WAITAOF: the aof mode is honoured")
    store = make_store(aof_everysec, "none")
    for task_mode, call, fails in ((None, strict_piece, True), (None, durable_piece, False),
                                   ("aof", durable_piece, True), ("aof", lax_piece, False)):
        run_id = f"r-{task_mode}-{call.__name__}"
        token = start_run(store, run_id)
        ctx = RunContext(run_id=run_id, attempt=1, task_name="t.task", token=token,
                         owner="w1", store=store, checkpoints={}, durability=task_mode)
        bound = bind_context(ctx)
        try:
            if fails:
                with pytest.raises(DurabilityError, match="cannot be honoured"):
                    call(1)
            else:
                assert call(1) == (2 if call is durable_piece else 1)
                assert store.client.hlen(store.keys.run(run_id).steps) == 1
        finally:
            unbind_context(bound)
    store.client.close()
