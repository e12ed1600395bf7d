"""The three measurements of ``bench.limits``: enqueue rate, slot utilisation, parked runs.

Every function here talks to the app of :mod:`bench.limits_app` (configured by the caller)
and to the throwaway Redis at ``url``; none starts or stops a process.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import redis

from celery_durable import DurableClient, DurableTask
from celery_durable.events import trace_events
from celery_durable.store import RunStore, store_for

from .limits_app import (
    BLOCKER,
    BROKER_DB,
    ENQUEUE_DURABLE,
    ENQUEUE_PLAIN,
    ENQUEUE_RATED,
    LIMIT,
    LIMITED,
    RATE_WAITING,
    REF_DURABLE,
    REF_PLAIN,
    REF_QUEUE,
    SINK_QUEUE,
    WORK_QUEUE,
    app,
    records_client,
    spans_key,
)
from .limits_redis import Window, observe

#: The three ways of publishing measurement 1 compares (in this order in the tables).
KINDS = ("celery", "durable", "keyed", "rated")
KIND_LABELS = {
    "celery": "plain Celery `@app.task` `apply_async`",
    "durable": "durable `apply_async` (no key)",
    "keyed": "durable `apply_async(idempotency_key=<fresh>)`",
    "rated": "durable `apply_async` under a rate limit (a turn, no wait)",
}
Span = tuple[float, float, int, int]  # body start, body end (time.time()), index, pid


def summary(values: Iterable[float]) -> dict[str, float]:
    """min / median / max of per-repeat figures."""
    data = sorted(values)
    return {"min": data[0], "median": statistics.median(data), "max": data[-1]}


def broker_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(f"{url}/{BROKER_DB}", decode_responses=True)


def drain_result_messages() -> None:
    """Read the replies piled up on this process's result-backend pub/sub connection.

    With a Redis result backend, every ``apply_async`` SUBSCRIBEs to its result's channel
    (and the AsyncResult unsubscribes when it is collected); a producer that never waits
    for a result never reads the replies, which pile up in Redis's output buffer for that
    client. Called between batches, outside any timing.
    """
    consumer: Any = getattr(app.backend, "result_consumer", None)
    pubsub: Any = getattr(consumer, "_pubsub", None)
    connection: Any = getattr(pubsub, "connection", None)
    if consumer is None or connection is None:
        return
    locked = getattr(consumer, "_locked", None)
    with locked() if locked is not None else contextlib.nullcontext():
        # One reply per call (get_message keeps the pub/sub object's state right; it reads
        # nothing once no channel is left, hence the checks).
        for _ in range(10_000_000):
            if not pubsub.subscribed or not connection.can_read(timeout=0):
                break
            pubsub.get_message(timeout=0)


# -- 1. enqueue rate ------------------------------------------------------------------------


_keys = itertools.count()


def publisher(kind: str) -> Callable[[int], object]:
    """One ``apply_async`` of ``kind`` to the queue nobody consumes."""
    if kind == "celery":
        plain = app.tasks[ENQUEUE_PLAIN]
        return lambda i: plain.apply_async((i,), queue=SINK_QUEUE)
    durable = cast(DurableTask, app.tasks[ENQUEUE_DURABLE])
    if kind == "durable":
        return lambda i: durable.apply_async((i,), queue=SINK_QUEUE)
    if kind == "rated":
        rated = cast(DurableTask, app.tasks[ENQUEUE_RATED])
        return lambda i: rated.apply_async((i,), queue=SINK_QUEUE)
    prefix = uuid.uuid4().hex
    return lambda i: durable.apply_async((i,), queue=SINK_QUEUE,
                                         idempotency_key=f"{prefix}:{next(_keys)}")


def time_batch(call: Callable[[int], object], size: int) -> tuple[float, float]:
    """``size`` calls, results dropped at once (as a fire-and-forget producer does): wall
    and process CPU seconds."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(size):
        call(i)
    return time.perf_counter() - wall0, time.process_time() - cpu0


def clean_sink(broker: redis.Redis) -> None:
    broker.delete(SINK_QUEUE)
    drain_result_messages()


RATIOS = {"keyed_over_durable": ("keyed", "durable"),
          "rated_over_durable": ("rated", "durable"),
          "keyed_over_celery": ("keyed", "celery"),
          "durable_over_celery": ("durable", "celery")}


