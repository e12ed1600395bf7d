"""Benchmark celery-durable's per-step overhead against Redis round trips, in one run.

Usage (from the repository root)::

    .venv/bin/python -m bench.run [--repeats 5] [--rounds 30] [--batches 60] [--pin-cpu 0]

Starts a throwaway redis-server (no persistence) on a free loopback port and an in-process
solo-pool Celery worker, measures, writes ``bench/results/latest.json`` and
``bench/results/latest.md``, and stops both (also on error or SIGTERM). See bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_durable.config import settings_for
from celery_durable.connections import make_client
from celery_durable.store import RunStore

from . import common
from . import measure as m
from .derive import LARGE, SMALL, derive, summarize
from .report import render_markdown
from .workload import make_app

#: Lease (seconds) of the runs measurement d claims directly (longer than any benchmark run).
DIRECT_LEASE_TTL_S = 3600.0
#: Tasks of each kind and size run before measuring (warm-up).
WARM_UP_ROUNDS = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.make_parser("bench.run", __doc__)
    parser.add_argument("--repeats", type=int, default=5, help="independent repeats (default 5)")
    parser.add_argument("--rounds", type=int, default=30,
                        help="tasks of each kind and size per repeat (default 30)")
    parser.add_argument("--batches", type=int, default=60,
                        help="batches of each primitive per repeat and thread, spread over "
                             "the rounds (default 60)")
    parser.add_argument("--batch-size", type=int, default=50,
                        help="operations per batch (default 50)")
    parser.add_argument("--pin-cpu", type=int, default=None, metavar="CPU",
                        help="run everything (this process, its threads and redis-server) on "
                             "this one CPU: steadier figures on small, noisy VMs")
    common.add_common_args(parser, "latest.json and latest.md")
    return parser.parse_args(argv)


# -- setup --------------------------------------------------------------------------------


def redis_op_makers(
    app: Celery, client: redis.Redis, size: int
) -> dict[str, Callable[[], m.Op]]:
    """Batch setups of measurements a, b and d (keys are the summary names)."""
    settings = settings_for(app)
    # The direct runs are claimed and never ended: a lease longer than the benchmark keeps
    # the worker's reaper from taking them for stalled runs (the TTL is only an argument).
    direct = settings.model_copy(update={"lease_ttl_s": DIRECT_LEASE_TTL_S})
    return {
        "ping": m.ping_op(client),
        "raw_evalsha": m.raw_checkpoint_op(client, settings.trace_maxlen),
        "commit_step": m.commit_step_op(RunStore(direct, client=client), size),
    }


def primitive_ops(app: Celery, makers: Mapping[str, Callable[[], m.Op]]) -> dict[str, m.Batch]:
    """The batches of measurements a, b, d and e (keys are the summary names)."""
    ops = {name: m.op_batches(make) for name, make in makers.items()}
    ops["context_only"] = m.context_batch(settings_for(app))
    return ops


#: The command ``INFO commandstats`` counts for each Redis primitive.
COMMANDS = {"ping": "ping", "raw_evalsha": "evalsha", "commit_step": "evalsha"}


def one_off_figures(
    app: Celery, client: redis.Redis, makers: Mapping[str, Callable[[], m.Op]], size: int
) -> dict[str, dict[str, float]]:
    """Measured once, before the worker starts (nothing else talks to Redis):
    Python calls per operation of a, b, d and e (deterministic) and Redis-side µs per call
    of a, b and d (resets the server's statistics)."""
    calls = {name: m.op_calls_per_op(make, size) for name, make in makers.items()}
    context = m.context_batch(settings_for(app))
    calls["context_only"] = m.calls_per_op(lambda: context(size), size)
    server = {name: m.server_us_per_op(client, COMMANDS[name], make, size)
              for name, make in makers.items()}
    return {"calls_per_op": calls, "server_us_per_call": server}


@contextmanager
def running_worker(app: Celery) -> Iterator[None]:
    """An in-process solo-pool worker (a thread) consuming the benchmark queue."""
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING",
                      shutdown_timeout=15):
        yield
    gc.collect()  # result consumers unsubscribe when collected: do it while Redis is up


