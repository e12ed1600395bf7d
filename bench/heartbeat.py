"""Heartbeat cost: CPU of ``Heartbeat.beat()`` (and of the reaper's idle ``sweep()``) with
1,000 active durable runs on one worker.

Usage (from the repository root)::

    .venv/bin/python -m bench.heartbeat [--runs 1000] [--duration 30]

Starts a throwaway redis-server, creates ``--runs`` runs whose leases a worker id holds
(``RunStore.create_run`` + ``RunStore.claim``, with kombu ``unacked`` entries for their
messages), puts as many lightweight fake requests in ``celery.worker.state`` (``.id``,
``.task`` = the registered DurableTask, ``.message.delivery_tag``), and runs the worker
bootstep's loop in a thread for ``--duration`` seconds: wait one heartbeat interval, then
``beat()`` and ``sweep()``. Reports the thread's CPU seconds per wall second (share of one
core), each beat's and sweep's wall and CPU time, then a cProfile breakdown from a second,
profiled loop. Writes ``bench/results/heartbeat.json`` and ``bench/results/heartbeat.md``,
stops redis-server (also on error or SIGTERM). See bench/README.md.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.worker import state

from celery_durable import DurableTask
from celery_durable.config import settings_for
from celery_durable.heartbeat import Heartbeat
from celery_durable.identity import new_worker_id
from celery_durable.reaper import Reaper
from celery_durable.store import RunStore

from . import common

#: Target: the heartbeat thread uses less than this share of one core at 1,000 runs.
TARGET_CPU_SHARE = 0.01
TASK_NAME = "bench.heartbeat.durable"
QUEUE = "bench-heartbeat"
BROKER_DB, BACKEND_DB = 0, 1
#: kombu's keys for unacked messages (defaults, no global_keyprefix).
UNACKED_KEY, UNACKED_INDEX_KEY = "unacked", "unacked_index"
#: Functions whose cumulative time the profile table shows: (file suffix, function name).
COMPONENTS = (
    ("celery_durable/heartbeat.py", "beat", "`Heartbeat.beat` (all of it)"),
    ("celery_durable/heartbeat.py", "active_durable_requests", "`active_durable_requests()`"),
    ("celery_durable/heartbeat.py", "active_durable_runs", "`active_durable_runs()`"),
    ("~", "<built-in method builtins.sorted>", "`sorted()` (the run ids)"),
    ("celery_durable/store.py", "beat", "`RunStore.beat` (registry + lease renewal)"),
    ("celery_durable/scripts.py", "queue_call", "`queue_call` (queueing renew_lease)"),
    ("celery_durable/heartbeat.py", "slot_holders", "`slot_holders()`"),
    ("celery_durable/store.py", "renew_slots", "`RunStore.renew_slots`"),
    ("celery_durable/store.py", "release_leases", "`RunStore.release_leases`"),
    ("celery_durable/heartbeat.py", "live_delivery_tags", "`live_delivery_tags()`"),
    ("celery_durable/heartbeat.py", "bump", "`UnackedBumper.bump` (ZADD XX of every tag)"),
    ("celery_durable/reaper.py", "sweep", "`Reaper.sweep` (all of it)"),
    ("redis/connection.py", "pack_commands", "redis-py `pack_commands` (pipelines)"),
    ("redis/connection.py", "pack_command", "redis-py `pack_command` (encoding each command)"),
    ("redis/client.py", "_execute_pipeline", "redis-py `_execute_pipeline` (send + parse)"),
    ("redis/connection.py", "read_response", "redis-py `read_response` (parsing replies)"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.make_parser("bench.heartbeat", __doc__)
    parser.add_argument("--runs", type=int, default=1000,
                        help="active durable runs held by the worker (default 1000)")
    parser.add_argument("--duration", type=float, default=30.0,
                        help="seconds of the timed loop (default 30)")
    parser.add_argument("--interval", type=float, default=None,
                        help="heartbeat interval in seconds (default: "
                             "durable_heartbeat_interval_s, 1 s)")
    parser.add_argument("--profile-duration", type=float, default=15.0,
                        help="seconds of the separate profiled loop (default 15; 0: none)")
    common.add_common_args(parser, "heartbeat.json and heartbeat.md")
    return parser.parse_args(argv)


def durable_body(i: int) -> int:
    return i


def make_app(redis_url: str, interval: float | None) -> Celery:
    """An app on the throwaway server with one durable task (celery-durable defaults)."""
    app = Celery("bench_heartbeat", broker=f"{redis_url}/{BROKER_DB}",
                 backend=f"{redis_url}/{BACKEND_DB}", set_as_current=False)
    app.conf.update(task_default_queue=QUEUE, broker_connection_retry_on_startup=True)
    if interval is not None:
        app.conf.durable_heartbeat_interval_s = interval
    app.task(base=DurableTask, name=TASK_NAME, shared=False)(durable_body)
    return app


# -- the fake worker state ----------------------------------------------------------------


class FakeMessage:
    __slots__ = ("delivery_tag",)

    def __init__(self, delivery_tag: str) -> None:
        self.delivery_tag = delivery_tag


class FakeRequest:
    """What the heartbeat reads of a ``celery.worker.request.Request``."""

    __slots__ = ("__weakref__", "args", "delivery_info", "id", "kwargs", "message", "task")

    def __init__(self, run_id: str, task: DurableTask, delivery_tag: str, i: int) -> None:
        self.id = run_id
        self.task = task
        self.message = FakeMessage(delivery_tag)
        self.delivery_info = {"exchange": "", "routing_key": QUEUE, "priority": 0,
                              "redelivered": False}
        self.args: list[Any] = [i]
        self.kwargs: dict[str, Any] = {}


def populate(app: Celery, store: RunStore, broker: redis.Redis, worker_id: str,
             count: int) -> list[FakeRequest]:
    """Create and claim ``count`` runs for ``worker_id``, with the kombu unacked entries of
    their messages; returns the matching fake requests (not yet installed)."""
    task = app.tasks[TASK_NAME]
    assert isinstance(task, DurableTask)
    requests = []
    pid = os.getpid()
    for i in range(count):
        run_id, tag = str(uuid.uuid4()), str(uuid.uuid4())
        store.create_run(run_id, TASK_NAME, json.dumps([i]), "{}", QUEUE)
        claim = store.claim(run_id, owner=worker_id, nonce=uuid.uuid4().hex, task=TASK_NAME,
                            args_json=json.dumps([i]), kwargs_json="{}", queue=QUEUE, pid=pid,
                            delivery_tag=tag)
        if claim.outcome != "claimed":
            raise RuntimeError(f"could not claim run {run_id}: {claim.outcome}")
        requests.append(FakeRequest(run_id, task, tag, i))
    now = time.time()
    with broker.pipeline(transaction=False) as pipe:
        for req in requests:
            message = {"headers": {"task": TASK_NAME, "id": req.id},
                       "properties": {"delivery_tag": req.message.delivery_tag}, "body": ""}
            pipe.hset(UNACKED_KEY, req.message.delivery_tag, json.dumps([message, "", QUEUE]))
            pipe.zadd(UNACKED_INDEX_KEY, {req.message.delivery_tag: now})
        pipe.execute()
    return requests


@contextmanager
def installed(requests: Sequence[FakeRequest]) -> Iterator[None]:
    """The fake requests as reserved and active requests of this process's worker state."""
    for req in requests:
        state.requests[req.id] = req
        state.active_requests.add(req)
    try:
        yield
    finally:
        for req in requests:
            state.requests.pop(req.id, None)
            state.active_requests.discard(req)


