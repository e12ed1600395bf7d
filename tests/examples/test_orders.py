"""examples/orders: a worker is SIGKILLed after the gateway charged, before the charge step
committed; the other worker resumes the run and the customer is charged once."""

from __future__ import annotations

import pytest

from celery_durable.testing import worker_process
from tests.examples.conftest import Example

pytestmark = pytest.mark.slow


def test_an_order_without_crash(example: Example) -> None:
    with worker_process("proj", cwd=example.dir, env=example.env):
        out = example.run("run.py", "o-plain")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "completed after 1 attempt(s)" in out.stdout
    assert "placed it again: the same run" in out.stdout
    assert example.redis.llen("shop:charges:o-plain") == 1
    assert example.redis.hget("shop:stock", "mug") == "-2"


def test_a_crash_mid_charge_does_not_charge_twice(example: Example) -> None:
    with worker_process("proj", cwd=example.dir, env=example.env, hostname="a@%h") as a, \
            worker_process("proj", cwd=example.dir, env=example.env, hostname="b@%h") as b:
        out = example.run("run.py", "o-crash", "--crash")
        killed = [w for w in (a, b) if w.proc.poll() is not None]
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(killed) == 1, "exactly one worker was killed"
    assert "charged, not yet committed: SIGKILL" in out.stdout
    # Given the kill after the gateway charged, the charge step ran again in attempt 2 ...
    assert example.redis.get("shop:calls:charge:o-crash") == "2"
    # ... with the same step_key, so the gateway made one charge; the stock was reserved
    # once (its checkpoint was replayed) and the order shipped once.
    assert example.redis.llen("shop:charges:o-crash") == 1
    assert example.redis.get("shop:calls:reserve:o-crash") == "1"
    assert example.redis.get("shop:calls:ship:o-crash") == "1"
    assert "completed after 2 attempt(s)" in out.stdout
