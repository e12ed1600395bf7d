"""Crash recovery time: SIGKILL the worker running a durable run, time until the run's next
step starts on the other worker; the same for a stock Celery ``acks_late`` task.

Usage (from the repository root)::

    .venv/bin/python -m bench.recovery [--repeats 5] [--stock-repeats 1] [--skip-stock]

Starts a throwaway redis-server and two real ``celery -A bench.recovery_app:durable_app
worker -P prefork -c 1`` subprocesses (celery-durable defaults). Each repeat enqueues a run
of 20 steps x 0.25 s, waits until 3 steps are committed, SIGKILLs the main process of the
worker holding the run's lease (its pool process dies with it) and measures the time from
the kill to the start of the first step executed by the next attempt, on the other worker.
Then the same with a plain ``@app.task(acks_late=True)`` on ``stock_app`` (visibility
timeout 10 s), timing the kill to the task's restart. Writes ``bench/results/recovery.json``
and ``bench/results/recovery.md`` and stops every process it started (also on error or
SIGTERM). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import redis
from celery import Celery

from celery_durable import DurableClient, RunInfo
from celery_durable.config import DEFAULT_KEY_PREFIX, settings_for
from celery_durable.store import RunStore

from . import common
from . import recovery_app as ra
from .worker_procs import Worker, WorkerSet

#: Target of the project: a crashed run's next step starts within this many seconds.
TARGET_S = 10.0
#: kombu's default visibility timeout (seconds) and its periodic restore sweep
#: (``unacked_restore_interval`` x ``unacked_restore_throttle``, kombu >= 5.6 defaults).
KOMBU_DEFAULT_VT_S = 3600.0
KOMBU_SWEEP_S = 10.0 * 10
DURABLE_QUEUE, STOCK_QUEUE = "recovery-durable", "recovery-stock"
POLL_S = 0.02

T = TypeVar("T")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.make_parser("bench.recovery", __doc__)
    parser.add_argument("--repeats", type=int, default=5,
                        help="celery-durable crash/recover repeats (default 5)")
    parser.add_argument("--stock-repeats", type=int, default=1,
                        help="stock Celery repeats (default 1; each takes up to ~110 s)")
    parser.add_argument("--skip-stock", action="store_true", help="do not measure stock Celery")
    parser.add_argument("--steps", type=int, default=20, help="steps per run (default 20)")
    parser.add_argument("--step-seconds", type=float, default=0.25,
                        help="duration of a step (default 0.25)")
    parser.add_argument("--kill-after", type=int, default=3,
                        help="kill once this many steps are committed (default 3)")
    parser.add_argument("--stock-timeout", type=float, default=400.0,
                        help="give up waiting for the stock task to restart after this many "
                             "seconds (default 400)")
    common.add_common_args(parser, "recovery.json and recovery.md", keep_logs=True)
    args = parser.parse_args(argv)
    if not 0 < args.kill_after < args.steps:
        parser.error("--kill-after must be between 1 and --steps - 1")
    return args


def wait_for(predicate: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Poll ``predicate`` until it returns something truthy; raise after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(POLL_S)


def start_records(records: redis.Redis, task_id: str) -> list[dict[str, Any]]:
    """The step start records of a task, oldest first (see bench.recovery_app)."""
    raw: list[str] = records.lrange(ra.starts_key(task_id), 0, -1)  # type: ignore[assignment]
    return [json.loads(r) for r in raw]


def summary(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def wait_success(app: Celery, task_id: str, timeout_s: float) -> None:
    def done() -> bool:
        state = app.AsyncResult(task_id).state
        if state == "FAILURE":
            raise RuntimeError(f"task {task_id} failed")
        return state == "SUCCESS"

    wait_for(done, timeout_s, f"task {task_id} to succeed")


def _replace(workers: WorkerSet, victim: Worker) -> None:
    """Reap the killed worker's process group and start a fresh worker in its place."""
    workers.stop(victim)
    workers.wait_ready(workers.spawn())


# -- celery-durable -----------------------------------------------------------------------


def _run(client: DurableClient, run_id: str, check: Callable[[RunInfo], bool]) -> RunInfo | None:
    run = client.get_run(run_id)
    return run if check(run) else None


