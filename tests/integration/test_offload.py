"""Large step results offloaded out of the checkpoint (``durable_offload_bytes``): the
steps hash stays small, replays and forks read the result back, TTLs follow the run."""

from __future__ import annotations

import json

import pytest

from celery_durable import RunStatus
from tests.chaos.helpers import run_with, wait_for
from tests.workers import celery_worker

pytestmark = pytest.mark.slow
SIZE = 200_000


def test_offloaded_results_round_trip(redis_base_url, test_app, tasks, client, token) -> None:
    import tests.long_tasks as long_tasks

    queue = "offload"
    with celery_worker(redis_base_url, pool="solo", queue=queue, concurrency=1, name="o1",
                       extra_env={"DURABLE_TEST_OFFLOAD_BYTES": "4096"}):
        # Given a run whose first step returns 200 kB and whose third step fails once
        result = long_tasks.offloading_task.apply_async((token, SIZE), queue=queue)
        # Then the retry replays the big result from its blob, without running it again
        assert result.get(timeout=60) == {"size": SIZE, "small": 7}
        assert tasks.count(token, "big_result") == 1
        assert tasks.count(token, "fails_once") == 2
        store = client.store
        keys = store.keys.run(result.id)
        # The run completed: its checkpoints are in its archive, the blobs stay apart.
        assert store.client.exists(keys.archive) and not store.client.exists(keys.steps)
        _, steps, _ = store.read_run(result.id)
        big, small = steps["0"], steps["1"]
        assert len(big) < 200 and json.loads(big)["o"] > SIZE  # only the size is inline
        assert json.loads(small)["v"] == 7 and "o" not in json.loads(small)  # small: inline
        assert set(store.client.hkeys(keys.blobs)) == {"0"}
        assert len(store.client.hget(keys.blobs, "0")) > SIZE
        # The blob expires with the run (its retention, now that it completed).
        run_ttl, blob_ttl = store.client.pttl(keys.run), store.client.pttl(keys.blobs)
        assert abs(run_ttl - blob_ttl) < 5000 and run_ttl <= store.settings.retention_ms
        run = client.get_run(result.id)
        assert run.status is RunStatus.COMPLETED and run.attempt == 2
        assert run.steps[0].value == {"blob": "y" * SIZE, "size": SIZE}
        assert run.steps[0].offloaded_bytes == json.loads(big)["o"]
        assert run.steps[1].offloaded_bytes is None

        # A fork from the second step copies the blob of the first one with its checkpoint.
        fork_id = client.replay(result.id, from_step="small_result")
        wait_for(lambda: run_with(client, fork_id, lambda r: r.status is RunStatus.COMPLETED),
                 60, "the fork to complete")
    assert tasks.count(token, "big_result") == 1
    assert tasks.count(token, "small_result") == 2
    fork = client.get_run(fork_id)
    assert fork.result == {"size": SIZE, "small": 7}
    assert fork.steps[0].value == run.steps[0].value