#: What one kind of call adds to another: (the more expensive kind, the cheaper one).
EXTRA_COSTS = {"key_cost": ("keyed", "durable"), "record_cost": ("durable", "celery"),
               "rate_cost": ("rated", "durable")}


def enqueue_repeat(broker: redis.Redis, rounds: int, size: int) -> dict[str, Any]:
    """Rounds of one batch of each kind (order rotated each round). A kind's figure is its
    median batch; a ratio's is the median of the per-round ratios (each round's batches ran
    back to back, so they share the machine's state of the moment)."""
    batches: dict[str, list[tuple[float, float]]] = {k: [] for k in (*KINDS, "ping")}
    calls = {k: publisher(k) for k in KINDS}
    client = store_for(app).client
    for r in range(rounds):
        for kind in KINDS[r % len(KINDS):] + KINDS[:r % len(KINDS)]:
            batches[kind].append(time_batch(calls[kind], size))
            clean_sink(broker)
        batches["ping"].append(time_batch(lambda i: client.ping(), size))
    derived: dict[str, float] = {}
    for kind in KINDS:
        derived[f"{kind}_per_s"] = statistics.median(size / wall for wall, _ in batches[kind])
        derived[f"{kind}_wall_us"] = statistics.median(wall for wall, _ in batches[kind]) \
            / size * 1e6
        derived[f"{kind}_cpu_us"] = statistics.median(cpu for _, cpu in batches[kind]) \
            / size * 1e6
    for name, (num, den) in RATIOS.items():
        derived[name] = statistics.median(
            d[0] / n[0] for n, d in zip(batches[num], batches[den], strict=True))
    derived["ping_wall_us"] = statistics.median(w for w, _ in batches["ping"]) / size * 1e6
    for name, (more, less) in EXTRA_COSTS.items():
        rounds_ = list(zip(batches[more], batches[less], batches["ping"], strict=True))
        derived[f"{name}_us"] = statistics.median(m[0] - x[0] for m, x, _ in rounds_) \
            / size * 1e6
        derived[f"{name}_per_ping"] = statistics.median((m[0] - x[0]) / p[0]
                                                        for m, x, p in rounds_)
    return {"derived": derived,
            "batches": {k: [{"wall_s": w, "cpu_s": c} for w, c in v] for k, v in batches.items()}}


def commands_per_call(url: str, broker: redis.Redis, size: int,
                      sources: Callable[[], dict[str, str]]) -> dict[str, dict[str, float]]:
    """One batch of each kind under MONITOR: commands the producer sends per call (by
    command; EVALSHA by script) and commands its scripts run, per call."""
    calls = {k: publisher(k) for k in KINDS}

    def during(i: int) -> None:
        time_batch(calls[KINDS[i]], size)

    windows = observe(url, len(KINDS), 0.0, sources, during)
    clean_sink(broker)
    out = {}
    for kind, window in zip(KINDS, windows, strict=True):
        per_call = {f"sent {k}": v * window.seconds / size
                    for k, v in window.top_level.items()}
        per_call.update({f"in script {k}": v * window.seconds / size
                         for k, v in window.in_scripts.items()})
        out[kind] = {k: round(v, 3) for k, v in per_call.items() if v * size >= 0.5}
    return out


def measure_enqueue(url: str, repeats: int, rounds: int, size: int,
                    sources: Callable[[], dict[str, str]],
                    progress: Callable[[str], None]) -> dict[str, Any]:
    broker = broker_client(url)
    try:
        for kind in KINDS:  # warm-up: connections, scripts, producer pool
            time_batch(publisher(kind), size)
        clean_sink(broker)
        per_call = commands_per_call(url, broker, size, sources)
        samples = []
        for i in range(repeats):
            samples.append(enqueue_repeat(broker, rounds, size))
            d = samples[-1]["derived"]
            progress(f"enqueue repeat {i + 1}/{repeats}: " + ", ".join(
                f"{k} {d[f'{k}_per_s']:.0f}/s" for k in KINDS)
                + f"; keyed/durable {d['keyed_over_durable']:.2f}")
    finally:
        broker.close()
    names = samples[0]["derived"].keys()
    return {"summary": {n: summary(s["derived"][n] for s in samples) for n in names},
            "commands_per_call": per_call, "repeats": samples}


