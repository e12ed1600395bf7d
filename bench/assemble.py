"""docs/benchmarks.md from the suite's result files: a headline table of every target
(measured, target, met / not met), then each benchmark's own section.

Usage: ``.venv/bin/python -m bench.assemble [--results bench/results] [--doc docs/benchmarks.md]``
(``bench.suite`` calls it after running the benchmarks). A result file that is missing is
listed as not run; nothing is measured here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import common
from .report import TARGET_PING_RATIO
from .targets import fmt, target

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
#: Result stems in the order of the issue's cases, with the module that writes each.
SECTIONS = (("latest", "bench.run", "case 1: per-step overhead vs PING and EVALSHA"),
            ("throughput", "bench.throughput", "cases 2, 3: throughput and apply_async().get()"),
            ("resume", "bench.resume", "case 4: resume cost"),
            ("dbos", "bench.dbos", "case 5: DBOS"),
            ("limits", "bench.limits", "case 6: enqueue with idempotency keys (and limits)"),
            ("recovery", "bench.recovery", "case 7: crash recovery"),
            ("memory", "bench.memory", "case 8: Redis memory per run"),
            ("durability", "bench.durability", "commit durability modes"),
            ("heartbeat", "bench.heartbeat", "heartbeat cost"))


def load(results: Path, stem: str) -> dict[str, Any] | None:
    path = results / f"{stem}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def derived_targets(stem: str, data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Targets of the benchmarks that predate ``"targets"`` in their JSON."""
    if "targets" in data:
        return list(data["targets"])
    if stem == "latest":
        s = data["summary"]["overhead_per_ping"]
        us = data["summary"]["overhead_us"]["median"]
        return [target("1", "per-step overhead inside a real durable task / Redis PING",
                       s["median"], "<=", TARGET_PING_RATIO, "×", s,
                       note=f"{fmt(us)} µs per step")]
    if stem == "limits":
        return limits_targets(data)
    if stem == "recovery":
        s = data["summary"]["durable_kill_to_next_step_s"]
        if s is None:
            return []
        return [target("7", "crash recovery: kill → next step starts (worst repeat)",
                       s["max"], "<=", 10.0, "s", s)]
    if stem == "heartbeat":
        share = data["figures"]["thread_cpu_share"]
        return [target("–", "heartbeat thread CPU at 1,000 active runs (share of a core)",
                       share * 100, "<=", 1.0, "%")]
    return []


