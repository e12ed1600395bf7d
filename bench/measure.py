"""Timing primitives: batches of Redis operations, the step machinery, and durable tasks.

Every figure is a mean over a batch (time of the batch / its size) in microseconds, like the
per-step slope measured inside the worker; a repeat keeps the median batch. Each timing has
a wall-clock part (``time.perf_counter``) and a CPU part (``time.thread_time`` of the
measuring thread, user + system: Python and the kernel's socket work, not the wait for Redis).
"""

from __future__ import annotations

import cProfile
import json
import pstats
import statistics
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import redis
from celery import Celery
from redis.commands.core import Script

from celery_durable.config import DurableSettings
from celery_durable.context import RunContext, bind_context, unbind_context
from celery_durable.keys import KeySpace, RunKeys
from celery_durable.store import RunStore, now_ms

from .workload import DURABLE_TASK, PLAIN_TASK, QUEUE, noop_step, timed_loop

#: The reference checkpoint script: one HSET of a ~220-byte JSON value and one XADD.
RAW_CHECKPOINT_LUA = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'type', 'step_committed',
           'pos', ARGV[1])
return 1
"""
RAW_PAYLOAD_BYTES = 220
TASK_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Timing:
    """Mean time per operation of one batch, in microseconds."""

    wall_us: float
    cpu_us: float


#: One operation of a batch, called with its index in the batch.
Op = Callable[[int], object]
#: Measures one batch of the given size; returns the mean time per operation.
Batch = Callable[[int], Timing]


@dataclass(frozen=True)
class Summary:
    """min / median / max of a list of samples (same unit as the samples)."""

    min: float
    median: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        return cls(min(samples), statistics.median(samples), max(samples))

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def per_op(loop: dict[str, float], size: int) -> Timing:
    """A :func:`~bench.workload.timed_loop` result divided by its ``size`` calls (µs/op)."""
    return Timing(loop["wall_us"] / size, loop["cpu_us"] / size)


def batch_timing(op: Op, size: int) -> Timing:
    """Run ``op(0) .. op(size - 1)``; return the mean wall and CPU time per call (µs)."""
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    for i in range(size):
        op(i)
    wall1, cpu1 = time.perf_counter(), time.thread_time()
    return Timing((wall1 - wall0) * 1e6 / size, (cpu1 - cpu0) * 1e6 / size)


def op_batches(make_op: Callable[[], Op]) -> Batch:
    """A :data:`Batch` that times a fresh ``make_op()`` (setup not timed) per batch."""
    return lambda size: batch_timing(make_op(), size)


def calls_per_op(run: Callable[[], object], ops: int) -> float:
    """Python function calls (counted by cProfile, builtins included) per operation when
    ``run()`` performs ``ops`` operations: a deterministic, machine-independent cost figure.
    """
    profile = cProfile.Profile()
    profile.runcall(run)
    return pstats.Stats(profile).total_calls / ops  # type: ignore[attr-defined, no-any-return]


def op_calls_per_op(make_op: Callable[[], Op], size: int) -> float:
    """:func:`calls_per_op` of one batch of ``make_op()`` (its setup not counted)."""
    op = make_op()
    return calls_per_op(lambda: [op(i) for i in range(size)], size)


def server_us_per_op(
    client: redis.Redis, command: str, make_op: Callable[[], Op], size: int, batches: int = 4
) -> float:
    """Redis-side µs per call of ``command`` (``INFO commandstats``) over ``batches`` batches
    of ``make_op()``, their setup not counted. For EVALSHA it includes the script's commands.
    """
    usec = calls = 0
    for _ in range(batches):
        op = make_op()
        client.config_resetstat()
        for i in range(size):
            op(i)
        stats = client.info("commandstats")[f"cmdstat_{command}"]
        usec, calls = usec + int(stats["usec"]), calls + int(stats["calls"])
    return usec / calls


# -- Redis primitives ---------------------------------------------------------------------


def ping_op(client: redis.Redis) -> Callable[[], Op]:
    """Batches of PING on ``client``."""
    return lambda: lambda _i: client.ping()


def raw_payload(size: int = RAW_PAYLOAD_BYTES) -> str:
    """A compact JSON object of exactly ``size`` bytes, shaped like a checkpoint record."""
    head = {"id": "fetch_order#12", "t0": now_ms(), "t1": now_ms() + 3, "a": 1, "v": ""}
    bare = len(json.dumps(head, separators=(",", ":")))
    head["v"] = "x" * (size - bare)
    return json.dumps(head, separators=(",", ":"))


def raw_checkpoint_op(client: redis.Redis, maxlen: int) -> Callable[[], Op]:
    """Batches of EVALSHA{HSET ~220 B JSON + XADD}, each batch on a new pair of keys."""
    script: Script = client.register_script(RAW_CHECKPOINT_LUA)
    payload = raw_payload()

    def make() -> Op:
        base = f"bench:{{raw-{uuid.uuid4().hex}}}"
        keys = [f"{base}:steps", f"{base}:trace"]
        return lambda i: script(keys, [i, payload, maxlen])

    return make


def step_id(position: int, name: str = "noop") -> str:
    """The step id RunContext gives the ``position``-th call of step ``name``."""
    return name if position == 0 else f"{name}#{position + 1}"


def step_payloads(size: int, attempt: int = 1) -> list[str]:
    """Checkpoint records as RunContext encodes them for ``noop_step(i)``, positions 0..size-1."""
    ts = now_ms()
    return [
        json.dumps({"id": step_id(i), "v": i, "t0": ts, "t1": ts, "a": attempt},
                   separators=(",", ":"), ensure_ascii=False)
        for i in range(size)
    ]


def commit_step_op(store: RunStore, size: int) -> Callable[[], Op]:
    """Batches of ``RunStore.commit_step`` on a freshly claimed run.

    The claim and the first step (position 0, which also sets the steps hash's TTL) are not
    timed, matching the slope inside the worker, which excludes the first step too.
    """
    payloads = step_payloads(size + 1)
    ids = [step_id(i) for i in range(size + 1)]

    def commit(keys: RunKeys, token: str, position: int) -> int:
        code = store.commit_step(keys, token, position, ids[position], payloads[position])
        if code != 1:
            raise RuntimeError(f"commit_step returned {code} at position {position}")
        return code

    def make() -> Op:
        run_id = f"bench-commit-{uuid.uuid4().hex}"
        token = store.claim(run_id, owner="bench", nonce=uuid.uuid4().hex, task="bench.direct",
                            args_json="[]", kwargs_json="{}", queue="bench").token
        keys = store.keys.run(run_id)
        commit(keys, token, 0)
        return lambda i: commit(keys, token, i + 1)

    return make


# -- the step machinery without Redis -----------------------------------------------------


class NullStore:
    """Stands in for RunStore in RunContext: accepts every commit without I/O."""

    def __init__(self, settings: DurableSettings) -> None:
        self.settings = settings
        self.keys = KeySpace(settings.key_prefix)

    def commit_step(self, *args: Any, **kwargs: Any) -> int:
        return 1


def context_batch(settings: DurableSettings) -> Batch:
    """Batches of ``noop_step`` calls in a bound RunContext whose store does nothing.

    This is celery-durable's Python cost per step (wrapper, replay lookup, encoding,
    bookkeeping) without redis-py or the network.
    """

    def batch(size: int) -> Timing:
        ctx = RunContext(run_id=f"bench-null-{uuid.uuid4().hex}", attempt=1, task_name="bench",
                         token="1", owner="bench", store=cast(RunStore, NullStore(settings)),
                         checkpoints={})
        bound = bind_context(ctx)
        try:
            return per_op(timed_loop(noop_step, size), size)
        finally:
            unbind_context(bound)

    return batch


# -- durable tasks in a real worker -------------------------------------------------------


@dataclass(frozen=True)
class TaskSample:
    """One task execution: its step loop timed inside the worker, and the client round trip."""

    kind: str  # "durable" or "plain"
    steps: int
    wall_us: float  # step loop wall time, measured inside the task body
    cpu_us: float  # step loop CPU time of the worker thread
    round_trip_us: float  # apply_async() + get() as seen by the client (includes the broker)


def run_task(app: Celery, kind: str, steps: int) -> TaskSample:
    """Publish one task with ``steps`` steps and wait for its result."""
    task = app.tasks[DURABLE_TASK if kind == "durable" else PLAIN_TASK]
    started = time.perf_counter()
    inner = task.apply_async((steps,), queue=QUEUE).get(timeout=TASK_TIMEOUT_S)
    round_trip = (time.perf_counter() - started) * 1e6
    return TaskSample(kind, steps, float(inner["wall_us"]), float(inner["cpu_us"]), round_trip)


def run_tasks(app: Celery, rounds: int, sizes: Sequence[int]) -> list[TaskSample]:
    """``rounds`` rounds, each running every (kind, size) once, interleaved."""
    return [
        run_task(app, kind, steps)
        for _ in range(rounds)
        for kind in ("durable", "plain")
        for steps in sizes
    ]


def median_of(samples: Sequence[TaskSample], kind: str, steps: int, field: str) -> float:
    """Median of ``field`` (``wall_us``, ``cpu_us``, ``round_trip_us``) of matching samples."""
    values = [getattr(s, field) for s in samples if s.kind == kind and s.steps == steps]
    return float(statistics.median(values))


def slope_us_per_step(
    samples: Sequence[TaskSample], kind: str, small: int, large: int, field: str = "wall_us"
) -> float:
    """Per-step cost (µs) from the median ``field`` of ``small``- and ``large``-step tasks."""
    low = median_of(samples, kind, small, field)
    high = median_of(samples, kind, large, field)
    return (high - low) / (large - small)


# -- primitives in batches, in this thread or in the worker's ------------------------------

#: Name of the plain task that measures primitive batches inside the worker thread.
PRIMITIVES_TASK = "bench.primitives"
#: Timings as JSON (a task result): name -> [[wall_us, cpu_us], ...].
TimingsJson = dict[str, list[list[float]]]


def measure_primitives(
    ops: Mapping[str, Batch], batches: int, size: int
) -> dict[str, list[Timing]]:
    """Per-batch timings of every primitive, batches interleaved across primitives."""
    samples: dict[str, list[Timing]] = {name: [] for name in ops}
    for _ in range(batches):
        for name, batch in ops.items():
            samples[name].append(batch(size))
    return samples


def timings_to_json(samples: Mapping[str, list[Timing]]) -> TimingsJson:
    return {name: [[t.wall_us, t.cpu_us] for t in ts] for name, ts in samples.items()}


def timings_from_json(data: TimingsJson) -> dict[str, list[Timing]]:
    return {name: [Timing(w, c) for w, c in pairs] for name, pairs in data.items()}


def register_primitives_task(app: Celery, ops: Mapping[str, Batch]) -> None:
    """Register :data:`PRIMITIVES_TASK`: ``measure_primitives(ops, batches, size)`` run by
    the worker thread (the in-process worker shares ``ops`` and their Redis client)."""

    def primitives(batches: int, size: int) -> TimingsJson:
        return timings_to_json(measure_primitives(ops, batches, size))

    app.task(name=PRIMITIVES_TASK)(primitives)


def measure_primitives_in_worker(app: Celery, batches: int, size: int) -> dict[str, list[Timing]]:
    """:func:`measure_primitives` executed by the worker thread, in a plain task."""
    result = app.tasks[PRIMITIVES_TASK].apply_async((batches, size), queue=QUEUE)
    return timings_from_json(result.get(timeout=TASK_TIMEOUT_S))
