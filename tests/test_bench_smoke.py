"""A smoke run of the benchmark suite: every benchmark with tiny sizes through
``python -m bench.suite --quick`` (real redis-servers, real workers), then the JSON results
and the assembled docs/benchmarks.md it writes are checked. Figures are not checked (they
are meaningless at these sizes); bench.limits and bench.recovery are too long for a smoke
run and are left out by --quick. bench.dbos runs when the ``bench`` extra (dbos) is
installed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
def test_quick_suite_writes_results_and_the_assembled_page(tmp_path: Path) -> None:
    names = ["run", "throughput", "resume", "memory", "durability", "heartbeat"]
    if importlib.util.find_spec("dbos") is not None:
        names.append("dbos")
    doc = tmp_path / "benchmarks.md"
    out = subprocess.run(
        [sys.executable, "-m", "bench.suite", "--quick", "--only", ",".join(names),
         "--out", str(tmp_path), "--doc", str(doc)],
        cwd=ROOT, capture_output=True, text=True, timeout=230)
    assert out.returncode == 0, out.stderr[-4000:]
    stems = {"run": "latest"}
    for name in names:
        data = json.loads((tmp_path / f"{stems.get(name, name)}.json").read_text())
        assert data["machine"]["redis_server"], name
        assert data["machine"]["python_speed_us"] > 0, name
        assert (tmp_path / f"{stems.get(name, name)}.md").read_text().strip(), name
    page = doc.read_text()
    assert page.startswith("# Benchmarks\n")
    assert "quick run" in page
    assert "µs per call of a reference function" in page
    # One headline row per target of the benchmarks that ran, each judged met / not met.
    expected = {"1", "2", "4", "8", "–"} | ({"5"} if "dbos" in names else set())
    rows = [line for line in page.splitlines() if line.startswith("| ") and
            line.rstrip().endswith(("| met |", "| **not met** |"))]
    assert {row.split("|")[1].strip() for row in rows} == expected
    assert "## Targets:" in page
    not_run = next(line for line in page.splitlines()
                   if line.startswith("Not run in this suite run:"))
    assert "`bench.limits`" in not_run and "`bench.recovery`" in not_run
    assert ("`bench.dbos`" in not_run) == ("dbos" not in names)
    for heading in ("## Throughput and `apply_async().get()` latency",
                    "## Resume cost", "## Redis memory per completed run",
                    "## Commit durability modes", "## celery-durable per-step overhead"):
        assert heading in page
    throughput = json.loads((tmp_path / "throughput.json").read_text())
    assert [p["pool"] for p in throughput["pools"]] == ["solo"]
    assert throughput["pools"][0]["repeats"][0]["durable_10"]["tasks_per_s"] > 0