# -- 2. slot utilisation --------------------------------------------------------------------


def max_overlap(spans: Sequence[Span]) -> int:
    """Most bodies running at the same instant (an end at t counts before a start at t)."""
    edges = sorted([(s[0], 1) for s in spans] + [(s[1], -1) for s in spans])
    now = peak = 0
    for _, delta in edges:
        now += delta
        peak = max(peak, now)
    return peak


def read_spans(records: redis.Redis, token: str) -> list[Span]:
    out = []
    for raw in records.lrange(spans_key(token), 0, -1):
        start, end, i, pid = json.loads(raw)
        out.append((float(start), float(end), int(i), int(pid)))
    return out


def wait_spans(records: redis.Redis, token: str, n: int, timeout_s: float,
               check: Callable[[], None]) -> list[Span]:
    """Block until ``n`` bodies of ``token`` have recorded their span."""
    deadline = time.monotonic() + timeout_s
    while records.llen(spans_key(token)) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {records.llen(spans_key(token))} of {n} runs finished "
                               f"within {timeout_s:g} s")
        check()
        time.sleep(0.05)
    return read_spans(records, token)


def limit_state(client: DurableClient) -> tuple[int, int]:
    """(slots held, runs parked) of the benchmark's limit."""
    info = client.concurrency_limit(LIMITED)
    return len(info.holders), len(info.parked)


def wait_limit_idle(client: DurableClient, timeout_s: float = 10.0) -> tuple[int, int]:
    """Wait for every slot to be given back and nothing parked; returns the last state."""
    deadline = time.monotonic() + timeout_s
    state = limit_state(client)
    while state != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
        state = limit_state(client)
    return state


def run_outcomes(store: RunStore, ids: Sequence[str]) -> dict[str, Any]:
    """Statuses of the runs, how often each was parked (``slot_denied`` events), and the
    server time (ms, from the trace entry) of each run's last ``attempt_started`` and of its
    ``run_completed``."""
    statuses = dict(Counter(raw.get("status", "missing") for raw in store.read_summaries(ids)))
    # Completed runs keep their trace in their archive: read_traces merges both.
    traces = [trace_events(entries, {}) for entries in store.read_traces(ids)]
    parks = [sum(1 for ev in trace if ev.type == "slot_denied") for trace in traces]
    started, completed = [], []
    for trace in traces:
        times = {ev.type: ev.at.timestamp() * 1000 for ev in trace}
        if "attempt_started" in times and "run_completed" in times:
            started.append(times["attempt_started"])
            completed.append(times["run_completed"])
    return {"statuses": statuses, "parked_runs": sum(1 for p in parks if p),
            "park_events": sum(parks), "max_parks_of_a_run": max(parks, default=0),
            "attempt_started_ms": started, "run_completed_ms": completed}


def _quantile(data: Sequence[float], q: float) -> float:
    ordered = sorted(data)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def handover_figures(spans: Sequence[Span], outcomes: Mapping[str, Any],
                     limit: int) -> dict[str, float]:
    """Where a slot's time goes between two bodies, from the runs' trace events (server
    time, ms resolution): body end -> ``run_completed`` (the attempt ends; the slot is given
    back right after), the k-th ``run_completed`` -> the (k+limit)-th ``attempt_started``
    (release, re-publish, delivery, slot taken, run claimed), ``attempt_started`` -> body
    start."""
    started = sorted(outcomes["attempt_started_ms"])
    completed = sorted(outcomes["run_completed_ms"])
    if len(started) != len(spans) or len(spans) <= limit:
        return {}
    ends = sorted(s[1] * 1e3 for s in spans)
    starts = sorted(s[0] * 1e3 for s in spans)
    handover = [started[k + limit] - completed[k] for k in range(len(completed) - limit)]
    return {
        "after_body_ms": statistics.median(c - e for c, e in zip(completed, ends, strict=True)),
        "handover_ms_median": statistics.median(handover),
        "handover_ms_p90": _quantile(handover, 0.9),
        "handover_ms_max": max(handover),
        "before_body_ms": statistics.median(b - a for a, b in zip(started, starts,
                                                                   strict=True)),
    }


