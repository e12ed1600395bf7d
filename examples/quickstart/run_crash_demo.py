"""Kill the worker executing a catalog import mid-run; another worker resumes the run.

Needs two workers on this host, each able to take the run over from the other, e.g. in two
shells ``celery -A proj worker -P prefork -c 1 -n a@%h --loglevel=INFO`` and the same with
``-n b@%h`` (``scripts/demo`` at the repository root starts them).

Enqueues ``import_catalog``, waits until ``--kill-after`` pages are committed, then SIGKILLs
the main process of the worker holding the run's lease (its pool process dies with it: no
shutdown, no cleanup, as in an OOM kill or a lost machine). The other worker's reaper notices
the missing heartbeat within ``durable_worker_ttl_s`` (4 s by default) and puts the run's
message back; the next attempt replays the committed pages and imports the rest. Exits 1
unless the run completed on another worker and no page committed before the kill was
imported again.

    python run_crash_demo.py [BATCH_ID] [--pages N] [--kill-after K] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable

from proj import app
from run_demo import fmt_ms, table
from tasks import import_catalog

from celery_durable import DurableClient, RunInfo, RunNotFoundError, RunStatus

POLL_S = 0.05
EVENTS = ("attempt_started", "run_reaped", "crash_detected", "run_completed", "run_failed")


class DemoError(Exception):
    """The demo cannot go on (printed, exit status 1)."""


def describe_worker(worker_id: str) -> str:
    """``"<nodename>|<main pid>|<random>"`` as ``"<nodename> (main pid <pid>)"``."""
    parts = worker_id.split("|")
    return f"{parts[0]} (main pid {parts[1]})" if len(parts) == 3 else worker_id or "-"


def main_pid(worker_id: str) -> int:
    """The pid of the main process of the worker ``worker_id``."""
    return int(worker_id.split("|")[1])


def wait_for(client: DurableClient, run_id: str, done: Callable[[RunInfo], bool],
             timeout: float, what: str) -> RunInfo:
    """Poll the run until ``done(run)``; a finished run that is not ``done`` is an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            run = client.get_run(run_id)
        except RunNotFoundError:  # no worker has started it yet
            run = None
        if run is not None:
            if done(run):
                return run
            if run.status.is_terminal:
                raise DemoError(f"the run ended ({run.status.value}) before {what}")
        time.sleep(POLL_S)
    raise DemoError(f"timed out after {timeout:g} s waiting until {what}")


