"""Redis memory per completed run (case 8): 10 steps, each returning 200 bytes.

Usage (from the repository root)::

    .venv/bin/python -m bench.memory [--runs 500] [--steps 10] [--result-bytes 200]
                                     [--archive zlib|plain|off]

Starts two throwaway redis-servers, one for the broker and the result backend, one for the
checkpoint store alone, so the store server's ``used_memory`` moves only with celery-durable's
keys. An in-process solo worker (``celery.contrib.testing.worker.start_worker``) runs
``--runs`` durable tasks of ``--steps`` steps, each step returning ``--result-bytes`` random
ASCII characters (after a few warm-up runs, which create the worker's registry keys). Then:

- ``used_memory`` (INFO memory) delta of the store server, per run;
- ``MEMORY USAGE <key> SAMPLES 0`` of every run's keys (run hash, steps hash, trace list,
  archive: a completed run's steps and trace are packed into its archive unless
  ``--archive off``) and of the index keys (delta per run), per run.

"Beyond the results" subtracts ``steps x result-bytes`` (the results themselves) from the
per-run figure. Writes ``bench/results/memory.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import gc
import random
import string
import sys
from collections.abc import Mapping
from typing import Any

import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_durable import DurableTask, step
from celery_durable.config import settings_for
from celery_durable.keys import KeySpace

from . import common
from .redis_server import throwaway_redis
from .targets import fmt, target

TASK, QUEUE = "bench.memory.run", "memory"
#: Target of the issue: bytes per completed 10-step run beyond its results.
TARGET_BYTES = 1536
WARM_UP_RUNS = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.make_parser("bench.memory", __doc__)
    parser.add_argument("--runs", type=int, default=500, help="completed runs (default 500)")
    parser.add_argument("--steps", type=int, default=10, help="steps per run (default 10)")
    parser.add_argument("--result-bytes", type=int, default=200,
                        help="characters each step returns (default 200)")
    parser.add_argument("--archive", choices=("zlib", "plain", "off"), default="zlib",
                        help="durable_archive: how completed runs are packed (default zlib)")
    common.add_common_args(parser, "memory.json and memory.md")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.steps < 1 or args.result_bytes < 0:
        parser.error("--runs and --steps must be >= 1, --result-bytes >= 0")
    return args


@step(name="chunk")
def chunk(i: int, size: int) -> str:
    """A step returning ``size`` random ASCII characters (not compressible by encoding)."""
    return "".join(random.choices(string.ascii_letters, k=size))


def run_steps(steps: int, size: int) -> int:
    for i in range(steps):
        chunk(i, size)
    return steps


def make_app(broker_url: str, store_url: str, archive: str = "zlib") -> Celery:
    app = Celery("bench_memory", broker=f"{broker_url}/0", backend=f"{broker_url}/1",
                 set_as_current=False)
    app.conf.update(task_default_queue=QUEUE, worker_hijack_root_logger=False,
                    broker_connection_retry_on_startup=True, durable_redis_url=f"{store_url}/0",
                    durable_archive=archive)
    app.task(base=DurableTask, name=TASK, shared=False)(run_steps)
    return app


def key_bytes(client: redis.Redis, keys: list[str]) -> dict[str, int]:
    """``MEMORY USAGE key SAMPLES 0`` (exact) of each key."""
    pipe = client.pipeline(False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return {k: int(v or 0) for k, v in zip(keys, pipe.execute(), strict=True)}


def index_keys(client: redis.Redis, space: KeySpace) -> list[str]:
    """Every key of the store that is not a run's own key (indexes, worker registry)."""
    return [k for k in client.scan_iter(count=1000) if "{" not in k]


def run_keys(space: KeySpace, run_id: str) -> dict[str, str]:
    k = space.run(run_id)
    return {"run hash": k.run, "steps hash": k.steps, "trace list": k.trace,
            "archive": k.archive}