def span_figures(spans: Sequence[Span], limit: int, seconds: float) -> dict[str, float]:
    """Throughput from the first body start to the last body end, its share of the ideal
    ``limit / seconds``, the steady-state share (from the 25 % to the 90 % completion, past
    the burst's initial backlog), overlap, body duration and the slot time lost per run
    between bodies."""
    n = len(spans)
    starts = sorted(s[0] for s in spans)
    ends = sorted(s[1] for s in spans)
    window = ends[-1] - starts[0]
    durations = [s[1] - s[0] for s in spans]
    ideal = limit / seconds
    lo, hi = n // 4, n * 9 // 10  # completions 25 % -> 90 %: past the initial backlog
    steady = (hi - lo) / (ends[hi - 1] - ends[lo - 1]) if lo and hi > lo else n / window
    return {
        "runs": float(n),
        "window_s": window,
        "runs_per_s": n / window,
        "share_of_ideal": n / window / ideal,
        "steady_runs_per_s": steady,
        "steady_share_of_ideal": steady / ideal,
        "max_overlap": float(max_overlap(spans)),
        "body_ms_median": statistics.median(durations) * 1e3,
        "idle_slot_ms_per_run": (limit * window - sum(durations)) / n * 1e3,
    }


@dataclass
class SlotRun:
    """One batch of runs of one task and what came of it."""

    figures: dict[str, float]
    outcomes: dict[str, Any]
    limit_after: tuple[int, int]
    enqueue_s: float
    first_start_after_s: float
    cpu_s: dict[str, float]
    spans: list[Span]


CpuProbe = Callable[[], dict[str, float]]


def cpu_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


@dataclass(frozen=True)
class Batch:
    """What to run: ``task`` on ``queue``, served by ``threads`` worker threads whose
    workers' labels start with ``workers``; ``slots`` runs can run at once (the limit, or
    the reference workers' threads)."""

    task: str
    queue: str
    workers: str
    threads: int
    slots: int
    durable: bool


def batches(threads: int, references: bool) -> dict[str, Batch]:
    """The limited task on ``threads`` threads, and the references on LIMIT threads."""
    out = {"limited": Batch(LIMITED, WORK_QUEUE, "limits", threads, LIMIT, True)}
    if references:
        out["durable"] = Batch(REF_DURABLE, REF_QUEUE, "ref", LIMIT, LIMIT, True)
        out["plain"] = Batch(REF_PLAIN, REF_QUEUE, "ref", LIMIT, LIMIT, False)
    return out


def hold_workers(batch: Batch, records: redis.Redis, timeout_s: float,
                 check: Callable[[], None]) -> str:
    """Occupy every thread of the batch's workers with a blocker; returns the gate."""
    gate = f"bench:limits:gate:{uuid.uuid4().hex}"
    blocker = app.tasks[BLOCKER]
    for _ in range(batch.threads):
        blocker.apply_async((gate, timeout_s), queue=batch.queue)
    deadline = time.monotonic() + timeout_s
    while records.llen(f"{gate}:started") < batch.threads:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {records.llen(f'{gate}:started')} of {batch.threads} "
                               f"worker threads were taken by blockers after {timeout_s:g} s")
        check()
        time.sleep(0.02)
    return gate


def run_batch(batch: Batch, n: int, seconds: float, timeout_s: float,
              check: Callable[[], None], records: redis.Redis, cpu: CpuProbe) -> SlotRun:
    """Publish ``n`` runs while every worker thread is held by a blocker, release the
    threads, and wait for all the runs."""
    token = uuid.uuid4().hex
    task = app.tasks[batch.task]
    gate = hold_workers(batch, records, timeout_s, check)
    t_pub = time.time()
    ids = [str(task.apply_async((token, i, seconds), queue=batch.queue).id) for i in range(n)]
    enqueue_s = time.time() - t_pub
    cpu0 = cpu()
    t0 = time.time()
    records.rpush(f"{gate}:release", *["go"] * batch.threads)
    spans = wait_spans(records, token, n, timeout_s, check)
    used = cpu_delta(cpu0, cpu())
    after = wait_limit_idle(DurableClient(app)) if batch.task == LIMITED else (0, 0)
    outcomes = run_outcomes(store_for(app), ids) if batch.durable else {}
    drain_result_messages()
    figures = span_figures(spans, batch.slots, seconds)
    if outcomes:
        figures.update(handover_figures(spans, outcomes, batch.slots))
    figures["worker_cpu_ms_per_run"] = sum(v for k, v in used.items()
                                           if k.startswith(batch.workers)) / n * 1e3
    figures["redis_cpu_ms_per_run"] = used.get("redis-server", 0.0) / n * 1e3
    return SlotRun(figures, outcomes, after, enqueue_s, min(s[0] for s in spans) - t0,
                   used, spans)


