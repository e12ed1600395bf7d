"""celery-durable vs DBOS (case 5): per-step overhead of the same workflow of N trivial steps.

Usage (from the repository root; needs the ``bench`` extra: ``pip install -e ".[bench]"``)::

    .venv/bin/python -m bench.dbos [--repeats 5] [--rounds 30]

DBOS 3.4 (``dbos`` from PyPI) runs ``@DBOS.workflow`` of N ``@DBOS.step`` calls that return
their argument, on Postgres (a scratch database created on ``--pg-url``'s server and dropped
afterwards; default ``postgresql://postgres@127.0.0.1:5432/postgres``, trust auth) and on
SQLite (a file in a temporary directory). If Postgres does not answer, only SQLite is
measured and the report says so. Each backend runs in a child process of its own (DBOS is a
per-process singleton). celery-durable runs the same workflow in this process on a throwaway
redis-server the way an attempt does: ``create_run``, the claim, N ``@step`` calls in a bound
RunContext (one ``commit_step`` each), ``end_attempt``. Each workflow is timed with
``time.perf_counter``; a repeat runs ``--rounds`` workflows of 1 and of 10 steps, keeps the
median of each, and the slope (T(10) - T(1)) / 9 minus the same slope of plain Python calls
is the per-step overhead. Writes ``bench/results/dbos.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from celery import Celery

from celery_durable import step
from celery_durable.config import settings_for
from celery_durable.context import RunContext, bind_context, unbind_context
from celery_durable.models import RunStatus
from celery_durable.store import RunStore

from . import common
from .targets import fmt, fmt_summary, summary, target

SMALL, LARGE = 1, 10
#: Target of the issue: celery-durable's per-step overhead <= 1/20 of DBOS on Postgres.
TARGET_RATIO = 20.0
TASK = "bench.dbos.durable"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.make_parser("bench.dbos", __doc__)
    parser.add_argument("--repeats", type=int, default=5, help="repeats (default 5)")
    parser.add_argument("--rounds", type=int, default=30,
                        help="workflows of each size per repeat (default 30)")
    parser.add_argument("--pg-url", default=DEFAULT_PG,
                        help=f"Postgres server (maintenance database) (default {DEFAULT_PG})")
    parser.add_argument("--skip-sqlite", action="store_true", help="do not measure SQLite")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # system database URL (internal)
    common.add_common_args(parser, "dbos.json and dbos.md")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.rounds < 1:
        parser.error("--repeats and --rounds must be >= 1")
    return args


def plain_noop(i: int) -> int:
    return i


def plain_workflow(n: int) -> int:
    for i in range(n):
        plain_noop(i)
    return n


def time_calls(fn: Callable[[int], Any], n: int, rounds: int) -> float:
    """Median wall time (µs) of ``rounds`` calls of ``fn(n)``."""
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(n)
        samples.append((time.perf_counter() - t0) * 1e6)
    return float(statistics.median(samples))


def repeat_figures(fn: Callable[[int], Any], rounds: int) -> dict[str, float]:
    """One repeat: median workflow time at 1 and 10 steps, the slope minus plain Python."""
    t1, t10 = time_calls(fn, SMALL, rounds), time_calls(fn, LARGE, rounds)
    p1, p10 = time_calls(plain_workflow, SMALL, rounds), time_calls(plain_workflow, LARGE, rounds)
    slope = (t10 - t1) / (LARGE - SMALL) - (p10 - p1) / (LARGE - SMALL)
    return {"t1_us": t1, "t10_us": t10, "step_overhead_us": slope}


# -- DBOS (child process) -----------------------------------------------------------------


def dbos_child(url: str, repeats: int, rounds: int) -> dict[str, Any]:
    """Launch DBOS on ``url``, measure, destroy; the repeats' figures."""
    import logging

    from dbos import DBOS, DBOSConfig

    @DBOS.step()
    def noop(i: int) -> int:
        return i

    @DBOS.workflow()
    def workflow(n: int) -> int:
        for i in range(n):
            noop(i)
        return n

    config: DBOSConfig = {"name": "durable-bench", "system_database_url": url,
                          "log_level": "WARNING"}
    DBOS(config=config)
    DBOS.launch()
    logging.getLogger("dbos").setLevel(logging.WARNING)
    try:
        for _ in range(5):
            workflow(LARGE)  # warm up: connections, prepared statements
        return {"repeats": [repeat_figures(workflow, rounds) for _ in range(repeats)]}
    finally:
        DBOS.destroy()


def run_child(url: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.dbos", "--child", url, "--repeats", str(args.repeats),
           "--rounds", str(args.rounds)]
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(root)})
    if out.returncode != 0:
        raise RuntimeError(f"DBOS child on {url.split('@')[-1]} failed:\n{out.stderr[-3000:]}")
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return data


# -- Postgres scratch database --------------------------------------------------------------