def measure(args: argparse.Namespace, broker_url: str, store_url: str) -> dict[str, Any]:
    app = make_app(broker_url, store_url, args.archive)
    space = KeySpace(settings_for(app).key_prefix)
    store = redis.Redis.from_url(f"{store_url}/0", decode_responses=True)
    task = app.tasks[TASK]
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING",
                          shutdown_timeout=15):
            for _ in range(WARM_UP_RUNS):
                task.apply_async((args.steps, args.result_bytes), queue=QUEUE).get(timeout=60)
            gc.collect()
            before_used = int(store.info("memory")["used_memory"])
            before_index = sum(key_bytes(store, index_keys(store, space)).values())
            ids = []
            for _ in range(args.runs):
                result = task.apply_async((args.steps, args.result_bytes), queue=QUEUE)
                result.get(timeout=60)
                ids.append(result.id)
            gc.collect()
        after_used = int(store.info("memory")["used_memory"])
        after_index = sum(key_bytes(store, index_keys(store, space)).values())
        per_key: dict[str, int] = {}
        statuses = set()
        for run_id in ids:
            keys = run_keys(space, run_id)
            sizes = key_bytes(store, list(keys.values()))
            for label, key in keys.items():
                per_key[label] = per_key.get(label, 0) + sizes[key]
            statuses.add(store.hget(space.run(run_id).run, "status"))
        if statuses != {"completed"}:
            raise RuntimeError(f"runs ended with statuses {statuses}, not all completed")
        trace_len = int(store.llen(space.run(ids[-1]).trace))
        run_fields = int(store.hlen(space.run(ids[-1]).run))
    finally:
        store.close()
        app.close()
    n = args.runs
    results_bytes = args.steps * args.result_bytes
    breakdown = {label: total / n for label, total in per_key.items()}
    breakdown["index entries"] = (after_index - before_index) / n
    keys_total = sum(breakdown.values())
    used = (after_used - before_used) / n
    return {
        "used_memory_per_run": used,
        "memory_usage_per_run": keys_total,
        "breakdown_per_run": breakdown,
        "results_bytes_per_run": results_bytes,
        "beyond_results_used_memory": used - results_bytes,
        "beyond_results_memory_usage": keys_total - results_bytes,
        "trace_entries_per_run": trace_len,
        "run_hash_fields": run_fields,
    }


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    with common.bench_redis(args.redis_server) as (broker, info), \
            throwaway_redis(args.redis_server) as store_server:
        common.progress(f"store redis-server pid {store_server.pid} on {store_server.url}")
        figures = measure(args, broker.url, store_server.url)
    return {"machine": info, "figures": figures}


def targets_of(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    f, cfg = result["figures"], result["config"]
    beyond = max(f["beyond_results_used_memory"], f["beyond_results_memory_usage"])
    return [target("8", f"Redis memory per completed {cfg['steps']}-step run beyond its "
                   f"results ({cfg['result_bytes']} B each)", beyond, "<=", TARGET_BYTES, "B",
                   note="the larger of INFO used_memory and MEMORY USAGE")]


def render_markdown(result: Mapping[str, Any]) -> str:
    f, cfg = result["figures"], result["config"]
    lines = [
        "## Redis memory per completed run (`bench.memory`, case 8)",
        "",
        f"{cfg['runs']} completed runs of {cfg['steps']} steps, each step returning "
        f"{cfg['result_bytes']} random ASCII characters, run by a real (in-process, solo) "
        "worker; the checkpoint store on a redis-server of its own. Bytes per run; "
        f"\"beyond the results\" subtracts the {f['results_bytes_per_run']:,} B of results. "
        f"Target: ≤ {TARGET_BYTES:,} B beyond the results."
        + (f" Completed runs archived with `durable_archive = \"{cfg['archive']}\"`"
           " (docs/design.md, \"Archived runs\")." if "archive" in cfg else ""),
        "",
        "| figure | bytes per run |",
        "|---|---|",
        f"| INFO `used_memory` delta | {fmt(f['used_memory_per_run'])} |",
        f"| `MEMORY USAGE` of the run's keys and index entries | "
        f"{fmt(f['memory_usage_per_run'])} |",
    ]
    for label, value in f["breakdown_per_run"].items():
        lines.append(f"| … {label} | {fmt(value)} |")
    lines += [
        f"| **beyond the results** (`used_memory` / `MEMORY USAGE`) | "
        f"**{fmt(f['beyond_results_used_memory'])} / {fmt(f['beyond_results_memory_usage'])}**"
        " |",
        "",
        f"A completed run holds {f['run_hash_fields']} fields in its run hash and "
        f"{f['trace_entries_per_run']} trace entries.",
        "",
        common.machine_line(result["machine"], "python", "redis_server", "redis_py"),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return common.run_and_publish(args, "memory", run_benchmark, render_markdown, targets_of)


if __name__ == "__main__":
    sys.exit(main())
