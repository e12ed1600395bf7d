"""examples/approval: runs wait for a decision without holding the worker; one decision
comes from the CLI (``celery -A proj durable send-event``), the others from
``DurableClient.send_event`` (run.py)."""

from __future__ import annotations

import json
import re

import pytest

from celery_durable import RunStatus
from celery_durable.testing import wait_for_run, worker_process
from tests.examples.conftest import Example

pytestmark = pytest.mark.slow


def submit(example: Example, request_id: str, amount: int) -> str:
    out = example.run("run.py", "submit", request_id, str(amount))
    assert out.returncode == 0, out.stdout + out.stderr
    match = re.search(r"run (\S+)$", out.stdout.strip())
    assert match, out.stdout
    return match.group(1)


def test_decisions_from_the_cli_and_the_client(example: Example) -> None:
    app = example.app  # reads the example's runs
    # One solo worker: the three runs can only all wait at once if waiting frees it.
    with worker_process("proj", cwd=example.dir, env=example.env, pool="solo"):
        runs = {rid: submit(example, rid, amount)
                for rid, amount in (("r-cli", 1200), ("r-ok", 3400), ("r-no", 99_000))}
        for run_id in runs.values():
            wait_for_run(app, run_id, [RunStatus.SUSPENDED])

        sent = example.run("-m", "celery", "-A", "proj", "durable", "send-event",
                           "expense:r-cli", "--data", '{"approved": true, "by": "cli"}')
        assert sent.returncode == 0, sent.stderr
        assert f"woke 1 run(s): {runs['r-cli']}" in sent.stdout
        approved = example.run("run.py", "approve", "r-ok", "--by", "alice")
        assert "woke 1 run(s)" in approved.stdout, approved.stdout + approved.stderr
        rejected = example.run("run.py", "reject", "r-no", "--by", "bob", "--note", "too much")
        assert "woke 1 run(s)" in rejected.stdout, rejected.stdout + rejected.stderr

        done = {rid: wait_for_run(app, run_id) for rid, run_id in runs.items()}
        status = example.run("run.py", "status", runs["r-no"])
    assert done["r-cli"].result == {"request": "r-cli", "status": "paid", "by": "cli",
                                    "payout": "payout-r-cli-1200"}
    assert done["r-ok"].result["status"] == "paid" and done["r-ok"].result["by"] == "alice"
    assert done["r-no"].result == {"request": "r-no", "status": "rejected", "by": "bob",
                                   "note": "too much"}
    assert all(r.status is RunStatus.COMPLETED for r in done.values())
    # The rate turn and the wait were steps: the decision is in the trace of the run.
    assert [s.name for s in done["r-cli"].steps] == [
        "notify_approver~rate", "notify_approver", "decision", "pay_out"]
    assert json.loads(status.stdout.splitlines()[1])["status"] == "rejected"


def test_a_decision_sent_twice_wakes_nothing_the_second_time(example: Example) -> None:
    with worker_process("proj", cwd=example.dir, env=example.env, pool="solo"):
        app = example.app
        run_id = submit(example, "r-twice", 500)
        wait_for_run(app, run_id, [RunStatus.SUSPENDED])
        first = example.run("run.py", "approve", "r-twice", "--by", "carol")
        assert "woke 1 run(s)" in first.stdout
        wait_for_run(app, run_id)
        again = example.run("-m", "celery", "-A", "proj", "durable", "send-event",
                            "expense:r-twice", "--data", '{"approved": false, "by": "x"}')
        assert "woke 0 run(s) (kept for the next one to wait)" in again.stdout
    assert wait_for_run(app, run_id).result["by"] == "carol"


def test_the_cli_tour_runs_every_command(example: Example) -> None:
    """cli_tour.sh (whose lines docs/cli.md shows) runs every ``durable`` subcommand."""
    with worker_process("proj", cwd=example.dir, env=example.env, pool="solo"):
        out = example.run_shell("./cli_tour.sh", timeout=240)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    text = out.stdout
    assert "tasks.expense_approval  suspended" in text
    assert "woke 1 run(s)" in text and "(kept for the next one to wait)" in text
    assert "cancelled (was suspended)" in text
    assert "task:tasks.expense_approval: limit set to 20" in text
    assert "step:notify_approver: rate limit set to 240/m" in text
    assert "step:notify_approver: rate limit set to coded" in text
    assert "stale index entr" in text
    assert "WARN  Redis runs without AOF" in text  # the test server has no AOF


def test_flower_in_the_example_directory_shows_the_waiting_run(example: Example) -> None:
    """flowerconfig.py here is the one documented line: Flower started in this directory
    serves the Runs tab, with the key a waiting run expects."""
    import base64
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from celery_durable.testing.redis_server import free_port

    port = free_port()
    with worker_process("proj", cwd=example.dir, env=example.env, pool="solo"):
        run_id = submit(example, "r-flower", 700)
        wait_for_run(example.app, run_id, [RunStatus.SUSPENDED])
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "proj", "flower", f"--port={port}",
             "--address=127.0.0.1", "--basic-auth=ops:secret"],
            cwd=example.dir, env=example.process_env(), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            auth = "Basic " + base64.b64encode(b"ops:secret").decode()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/durable/runs/{run_id}",
                                             headers={"Authorization": auth})
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(request, timeout=5) as reply:
                        page = reply.read().decode()
                    break
                except (urllib.error.URLError, ConnectionError):
                    assert proc.poll() is None, "flower exited"
                    assert time.monotonic() < deadline, "flower did not answer"
                    time.sleep(0.2)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        example.run("run.py", "approve", "r-flower", "--by", "test")
    assert run_id in page and "expense:r-flower" in page