def _event_ms(run: RunInfo, kind: str, after_attempt: int = 0) -> int | None:
    """Epoch ms of the first ``kind`` trace event (with an ``attempt`` above ``after_attempt``
    for attempt events)."""
    for event in run.events:
        if event.type != kind:
            continue
        if "attempt" in event.fields and int(event.fields["attempt"]) <= after_attempt:
            continue
        return int(event.id.split("-")[0])
    return None


def durable_repeat(app: Celery, client: DurableClient, records: redis.Redis,
                   workers: WorkerSet, args: argparse.Namespace) -> dict[str, Any]:
    """One crash of a durable run: returns its timings (seconds) and facts."""
    store: RunStore = client.store
    result = app.tasks[ra.DURABLE_TASK].apply_async((args.steps, args.step_seconds),
                                                    queue=DURABLE_QUEUE)
    run_id = str(result.id)
    run = wait_for(lambda: _run(client, run_id, lambda r: r.step_count >= args.kill_after
                                and bool(r.lease_owner)), 60, f"{args.kill_after} steps")
    owner = str(run.lease_owner)
    victim_pid = int(owner.split("|")[1])
    victim = workers.by_pid(victim_pid)
    if victim is None:
        raise RuntimeError(f"run {run_id} is held by {owner}, not by a worker we started")
    os.kill(victim_pid, signal.SIGKILL)
    killed_at = time.time()
    committed, attempt = run.step_count, run.attempt
    last_beat_ms = store.client.zscore(store.keys.workers, owner)  # before the reaper removes it

    def resumed() -> dict[str, Any] | None:
        return next((r for r in start_records(records, run_id) if r["attempt"] > attempt), None)

    try:
        first = wait_for(resumed, 60, "the next attempt's first step")
        wait_success(app, run_id, 120)
    except RuntimeError as exc:
        details = _diagnose(client, run_id, workers)
        details.update(victim=victim.name, victim_pid=victim_pid, killed_at=killed_at,
                       last_beat_ms=last_beat_ms)
        raise RepeatFailed(str(exc), details) from exc
    run = client.get_run(run_id)
    step = next(s for s in run.steps if s.attempt > attempt)
    next_t0 = float(step.value["t0"])
    reaped_ms = _event_ms(run, "run_reaped")
    claimed_ms = _event_ms(run, "attempt_started", after_attempt=attempt)
    executions = [r["pos"] for r in start_records(records, run_id)]
    _replace(workers, victim)
    return {
        "run_id": run_id,
        "victim": victim.name,
        "victim_pid": victim_pid,
        "next_holder_pid": first["main_pid"],
        "committed_at_kill": committed,
        "next_step_position": step.position,
        "next_attempt": step.attempt,
        "kill_to_next_step_s": next_t0 - killed_at,
        "kill_to_next_step_started_at_s": (step.started_at.timestamp() - killed_at
                                           if step.started_at else None),
        "kill_to_next_step_record_s": float(first["t"]) - killed_at,
        "last_beat_before_kill_s": killed_at - last_beat_ms / 1000 if last_beat_ms else None,
        "kill_to_reaped_s": reaped_ms / 1000 - killed_at if reaped_ms else None,
        "reaped_to_claimed_s": (claimed_ms - reaped_ms) / 1000
        if reaped_ms and claimed_ms else None,
        "claimed_to_next_step_s": next_t0 - claimed_ms / 1000 if claimed_ms else None,
        "steps_executed_twice": sorted({p for p in executions if executions.count(p) > 1}),
        "reaped_by": next((e.fields.get("reaper") for e in run.events
                           if e.type == "run_reaped"), None),
    }


def _diagnose(client: DurableClient, run_id: str, workers: WorkerSet) -> dict[str, Any]:
    """What a failed repeat left behind: the run's state and trace, the workers' log tails."""
    try:
        run = client.get_run(run_id)
        state: dict[str, Any] = {
            "status": run.status.value, "attempt": run.attempt, "step_count": run.step_count,
            "lease_owner": run.lease_owner,
            "events": [{"at": e.at.isoformat(), "type": e.type, **e.fields}
                       for e in run.events if e.type != "step_committed"]}
    except Exception as exc:
        state = {"error": repr(exc)}
    return {"run_id": run_id, "run": state,
            "workers": {w.name: {"pid": w.pid, "alive": w.proc.poll() is None,
                                 "log_tail": w.log_tail(40)} for w in workers.workers}}


