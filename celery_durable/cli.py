"""``celery -A proj durable ...``: inspect and operate durable runs from the terminal.

Registered as a Celery subcommand (entry point ``celery.commands``), so ``-A`` loads the app
as for ``celery inspect``. Every command exits non-zero with a one-line reason when a run is
unknown, an argument is invalid or Redis cannot be reached; ``--json`` prints machine output.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from celery.bin.base import CeleryCommand

from .checks import server_problems, settings_problems
from .client import DurableClient
from .concurrency import limit_base
from .errors import ConfigurationError, DurableError, StoreError
from .models import LogRecordInfo, RunInfo, RunStatus, by_priority
from .rates import known_rates, rate_base
from .task import DurableTask
from .versions import code_version

F = TypeVar("F", bound=Callable[..., Any])


def _client(ctx: click.Context) -> DurableClient:
    app = ctx.obj.app
    # Import the app's task modules (imports/include), so task names and limits resolve.
    app.loader.import_default_modules()
    try:
        return DurableClient(app)
    except DurableError as exc:
        raise click.ClickException(str(exc)) from None


def _fail_clearly(fn: F) -> F:
    """Turn celery-durable errors into a one-line message and exit status 1."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StoreError as exc:
            raise click.ClickException(f"{exc} (is Redis running? check durable_redis_url)") \
                from None
        except DurableError as exc:
            raise click.ClickException(str(exc)) from None

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper  # type: ignore[return-value]


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    return "\n".join(lines)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


@click.group(name="durable")
def durable() -> None:
    """Inspect and operate celery-durable runs."""


@durable.command(cls=CeleryCommand)
@click.option("--status", type=click.Choice([s.value for s in RunStatus]), default=None)
@click.option("--task", default=None, help="only runs of this task")
@click.option("--version", "version", default=None, help="only runs of this code version")
@click.option("--in-flight", is_flag=True, help="only runs that have not ended")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON lines")
@click.pass_context
@_fail_clearly
def runs(ctx: click.Context, status: str | None, task: str | None, version: str | None,
         in_flight: bool, limit: int, as_json: bool) -> None:
    """List runs, newest first."""
    found = _client(ctx).list_runs(status=status, task=task, limit=limit, version=version,
                                   in_flight=in_flight)
    if as_json:
        for run in found:
            click.echo(run.model_dump_json())
        return
    rows = [[r.id, r.task, r.status.value, str(r.attempt), str(r.step_count),
             _when(r.created_at), r.version or "-",
             (r.error.type.rsplit(".", 1)[-1] if r.error else "")]
            for r in found]
    click.echo(_table(["run", "task", "status", "attempt", "steps", "created (UTC)",
                       "version", "error"], rows))


@durable.command(cls=CeleryCommand)
@click.option("--task", default=None, help="only runs of this task")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_fail_clearly
def versions(ctx: click.Context, task: str | None, as_json: bool) -> None:
    """Count in-flight runs per task and code version (retire a version at 0)."""
    client = _client(ctx)
    counts = client.versions(task=task)
    app = ctx.obj.app
    current = {t.name: code_version(t) for t in app.tasks.values() if isinstance(t, DurableTask)}
    if as_json:
        click.echo(json.dumps({"in_flight": counts, "current": current}))
        return
    rows = [[name, version or "(not started)", str(n),
             "yes" if current.get(name) == version else ""]
            for name, per in sorted(counts.items()) for version, n in sorted(per.items())]
    click.echo(_table(["task", "version", "in flight", "this code"], rows))