def limits_targets(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """bench.limits' three targets, for the measurements that ran."""
    out = []
    if "enqueue" in data:
        s = data["enqueue"]["summary"]["keyed_over_durable"]
        vs = data["enqueue"]["summary"]["keyed_over_celery"]["median"]
        out.append(target("6", "enqueue with an idempotency key / durable enqueue without",
                          s["median"], ">=", 0.8, "×", s,
                          note=f"keyed / plain Celery {vs:.2f}×"))
    if "slots" in data:
        s = {k: v * 100 for k, v in data["slots"]["summary"]["share_of_ideal"].items()}
        out.append(target("–", "concurrency_limit=4 slot utilisation (share of the ideal "
                          "80 runs/s)", s["median"], ">=", 90.0, "%", s))
    for part, what in (("polling", "parked runs"),
                       ("rate_polling", "runs waiting for a rate turn")):
        if part not in data:
            continue
        scaling = data[part]["scaling"]
        low, high = scaling["compared"]
        added = scaling["added_per_s"]
        out.append(target("–", f"{what}: Redis commands/s added from {low} to {high} "
                          "(more would be busy polling)", added, "<=",
                          scaling["threshold_per_s"], "/s"))
    return out


def _demote(markdown: str) -> str:
    """A section whose first heading is level 2 (``##``), its other headings shifted by as
    much (never above level 2)."""
    def level(line: str) -> int:
        return len(line) - len(line.lstrip("#"))

    lines = markdown.strip().splitlines()
    first = next((level(line) for line in lines if line.startswith("#")), 2)
    out = []
    for line in lines:
        if line.startswith("#"):
            n = level(line)
            line = "#" * max(2, n + 2 - first) + line[n:]
        out.append(line)
    return "\n".join(out)


def _goal(t: Mapping[str, Any]) -> str:
    return f"{'≤' if t['op'] == '<=' else '≥'} {fmt(t['goal'], t['unit'])}"


def render(results: Path, noisy_note: str) -> str:
    loaded = {stem: load(results, stem) for stem, _, _ in SECTIONS}
    rows, missing = [], []
    for stem, module, case in SECTIONS:
        data = loaded[stem]
        if data is None:
            missing.append(f"`{module}` ({case})")
            continue
        rows += derived_targets(stem, data)
    met = sum(1 for t in rows if t["met"])
    speeds = [data["machine"]["python_speed_us"] for data in loaded.values()
              if data is not None and "python_speed_us" in data.get("machine", {})]
    pace = ("" if not speeds else
            f" How fast the machine ran Python during this run: {min(speeds)}–{max(speeds)} µs "
            "per call of a reference function (`bench.common.python_speed_us`, measured at "
            "the start of each benchmark; lower is faster), to compare absolute figures "
            "between runs.")
    lines = [
        "# Benchmarks",
        "",
        "Generated by `scripts/bench` (`python -m bench.suite`) from `bench/results/*.json`; "
        "every comparison is measured in the same run on the same machine and reported as a "
        "ratio, medians with (min–max) over repeats. How each figure is measured: "
        "bench/README.md.",
        "",
        noisy_note + pace,
        "",
        f"## Targets: {met} of {len(rows)} met",
        "",
        "| case | figure | measured | target | |",
        "|---|---|---|---|---|",
    ]
    for t in rows:
        spread = t.get("spread")
        measured = fmt(t["measured"], t["unit"])
        if spread:
            measured += f" ({fmt(spread['min'])}–{fmt(spread['max'])})"
        note = f" — {t['note']}" if t.get("note") else ""
        lines.append(f"| {t['case']} | {t['figure']}{note} | **{measured}** | {_goal(t)} | "
                     f"{'met' if t['met'] else '**not met**'} |")
    if any(str(t["case"]) == "2" and not t["met"] for t in rows):
        lines += ["", WHY_THROUGHPUT]
    if missing:
        lines += ["", "Not run in this suite run: " + ", ".join(missing) + "."]
    for stem, _module, _case in SECTIONS:
        md = results / f"{stem}.md"
        if loaded[stem] is not None and md.exists():
            lines += ["", _demote(md.read_text(encoding="utf-8"))]
    return "\n".join(lines) + "\n"


WHY_THROUGHPUT = (
    "Why the throughput targets (case 2) are not met: a plain Celery task costs Redis a few "
    "cheap commands (the delivery, the unacked record, the result, the acknowledgement). A "
    "durable run adds three Lua scripts that the worker waits for: the claim (fenced lease, "
    "checkpoints loaded), one commit per step and the end (status, trace, the archive of "
    "the run's checkpoints that keeps its memory small; it also writes Celery's result and "
    "acknowledges the message, which saves those round trips). Redis's own time, from "
    "`INFO commandstats` while a solo worker drained 3,000 one-step tasks on this VM: about "
    "50 µs per plain task and 250 µs per durable one, of which the three scripts take "
    "220 µs (one at a time on an idle server: claim 40–60 µs, commit 25–30 µs, end 55–75 "
    "µs; a script costs 5–9 µs before its first command, and each Redis call inside it "
    "1.5–3 µs; the scripts make as few as their invariants allow). And each commit is on "
    "Redis before its step returns, which is what makes a step durable: a step is a full "
    "round trip, 40–100 µs on this VM's loopback even when the worker polls for the reply "
    "(`durable_reply_spin_us`, on the solo pool). The worker's side was profiled too "
    "(py-spy): celery-durable's own Python per one-step run is about two thirds of what "
    "Celery spends on a plain task, spread over many small pieces (packing the scripts' "
    "arguments, Celery's result meta, the archive, encoding), none above a tenth of it. "
    "0.85× and 0.6× would need commits batched or not waited for, which would break that "
    "promise.")

NOISY = ("The machine is a shared 2-core VM: other processes (other engineers' test suites) "
         "ran during the measurements, so absolute figures move between runs and the "
         "min–max ranges are wide where it was busy; compare the ratios, which are paired "
         "within a repeat.")


def main(argv: list[str] | None = None) -> int:
    parser = common.make_parser("bench.assemble", __doc__)
    parser.add_argument("--results", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--note", default=NOISY, help="the paragraph under the title")
    args = parser.parse_args(argv)
    common.write_atomic(args.doc, render(args.results, args.note))
    common.progress(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
