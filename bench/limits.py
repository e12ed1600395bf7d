"""Benchmark concurrency limits and idempotency keys, in one run.

Usage (from the repository root)::

    .venv/bin/python -m bench.limits [--repeats 5] [--parts enqueue,slots,polling]

Starts a throwaway redis-server (no persistence) on a free loopback port, measures

1. the enqueue rate of ``apply_async`` with a fresh idempotency key, under a rate limit,
   without either, and of a plain Celery task (no worker consumes their queue);
2. the throughput of a ``concurrency_limit=4`` task whose body takes 50 ms, run by worker
   subprocesses with more threads than slots, as a share of the ideal 4 / 0.05 s;
3. the Redis commands per second while runs are parked on a paused limit, at several
   numbers of parked runs (busy polling would grow with them), then resumes them;
4. the same while runs wait for a turn of a rate limit (one start an hour), then raises
   the rate and times how soon they start;

writes ``bench/results/limits.json`` and ``bench/results/limits.md``, and stops every process
it started by PID (also on error, Ctrl-C or SIGTERM). See bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable
from typing import Any

from . import common
from .limits_app import ENV_URL, LIMIT, REF_QUEUE, WORK_QUEUE, app, configure
from .limits_measure import (
    measure_enqueue,
    measure_polling,
    measure_rate_polling,
    measure_slots,
)
from .limits_report import render_markdown
from .worker_procs import WorkerSet, cpu_seconds, local_ports

#: ``celery -A`` of the worker subprocesses.
APP_REF = "bench.limits_app:app"
PARTS = ("enqueue", "slots", "polling", "rate-polling")


def _levels(text: str) -> list[int]:
    levels = sorted({int(x) for x in text.split(",") if x.strip()})
    if not levels or levels[0] != 0 or len(levels) < 2:
        raise argparse.ArgumentTypeError("give 0 and at least one more level, e.g. 0,10,50")
    return levels


def _parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"parts are {', '.join(PARTS)}")
    return parts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = common.make_parser("bench.limits", __doc__)
    p.add_argument("--parts", type=_parts, default=list(PARTS),
                   help="comma-separated subset of enqueue,slots,polling,rate-polling "
                        "(default: all)")
    p.add_argument("--repeats", type=int, default=5,
                   help="repeats of measurements 1 and 2 (default 5)")
    p.add_argument("--rounds", type=int, default=20,
                   help="1: batches of each kind per repeat (default 20)")
    p.add_argument("--batch-size", type=int, default=50,
                   help="1: apply_async calls per batch (default 50)")
    p.add_argument("--runs", type=int, default=200,
                   help="2: runs published at once per repeat (default 200)")
    p.add_argument("--sleep", type=float, default=0.05,
                   help="2, 3: seconds the limited task's step sleeps (default 0.05)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--pool", default="threads", help="worker pool (default threads)")
    p.add_argument("--concurrency", type=int, default=6,
                   help="pool size of each worker (default 6)")
    p.add_argument("--no-references", dest="references", action="store_false",
                   help="2: skip the reference runs (plain Celery and durable tasks without a "
                        "limit on exactly --limit threads)")
    p.add_argument("--parked", type=_levels, default=[0, 10, 50],
                   help="3: numbers of parked runs to observe, 0 first (default 0,10,50)")
    p.add_argument("--windows", type=int, default=3,
                   help="3: consecutive windows per level (default 3)")
    p.add_argument("--window-s", type=float, default=10.0,
                   help="3: seconds per window (default 10)")
    p.add_argument("--settle-s", type=float, default=2.0,
                   help="3: seconds to wait once the runs are parked (default 2)")
    p.add_argument("--threshold", type=float, default=1.0,
                   help="3: commands/s added between the lowest non-zero and the highest "
                        "level above which the report says busy polling (default 1)")
    p.add_argument("--timeout", type=float, default=180.0,
                   help="seconds to wait for runs to finish or park (default 180)")
    common.add_common_args(p, "limits.json and limits.md", keep_logs=True)
    return p.parse_args(argv)


def port_labels(*sets: WorkerSet) -> Callable[[], dict[str, str]]:
    """Client port -> process label (``bench`` or a worker's name), read when called."""

    def labels() -> dict[str, str]:
        out = {str(port): "bench" for port in local_ports(os.getpid())}
        for worker in (w for ws in sets for w in ws.workers):
            short = worker.name.split("@", 1)[0]
            out.update({str(port): short for port in local_ports(worker.pid)})
        return out

    return labels


def cpu_probe(*sets: WorkerSet, redis_pid: int) -> Callable[[], dict[str, float]]:
    """CPU seconds used so far by each worker, redis-server and this process."""

    def cpu() -> dict[str, float]:
        out = {w.name.split("@", 1)[0]: cpu_seconds(w.pid) for ws in sets for w in ws.workers}
        out["redis-server"] = cpu_seconds(redis_pid)
        out["bench"] = cpu_seconds(os.getpid())
        return out

    return cpu


def measure_all(args: argparse.Namespace, url: str, workers: WorkerSet, references: WorkerSet,
                redis_pid: int) -> dict[str, Any]:
    errors: list[str] = []
    result: dict[str, Any] = {"worker_errors": errors}
    labels = port_labels(workers, references)
    cpu = cpu_probe(workers, references, redis_pid=redis_pid)
    if "enqueue" in args.parts:
        result["enqueue"] = measure_enqueue(url, args.repeats, args.rounds, args.batch_size,
                                            labels, common.progress)
    if not {"slots", "polling", "rate-polling"} & set(args.parts):
        return result
    workers.start(args.workers)
    common.progress(f"workers: {', '.join(f'{w.name} pid {w.pid}' for w in workers.workers)}")
    if "slots" in args.parts:
        refs = bool(args.references)
        if refs:
            # LIMIT threads in all: 2 workers × -c 2 for the default limit of 4.
            per = max(1, LIMIT // args.workers)
            references.concurrency = per
            references.start(max(1, LIMIT // per))

        def check() -> None:
            workers.check_alive()
            references.check_alive()

        try:
            result["slots"] = measure_slots(url, args.repeats, args.runs, args.sleep,
                                            args.timeout, check, cpu, common.progress,
                                            args.workers * args.concurrency, refs)
        finally:
            errors += references.errors_logged()
            references.stop_all()  # not running during measurement 3
    if "polling" in args.parts:
        result["polling"] = measure_polling(
            url, args.parked, args.windows, args.window_s, args.settle_s, args.sleep,
            args.timeout, labels, workers.check_alive, cpu, common.progress, args.threshold)
    if "rate-polling" in args.parts:
        result["rate_polling"] = measure_rate_polling(
            url, args.parked, args.windows, args.window_s, args.settle_s, args.sleep,
            args.timeout, labels, workers.check_alive, cpu, common.progress, args.threshold)
    return result


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Start Redis (and workers when needed), measure, stop everything."""
    with common.bench_redis(args.redis_server) as (server, info):
        configure(server.url)
        env = {ENV_URL: server.url}
        workers = WorkerSet(APP_REF, WORK_QUEUE, env, "limits", pool=args.pool,
                            concurrency=args.concurrency, keep_logs=args.keep_logs)
        references = WorkerSet(APP_REF, REF_QUEUE, env, "ref", pool=args.pool, concurrency=1,
                               keep_logs=args.keep_logs)
        try:
            result = measure_all(args, server.url, workers, references, server.pid)
            result["worker_errors"] += workers.errors_logged()
        finally:
            references.stop_all()
            workers.stop_all()
            app.close()
            gc.collect()  # result consumers unsubscribe when collected: while Redis is up
    return {"machine": info, **result}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result, elapsed = common.run_timed(run_benchmark, args)
    config = common.config_of(args, limit=LIMIT, sleep_s=args.sleep, wall_time_s=round(elapsed, 1))
    full = {"config": config, **result}
    common.publish(args.out, "limits", full, render_markdown(full), elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
