"""examples/fanout: 100 child runs gathered in order under a queue limit of 4, with more
worker threads than the limit, so only the limit holds them back."""

from __future__ import annotations

import pytest

from celery_durable.testing import worker_process
from tests.examples.conftest import Example

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_gather_100_children_under_a_queue_limit(example: Example) -> None:
    with worker_process("proj", cwd=example.dir, env=example.env, pool="threads",
                        concurrency=8, queues=["celery", "images"]):
        out = example.run("run.py", "album-1", "--count", "100", timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "completed: 100 thumbnails, in order: True; 100 child runs" in out.stdout
    most = example.redis.zscore("fanout:max-active", "album-1")
    assert most is not None and 1 <= most <= 4, most
