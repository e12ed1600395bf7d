"""From raw samples to the figures of a repeat, and from repeats to min / median / max."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .measure import Summary, TaskSample, Timing, median_of, slope_us_per_step

#: Step counts of the two task sizes whose difference gives the per-step slope.
SMALL, LARGE = 1, 51


def _median(values: Iterable[float]) -> float:
    return float(statistics.median(values))


def derive_primitives(samples: Mapping[str, list[Timing]], prefix: str = "") -> dict[str, float]:
    """``<prefix><name>_us`` and ``..._cpu_us``: the median batch of each primitive (µs/op)."""
    d: dict[str, float] = {}
    for name, timings in samples.items():
        d[f"{prefix}{name}_us"] = _median(t.wall_us for t in timings)
        d[f"{prefix}{name}_cpu_us"] = _median(t.cpu_us for t in timings)
    return d


def derive_tasks(tasks: Sequence[TaskSample]) -> dict[str, float]:
    """Per-step slopes (wall and CPU) and N=1 figures of the tasks of one repeat (µs)."""
    d: dict[str, float] = {}
    for field, suffix in (("wall_us", "_us"), ("cpu_us", "_cpu_us")):
        for kind in ("durable", "plain"):
            d[f"{kind}_slope{suffix}"] = slope_us_per_step(tasks, kind, SMALL, LARGE, field)
        d[f"overhead{suffix}"] = d[f"durable_slope{suffix}"] - d[f"plain_slope{suffix}"]
    d["durable_n1_inner_us"] = median_of(tasks, "durable", SMALL, "wall_us")
    d["durable_n1_round_trip_us"] = median_of(tasks, "durable", SMALL, "round_trip_us")
    d["plain_n1_round_trip_us"] = median_of(tasks, "plain", SMALL, "round_trip_us")
    d["durable_fixed_us"] = d["durable_n1_round_trip_us"] - d["plain_n1_round_trip_us"]
    return d


def derive(
    worker: Mapping[str, list[Timing]],
    main: Mapping[str, list[Timing]],
    tasks: Sequence[TaskSample],
) -> dict[str, float]:
    """The figures of one repeat (µs, or ratios within the repeat).

    Ratios use the primitives measured in the worker thread, like the steps; ``main_*``
    figures are the same primitives measured from the main thread, outside the worker.
    """
    d = derive_primitives(worker) | derive_primitives(main, "main_") | derive_tasks(tasks)
    d["overhead_per_ping"] = d["overhead_us"] / d["ping_us"]
    d["overhead_per_evalsha"] = d["overhead_us"] / d["raw_evalsha_us"]
    d["commit_per_ping"] = d["commit_step_us"] / d["ping_us"]
    d["main_commit_per_ping"] = d["main_commit_step_us"] / d["main_ping_us"]
    d["overhead_minus_commit_us"] = d["overhead_us"] - d["commit_step_us"]
    d["overhead_cpu_per_ping_cpu"] = d["overhead_cpu_us"] / d["ping_cpu_us"]
    d["overhead_cpu_per_evalsha_cpu"] = d["overhead_cpu_us"] / d["raw_evalsha_cpu_us"]
    return d


def summarize(repeats: Sequence[Mapping[str, Any]]) -> dict[str, Summary]:
    """min / median / max over repeats of every derived figure."""
    keys = repeats[0]["derived"].keys()
    return {k: Summary.of([r["derived"][k] for r in repeats]) for k in keys}