def _describe(run: RunInfo) -> str:
    lines = [f"run      {run.id}", f"task     {run.task}", f"status   {run.status.value}",
             f"attempt  {run.attempt}", f"created  {_when(run.created_at)}",
             f"finished {_when(run.finished_at)}", f"args     {run.args} {run.kwargs}",
             f"version  {run.version or '-'}"]
    if run.parent_id:
        lines.append(f"parent   {run.parent_id}")
    if run.children:
        lines.append(f"children {', '.join(run.children)}")
    if run.result is not None:
        lines.append(f"result   {json.dumps(run.result, default=str)[:200]}")
    lines += ["", _table(
        ["#", "step", "attempt", "ms", "failures"],
        [[str(s.position), s.name, str(s.attempt),
          f"{s.duration_ms:.0f}" if s.duration_ms is not None else "-", str(len(s.failures))]
         for s in run.steps])]
    for i, error in enumerate(run.attempt_errors, 1):
        lines += ["", f"error {i}: {error.type}: {error.message}"]
    if run.logs:
        lines += ["", f"logs ({len(run.logs)})"]
        lines += [_log_line(record) for record in run.logs]
    return "\n".join(lines)


def _printable(text: str) -> str:
    """``text`` with control characters (terminal escapes) shown as ``\\xNN``."""
    return "".join(c if c.isprintable() or c in "\n\t" else f"\\x{ord(c):02x}" for c in text)


def _log_line(record: LogRecordInfo) -> str:
    """One captured record: time, level, attempt, step, logger and the message, whose
    further lines (a traceback) are indented under it."""
    head = (f"{record.at.strftime('%H:%M:%S.%f')[:-3]}  {record.level:<8} a{record.attempt}  "
            f"{record.step or '-'}  {record.logger}: ")
    message = _printable(record.message).replace("\n", "\n" + " " * 4)
    return head + message


