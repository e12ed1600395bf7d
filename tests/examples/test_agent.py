"""examples/agent: a rate-limited LLM call at iteration 7 resumes at 7 (iterations 0-6 are
replayed, not called again); a tenant never has two runs at once across a worker's threads."""

from __future__ import annotations

import json

import pytest

from celery_durable.testing import worker_process
from tests.examples.conftest import Example

pytestmark = pytest.mark.slow


def test_the_agent_resumes_at_the_failed_iteration(example: Example) -> None:
    # Three threads: only the per-tenant limit keeps acme's two runs apart.
    with worker_process("proj", cwd=example.dir, env=example.env, pool="threads",
                        concurrency=3):
        out = example.run("run.py", "--tenants", "acme,acme,globex", "--rate-limit-at", "7")
    assert out.returncode == 0, out.stdout + out.stderr
    sessions = [line.split()[1] for line in out.stdout.splitlines()
                if line.startswith("started ")]
    assert len(sessions) == 3
    first = [int(i) for i in example.redis.lrange(f"agent:calls:{sessions[0]}", 0, -1)]
    # Attempt 1 called 0..7 (7 was rate-limited); attempt 2 called 7..19 only.
    assert first == [*range(8), *range(7, 20)]
    for session in sessions[1:]:
        calls = [int(i) for i in example.redis.lrange(f"agent:calls:{session}", 0, -1)]
        assert calls == list(range(20))
    assert example.redis.zscore("agent:max-active", "acme") == 1
    assert example.redis.zscore("agent:max-active", "globex") == 1
    assert "after 2 attempt(s); 21 LLM calls for 20 iterations; called again: [7]" in out.stdout
    # The CLI sees the three runs, completed.
    shown = example.run("-m", "celery", "-A", "proj", "durable", "runs", "--json")
    runs = [json.loads(line) for line in shown.stdout.splitlines()]
    assert len(runs) == 3 and all(r["status"] == "completed" for r in runs), runs
