"""scripts/demo end to end: a real worker runs the quickstart order, whose payment step fails
once; the retry resumes at the payment, so the stock reservation is executed only once."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_resumes_the_order_at_the_failed_payment(redis_base_url: str) -> None:
    env = {**os.environ, "REDIS_URL": redis_base_url}
    proc = subprocess.run(
        [str(ROOT / "scripts" / "demo")], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=540,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-5000:] + proc.stderr[-5000:]
    assert f"using Redis at {redis_base_url}" in out

    def executed(step: str) -> list[str]:
        return re.findall(rf"^\[attempt (\d+)\] {step}: executing", out, flags=re.MULTILINE)

    # The worker log: reserve_stock ran in attempt 1 only, charge_card in both attempts.
    assert executed("reserve_stock") == ["1"]
    assert executed("charge_card") == ["1", "2"]
    assert executed("send_receipt") == ["2"]
    assert "charge_card: payment API timed out" in out
    # The trace printed by run_demo.py.
    assert re.search(r"^\s*status\s+completed$", out, flags=re.MULTILINE)
    assert re.search(r"^\s*attempts\s+2$", out, flags=re.MULTILINE)
    assert re.search(r"reserve_stock\s+attempt 1\b", out)
    assert re.search(r"charge_card\s+attempt 2\b", out)
    assert "builtins.ConnectionError: payment API timed out" in out
    assert "demo succeeded" in out
