"""Targets of the benchmark suite as JSON-ready records, written by each benchmark into its
result file (``"targets": [...]``) and gathered by ``bench.assemble`` into the headline table
of docs/benchmarks.md."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def summary(values: Sequence[float]) -> dict[str, float]:
    """min / median / max of ``values`` (same unit)."""
    return {"min": min(values), "median": float(statistics.median(values)), "max": max(values)}


def target(case: str, figure: str, measured: float, op: str, goal: float, unit: str = "×",
           spread: dict[str, float] | None = None, note: str = "") -> dict[str, Any]:
    """One target: ``measured op goal`` (``op`` is ``<=`` or ``>=``) decides met / not met.
    ``spread`` is the min / median / max the measured figure is the median of."""
    if op not in ("<=", ">="):
        raise ValueError(f"op must be '<=' or '>=', not {op!r}")
    met = measured <= goal if op == "<=" else measured >= goal
    return {"case": case, "figure": figure, "measured": measured, "op": op, "goal": goal,
            "unit": unit, "met": met, "spread": spread, "note": note}


def fmt(value: float, unit: str = "") -> str:
    """A figure with a sensible number of digits (and its unit)."""
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".rstrip() if unit and unit != "×" else (text + ("×" if unit else ""))


def fmt_summary(s: dict[str, float], unit: str = "") -> str:
    """``median (min–max)``."""
    return f"{fmt(s['median'], unit)} ({fmt(s['min'])}–{fmt(s['max'])})"
