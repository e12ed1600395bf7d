"""The Markdown report of ``bench.run`` (the per-step overhead)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .common import commit
from .measure import Summary

#: Issue 8's target: one Redis round trip per step, overhead at most this × a PING.
TARGET_PING_RATIO = 1.5


#: Rows of the Markdown tables: (summary key, label, unit, decimals).
Row = tuple[str, str, str, int]
WALL_ROWS: tuple[Row, ...] = (
    ("ping_us", "a. Redis PING round trip (redis-py, `make_client` settings)", "µs", 1),
    ("raw_evalsha_us", "b. raw EVALSHA {HSET 220 B JSON + XADD}", "µs", 1),
    ("commit_step_us", "d. `RunStore.commit_step` in a loop (no durable task)", "µs", 1),
    ("context_only_us", "e. step machinery without Redis (`RunContext`, null store)", "µs", 2),
    ("durable_slope_us", "c. durable task: slope per step (N=1→51)", "µs", 1),
    ("plain_slope_us", "c. plain task: slope per call (N=1→51)", "µs", 3),
    ("overhead_us", "**c. per-step overhead (durable − plain slope)**", "µs", 1),
    ("overhead_per_ping", "**c / a: per-step overhead / PING**", "×", 2),
    ("overhead_per_evalsha", "c / b: per-step overhead / raw EVALSHA", "×", 2),
    ("commit_per_ping", "d / a: `commit_step` / PING", "×", 2),
    ("overhead_minus_commit_us", "c − d: per-step overhead − `commit_step`", "µs", 1),
    ("main_ping_us", "a′. PING from the main thread (outside the worker)", "µs", 1),
    ("main_raw_evalsha_us", "b′. raw EVALSHA from the main thread", "µs", 1),
    ("main_commit_step_us", "d′. `commit_step` from the main thread (no worker)", "µs", 1),
    ("main_commit_per_ping", "d′ / a′", "×", 2),
    ("durable_n1_inner_us", "durable task N=1: step loop inside the worker", "µs", 1),
    ("durable_n1_round_trip_us", "durable task N=1: `apply_async().get()` round trip", "µs", 0),
    ("plain_n1_round_trip_us", "plain task N=1: `apply_async().get()` round trip", "µs", 0),
    ("durable_fixed_us", "durable − plain round trip, N=1 (per-task fixed cost + 1 step)",
     "µs", 0),
)
CPU_ROWS: tuple[Row, ...] = (
    ("ping_cpu_us", "a. PING", "µs", 1),
    ("raw_evalsha_cpu_us", "b. raw EVALSHA {HSET + XADD}", "µs", 1),
    ("commit_step_cpu_us", "d. `RunStore.commit_step` direct", "µs", 1),
    ("context_only_cpu_us", "e. step machinery without Redis", "µs", 2),
    ("overhead_cpu_us", "**c. per-step overhead in the worker (durable − plain)**", "µs", 1),
    ("overhead_cpu_per_ping_cpu", "c. CPU per step / PING CPU", "×", 2),
    ("overhead_cpu_per_evalsha_cpu", "c. CPU per step / raw EVALSHA CPU", "×", 2),
)


def _cpus(affinity: list[int], count: int | None) -> str:
    if len(affinity) == count:
        return "all"
    return ",".join(str(c) for c in affinity) + " (pinned)"


def _fmt(value: float, decimals: int) -> str:
    return f"{value:,.{decimals}f}"


def _target_line(summary: Mapping[str, Summary]) -> str:
    ratio = summary["overhead_per_ping"]
    verdict = "met" if ratio.median <= TARGET_PING_RATIO else "NOT met"
    return (f"Target: per-step overhead ≤ {TARGET_PING_RATIO:g}× a PING round trip — "
            f"median {ratio.median:.2f}× (repeats {ratio.min:.2f}–{ratio.max:.2f}×): "
            f"**{verdict}**.")


def _table(summary: Mapping[str, Summary], rows: tuple[Row, ...]) -> list[str]:
    lines = ["| measurement | min | median | max | unit |", "|---|---:|---:|---:|---|"]
    for key, label, unit, decimals in rows:
        s = summary[key]
        cells = " | ".join(_fmt(v, decimals) for v in (s.min, s.median, s.max))
        lines.append(f"| {label} | {cells} | {unit} |")
    return lines


CALL_ROWS: tuple[tuple[str, str], ...] = (
    ("ping", "a. PING"),
    ("raw_evalsha", "b. raw EVALSHA {HSET + XADD}"),
    ("commit_step", "d. `RunStore.commit_step`"),
    ("context_only", "e. step machinery without Redis (per step)"),
)


def _one_off_table(one_off: Mapping[str, Mapping[str, float]]) -> list[str]:
    calls, server = one_off["calls_per_op"], one_off["server_us_per_call"]
    lines = ["| operation | Python calls per operation | Redis-side µs per call |",
             "|---|---:|---:|"]
    for key, label in CALL_ROWS:
        usec = f"{server[key]:.1f}" if key in server else "—"
        lines.append(f"| {label} | {calls[key]:.0f} | {usec} |")
    return lines


def render_markdown(
    summary: Mapping[str, Summary],
    one_off: Mapping[str, Any],
    info: Mapping[str, Any],
    config: Mapping[str, Any],
) -> str:
    """The results table (min / median / max over repeats) with the run's context."""
    lines = [
        f"### celery-durable per-step overhead ({info['date_utc']})",
        "",
        f"{config['repeats']} repeats; each figure is a per-repeat median, then min / median / "
        "max over repeats. Ratios are computed within each repeat.",
        "",
        "Wall-clock time per operation (what a task waits). a–e are measured by the worker "
        "thread (c inside durable/plain task bodies, a, b, d, e in a plain task), a′–d′ by "
        "the main thread, interleaved with them:",
        "",
        *_table(summary, WALL_ROWS),
        "",
        _target_line(summary),
        "",
        "CPU time of the measuring thread per operation (`time.thread_time`, user + "
        "system: Python and the kernel's socket work, without the wait for Redis), worker "
        "thread:",
        "",
        *_table(summary, CPU_ROWS),
        "",
        "Measured once before the worker starts: Python function calls per operation "
        "(cProfile count, builtins included; deterministic, comparable across machines) and "
        "Redis-side time per call (`INFO commandstats` `usec_per_call`; for EVALSHA it "
        "includes the script's commands):",
        "",
        *_one_off_table(one_off),
        "",
        f"Machine: {info['cpu_count']} CPUs, Python {info['python']}, "
        f"redis-server {info['redis_server']} (no persistence, loopback), "
        f"redis-py {info['redis_py']} (hiredis: {info['hiredis'] or 'no'}), "
        f"Celery {info['celery']}, solo pool in-process worker; "
        f"CPUs used {_cpus(info['cpu_affinity'], info['cpu_count'])}; "
        f"load average at start {info['loadavg_at_start']}; "
        f"reference Python call {info.get('python_speed_us')} µs; "
        f"commit {commit(info)}.",
        "",
    ]
    return "\n".join(lines)