@durable.command(cls=CeleryCommand)
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_fail_clearly
def show(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Show a run's trace: steps, timings, attempts and errors."""
    run = _client(ctx).get_run(run_id)
    click.echo(run.model_dump_json(indent=2) if as_json else _describe(run))


@durable.command(cls=CeleryCommand)
@click.argument("run_id")
@click.option("--from-step", default=None, help="fork a new run from this step")
@click.pass_context
@_fail_clearly
def replay(ctx: click.Context, run_id: str, from_step: str | None) -> None:
    """Run a failed or cancelled run again, or fork a new one from a step."""
    new_id = _client(ctx).replay(run_id, from_step=from_step)
    click.echo(f"published run {new_id}")


@durable.command(cls=CeleryCommand)
@click.argument("run_id")
@click.pass_context
@_fail_clearly
def cancel(ctx: click.Context, run_id: str) -> None:
    """Cancel a run (and its children)."""
    prev = _client(ctx).cancel(run_id, "cancelled from the command line")
    if prev.is_terminal:
        click.echo(f"run {run_id} had already ended ({prev.value}); nothing to do")
    else:
        click.echo(f"run {run_id} cancelled (was {prev.value})")


@durable.command("send-event", cls=CeleryCommand)
@click.argument("key")
@click.option("--data", default=None, help="the payload, as JSON")
@click.option("--data-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="a file holding the JSON payload")
@click.pass_context
@_fail_clearly
def send_event(ctx: click.Context, key: str, data: str | None, data_file: Path | None) -> None:
    """Deliver an event payload to the runs waiting on KEY (or keep it for the next one)."""
    if data is not None and data_file is not None:
        raise click.UsageError("give --data or --data-file, not both")
    text = data_file.read_text() if data_file is not None else data
    try:
        payload = json.loads(text) if text is not None else None
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--data") from None
    woken = _client(ctx).send_event(key, payload)
    click.echo(f"event sent to {key!r}; woke {len(woken)} run(s)"
               + (f": {', '.join(woken)}" if woken else " (kept for the next one to wait)"))


@durable.command(cls=CeleryCommand)
@click.argument("name", required=False)
@click.argument("limit", required=False, type=click.IntRange(min=0))
@click.option("--rate", help="Set NAME's rate limit at runtime, e.g. 100/m ('coded' goes back "
              "to the one in code).")
@click.option("--burst", type=click.IntRange(min=1), help="Starts allowed at once (with --rate).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_fail_clearly
def limits(ctx: click.Context, name: str | None, limit: int | None, rate: str | None,
           burst: int | None, as_json: bool) -> None:
    """Show concurrency and rate limits; with NAME LIMIT, change a concurrency limit at
    runtime (0 pauses it); with NAME --rate R, change a rate limit."""
    client = _client(ctx)
    app = ctx.obj.app
    if name is not None and rate is not None:
        client.set_rate_limit(name, None if rate == "coded" else rate, burst)
        click.echo(f"{rate_base(name, app)}: rate limit set to {rate}")
        return
    if name is not None and limit is not None:
        client.set_concurrency_limit(name, limit)
        click.echo(f"{limit_base(name, app)}: limit set to {limit}")
        return
    coded: dict[str, int] = {}
    for task in app.tasks.values():
        if isinstance(task, DurableTask) and task.durable_concurrency_limit is not None:
            coded[f"task:{task.name}"] = task.durable_concurrency_limit
    rated = known_rates(app)
    coded.update({f"queue:{q}": n for q, n in client.store.settings.queue_limits.items()})
    if name is not None:
        names = [limit_base(name, app)] if name.startswith("queue:") or name in coded or \
            f"task:{name}" in coded else []
        rated = [rate_base(name, app)] if name.startswith("step:") or \
            f"task:{name}" in rated or name in rated else []
    else:
        names = sorted(coded)
    infos = [client.concurrency_limit(n) for n in names]
    rates = [client.rate_limit(n) for n in sorted(rated)]
    # Per-key rate limits appear while runs wait for a turn of them.
    rates += [client.rate_limit(base, key) for base, key in client.rate_queues()
              if key is not None and base in rated]
    if as_json:
        for info in infos:
            click.echo(json.dumps({"kind": "concurrency", **info.model_dump(),
                                   "coded": coded.get(info.name)}))
        for r in rates:
            click.echo(json.dumps({"kind": "rate", **r.model_dump()}))
        return
    if infos or not rates:
        click.echo(_table(["limit", "in code", "runtime", "in use", "waiting", "by priority"], [
            [i.name, str(coded.get(i.name, "-")), str(i.limit if i.limit is not None else "-"),
             str(len(i.holders)), str(len(i.parked)), by_priority(i.parked_by_priority)]
            for i in infos]))
    if rates:
        click.echo(_table(["rate limit", "key", "in code", "runtime", "free now",
                           "next turn in", "waiting", "by priority"], [
            [r.name, r.key or "-", r.coded or "-", r.runtime or "-", str(r.available_now),
             f"{r.next_turn_in_ms / 1000:.1f} s", str(r.waiting),
             by_priority(r.waiting_by_priority)] for r in rates]))



@durable.command(cls=CeleryCommand)
@click.pass_context
@_fail_clearly
def gc(ctx: click.Context) -> None:
    """Remove index entries whose run has expired."""
    removed = _client(ctx).store.prune_indexes()
    click.echo(f"removed {removed} stale index entr{'y' if removed == 1 else 'ies'}")


@durable.command(cls=CeleryCommand)
@click.pass_context
def doctor(ctx: click.Context) -> None:
    """Check Redis and the worker settings; print what to fix."""
    app = ctx.obj.app
    try:
        client = DurableClient(app)
        client.store.ping()
    except (DurableError, ConfigurationError) as exc:
        raise click.ClickException(f"cannot use the checkpoint store: {exc}") from None
    redis = client.store.client
    problems = server_problems(redis) + settings_problems(app, client.store.settings)
    advice = []
    if not int(redis.info("persistence").get("aof_enabled", 0)):
        advice.append("Redis runs without AOF: a Redis crash loses the checkpoints written "
                      "since its last snapshot (set appendonly yes, appendfsync everysec)")
    if (app.conf.worker_prefetch_multiplier or 4) > 1:
        advice.append("worker_prefetch_multiplier > 1: workers reserve messages they cannot "
                      "run yet (set it to 1 for concurrency limits and fair recovery)")
    for problem in problems:
        click.echo(f"FAIL  {problem}")
    for item in advice:
        click.echo(f"WARN  {item}")
    if not problems and not advice:
        click.echo(f"OK    Redis at {client.store.settings.redis_url} and the settings look "
                   "right for durable runs")
    if problems:
        ctx.exit(1)