def _summarize(samples: Sequence[SlotRun]) -> dict[str, Any]:
    names = [n for n in samples[0].figures if all(n in s.figures for s in samples)]
    return {
        "summary": {n: summary(s.figures[n] for s in samples) for n in names},
        "repeats": [{**asdict(s), "spans": [list(x) for x in s.spans]} for s in samples],
    }


def measure_slots(url: str, repeats: int, runs: int, seconds: float, timeout_s: float,
                  check: Callable[[], None], cpu: CpuProbe, progress: Callable[[str], None],
                  threads: int, references: bool) -> dict[str, Any]:
    """Each repeat: a batch of ``limited`` runs on ``threads`` threads, then (with
    ``references``) the same number of each reference task on the reference workers."""
    records = records_client(url)
    todo = batches(threads, references)
    samples: dict[str, list[SlotRun]] = {name: [] for name in todo}
    try:
        for batch in todo.values():
            # Warm-up, as large as a measured batch: each worker thread opens its own
            # connections (checkpoint store, producer pool) on its first attempt or
            # publish, which a smaller batch leaves to the first repeat.
            run_batch(batch, max(3 * LIMIT, runs), seconds, timeout_s, check, records, cpu)
        for i in range(repeats):
            for name, batch in todo.items():
                samples[name].append(run_batch(batch, runs, seconds, timeout_s, check,
                                               records, cpu))
            progress(f"slots repeat {i + 1}/{repeats}: " + "; ".join(
                f"{name} {s[-1].figures['runs_per_s']:.1f} runs/s = "
                f"{s[-1].figures['share_of_ideal']:.1%}" for name, s in samples.items())
                + f"; limited: max overlap {samples['limited'][-1].figures['max_overlap']:.0f}"
                f", hand-over median "
                f"{samples['limited'][-1].figures.get('handover_ms_median', float('nan')):.1f}"
                " ms")
    finally:
        records.close()
    out = _summarize(samples["limited"])
    out["references"] = {name: _summarize(samples[name]) for name in todo
                         if name != "limited"}
    return out


# -- 3. parked runs: no busy polling --------------------------------------------------------


def wait_parked(client: DurableClient, broker: redis.Redis, n: int, timeout_s: float,
                check: Callable[[], None]) -> None:
    """Wait until ``n`` runs are parked and the broker holds none of their messages."""
    deadline = time.monotonic() + timeout_s
    while True:
        held, parked = limit_state(client)
        pending = int(broker.llen(WORK_QUEUE)) + int(broker.hlen("unacked"))
        if parked == n and pending == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{parked} of {n} runs parked ({held} slots held, {pending} "
                               f"messages in the broker) after {timeout_s:g} s")
        check()
        time.sleep(0.1)


def level_summary(windows: Sequence[Window]) -> dict[str, Any]:
    """Median of each figure over a level's windows (and min/max of the totals)."""

    def med(attr: str) -> dict[str, float]:
        names = sorted({n for w in windows for n in getattr(w, attr)})
        return {n: statistics.median(getattr(w, attr).get(n, 0.0) for w in windows)
                for n in names}

    return {
        "top_level_total": summary(w.total("top_level") for w in windows),
        "all_commands_total": summary(w.total("calls") for w in windows),
        "in_scripts_total": summary(w.total("in_scripts") for w in windows),
        "redis_usec_total": summary(w.total("usec") for w in windows),
        "top_level": med("top_level"), "in_scripts": med("in_scripts"), "calls": med("calls"),
        "usec": med("usec"), "by_source": med("by_source"),
        "by_source_command": med("by_source_command"),
    }


#: Commands left out when judging busy polling: PING is redis-py's health check of a
#: connection idle for 30 s (``health_check_interval``), sent at fixed times whatever waits;
#: in 5-second windows a few of them land in one level and not the other (+0.6/s seen).
NOT_POLLING = ("ping",)
#: The per-command rates that each total is the sum of.
_PARTS = {"top_level_total": "top_level", "all_commands_total": "calls",
          "redis_usec_total": "usec"}