def postgres_available(url: str) -> str | None:
    """None if Postgres answers at ``url``, else why not."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3):
            return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).strip()}"


def pg_admin(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


def with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


# -- celery-durable (this process) --------------------------------------------------------


@step(name="noop")
def durable_noop(i: int) -> int:
    return i


def durable_workflow_fn(store: RunStore) -> Callable[[int], int]:
    """A run of ``n`` steps the way an attempt runs it: record, claim, steps, end."""

    def workflow(n: int) -> int:
        run_id = uuid.uuid4().hex
        store.create_run(run_id, TASK, "[]", "{}", "bench")
        got = store.claim(run_id, owner="bench", nonce=uuid.uuid4().hex, task=TASK,
                          args_json="[]", kwargs_json="{}", queue="bench")
        ctx = RunContext(run_id=run_id, attempt=got.attempt, task_name=TASK, token=got.token,
                         owner="bench", store=store, checkpoints=dict(got.checkpoints or {}))
        bound = bind_context(ctx)
        try:
            for i in range(n):
                durable_noop(i)
        finally:
            unbind_context(bound)
        store.end_attempt(run_id, got.token, RunStatus.COMPLETED, {"type": "run_completed"},
                          task=TASK, owner="bench", result_json=str(n))
        return n

    return workflow


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    systems: dict[str, Any] = {}
    notes: list[str] = []
    with common.bench_redis(args.redis_server) as (server, info):
        app = Celery("bench_dbos", set_as_current=False)
        app.conf.durable_redis_url = f"{server.url}/0"
        store = RunStore(settings_for(app))
        workflow = durable_workflow_fn(store)
        try:
            for _ in range(5):
                workflow(LARGE)
            durable = [repeat_figures(workflow, args.rounds) for _ in range(args.repeats)]
            why = postgres_available(args.pg_url)
            if why is None:
                db = f"durable_bench_{os.getpid()}"
                pg_admin(args.pg_url, f'CREATE DATABASE "{db}"')
                try:
                    common.progress(f"DBOS on Postgres (scratch database {db})")
                    systems["dbos_postgres"] = run_child(with_database(args.pg_url, db), args)
                finally:
                    pg_admin(args.pg_url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            else:
                notes.append(f"Postgres did not answer at {args.pg_url} ({why}): DBOS was "
                             "measured on SQLite only.")
                common.progress(notes[-1])
            if not args.skip_sqlite or why is not None:
                with tempfile.TemporaryDirectory(prefix="durable-bench-dbos-") as tmp:
                    common.progress("DBOS on SQLite")
                    systems["dbos_sqlite"] = run_child(f"sqlite:///{tmp}/dbos.sqlite", args)
            # celery-durable again after DBOS: a drift of the machine shows as a wide range
            durable += [repeat_figures(workflow, args.rounds) for _ in range(args.repeats)]
        finally:
            store.client.close()
            app.close()
    systems = {"celery_durable": {"repeats": durable}, **systems}
    for data in systems.values():
        data["summary"] = {k: summary([r[k] for r in data["repeats"]])
                           for k in ("t1_us", "t10_us", "step_overhead_us")}
    return {"machine": {**info, "dbos": common._version("dbos")}, "systems": systems,
            "notes": notes}


LABELS = {"celery_durable": "celery-durable (Redis, one EVALSHA per step)",
          "dbos_postgres": "DBOS 3.4 on Postgres (default synchronous_commit)",
          "dbos_sqlite": "DBOS 3.4 on SQLite"}


def targets_of(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    systems = result["systems"]
    reference = "dbos_postgres" if "dbos_postgres" in systems else "dbos_sqlite"
    ours = systems["celery_durable"]["summary"]["step_overhead_us"]["median"]
    theirs = systems[reference]["summary"]["step_overhead_us"]["median"]
    where = "Postgres" if reference == "dbos_postgres" else "SQLite (Postgres unavailable)"
    return [target("5", f"DBOS per-step overhead on {where} / celery-durable's",
                   theirs / ours, ">=", TARGET_RATIO, "×",
                   note=f"{fmt(ours)} µs vs {fmt(theirs)} µs per step")]


def render_markdown(result: Mapping[str, Any]) -> str:
    cfg, systems = result["config"], result["systems"]
    ours = systems["celery_durable"]["summary"]["step_overhead_us"]["median"]
    lines = [
        "## celery-durable vs DBOS (`bench.dbos`, case 5)",
        "",
        f"The same workflow of N trivial steps, in-process, timed per workflow; per-step "
        f"overhead = (T({LARGE}) − T({SMALL})) / {LARGE - SMALL} minus plain Python, µs, "
        f"median (min–max) of {cfg['repeats']} repeats of {cfg['rounds']} workflows "
        "(celery-durable: twice as many, before and after DBOS). Target: celery-durable's "
        f"per-step overhead ≤ 1/{TARGET_RATIO:g} of DBOS's on Postgres.",
        "",
        f"| system | workflow, {SMALL} step | workflow, {LARGE} steps | **per-step overhead** "
        "| vs celery-durable |",
        "|---|---|---|---|---|",
    ]
    for name, data in systems.items():
        s = data["summary"]
        lines.append(f"| {LABELS[name]} | {fmt_summary(s['t1_us'])} | "
                     f"{fmt_summary(s['t10_us'])} | **{fmt_summary(s['step_overhead_us'])}** | "
                     f"{s['step_overhead_us']['median'] / ours:.1f}× |")
    lines += ["", *result["notes"],
              "Durability differs: Postgres waits for its WAL flush at each commit, SQLite "
              "(DBOS's defaults) syncs each commit, the throwaway redis-server here has no "
              "persistence (see the durability mode below for the cost of waiting for an AOF "
              "fsync or a replica).", "",
              common.machine_line(result["machine"], "python", "redis_server", "redis_py")
              + f" DBOS {result['machine']['dbos']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(dbos_child(args.child, args.repeats, args.rounds)))
        return 0
    return common.run_and_publish(args, "dbos", run_benchmark, render_markdown, targets_of)


if __name__ == "__main__":
    sys.exit(main())