def check_killable(pid: int) -> None:
    """Refuse to kill anything but a live Celery process on this host."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        raise DemoError(f"no process {pid} on this host: is the worker elsewhere?") from None
    if "celery" not in cmdline:
        raise DemoError(f"process {pid} is not a Celery worker: {cmdline[:200]!r}")


def attempt_workers(run: RunInfo) -> dict[int, str]:
    """Which worker id executed each attempt (from the attempt_started events)."""
    return {int(e.fields["attempt"]): e.fields.get("worker", "")
            for e in run.events if e.type == "attempt_started" and "attempt" in e.fields}


def step_rows(run: RunInfo, kill_at: dt.datetime, killed: str) -> list[list[str]]:
    workers = attempt_workers(run)
    rows = []
    for s in run.steps:
        page = s.value.get("page", "?") if isinstance(s.value, dict) else "?"
        worker = workers.get(s.attempt, "")
        node = worker.split("|")[0] + (" (killed)" if worker == killed else "")
        when = "before" if s.finished_at is not None and s.finished_at <= kill_at else "after"
        rows.append([str(page), s.name, f"attempt {s.attempt}", node, fmt_ms(s.duration_ms),
                     when])
    return rows


def event_lines(run: RunInfo, kill_at: dt.datetime) -> list[str]:
    lines = []
    for e in run.events:
        if e.type not in EVENTS:
            continue
        offset = (e.at - kill_at).total_seconds()
        # attempt_started's pid is the process executing the attempt (a pool process).
        fields = {("exec_pid" if k == "pid" else k): v for k, v in e.fields.items()
                  if k != "type"}
        for key in ("worker", "holder", "reaper"):
            if key in fields:
                fields[key] = describe_worker(fields[key])
        detail = ", ".join(f"{k}={v}" for k, v in fields.items())
        lines.append(f"  {offset:+6.2f} s  {e.type:<15} {detail}")
    return lines


def kill_holder(client: DurableClient, run_id: str, args: argparse.Namespace) -> tuple[
        RunInfo, dt.datetime]:
    """Wait until ``--kill-after`` pages are committed, then SIGKILL the lease holder's main
    process. Returns the run as read just before the kill, and the time of the kill."""
    run = wait_for(client, run_id, lambda r: len(r.steps) >= args.kill_after
                   and r.lease_owner is not None, args.timeout,
                   f"{args.kill_after} pages are committed")
    holder = run.lease_owner or ""
    pid = main_pid(holder)
    check_killable(pid)
    started = [e for e in run.events if e.type == "attempt_started"
               and e.fields.get("attempt") == str(run.attempt)]
    executing = started[-1].fields.get("pid", "?") if started else "?"
    kill_at = dt.datetime.now(dt.UTC)
    os.kill(pid, signal.SIGKILL)
    print(f"{len(run.steps)} pages committed in attempt {run.attempt}: SIGKILL to the main "
          f"process of the worker holding the run, {describe_worker(holder)}", flush=True)
    if executing != str(pid):
        print(f"(the attempt runs in its pool process, pid {executing}: it dies with the main "
              "process)", flush=True)
    return run, kill_at


def run_demo(args: argparse.Namespace) -> bool:
    client = DurableClient(app)
    result = import_catalog.delay(args.batch_id, args.pages)
    run_id = result.id
    print(f"enqueued import_catalog({args.batch_id!r}, pages={args.pages}): run id {run_id}",
          flush=True)

    # 1. Kill the worker executing the run, once the first pages are committed.
    at_kill, kill_at = kill_holder(client, run_id, args)
    t_kill = time.monotonic()
    killed = at_kill.lease_owner or ""

    # 2. Wait for another worker to take the run over (its next attempt starts), then for
    # the run to finish.
    run = wait_for(client, run_id, lambda r: r.attempt > at_kill.attempt, args.timeout,
                   "another worker takes the run over")
    takeover_s = time.monotonic() - t_kill
    resumed_by = attempt_workers(run).get(run.attempt, "")
    print(f"{describe_worker(resumed_by)} took the run over {takeover_s:.1f} s after the kill "
          f"(attempt {run.attempt})", flush=True)
    run = wait_for(client, run_id, lambda r: r.status.is_terminal, args.timeout,
                   "the run finishes")
    done_s = time.monotonic() - t_kill

    print("\n".join([
        "",
        f"run {run.id}  ({run.task}, args {run.args})",
        f"  status          {run.status.value}",
        f"  attempts        {run.attempt}",
        f"  killed worker   {describe_worker(killed)}, with {len(at_kill.steps)} pages "
        "committed",
        f"  resumed by      {describe_worker(resumed_by)}",
        f"  recovery time   {takeover_s:.1f} s from the kill to the next attempt's start",
        f"  completed       {done_s:.1f} s after the kill",
        f"  result          {run.result}",
        "",
        "pages (a page committed before the kill is never executed again)",
        *table(["page", "step", "committed in", "by worker", "duration", "vs. the kill"],
               step_rows(run, kill_at, killed)),
        "",
        "trace events (time relative to the kill)",
        *event_lines(run, kill_at),
    ]))

    final = {s.name: s.attempt for s in run.steps}
    rerun = [name for name in (s.name for s in at_kill.steps) if final.get(name) != 1]
    if rerun:
        print(f"\npages committed before the kill but executed again: {', '.join(rerun)}")
    if resumed_by in ("", killed):
        print("\nthe run was not resumed by another worker")
    return run.status is RunStatus.COMPLETED and resumed_by not in ("", killed) and not rerun


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batch_id", nargs="?", default=f"batch-{uuid.uuid4().hex[:8]}")
    parser.add_argument("--pages", type=int, default=6)
    parser.add_argument("--kill-after", type=int, default=2,
                        help="kill the worker once this many pages are committed (default 2)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="the longest wait for each stage (seconds)")
    args = parser.parse_args(argv)
    if not 1 <= args.kill_after < args.pages:
        parser.error("--kill-after must be at least 1 and less than --pages")
    try:
        ok = run_demo(args)
    except DemoError as exc:
        print(f"the crash demo cannot go on: {exc}", flush=True)
        ok = False
    print("crash demo " + ("succeeded" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