def scaling(levels: Mapping[int, Mapping[str, Any]], threshold: float) -> dict[str, Any]:
    """Compare the highest level with the lowest non-zero one (both pay the constant cost of
    a limit with waiting runs) and with 0: commands/s added per parked run, health-check
    PINGs (:data:`NOT_POLLING`) left out."""
    ordered = sorted(levels)
    top, zero = ordered[-1], ordered[0]
    low = next((lv for lv in ordered if lv > 0 and lv != top), zero)
    out: dict[str, Any] = {"compared": [low, top], "zero": zero, "threshold_per_s": threshold,
                           "left_out": list(NOT_POLLING)}

    def total(level: int, what: str) -> float:
        per_command = levels[level].get(_PARTS[what], {})
        left_out = sum(float(per_command.get(name, 0.0)) for name in NOT_POLLING)
        return float(levels[level][what]["median"]) - left_out

    for what in _PARTS:
        hi = total(top, what)
        out[what] = {
            "per_parked_run": (hi - total(low, what)) / max(1, top - low),
            "vs_zero": hi - total(zero, what),
        }
    grew = {}
    for attr in ("top_level", "calls"):
        for name, rate in levels[top][attr].items():
            diff = rate - levels[low][attr].get(name, 0.0)
            if diff > threshold / 2 and name not in NOT_POLLING:
                grew[f"{attr}:{name}"] = round(diff, 3)
    out["grew"] = grew
    # Rates are counts over whole windows: round off the float error of their differences,
    # so that exactly the threshold (1.0/s added) is not judged above it.
    extra = round(max(out["top_level_total"]["per_parked_run"],
                      out["all_commands_total"]["per_parked_run"]) * (top - low), 6)
    out["added_per_s"] = extra
    out["busy_polling"] = extra > threshold
    return out


@dataclass(frozen=True)
class Observation:
    """How each level of waiting runs is observed (measurements 3 and 4)."""

    url: str
    windows: int
    window_s: float
    settle_s: float
    sources: Callable[[], dict[str, str]]
    check: Callable[[], None]
    cpu: CpuProbe
    progress: Callable[[str], None]


def observe_levels(levels: Sequence[int], publish_one: Callable[[], None],
                   wait_level: Callable[[int], None], waiting: Callable[[], int], label: str,
                   how: Observation) -> dict[int, Any]:
    """For each level (ascending), publish runs until that many wait, let them settle, and
    observe Redis over ``how.windows`` windows: the figures per level."""
    by_level: dict[int, Any] = {}
    published = 0
    for level in sorted(levels):
        while published < level:
            publish_one()
            published += 1
        wait_level(level)
        drain_result_messages()
        time.sleep(how.settle_s)
        cpu0, t0 = how.cpu(), time.monotonic()
        observed = observe(how.url, how.windows, how.window_s, how.sources)
        used, elapsed = cpu_delta(cpu0, how.cpu()), time.monotonic() - t0
        how.check()
        by_level[level] = {"summary": level_summary(observed),
                           "windows": [w.as_dict() for w in observed],
                           "cpu_percent": {k: v / elapsed * 100 for k, v in used.items()},
                           "waiting_after": waiting()}
        s = by_level[level]["summary"]
        how.progress(f"{level} {label}: {s['top_level_total']['median']:.1f} commands/s sent, "
                     f"{s['all_commands_total']['median']:.1f}/s executed (with "
                     "script-internal ones)")
    return by_level


def wait_rate_waiting(client: DurableClient, n: int, timeout_s: float,
                      check: Callable[[], None]) -> None:
    """Wait until ``n`` runs wait for a turn of ``rate_waiting``'s rate limit."""
    deadline = time.monotonic() + timeout_s
    while (waiting := client.rate_limit(RATE_WAITING).waiting) != n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{waiting} of {n} runs wait for a rate turn after "
                               f"{timeout_s:g} s")
        check()
        time.sleep(0.1)


