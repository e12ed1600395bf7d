"""Enqueue one order, wait for it, then print the run's trace as DurableClient reads it.

Needs a worker: ``celery -A proj worker -P solo --loglevel=INFO`` (``scripts/demo`` at the
repository root starts one). Exits 1 unless the run completed.

    python run_demo.py [ORDER_ID] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import sys
import uuid

from proj import app
from tasks import process_order

from celery_durable import DurableClient, RunInfo, RunStatus


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def fmt_time(run: RunInfo) -> str:
    if run.created_at is None or run.finished_at is None:
        return "-"
    return f"{(run.finished_at - run.created_at).total_seconds():.1f} s"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned columns under a header and a rule, indented by two spaces."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in [header, ["-" * w for w in widths], *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append(("  " + "  ".join(cells)).rstrip())
    return lines


def short_type(qualified: str) -> str:
    return qualified.rsplit(".", 1)[-1]


def describe(run: RunInfo) -> str:
    lines = [
        f"run {run.id}  ({run.task}, args {run.args})",
        f"  status    {run.status.value}",
        f"  attempts  {run.attempt}",
        f"  took      {fmt_time(run)} from enqueue to finish",
        f"  result    {run.result}",
        "",
        "steps (each executed once; later attempts get the committed value back)",
    ]
    rows = []
    for s in run.steps:
        failed = ", ".join(f"{short_type(f.type)}: {f.message}" for f in s.failures)
        rows.append([str(s.position), s.name, f"attempt {s.attempt}", fmt_ms(s.duration_ms),
                     f"{len(s.failures)}x ({failed})" if s.failures else "-"])
    lines += table(["#", "step", "committed in", "duration", "failed tries"], rows)
    lines += ["", "failed attempts"]
    failed_events = [e for e in run.events if e.type in ("attempt_failed", "run_failed")]
    if not run.attempt_errors:
        lines.append("  (none)")
    for error, event in zip(run.attempt_errors, failed_events, strict=True):
        then = (f"retried after {float(event.fields['retry_in_s']):.1f} s"
                if "retry_in_s" in event.fields else "run failed")
        lines.append(f"  attempt {event.fields.get('attempt', '?')}: {error.type}: "
                     f"{error.message}  -> {then}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("order_id", nargs="?", default=f"order-{uuid.uuid4().hex[:8]}")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    result = process_order.delay(args.order_id)
    print(f"enqueued process_order({args.order_id!r}): run id {result.id}", flush=True)
    print("waiting for the worker ...", flush=True)
    ok = True
    try:
        result.get(timeout=args.timeout)
    except Exception as exc:  # the demo reports any failure, then shows the trace
        print(f"the run did not succeed: {type(exc).__name__}: {exc}", flush=True)
        ok = False
    else:
        print("the run finished; its trace, as DurableClient(app).get_run() reads it:",
              flush=True)

    run = DurableClient(app).get_run(result.id)
    print()
    print(describe(run))
    ok = ok and run.status is RunStatus.COMPLETED
    print()
    print("demo " + ("succeeded" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
