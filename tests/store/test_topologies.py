"""The store on a real Redis Cluster (3 masters) and behind a real Sentinel: runs, leases
renewed across slots, NOSCRIPT handled per node, startup checks per node, failover-aware
connections."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from celery_durable.checks import server_problems
from celery_durable.config import DurableSettings
from celery_durable.events import trace_events
from celery_durable.models import RunStatus
from celery_durable.store import RunStore
from tests.cluster import start_redis_cluster, start_sentinel, stop_servers
from tests.conftest import start_redis_server, wipe_store

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster(cluster_url: str | None) -> Iterator[str]:
    """The session's cluster under DURABLE_TEST_STORE=cluster, else one of this module."""
    if cluster_url is not None:
        yield cluster_url
        return
    servers = start_redis_cluster()
    try:
        yield servers.url
    finally:
        stop_servers(servers)


@pytest.fixture
def store(cluster: str) -> Iterator[RunStore]:
    st = RunStore(DurableSettings(redis_url=cluster, key_prefix="c:", lease_ttl_s=30))
    assert isinstance(st.client, RedisCluster) and st.cluster
    wipe_store(st.client, "c:")
    yield st
    wipe_store(st.client, "c:")
    st.client.close()


def checkpoint(value: object) -> str:
    return json.dumps({"id": "s", "v": value, "t0": 1, "t1": 2, "a": 1})


def start(store: RunStore, run_id: str, owner: str = "w1") -> str:
    assert store.create_run(run_id, "t.task", "[]", "{}", "celery")
    claim = store.claim(run_id, owner=owner, nonce=f"n-{run_id}", task="t.task",
                        args_json="[]", kwargs_json="{}", queue="celery")
    assert claim.outcome == "claimed"
    return claim.token


def test_runs_on_every_master_complete_with_their_indexes(store: RunStore) -> None:
    run_ids = [f"run-{i}" for i in range(30)]
    nodes = {store.client.get_node_from_key(store.keys.run(r).run).name for r in run_ids}
    assert len(nodes) == 3  # the runs really are spread over the three masters
    for run_id in run_ids:
        token = start(store, run_id)
        assert store.commit_step(store.keys.run(run_id), token, 0, "s", checkpoint(1)) == 1
        assert store.end_attempt(run_id, token, RunStatus.COMPLETED, {"type": "run_completed"},
                                 task="t.task", owner="w1") == "running"
    completed = set(store.index_page(store.keys.status_index(RunStatus.COMPLETED), 0, 100))
    assert completed == set(run_ids)
    assert store.index_page(store.keys.status_index(RunStatus.RUNNING), 0, 100) == []
    run, steps, trace = store.read_run("run-7")
    assert run["status"] == "completed" and list(steps) == ["0"]
    assert [e.type for e in trace_events(trace, {})][-1] == "run_completed"


def test_one_heartbeat_renews_leases_in_many_slots(store: RunStore) -> None:
    run_ids = [f"lease-{i}" for i in range(40)]
    assert len({key_slot(store.keys.run(r).run.encode()) for r in run_ids}) > 1
    for run_id in run_ids:
        start(store, run_id)
    before = {r: int(store.client.hget(store.keys.run(r).run, "lease_expires_ms") or 0)
              for r in run_ids}
    store.client.hset(store.keys.run("lease-3").run, "lease_owner", "someone-else")
    store.beat("w1", run_ids, renew=True)
    after = {r: int(store.client.hget(store.keys.run(r).run, "lease_expires_ms") or 0)
             for r in run_ids}
    assert all(after[r] >= before[r] for r in run_ids)
    store.release_leases("w1", run_ids)
    released = {r: int(store.client.hget(store.keys.run(r).run, "lease_expires_ms") or 0)
                for r in run_ids}
    # Only the holder's leases change: the one taken over keeps its expiry.
    assert released["lease-3"] == after["lease-3"] > 0
    assert all(released[r] == 0 for r in run_ids if r != "lease-3")


def test_scripts_lost_by_every_node_are_loaded_again(store: RunStore) -> None:
    token = start(store, "flushed")
    store.client.script_flush()  # on every primary
    assert store.commit_step(store.keys.run("flushed"), token, 0, "s", checkpoint(1),
                             logs=["INFO", "app", "hello", "s", "1", "1700000000000"]) == 1
    store.client.script_flush()
    assert store.end_attempt("flushed", token, RunStatus.COMPLETED, {"type": "run_completed"},
                             task="t.task", owner="w1") == "running"
    store.client.script_flush()
    store.beat("w1", ["flushed", "other"], renew=True)
    assert store.read_run("flushed")[0]["status"] == "completed"