class RepeatFailed(RuntimeError):
    """A repeat that did not recover in time; ``details`` says what was seen."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details


def measure_durable(base_url: str, records: redis.Redis, args: argparse.Namespace,
                    ) -> list[dict[str, Any]]:
    app = ra.make_durable_app(base_url, DURABLE_QUEUE)
    client = DurableClient(app, RunStore(settings_for(app)))
    workers = WorkerSet("bench.recovery_app:durable_app", DURABLE_QUEUE,
                        {ra.ENV_URL: base_url, ra.ENV_QUEUE: DURABLE_QUEUE}, "durable",
                        keep_logs=args.keep_logs)
    repeats: list[dict[str, Any]] = []
    try:
        workers.start(2)
        for i in range(args.repeats):
            try:
                repeats.append(durable_repeat(app, client, records, workers, args))
            except RepeatFailed as exc:
                # Keep the evidence, start over with two fresh workers, go on.
                common.progress(f"durable {i + 1}/{args.repeats}: FAILED: {exc}")
                repeats.append({"failed": str(exc), **exc.details})
                workers.stop_all()
                workers.start(2)
                continue
            r = repeats[-1]
            common.progress(f"durable {i + 1}/{args.repeats}: kill -> next step "
                            f"{r['kill_to_next_step_s']:.2f} s (reaped after "
                            f"{r['kill_to_reaped_s'] or float('nan'):.2f} s)")
    finally:
        workers.stop_all()
        client.store.client.close()
        app.close()
    return repeats


# -- stock Celery -------------------------------------------------------------------------


def _unacked_score(broker: redis.Redis) -> float | None:
    """kombu's delivery time of the only unacked message (its ``unacked_index`` score)."""
    entries = broker.zrange("unacked_index", 0, -1, withscores=True)
    return float(entries[0][1]) if entries else None


def stock_repeat(app: Celery, records: redis.Redis, broker: redis.Redis, workers: WorkerSet,
                 args: argparse.Namespace, replace: bool) -> dict[str, Any]:
    result = app.tasks[ra.STOCK_TASK].apply_async((args.steps, args.step_seconds),
                                                  queue=STOCK_QUEUE)
    task_id = str(result.id)
    started = wait_for(lambda: [r for r in start_records(records, task_id)
                                if r["pos"] >= args.kill_after], 60,
                       f"{args.kill_after} finished steps")
    victim_pid = int(started[0]["main_pid"])
    victim = workers.by_pid(victim_pid)
    if victim is None:
        raise RuntimeError(f"task {task_id} runs in worker {victim_pid}, not one we started")
    survivor = next(w for w in workers.live() if w is not victim)
    delivered_at = _unacked_score(broker)
    os.kill(victim_pid, signal.SIGKILL)
    killed_at = time.time()

    def restarted() -> dict[str, Any] | None:
        return next((r for r in start_records(records, task_id)
                     if r["main_pid"] != victim_pid), None)

    first = wait_for(restarted, args.stock_timeout, "the stock task to start again")
    wait_success(app, task_id, 120)
    executions = [r["pos"] for r in start_records(records, task_id)]
    if replace:
        _replace(workers, victim)
    else:
        workers.stop(victim)
    return {
        "task_id": task_id,
        "victim": victim.name,
        "victim_pid": victim_pid,
        "next_holder_pid": first["main_pid"],
        "finished_at_kill": args.kill_after,
        "next_step_position": first["pos"],
        "kill_to_next_step_s": float(first["t"]) - killed_at,
        "delivered_before_kill_s": killed_at - delivered_at if delivered_at else None,
        "survivor_ready_before_kill_s": killed_at - survivor.ready_at,
        "steps_executed": len(executions),
    }


