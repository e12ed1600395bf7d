"""Throughput (case 2) and ``apply_async().get()`` latency (case 3): plain Celery vs durable
tasks, on the solo, prefork and threads pools.

Usage (from the repository root)::

    .venv/bin/python -m bench.throughput [--tasks 1000] [--repeats 3] [--pools solo,prefork,threads]

Starts a throwaway redis-server and, per pool, one real ``celery -A bench.throughput_app:app
worker`` subprocess (``--loglevel=WARNING --without-gossip --without-mingle
--without-heartbeat``, results on) that runs both the plain and the durable task, so the
flags are the same for both. A drain: ``--tasks`` tasks of one kind are published to a new
queue, the worker starts consuming it (``add_consumer``), and the drain is over when every
result is stored. Throughput = tasks / (last body end -
first body start). Kinds (plain / durable x 1 / 10 steps) are rotated within each repeat;
ratios durable / plain are taken within a repeat. Then the latency of ``apply_async().get()``
(plain and durable, one step, interleaved) on the warm worker. Writes
``bench/results/throughput.json`` and ``.md``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from celery import Celery

from . import common
from . import throughput_app as ta
from .targets import fmt, fmt_summary, summary, target
from .worker_procs import WorkerSet

KINDS: tuple[tuple[str, int], ...] = (("plain", 1), ("durable", 1), ("plain", 10),
                                       ("durable", 10))
#: Targets of the issue: durable / plain throughput.
TARGET_1_STEP, TARGET_10_STEPS = 0.85, 0.6
POLL_S = 0.02


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.make_parser("bench.throughput", __doc__)
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per drain (default 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="drains of each kind (default 3)")
    parser.add_argument("--pools", default="solo,prefork,threads",
                        help="comma-separated pools (default solo,prefork,threads)")
    parser.add_argument("--prefork-concurrency", type=int, default=2)
    parser.add_argument("--threads-concurrency", type=int, default=4)
    parser.add_argument("--latency-calls", type=int, default=200,
                        help="apply_async().get() calls of each kind per pool (default 200)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds a drain may take before giving up (default 120)")
    common.add_common_args(parser, "throughput.json and throughput.md", keep_logs=True)
    args = parser.parse_args(argv)
    args.pools = [p.strip() for p in args.pools.split(",") if p.strip()]
    unknown = set(args.pools) - {"solo", "prefork", "threads"}
    if unknown:
        parser.error(f"unknown pool(s) {sorted(unknown)}: use solo, prefork, threads")
    if args.tasks < 2 or args.repeats < 1:
        parser.error("--tasks must be >= 2 and --repeats >= 1")
    return args


def task_name(kind: str) -> str:
    return ta.DURABLE_TASK if kind == "durable" else ta.PLAIN_TASK


def drain(app: Celery, producer: Celery, results: redis.Redis, node: str, kind: str, steps: int,
          count: int, timeout_s: float) -> dict[str, float]:
    """Pre-enqueue ``count`` tasks on a new queue, make the worker consume it, let it drain
    them; returns tasks/s over the bodies' span and the wall time from ``add_consumer`` to
    the last result.

    A new queue per drain rather than pausing the worker's queue: a ``cancel_consumer``
    racing kombu's pending BRPOP can leave a message unacked until the visibility timeout.
    ``producer`` has no result backend, so publishing does not subscribe to result channels;
    the worker stores every result (results on) in the db that ``results`` reads. Durable
    tasks are published through ``DurableTask.apply_async``, which records each run (as
    an application does), before the drain starts."""
    queue = f"drain-{uuid.uuid4().hex[:8]}"
    task = producer.tasks[task_name(kind)]  # DurableTask.apply_async records the run first
    ids = [task.apply_async((steps,), queue=queue).id for _ in range(count)]
    keys = [f"celery-task-meta-{i}" for i in ids]
    started = time.monotonic()
    app.control.add_consumer(queue, destination=[node], reply=True, timeout=10)
    deadline = started + timeout_s
    # The results share their db with the broker and the store: count this drain's keys.
    while (stored := int(results.exists(*keys))) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{kind}({steps}) drain of {count} not done after {timeout_s} s"
                               f" ({stored} results)")
        time.sleep(POLL_S)
    wall = time.monotonic() - started
    app.control.cancel_consumer(queue, destination=[node], reply=True, timeout=10)
    metas = [json.loads(raw or "null") for raw in results.mget(keys)]
    failed = [m for m in metas if m["status"] != "SUCCESS"]
    if failed:
        raise RuntimeError(f"{len(failed)} {kind} tasks failed, e.g. {failed[0]}")
    first = min(m["result"][0] for m in metas)
    last = max(m["result"][1] for m in metas)
    return {"tasks_per_s": count / (last - first), "span_s": last - first, "wall_s": wall}


def latency(app: Celery, calls: int) -> dict[str, dict[str, float]]:
    """``apply_async().get()`` round trips (µs) of one-step plain and durable tasks,
    interleaved: p50 / p95 of each."""
    samples: dict[str, list[float]] = {"plain": [], "durable": []}
    for _ in range(calls):
        for kind in samples:
            t0 = time.perf_counter()
            app.tasks[task_name(kind)].apply_async((1,), queue=ta.QUEUE).get(timeout=30)
            samples[kind].append((time.perf_counter() - t0) * 1e6)
    out: dict[str, dict[str, float]] = {}
    for kind, values in samples.items():
        q = statistics.quantiles(values, n=20)
        out[kind] = {"p50_us": float(statistics.median(values)), "p95_us": q[18]}
    return out


def pool_run(app: Celery, producer: Celery, results: redis.Redis, server_url: str, pool: str,
             args: argparse.Namespace) -> dict[str, Any]:
    """Start one worker on ``pool``, measure its drains and latencies, stop it."""
    concurrency = {"solo": 1, "prefork": args.prefork_concurrency,
                   "threads": args.threads_concurrency}[pool]
    workers = WorkerSet("bench.throughput_app:app", ta.QUEUE, {ta.ENV_URL: server_url},
                        label=f"tp{pool}", pool=pool, concurrency=concurrency,
                        keep_logs=args.keep_logs, loglevel="WARNING", ready_line=ta.READY_LINE)
    try:
        worker = workers.start(1)[0]
        node = worker.name.replace("%h", socket.gethostname())
        for kind, steps in KINDS:  # warm up: imports, connections, scripts
            for _ in range(5):
                app.tasks[task_name(kind)].apply_async((steps,), queue=ta.QUEUE).get(timeout=30)
        repeats = []
        for r in range(args.repeats):
            order = KINDS[r % len(KINDS):] + KINDS[:r % len(KINDS)]
            rep: dict[str, Any] = {
                f"{kind}_{steps}": drain(app, producer, results, node, kind, steps, args.tasks,
                                         args.timeout) for kind, steps in order}
            rep["ratio_1"] = rep["durable_1"]["tasks_per_s"] / rep["plain_1"]["tasks_per_s"]
            rep["ratio_10"] = rep["durable_10"]["tasks_per_s"] / rep["plain_10"]["tasks_per_s"]
            common.progress(f"{pool} repeat {r + 1}/{args.repeats}: durable/plain "
                            f"{rep['ratio_1']:.2f} (1 step), {rep['ratio_10']:.2f} (10 steps)")
            repeats.append(rep)
        lat = latency(app, args.latency_calls)
        workers.check_alive()
        errors = workers.errors_logged()
    finally:
        workers.stop_all()
    summ = {f"{k}_{n}": summary([r[f"{k}_{n}"]["tasks_per_s"] for r in repeats])
            for k, n in KINDS}
    summ["ratio_1"] = summary([r["ratio_1"] for r in repeats])
    summ["ratio_10"] = summary([r["ratio_10"] for r in repeats])
    return {"pool": pool, "concurrency": concurrency, "repeats": repeats, "summary": summ,
            "latency": lat, "worker_errors": errors}


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    with common.bench_redis(args.redis_server) as (server, info):
        app = ta.make_app(server.url)
        producer = ta.make_app(server.url, results=False)
        results = redis.Redis.from_url(f"{server.url}/{ta.BACKEND_DB}")
        try:
            pools = [pool_run(app, producer, results, server.url, pool, args)
                     for pool in args.pools]
        finally:
            results.close()
            producer.close()
            app.close()
    return {"machine": info, "pools": pools}


def targets_of(pools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The two throughput targets, on the worst pool (every pool must meet them)."""
    out = []
    for key, goal, label in (("ratio_1", TARGET_1_STEP, "1-step"),
                             ("ratio_10", TARGET_10_STEPS, "10-step")):
        worst = min(pools, key=lambda p: p["summary"][key]["median"])
        s = worst["summary"][key]
        per_pool = ", ".join(f"{p['pool']} {p['summary'][key]['median']:.2f}" for p in pools)
        out.append(target("2", f"{label} durable throughput / plain Celery (worst pool: "
                          f"{worst['pool']})", s["median"], ">=", goal, "×", s,
                          note=f"medians per pool: {per_pool}"))
    return out