def measure_rate_polling(url: str, levels: Sequence[int], windows: int, window_s: float,
                         settle_s: float, seconds: float, timeout_s: float,
                         sources: Callable[[], dict[str, str]], check: Callable[[], None],
                         cpu: CpuProbe, progress: Callable[[str], None],
                         threshold: float) -> dict[str, Any]:
    """Runs waiting for a turn of a rate limit (one start an hour): observe Redis at each
    number of waiting runs, then raise the rate and time how fast they all start."""
    client = DurableClient(app)
    records = records_client(url)
    task = app.tasks[RATE_WAITING]
    token = uuid.uuid4().hex
    first = task.apply_async((token, -1, seconds), queue=WORK_QUEUE)  # takes the hour's turn
    wait_spans(records, token, 1, timeout_s, check)
    ids: list[str] = []
    try:
        by_level = observe_levels(
            levels, lambda: ids.append(str(task.apply_async((token, len(ids), seconds),
                                                            queue=WORK_QUEUE).id)),
            lambda level: wait_rate_waiting(client, level, timeout_s, check),
            lambda: client.rate_limit(RATE_WAITING).waiting, "waiting for a rate turn",
            Observation(url, windows, window_s, settle_s, sources, check, cpu, progress))
        raised_at = time.time()
        client.set_rate_limit(RATE_WAITING, "1000/s", burst=100)
        spans = [s for s in wait_spans(records, token, len(ids) + 1, timeout_s, check)
                 if s[2] >= 0]  # not the first run, which took the hour's turn
        outcomes = run_outcomes(store_for(app), [first.id, *ids])
        drain_result_messages()
    finally:
        client.set_rate_limit(RATE_WAITING, None)
        records.close()
    starts = sorted(s[0] for s in spans)
    resume = {"runs": len(ids) + 1, "completed": outcomes["statuses"].get("completed", 0),
              "outcomes": outcomes,
              "first_start_after_s": (starts[0] - raised_at) if starts else None,
              "all_started_after_s": (starts[-1] - raised_at) if starts else None,
              "waiting_after": client.rate_limit(RATE_WAITING).waiting}
    levels_summary = {lv: v["summary"] for lv, v in by_level.items()}
    return {"levels": by_level, "scaling": scaling(levels_summary, threshold),
            "resume": resume}


def measure_polling(url: str, levels: Sequence[int], windows: int, window_s: float,
                    settle_s: float, seconds: float, timeout_s: float,
                    sources: Callable[[], dict[str, str]], check: Callable[[], None],
                    cpu: CpuProbe, progress: Callable[[str], None],
                    threshold: float) -> dict[str, Any]:
    """Pause the limit, park runs level by level, observe Redis at each level, resume."""
    client = DurableClient(app)
    broker = broker_client(url)
    records = records_client(url)
    task = app.tasks[LIMITED]
    token = uuid.uuid4().hex
    ids: list[str] = []
    try:
        client.set_concurrency_limit(LIMITED, 0)
        by_level = observe_levels(
            levels, lambda: ids.append(str(task.apply_async((token, len(ids), seconds),
                                                            queue=WORK_QUEUE).id)),
            lambda level: wait_parked(client, broker, level, timeout_s, check),
            lambda: limit_state(client)[1], "parked",
            Observation(url, windows, window_s, settle_s, sources, check, cpu, progress))
        resumed_at = time.time()
        client.set_concurrency_limit(LIMITED, LIMIT)
        spans = wait_spans(records, token, len(ids), timeout_s, check)
        after = wait_limit_idle(client)
        outcomes = run_outcomes(store_for(app), ids)
        drain_result_messages()
    finally:
        try:
            client.set_concurrency_limit(LIMITED, LIMIT)
        finally:
            broker.close()
            records.close()
    last_end = max(s[1] for s in spans)
    resume = {"runs": len(ids), "completed": outcomes["statuses"].get("completed", 0),
              "outcomes": outcomes, "limit_after": after,
              "all_done_after_s": last_end - resumed_at,
              "first_start_after_s": min(s[0] for s in spans) - resumed_at,
              "max_overlap": max_overlap(spans),
              "figures": {**span_figures(spans, LIMIT, seconds),
                          **handover_figures(spans, outcomes, LIMIT)}}
    levels_summary = {lv: v["summary"] for lv, v in by_level.items()}
    return {"levels": by_level, "scaling": scaling(levels_summary, threshold),
            "resume": resume}