# -- the loop -----------------------------------------------------------------------------


@dataclass
class LoopResult:
    """One run of the heartbeat loop; times in seconds."""

    wall_s: float = 0.0
    thread_cpu_s: float = 0.0  # the whole thread: waits, beats, sweeps
    beat_wall_s: list[float] = field(default_factory=list)
    beat_cpu_s: list[float] = field(default_factory=list)
    beat_renewed: list[bool] = field(default_factory=list)
    sweep_wall_s: list[float] = field(default_factory=list)
    sweep_cpu_s: list[float] = field(default_factory=list)
    resumed: int = 0
    redis_cpu_s: float = 0.0

    @property
    def beats(self) -> int:
        return len(self.beat_wall_s)


#: Profiles of single ticks, by kind ("renewing", "other").
Profiles = dict[str, list[cProfile.Profile]]


def run_loop(heartbeat: Heartbeat, reaper: Reaper, renewals: list[bool], interval: float,
             duration: float, profiles: Profiles | None = None) -> LoopResult:
    """The bootstep's loop (wait ``interval``, beat, sweep) in a thread for ``duration`` s.

    ``renewals`` is appended to by the store's ``beat`` (see :func:`record_renewals`). With
    ``profiles``, each tick (beat + sweep, not the wait) is profiled on its own and filed
    under ``renewing`` or ``other``.
    """
    result = LoopResult()
    stop = threading.Event()
    errors: list[BaseException] = []

    def tick() -> None:
        w0, c0 = time.perf_counter(), time.thread_time()
        heartbeat.beat()
        w1, c1 = time.perf_counter(), time.thread_time()
        result.resumed += reaper.sweep()
        w2, c2 = time.perf_counter(), time.thread_time()
        result.beat_wall_s.append(w1 - w0)
        result.beat_cpu_s.append(c1 - c0)
        result.beat_renewed.append(renewals[-1] if renewals else False)
        result.sweep_wall_s.append(w2 - w1)
        result.sweep_cpu_s.append(c2 - c1)

    def loop() -> None:
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        try:
            while not stop.wait(interval):
                if profiles is None:
                    tick()
                else:
                    profile = cProfile.Profile()
                    profile.runcall(tick)
                    kind = "renewing" if result.beat_renewed[-1] else "other"
                    profiles.setdefault(kind, []).append(profile)
                if time.perf_counter() - wall0 >= duration:
                    break
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            result.wall_s = time.perf_counter() - wall0
            result.thread_cpu_s = time.thread_time() - cpu0

    thread = threading.Thread(target=loop, name="celery-durable-heartbeat", daemon=True)
    thread.start()
    try:
        thread.join()
    finally:
        stop.set()
        thread.join()
    if errors:
        raise errors[0]
    return result


