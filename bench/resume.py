"""Resume cost (case 4): what it costs an attempt to pick up a run with 10 / 100 / 1,000
committed steps: the claim that takes the lease and loads every checkpoint (one round trip,
raw payloads), then replaying the committed steps through the step machinery (a bound
RunContext answering each ``@step`` call from its checkpoint; the first replay decodes them
all in one pass).

Usage (from the repository root)::

    .venv/bin/python -m bench.resume [--sizes 10,100,1000] [--repeats 400]

No worker: it starts its own redis-server and uses ``RunStore`` and ``RunContext`` the way an
attempt does. Each size gets a run whose steps are committed by a real RunContext executing
``@step`` calls (checkpoints exactly as a task writes them); each repeat ends the attempt as
``retrying`` (as a retry does) and times the next attempt's claim and replay with
``time.perf_counter``; the sizes take turns, one resume each per repeat. Writes
``bench/results/resume.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

from celery import Celery

from celery_durable import step
from celery_durable.config import settings_for
from celery_durable.context import RunContext, bind_context, unbind_context
from celery_durable.models import RunStatus
from celery_durable.store import RunStore

from . import common
from .targets import fmt_summary, summary, target

TASK = "bench.resume"
#: Target of the issue: resuming a run of this many steps costs at most TARGET_MS.
TARGET_STEPS, TARGET_MS = 1000, 3.0


@step(name="item")
def item(i: int) -> dict[str, Any]:
    """A step with a small structured result, like a real one (an id and a name)."""
    return {"i": i, "name": f"item-{i}"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.make_parser("bench.resume", __doc__)
    parser.add_argument("--sizes", default="10,100,1000",
                        help="committed steps of the runs (default 10,100,1000)")
    parser.add_argument("--repeats", type=int, default=400,
                        help="resumes per size (default 400, a few seconds in all)")
    common.add_common_args(parser, "resume.json and resume.md")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not args.sizes or min(args.sizes) < 1 or args.repeats < 1:
        parser.error("--sizes must be positive step counts and --repeats >= 1")
    return args


def make_context(store: RunStore, run_id: str, owner: str, claim: Any) -> RunContext:
    """The RunContext an attempt builds after ``claim`` (it takes over the claim's dict)."""
    checkpoints = claim.checkpoints if claim.checkpoints is not None else {}
    return RunContext(run_id=run_id, attempt=claim.attempt, task_name=TASK, token=claim.token,
                      owner=owner, store=store, checkpoints=checkpoints)


def claim(store: RunStore, run_id: str, owner: str) -> Any:
    got = store.claim(run_id, owner=owner, nonce=uuid.uuid4().hex, task=TASK, args_json="[]",
                      kwargs_json="{}", queue="bench")
    if got.outcome != "claimed":
        raise RuntimeError(f"claim of {run_id} returned {got.outcome}")
    return got


def end(store: RunStore, run_id: str, token: str, owner: str) -> None:
    store.end_attempt(run_id, token, RunStatus.RETRYING, {"type": "attempt_retrying"},
                      task=TASK, owner=owner)


def prepare(store: RunStore, steps: int) -> str:
    """A run with ``steps`` committed steps, its attempt ended (ready to be resumed)."""
    run_id = f"bench-resume-{steps}-{uuid.uuid4().hex[:8]}"
    store.create_run(run_id, TASK, "[]", "{}", "bench")
    got = claim(store, run_id, "bench-writer")
    ctx = make_context(store, run_id, "bench-writer", got)
    bound = bind_context(ctx)
    try:
        for i in range(steps):
            item(i)
    finally:
        unbind_context(bound)
    end(store, run_id, got.token, "bench-writer")
    return run_id


def resume_once(store: RunStore, run_id: str, steps: int, n: int) -> dict[str, float]:
    """Claim the run and replay its ``steps`` steps (ms of each part); end the attempt."""
    owner = f"bench-resumer-{n}"
    t0 = time.perf_counter()
    got = claim(store, run_id, owner)
    t1 = time.perf_counter()
    ctx = make_context(store, run_id, owner, got)
    bound = bind_context(ctx)
    try:
        for i in range(steps):
            item(i)
    finally:
        unbind_context(bound)
    t2 = time.perf_counter()
    if ctx.replayed != steps or len(got.checkpoints or {}) != steps:
        raise RuntimeError(f"replayed {ctx.replayed} of {steps} steps")
    end(store, run_id, got.token, owner)
    return {"claim_ms": (t1 - t0) * 1e3, "replay_ms": (t2 - t1) * 1e3,
            "total_ms": (t2 - t0) * 1e3}


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    with common.bench_redis(args.redis_server) as (server, info):
        app = Celery("bench_resume", set_as_current=False)
        app.conf.durable_redis_url = f"{server.url}/0"
        store = RunStore(settings_for(app))
        try:
            sizes: dict[str, Any] = {}
            runs = {steps: prepare(store, steps) for steps in args.sizes}
            for steps, run_id in runs.items():
                resume_once(store, run_id, steps, -1)  # warm up
            # The sizes take turns, so that each size's median spans the whole measurement
            # (on a shared VM, the speed changes from one second to the next).
            by_size: dict[int, list[dict[str, float]]] = {steps: [] for steps in runs}
            for n in range(args.repeats):
                for steps, run_id in runs.items():
                    by_size[steps].append(resume_once(store, run_id, steps, n))
            for steps, run_id in runs.items():
                samples = by_size[steps]
                sizes[str(steps)] = {
                    "samples": samples,
                    "summary": {part: summary([s[part] for s in samples])
                                for part in ("claim_ms", "replay_ms", "total_ms")},
                    "checkpoint_bytes": int(store.client.memory_usage(
                        store.keys.run(run_id).steps) or 0),
                }
                med = statistics.median(s["total_ms"] for s in samples)
                common.progress(f"{steps} steps: resume {med:.2f} ms")
        finally:
            store.client.close()
            app.close()
    # The machine's speed again (``info`` has it from the start): the figures are absolute,
    # and a shared VM can run the same code at very different speeds minutes apart.
    return {"machine": info, "sizes": sizes, "python_speed_us_after": common.python_speed_us()}


def targets_of(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    size = result["sizes"].get(str(TARGET_STEPS))
    if size is None:
        return []
    s = size["summary"]["total_ms"]
    return [target("4", f"resume of {TARGET_STEPS:,} committed steps (claim + replay)",
                   s["median"], "<=", TARGET_MS, "ms", s)]


def render_markdown(result: Mapping[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        "## Resume cost (`bench.resume`, case 4)",
        "",
        "An attempt picking up a run with N committed steps: the claim (one round trip that "
        "takes the lease and returns every checkpoint undecoded) and the replay of the N "
        "steps through a bound `RunContext` (every checkpoint decoded in one pass at the "
        "first replay, with orjson when installed; each step then answered from its record). "
        f"Milliseconds, median (min–max) of {cfg['repeats']} resumes of each size, the "
        "sizes taking turns. Target: "
        f"≤ {TARGET_MS:g} ms for {TARGET_STEPS:,} steps.",
        "",
        "| committed steps | claim | replay | **total** | steps hash (MEMORY USAGE) |",
        "|---|---|---|---|---|",
    ]
    for steps, size in result["sizes"].items():
        s = size["summary"]
        lines.append(f"| {int(steps):,} | {fmt_summary(s['claim_ms'])} | "
                     f"{fmt_summary(s['replay_ms'])} | **{fmt_summary(s['total_ms'])}** | "
                     f"{size['checkpoint_bytes']:,} B |")
    after = result.get("python_speed_us_after")
    lines += ["", common.machine_line(result["machine"], "python", "redis_server", "redis_py")
              + (f" Reference Python call after the resumes: {after:g} µs (before: "
                 f"{result['machine'].get('python_speed_us', 0):g} µs)." if after else ""),
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return common.run_and_publish(args, "resume", run_benchmark, render_markdown, targets_of)


if __name__ == "__main__":
    sys.exit(main())