def measure_stock(base_url: str, records: redis.Redis, args: argparse.Namespace,
                  ) -> list[dict[str, Any]]:
    app = ra.make_stock_app(base_url, STOCK_QUEUE)
    broker = redis.Redis.from_url(f"{base_url}/{ra.BROKER_DB}")
    workers = WorkerSet("bench.recovery_app:stock_app", STOCK_QUEUE,
                        {ra.ENV_URL: base_url, ra.ENV_QUEUE: STOCK_QUEUE}, "stock",
                        keep_logs=args.keep_logs)
    repeats: list[dict[str, Any]] = []
    try:
        registry = f"{DEFAULT_KEY_PREFIX}workers"  # celery-durable's heartbeat registry
        before = set(broker.zrange(registry, 0, -1))
        for worker in workers.start(2):
            if worker.log_contains("celery-durable"):
                raise RuntimeError("the stock worker runs the celery-durable bootstep")
        if set(broker.zrange(registry, 0, -1)) - before:
            raise RuntimeError("a stock worker sends celery-durable heartbeats")
        for i in range(args.stock_repeats):
            repeats.append(stock_repeat(app, records, broker, workers, args,
                                        replace=i + 1 < args.stock_repeats))
            common.progress(f"stock {i + 1}/{args.stock_repeats}: kill -> restart "
                            f"{repeats[-1]['kill_to_next_step_s']:.1f} s")
    finally:
        workers.stop_all()
        broker.close()
        app.close()
    return repeats


# -- report -------------------------------------------------------------------------------


def _fmt(value: float | None, decimals: int = 2) -> str:
    return "–" if value is None else f"{value:.{decimals}f}"


def _row(label: str, values: Sequence[float], target: str, decimals: int = 2) -> str:
    s = summary(values)
    if s is None:
        return f"| {label} | 0 | – | – | – | {target} |"
    return (f"| {label} | {len(values)} | {_fmt(s['min'], decimals)} | "
            f"{_fmt(s['median'], decimals)} | {_fmt(s['max'], decimals)} | {target} |")


def _values(repeats: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in repeats if r.get(key) is not None]