# -- measuring ----------------------------------------------------------------------------


def warm_up(app: Celery, ops: Mapping[str, m.Batch], size: int) -> None:
    """Load scripts, open connections and import lazily loaded code before measuring."""
    m.measure_primitives_in_worker(app, 3, size)
    m.run_tasks(app, WARM_UP_ROUNDS, (SMALL, LARGE))


def _extend(into: dict[str, list[m.Timing]], more: Mapping[str, list[m.Timing]]) -> None:
    for name, timings in more.items():
        into.setdefault(name, []).extend(timings)


def one_repeat(app: Celery, ops: Mapping[str, m.Batch], args: argparse.Namespace) -> dict[str, Any]:
    """Rounds of: a few batches of every primitive in the main thread, the same in the worker
    thread, then one task of each kind and size.

    Interleaving at this fine grain keeps the ratios within a repeat meaningful even when the
    machine's loopback latency drifts. Returns the derived figures and the raw samples.
    """
    per_round = max(1, math.ceil(args.batches / args.rounds))
    main: dict[str, list[m.Timing]] = {}
    worker: dict[str, list[m.Timing]] = {}
    tasks: list[m.TaskSample] = []
    for _ in range(args.rounds):
        _extend(main, m.measure_primitives(ops, per_round, args.batch_size))
        _extend(worker, m.measure_primitives_in_worker(app, per_round, args.batch_size))
        tasks += m.run_tasks(app, 1, (SMALL, LARGE))
    return {
        "derived": derive(worker, main, tasks),
        "batches_us_per_op": {"worker_thread": m.timings_to_json(worker),
                              "main_thread": m.timings_to_json(main)},
        "tasks": [asdict(t) for t in tasks],
    }


def _progress(i: int, args: argparse.Namespace, d: Mapping[str, float]) -> None:
    common.progress(f"repeat {i + 1}/{args.repeats}: overhead {d['overhead_us']:.1f} µs/step "
                    f"= {d['overhead_per_ping']:.2f}× PING ({d['ping_us']:.1f} µs)")


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Start Redis and a worker, measure ``args.repeats`` repeats, stop everything."""
    with common.bench_redis(args.redis_server) as (server, info):
        app = make_app(server.url)
        client = make_client(settings_for(app))
        assert isinstance(client, redis.Redis), "bench.run measures a single Redis server"
        try:
            makers = redis_op_makers(app, client, args.batch_size)
            ops = primitive_ops(app, makers)
            m.register_primitives_task(app, ops)
            m.measure_primitives(ops, 3, args.batch_size)  # load the scripts
            one_off = one_off_figures(app, client, makers, args.batch_size)
            with running_worker(app):
                warm_up(app, ops, args.batch_size)
                repeats = []
                for i in range(args.repeats):
                    repeats.append(one_repeat(app, ops, args))
                    _progress(i, args, repeats[-1]["derived"])
        finally:
            client.close()
            app.close()
    return {"machine": info, **one_off, "repeats": repeats}


# -- entry point --------------------------------------------------------------------------


def write_results(args: argparse.Namespace, result: Mapping[str, Any], elapsed_s: float) -> None:
    """Write latest.json and latest.md under ``args.out`` and print the Markdown."""
    summary = summarize(result["repeats"])
    config = common.config_of(args, small_steps=SMALL, large_steps=LARGE,
                              payload_bytes=m.RAW_PAYLOAD_BYTES, wall_time_s=round(elapsed_s, 1))
    markdown = render_markdown(summary, result, result["machine"], config)
    common.publish(args.out, "latest", {
        "config": config, "machine": result["machine"],
        "summary": {k: s.as_dict() for k, s in summary.items()},
        "calls_per_op": result["calls_per_op"],
        "server_us_per_call": result["server_us_per_call"], "repeats": result["repeats"],
    }, markdown, elapsed_s)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.pin_cpu is not None:
        # Before any thread or child starts: they inherit the affinity.
        os.sched_setaffinity(0, {args.pin_cpu})
    result, elapsed = common.run_timed(run_benchmark, args)
    write_results(args, result, elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
