"""scripts/demo end to end, with real workers.

Part 1: the quickstart order, whose payment step fails once; the retry resumes at the
payment, so the stock reservation is executed only once. Part 2: the main process of the
worker importing a catalog is SIGKILLed after 2 pages; the other worker resumes the run, and
the pages committed before the kill are not executed again."""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
PAGES = 6


@pytest.fixture(scope="module")
def demo(redis_base_url: str) -> tuple[str, str]:
    """The output of one scripts/demo run, split into part 1 and part 2."""
    env = {**os.environ, "REDIS_URL": redis_base_url}
    proc = subprocess.run(
        [str(ROOT / "scripts" / "demo")], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=540,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-5000:] + proc.stderr[-5000:]
    assert f"using Redis at {redis_base_url}" in out
    assert "demo: all three parts succeeded" in out
    assert re.search(r"demo: Flower lists run [0-9a-f-]+ \(tasks.process_order\): completed", out)
    assert re.search(r"demo: Flower lists run [0-9a-f-]+ \(tasks.import_catalog\): completed", out)
    part1, sep, part2 = out.partition("=== part 2:")
    assert sep, out[-5000:]
    return part1, part2


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_resumes_the_order_at_the_failed_payment(demo: tuple[str, str]) -> None:
    out = demo[0]

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


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_resumes_the_import_on_another_worker_after_a_kill(demo: tuple[str, str]) -> None:
    out = demo[1]
    assert "crash demo succeeded" in out, out

    # run_crash_demo.py killed the worker holding the run, after at least 2 committed pages.
    kill = re.search(r"^(\d+) pages committed in attempt 1: SIGKILL to the main process of "
                     r"the worker holding the run, demo-\d+-(w[12])@\S+ \(main pid (\d+)\)$",
                     out, flags=re.MULTILINE)
    assert kill, out
    committed_before, killed = int(kill[1]), kill[2]
    assert committed_before >= 2
    survivor = "w2" if killed == "w1" else "w1"
    assert f"demo: worker{killed[1]} (pid {kill[3]}) is gone (killed)" in out

    # The run completed in attempt 2, on the other worker, soon after the kill.
    assert re.search(r"^\s*status\s+completed$", out, flags=re.MULTILINE), out
    assert re.search(r"^\s*attempts\s+2$", out, flags=re.MULTILINE), out
    assert re.search(rf"^\s*resumed by\s+demo-\d+-{survivor}@", out, flags=re.MULTILINE), out
    recovery = re.search(r"^\s*recovery time\s+(\d+\.\d) s from the kill", out,
                         flags=re.MULTILINE)
    assert recovery, out
    assert float(recovery[1]) < 15
    for event in ("run_reaped", "crash_detected", "attempt_started"):
        assert re.search(rf"^\s+[+-]\d+\.\d\d s\s+{event}\b", out, flags=re.MULTILINE), event

    # The step table: the pages committed before the kill were committed by attempt 1, on the
    # killed worker; the others by attempt 2 on the survivor.
    rows = re.findall(r"^\s+(\d)\s+import_page(?:#\d)?\s+attempt (\d)\s+demo-\d+-(w[12])@\S+"
                      r"(?: \(killed\))?\s+\d+ ms\s+(before|after)$", out, flags=re.MULTILINE)
    assert [int(page) for page, _, _, _ in rows] == list(range(1, PAGES + 1)), out
    before = [int(page) for page, _, _, when in rows if when == "before"]
    assert before == list(range(1, len(before) + 1))
    assert len(before) >= committed_before
    committed_before = len(before)
    for page, attempt, worker, when in rows:
        expected = ("1", killed) if when == "before" else ("2", survivor)
        assert (attempt, worker) == expected, (page, out)

    # The worker logs: each page executed once, except the one in flight at the kill, which
    # the killed worker started in attempt 1 and the survivor executed again in attempt 2.
    executions = re.findall(r"^\S+  (w[12])  \[attempt (\d+)\] import_page: executing page "
                            r"(\d+) \(batch ", out, flags=re.MULTILINE)
    per_page = Counter(int(page) for _, _, page in executions)
    assert sorted(per_page) == list(range(1, PAGES + 1)), out
    for page in range(1, committed_before + 1):
        assert [(w, a) for w, a, p in executions if int(p) == page] == [(killed, "1")], out
    again = [page for page, n in per_page.items() if n > 1]
    assert len(again) <= 1 and all(per_page[page] == 2 for page in again), out
    for page in again:
        assert page == committed_before + 1
        assert [(w, a) for w, a, p in executions if int(p) == page] == [
            (killed, "1"), (survivor, "2")]
    for page in range(committed_before + 1, PAGES + 1):
        assert (survivor, "2", str(page)) in executions, (page, out)
    assert re.search(r"^demo: the workers executed page 1 1x, page 2 1x, .*: each page once",
                     out, flags=re.MULTILINE), out