def render_markdown(result: Mapping[str, Any]) -> str:
    cfg, durable, stock = result["config"], result["durable"], result["stock"]
    ttl, interval = cfg["worker_ttl_s"], cfg["heartbeat_interval_s"]
    d = _values(durable, "kill_to_next_step_s")
    failed = sum(1 for r in durable if "failed" in r)
    verdict = ("met" if d and max(d) <= TARGET_S and not failed else "NOT met") \
        if durable else "not measured"
    lines = [
        "# Crash recovery time",
        "",
        f"SIGKILL of the main process of the worker running a run ({cfg['steps']} steps x "
        f"{cfg['step_seconds']:g} s, killed after {cfg['kill_after']} committed steps) -> "
        "start of the next step on the other worker (two `celery worker -P prefork -c 1`). "
        "Seconds.",
        "",
        "| what | repeats | min | median | max | target |",
        "|---|---|---|---|---|---|",
        _row("celery-durable, default settings", d, f"≤ {TARGET_S:g} s ({verdict}"
             + (f"; {failed} repeat(s) did not recover)" if failed else ")")),
        _row(f"stock Celery, `acks_late`, `visibility_timeout` {ra.STOCK_VISIBILITY_TIMEOUT_S:g}"
             " s", _values(stock, "kill_to_next_step_s"),
             "not measured (`--skip-stock`)" if cfg["skip_stock"] else "–", 1),
        f"| stock Celery, `acks_late`, default `visibility_timeout` {KOMBU_DEFAULT_VT_S:g} s "
        f"| – | – | ~{KOMBU_DEFAULT_VT_S + KOMBU_SWEEP_S:,.0f} | – | not measured: "
        f"{KOMBU_DEFAULT_VT_S:g} s + up to ~{KOMBU_SWEEP_S:g} s to the next kombu sweep |",
        "",
        f"celery-durable settings: `durable_worker_ttl_s` {ttl:g} s, "
        f"`durable_heartbeat_interval_s` {interval:g} s, `durable_lease_ttl_s` "
        f"{cfg['lease_ttl_s']:g} s (defaults). Expected: the victim's last heartbeat + "
        f"{ttl:g} s + up to {interval:g} s until the survivor's reaper sweeps, i.e. "
        f"{ttl - interval:g}–{ttl + interval:g} s after the kill, plus requeue and claim.",
        "",
        "Where the celery-durable time goes (seconds; from the run's trace and checkpoints):",
        "",
        "| phase | min | median | max |",
        "|---|---|---|---|",
    ]
    for key, label in (("last_beat_before_kill_s", "victim's last heartbeat, before the kill"),
                       ("kill_to_reaped_s", "kill -> `run_reaped` (survivor's reaper)"),
                       ("reaped_to_claimed_s", "`run_reaped` -> next `attempt_started`"),
                       ("claimed_to_next_step_s", "`attempt_started` -> next step starts"),
                       ("kill_to_next_step_s", "**kill -> next step starts**")):
        s = summary(_values(durable, key))
        if s is not None:
            lines.append(f"| {label} | {s['min']:.3f} | {s['median']:.3f} | {s['max']:.3f} |")
    lines += ["", "Per repeat (celery-durable):", "",
              "| # | kill -> next step | via `started_at` (ms) | next step | attempt | "
              "executed twice |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(durable, 1):
        if "failed" in r:
            lines.append(f"| {i} | FAILED: {r['failed']} (details in the JSON) | | | | |")
            continue
        lines.append(f"| {i} | {r['kill_to_next_step_s']:.3f} | "
                     f"{_fmt(r['kill_to_next_step_started_at_s'], 3)} | "
                     f"{r['next_step_position']} | {r['next_attempt']} | "
                     f"{r['steps_executed_twice']} |")
    if stock:
        lines += ["", "Per repeat (stock Celery; the task restarts from its first step):", "",
                  "| # | kill -> restart | delivered before kill | survivor ready before kill "
                  "| possible window |", "|---|---|---|---|---|"]
        for i, r in enumerate(stock, 1):
            age = r["delivered_before_kill_s"] or 0.0
            low = max(0.0, ra.STOCK_VISIBILITY_TIMEOUT_S - age)
            lines.append(f"| {i} | {r['kill_to_next_step_s']:.1f} | {_fmt(age, 1)} | "
                         f"{r['survivor_ready_before_kill_s']:.1f} | "
                         f"{low:.0f}–{low + KOMBU_SWEEP_S:.0f} |")
        lines += ["", f"kombu {result['machine']['kombu']} restores an unacked message once "
                  "it is older than `visibility_timeout` (counted from its delivery), at the "
                  "next sweep of a live worker: a sweep runs when the worker starts, then "
                  "every `unacked_restore_interval` (10 s) x `unacked_restore_throttle` (10) "
                  "≈ 100 s. So the restart comes between `visibility_timeout` − (delivered "
                  "before kill) and that + ~100 s after the kill (the window above), "
                  "depending on the phase of the survivor's sweeps, which come at its start "
                  "+ k x ~100 s. The restored task starts again from its first step."]
    machine = common.machine_line(result["machine"], "python", "redis_server", "celery", "kombu")
    lines += ["", f"{machine} Wall time {cfg['wall_time_s']:.0f} s.", ""]
    return "\n".join(lines)


# -- entry point --------------------------------------------------------------------------


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    with common.bench_redis(args.redis_server) as (server, info):
        settings = settings_for(ra.make_durable_app(server.url))
        records = ra.records_client(server.url)
        try:
            durable = measure_durable(server.url, records, args) if args.repeats else []
            stock = ([] if args.skip_stock or not args.stock_repeats
                     else measure_stock(server.url, records, args))
        finally:
            records.close()
    config = common.config_of(args, worker_ttl_s=settings.worker_ttl_s,
                              heartbeat_interval_s=settings.heartbeat_interval_s,
                              lease_ttl_s=settings.lease_ttl_s,
                              stock_visibility_timeout_s=ra.STOCK_VISIBILITY_TIMEOUT_S)
    return {"config": config, "machine": info, "durable": durable, "stock": stock}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result, elapsed = common.run_timed(run_benchmark, args)
    result["config"]["wall_time_s"] = round(elapsed, 1)
    d = _values(result["durable"], "kill_to_next_step_s")
    s = _values(result["stock"], "kill_to_next_step_s")
    result["summary"] = {"durable_kill_to_next_step_s": summary(d),
                         "stock_kill_to_next_step_s": summary(s),
                         "durable_failed_repeats": sum(1 for r in result["durable"]
                                                       if "failed" in r),
                         "target_s": TARGET_S,
                         "target_met": bool(d) and max(d) <= TARGET_S
                         and not any("failed" in r for r in result["durable"])}
    common.publish(args.out, "recovery", result, render_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