def test_limits_idempotency_and_events_each_keep_to_their_slot(store: RunStore) -> None:
    limit = store.keys.limit("task:t.task", "_")
    assert len({key_slot(k.encode()) for k in limit.as_list()}) == 1
    assert int(store.slot_op(limit, "acquire", "a", 1, "{}")[0]) == 1
    assert int(store.slot_op(limit, "acquire", "b", 1, "{}")[0]) == 0
    woken = store.slot_op(limit, "release", "a", 1)
    assert woken[4:] == ["b", "{}"]
    key = store.keys.idempotency("t.task", "k1")
    assert store.claim_idempotency(key, "r1", "fp", 1, 10_000)[0] == 1
    assert store.claim_idempotency(key, "r2", "fp", 1, 10_000)[0] == 0
    assert len({key_slot(k.encode()) for k in store.keys.event("approve:1")}) == 1
    assert store.wait_event("approve:1", "r1", 0, None)[0] == 0
    assert store.send_event("approve:1", '{"ok": true}') == ["r1"]
    assert store.wait_event("approve:1", "r1", 0, None) == (1, '{"ok": true}')


def test_startup_checks_name_the_node_with_a_problem(store: RunStore) -> None:
    assert server_problems(store.client) == []
    node = store.client.get_primaries()[1]
    conn = store.client.get_redis_connection(node)
    conn.config_set("maxmemory-policy", "allkeys-lru")
    try:
        problems = server_problems(store.client)
    finally:
        conn.config_set("maxmemory-policy", "noeviction")
    assert len(problems) == 1
    assert problems[0].startswith(f"cluster node {node.name}:")
    assert "allkeys-lru" in problems[0]


def test_sentinel_url_reaches_the_master_it_names() -> None:
    master, master_url, workdir = start_redis_server()
    port = int(master_url.rsplit(":", 1)[1])
    sentinel = start_sentinel(port, "durable-master")
    try:
        settings = DurableSettings(redis_url=f"{sentinel.url}/2",
                                   redis_sentinel_master="durable-master")
        st = RunStore(settings)
        assert not st.cluster
        token = start(st, "via-sentinel")
        assert st.commit_step(st.keys.run("via-sentinel"), token, 0, "s", checkpoint(1)) == 1
        # The data is on database 2 of the master the Sentinel names.
        direct = redis.Redis.from_url(f"{master_url}/2", decode_responses=True)
        assert direct.hget(st.keys.run("via-sentinel").run, "status") == "running"
        direct.close()
        st.client.close()
    finally:
        stop_servers(sentinel)
        master.terminate()
        master.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_sentinel_failover_moves_the_store_to_the_new_master() -> None:
    master, master_url, master_dir = start_redis_server()
    master_port = int(master_url.rsplit(":", 1)[1])
    replica, replica_url, replica_dir = start_redis_server(
        "--replicaof", "127.0.0.1", str(master_port))
    replica_port = int(replica_url.rsplit(":", 1)[1])
    sentinel = start_sentinel(master_port, "durable-master")
    watcher = redis.Redis.from_url(sentinel.url.replace("sentinel://", "redis://"),
                                   decode_responses=True)
    try:
        st = RunStore(DurableSettings(redis_url=sentinel.url,
                                      redis_sentinel_master="durable-master"))
        token = start(st, "failover")
        assert st.commit_step(st.keys.run("failover"), token, 0, "s", checkpoint(1)) == 1
        wait_until(lambda: watcher.execute_command("SENTINEL", "REPLICAS", "durable-master"),
                   "the Sentinel to discover the replica")
        # A replica that is still in its first sync acknowledges nothing yet.
        wait_until(lambda: link_up(replica_port), "the replica's first sync")
        # The replica has the step before the master is demoted (WAIT: replicated).
        assert st.client.execute_command("WAIT", 1, 10_000) == 1
        watcher.execute_command("SENTINEL", "FAILOVER", "durable-master")
        wait_until(lambda: int(watcher.execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "durable-master")[1]) == replica_port,
            "the failover to the replica")
        # Until the old master is demoted it still takes writes, which the switch then
        # loses (asynchronous replication): wait for both roles to change.
        wait_until(lambda: role(replica_port) == "master", "the replica to become master")
        wait_until(lambda: role(master_port) == "slave", "the old master to become a replica")
        # Same client: its next writes reach the new master (the old one answers READONLY,
        # and the client asks the Sentinel again), which loads the scripts.
        assert st.commit_step(st.keys.run("failover"), token, 1, "s2", checkpoint(2)) == 1
        assert st.end_attempt("failover", token, RunStatus.COMPLETED, {"type": "done"},
                              task="t.task", owner="w1") == "running"
        on_new = redis.Redis(port=replica_port, decode_responses=True)
        assert on_new.hget(st.keys.run("failover").run, "status") == "completed"
        assert sorted(on_new.hkeys(st.keys.run("failover").steps)) == ["0", "1"]
        on_new.close()
        st.client.close()
    finally:
        watcher.close()
        stop_servers(sentinel)
        for proc, workdir in ((replica, replica_dir), (master, master_dir)):
            proc.terminate()
            proc.wait(timeout=10)
            shutil.rmtree(workdir, ignore_errors=True)


def link_up(port: int) -> bool:
    """Whether the replica on ``port`` has finished syncing with its master."""
    client = redis.Redis(port=port, decode_responses=True)
    try:
        return client.info("replication").get("master_link_status") == "up"
    finally:
        client.close()


def role(port: int) -> str:
    client = redis.Redis(port=port, decode_responses=True)
    try:
        return str(client.info("replication")["role"])
    finally:
        client.close()


def wait_until(check: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