def record_renewals(store: RunStore) -> list[bool]:
    """Wrap ``store.beat`` to note whether each beat renewed the leases (its ``renew``)."""
    renewals: list[bool] = []
    original = store.beat

    def beat(worker_id: str, run_ids: Sequence[str], renew: bool) -> None:
        renewals.append(renew)
        original(worker_id, run_ids, renew)

    store.beat = beat  # type: ignore[method-assign]
    return renewals


def redis_cpu_s(client: redis.Redis) -> float:
    """CPU seconds (user + system) the redis-server has used so far."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def held_leases(store: RunStore, worker_id: str, run_ids: Sequence[str]) -> int:
    """How many of ``run_ids`` are still leased by ``worker_id`` with an unexpired lease."""
    now_ms = time.time() * 1000
    with store.client.pipeline(transaction=False) as pipe:
        for run_id in run_ids:
            pipe.hmget(store.keys.run(run_id).run, "lease_owner", "lease_expires_ms")
        rows = pipe.execute()
    return sum(1 for owner, expires in rows if owner == worker_id and float(expires) > now_ms)


# -- figures ------------------------------------------------------------------------------


def stats(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "mean": statistics.fmean(values)}


def figures(loop: LoopResult) -> dict[str, Any]:
    renew = [i for i, r in enumerate(loop.beat_renewed) if r]
    plain = [i for i, r in enumerate(loop.beat_renewed) if not r]
    return {
        "wall_s": loop.wall_s,
        "beats": loop.beats,
        "renewing_beats": len(renew),
        "thread_cpu_share": loop.thread_cpu_s / loop.wall_s,
        "beat_cpu_share": sum(loop.beat_cpu_s) / loop.wall_s,
        "sweep_cpu_share": sum(loop.sweep_cpu_s) / loop.wall_s,
        "redis_cpu_share": loop.redis_cpu_s / loop.wall_s,
        "beat_wall_ms": stats([x * 1e3 for x in loop.beat_wall_s]),
        "beat_cpu_ms": stats([x * 1e3 for x in loop.beat_cpu_s]),
        "renewing_beat_wall_ms": stats([loop.beat_wall_s[i] * 1e3 for i in renew]),
        "renewing_beat_cpu_ms": stats([loop.beat_cpu_s[i] * 1e3 for i in renew]),
        "plain_beat_wall_ms": stats([loop.beat_wall_s[i] * 1e3 for i in plain]),
        "plain_beat_cpu_ms": stats([loop.beat_cpu_s[i] * 1e3 for i in plain]),
        "sweep_wall_ms": stats([x * 1e3 for x in loop.sweep_wall_s]),
        "sweep_cpu_ms": stats([x * 1e3 for x in loop.sweep_cpu_s]),
        "resumed_by_sweeps": loop.resumed,
    }


def profile_breakdown(profiles: Sequence[cProfile.Profile], top: int = 15) -> dict[str, Any]:
    """Per-tick cumulative time of the main components, and the top functions by own time,
    over ``profiles`` (one per tick; cProfile inflates times: compare shares and calls)."""
    merged = pstats.Stats(profiles[0])
    for profile in profiles[1:]:
        merged.add(profile)
    beats = len(profiles)
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = merged.stats  # type: ignore[attr-defined]
    components = []
    for suffix, name, label in COMPONENTS:
        entries = [v for (f, _line, fn), v in raw.items() if f.endswith(suffix) and fn == name]
        if entries:
            calls = sum(int(v[1]) for v in entries)
            cum = sum(float(v[3]) for v in entries)
            components.append({"what": label, "calls_per_beat": calls / beats,
                               "cum_ms_per_beat": cum * 1e3 / beats})
    total = sum(float(v[2]) for v in raw.values())
    own = sorted(raw.items(), key=lambda kv: float(kv[1][2]), reverse=True)[:top]
    return {
        "beats": beats,
        "total_ms_per_beat": total * 1e3 / beats,
        "calls_per_beat": sum(int(v[1]) for v in raw.values()) / beats,
        "components": components,
        "top_own_time": [{"function": f"{Path(f).name}:{line}({fn})",
                          "calls_per_beat": int(v[1]) / beats,
                          "own_ms_per_beat": float(v[2]) * 1e3 / beats,
                          "share": float(v[2]) / total if total else 0.0}
                         for (f, line, fn), v in own],
    }


# -- report -------------------------------------------------------------------------------


def _ms(s: Mapping[str, float] | None, decimals: int = 2) -> str:
    if s is None:
        return "| – | – | – |"
    return (f"| {s['min']:.{decimals}f} | {s['median']:.{decimals}f} | "
            f"{s['max']:.{decimals}f} |")


def _profile_lines(prof: Mapping[str, Any]) -> list[str]:
    """The cProfile tables: components side by side, then the top functions of each kind."""
    kinds = [k for k in ("renewing", "other") if k in prof]
    if not kinds:
        return []
    lines = ["", "cProfile of a separate loop, each tick (beat + sweep) profiled on its own "
             "(the profiler inflates times: read shares and call counts): "
             + "; ".join(f"{k} ticks: {prof[k]['beats']}, "
                         f"{prof[k]['total_ms_per_beat']:.1f} ms and "
                         f"{prof[k]['calls_per_beat']:,.0f} Python calls per tick"
                         for k in kinds) + ".", "",
             "| component (cumulative ms per tick) | "
             + " | ".join(f"{k} tick" for k in kinds) + " |",
             "|---|" + "---|" * len(kinds)]
    labels = [label for _, _, label in COMPONENTS]
    for label in labels:
        cells = []
        for k in kinds:
            c = next((c for c in prof[k]["components"] if c["what"] == label), None)
            cells.append("–" if c is None else f"{c['cum_ms_per_beat']:.2f}")
        if any(cell != "–" for cell in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for k in kinds:
        lines += ["", f"Top own time, {k} tick:", "",
                  "| function | calls per tick | own ms per tick | share |", "|---|---|---|---|"]
        lines += [f"| `{t['function']}` | {t['calls_per_beat']:,.0f} | "
                  f"{t['own_ms_per_beat']:.2f} | {t['share']:.1%} |"
                  for t in prof[k]["top_own_time"][:10]]
    return lines


def render_markdown(result: Mapping[str, Any]) -> str:
    cfg, f = result["config"], result["figures"]
    share = f["thread_cpu_share"]
    verdict = "met" if share < TARGET_CPU_SHARE else "NOT met"
    lines = [
        "# Heartbeat cost",
        "",
        f"{cfg['runs']:,} active durable runs on one worker, one heartbeat every "
        f"{cfg['interval_s']:g} s (leases renewed every {cfg['lease_renew_every_s']:g} s), "
        f"{f['beats']} beats over {f['wall_s']:.1f} s; each tick = `Heartbeat.beat()` + "
        "`Reaper.sweep()` (nothing to reap), as in the worker bootstep's thread.",
        "",
        "| CPU, share of one core (CPU-s per wall s) | value | target |",
        "|---|---|---|",
        f"| **heartbeat thread, all of it** | **{share:.4f}** | < {TARGET_CPU_SHARE:g} "
        f"({verdict}) |",
        f"| of which `beat()` | {f['beat_cpu_share']:.4f} | |",
        f"| of which `sweep()` | {f['sweep_cpu_share']:.4f} | |",
        f"| redis-server (all commands of the loop) | {f['redis_cpu_share']:.4f} | |",
        "",
        "| per tick, ms | min | median | max |",
        "|---|---|---|---|",
        f"| `beat()` wall, all beats {_ms(f['beat_wall_ms'])}",
        f"| `beat()` CPU, all beats {_ms(f['beat_cpu_ms'])}",
        f"| `beat()` wall, renewing beats ({f['renewing_beats']}) "
        f"{_ms(f['renewing_beat_wall_ms'])}",
        f"| `beat()` CPU, renewing beats {_ms(f['renewing_beat_cpu_ms'])}",
        f"| `beat()` wall, other beats ({f['beats'] - f['renewing_beats']}) "
        f"{_ms(f['plain_beat_wall_ms'])}",
        f"| `beat()` CPU, other beats {_ms(f['plain_beat_cpu_ms'])}",
        f"| `sweep()` wall {_ms(f['sweep_wall_ms'])}",
        f"| `sweep()` CPU {_ms(f['sweep_cpu_ms'])}",
        "",
        f"After the loop: {result['leases_held_after']:,} of {cfg['runs']:,} leases still "
        f"held, {f['resumed_by_sweeps']} run(s) resumed by the sweeps (expected: all, 0).",
    ]
    lines += _profile_lines(result.get("profile") or {})
    lines += ["", common.machine_line(result["machine"], "python", "redis_server",
                                      "redis_py", "hiredis", "celery"), ""]
    return "\n".join(lines)


# -- entry point --------------------------------------------------------------------------


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    with common.bench_redis(args.redis_server) as (server, info):
        app = make_app(server.url, args.interval)
        settings = settings_for(app)
        store = RunStore(settings)
        broker = redis.Redis.from_url(f"{server.url}/{BROKER_DB}", decode_responses=True)
        worker_id = new_worker_id("bench-heartbeat@localhost")
        heartbeat = Heartbeat(app, store, worker_id)
        reaper = Reaper(app, store, worker_id)
        try:
            started = time.monotonic()
            requests = populate(app, store, broker, worker_id, args.runs)
            common.progress(f"{args.runs} runs claimed in {time.monotonic() - started:.1f} s")
            renewals = record_renewals(store)
            interval = settings.heartbeat_interval_s
            with installed(requests):
                heartbeat.beat()  # the bootstep beats once before its loop starts
                reaper.sweep()
                cpu0 = redis_cpu_s(broker)
                loop = run_loop(heartbeat, reaper, renewals, interval, args.duration)
                loop.redis_cpu_s = redis_cpu_s(broker) - cpu0
                held = held_leases(store, worker_id, [r.id for r in requests])
                prof: dict[str, Any] = {}
                if args.profile_duration > 0:
                    profiles: Profiles = {}
                    run_loop(heartbeat, reaper, renewals, interval, args.profile_duration,
                             profiles)
                    prof = {kind: profile_breakdown(ps) for kind, ps in profiles.items()}
        finally:
            reaper.close()
            heartbeat.unacked.close()
            store.client.close()
            broker.close()
            app.close()
    config = common.config_of(args, interval_s=interval, lease_ttl_s=settings.lease_ttl_s,
                              lease_renew_every_s=settings.lease_renew_every_s,
                              worker_ttl_s=settings.worker_ttl_s)
    return {"config": config, "machine": info, "figures": figures(loop),
            "leases_held_after": held, "profile": prof, "raw": asdict(loop)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result, elapsed = common.run_timed(run_benchmark, args)
    result["config"]["wall_time_s"] = round(elapsed, 1)
    result["target_cpu_share"] = TARGET_CPU_SHARE
    result["target_met"] = result["figures"]["thread_cpu_share"] < TARGET_CPU_SHARE
    common.publish(args.out, "heartbeat", result, render_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