def render_markdown(result: Mapping[str, Any]) -> str:
    pools = result["pools"]
    cfg = result["config"]
    lines = [
        "## Throughput and `apply_async().get()` latency (`bench.throughput`, cases 2 and 3)",
        "",
        f"Drains of {cfg['tasks']} pre-enqueued tasks by one real worker per pool (results on, "
        "`--loglevel=WARNING --without-gossip --without-mingle --without-heartbeat`, the same "
        "worker for plain and durable tasks; broker, results and checkpoint store on one Redis "
        "db, so a durable run's Celery result is written with the end of its attempt); "
        "tasks/s over the bodies' span, median "
        f"(min–max) of {cfg['repeats']} repeats; ratios within a repeat. Targets: durable / "
        f"plain ≥ {TARGET_1_STEP} (1 step), ≥ {TARGET_10_STEPS} (10 steps).",
        "",
        "| pool | plain 1 step | durable 1 step | **ratio** | plain 10 steps | "
        "durable 10 steps | **ratio** |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in pools:
        s = p["summary"]
        lines.append(
            f"| {p['pool']} -c {p['concurrency']} | {fmt_summary(s['plain_1'])} | "
            f"{fmt_summary(s['durable_1'])} | **{fmt_summary(s['ratio_1'], '×')}** | "
            f"{fmt_summary(s['plain_10'])} | {fmt_summary(s['durable_10'])} | "
            f"**{fmt_summary(s['ratio_10'], '×')}** |")
    lines += ["", f"`apply_async().get()` round trip of a one-step task on the warm worker, "
              f"{cfg['latency_calls']} calls of each kind interleaved (µs):", "",
              "| pool | plain p50 | plain p95 | durable p50 | durable p95 | durable / plain p50 |",
              "|---|---|---|---|---|---|"]
    for p in pools:
        lat = p["latency"]
        lines.append(f"| {p['pool']} | {fmt(lat['plain']['p50_us'])} | "
                     f"{fmt(lat['plain']['p95_us'])} | {fmt(lat['durable']['p50_us'])} | "
                     f"{fmt(lat['durable']['p95_us'])} | "
                     f"{lat['durable']['p50_us'] / lat['plain']['p50_us']:.2f}× |")
    errors = [e for p in pools for e in p["worker_errors"]]
    if errors:
        lines += ["", f"Workers logged {len(errors)} error line(s), e.g. `{errors[0]}`."]
    lines += ["", common.machine_line(result["machine"], "python", "redis_server", "redis_py",
                                      "celery", "kombu"), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result, elapsed = common.run_timed(run_benchmark, args)
    result = {"config": common.config_of(args, wall_time_s=round(elapsed, 1)), **result}
    result["targets"] = targets_of(result["pools"])
    common.publish(args.out, "throughput", result, render_markdown(result), elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
