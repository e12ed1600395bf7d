"""What every benchmark entry point shares: its arguments, throwaway Redis, machine
information, SIGTERM handling, progress lines and the JSON + Markdown outputs."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
import timeit
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from .redis_server import RedisServer, server_version, throwaway_redis

RESULTS_DIR = Path(__file__).resolve().parent / "results"

R = TypeVar("R")

# -- arguments ----------------------------------------------------------------------------


def make_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``python -m <prog>``, its module docstring as the description."""
    return argparse.ArgumentParser(prog=f"python -m {prog}", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_common_args(parser: argparse.ArgumentParser, outputs: str,
                    keep_logs: bool = False) -> None:
    """``--redis-server`` and ``--out`` (``outputs`` names what goes there); with
    ``keep_logs``, ``--keep-logs`` (for benchmarks that start worker subprocesses)."""
    parser.add_argument("--redis-server", default="redis-server", help="redis-server executable")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR,
                        help=f"directory for {outputs}")
    if keep_logs:
        parser.add_argument("--keep-logs", action="store_true", help="keep the worker logs")


def config_of(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The arguments as a JSON-ready ``config`` (paths as strings), updated with ``extra``."""
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(extra)
    return config


# -- running ------------------------------------------------------------------------------


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanup of workers and redis-server


def run_timed(run: Callable[[argparse.Namespace], R], args: argparse.Namespace,
              ) -> tuple[R, float]:
    """``run(args)`` with warning-level logging and SIGTERM raising ``SystemExit`` (so that
    every process the benchmark started is stopped); returns its result and wall seconds."""
    logging.basicConfig(level=logging.WARNING)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    started = time.monotonic()
    result = run(args)
    return result, time.monotonic() - started


@contextmanager
def bench_redis(exe: str) -> Iterator[tuple[RedisServer, dict[str, Any]]]:
    """A throwaway redis-server (announced on stderr) and the machine information of the run,
    for the duration of the ``with`` block."""
    with throwaway_redis(exe) as server:
        progress(f"redis-server pid {server.pid} on {server.url}")
        yield server, machine_info(server_version(server.url))


# -- machine information ------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                             check=True, cwd=Path(__file__).resolve().parent.parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _reference_call() -> int:
    return sum([i * i for i in range(20)])


def python_speed_us() -> float:
    """Microseconds per call of a small pure-Python function (best of 5 batches): how fast
    this machine ran Python when the benchmark ran. Absolute figures (a resume's ms, a
    step's µs) move with it between runs on a shared VM; the ratios, paired within a run,
    much less."""
    timer = timeit.Timer(_reference_call)
    loops = 20_000
    return round(min(timer.repeat(5, loops)) / loops * 1e6, 3)


def machine_info(redis_version: str) -> dict[str, Any]:
    """Versions, CPU count, load, Python speed and commit of this run (JSON-ready)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "python_speed_us": python_speed_us(),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "loadavg_at_start": _loadavg(),
        "redis_server": redis_version,
        "redis_py": _version("redis"),
        "hiredis": _version("hiredis"),
        "celery": _version("celery"),
        "kombu": _version("kombu"),
        "celery_durable": _version("celery-durable"),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "argv": sys.argv,
    }


#: How the reports name the ``machine_info`` versions.
_LABELS = {"python": "Python", "redis_server": "redis-server", "redis_py": "redis-py",
           "hiredis": "hiredis", "celery": "Celery", "kombu": "kombu"}


def versions(machine: Mapping[str, Any], *keys: str) -> str:
    """``Python 3.12.1, redis-server 7.0.15, ...`` for the ``machine_info`` keys given."""
    return ", ".join(f"{_LABELS[key]} {machine[key]}" for key in keys)


def commit(machine: Mapping[str, Any]) -> str:
    """The git commit of the run, ``(dirty)`` if the working tree had changes."""
    return f"{machine['git_commit']}{' (dirty)' if machine['git_dirty'] else ''}"


def machine_line(machine: Mapping[str, Any], *keys: str) -> str:
    """The ``Machine: ...`` sentence of a report, with the versions of ``keys``."""
    speed = machine.get("python_speed_us")
    pace = f", reference Python call {speed} µs" if speed is not None else ""
    return (f"Machine: {versions(machine, *keys)}, {machine['cpu_count']} CPUs, load "
            f"{machine['loadavg_at_start']}{pace}, commit {commit(machine)}, "
            f"{machine['date_utc']}.")


# -- outputs ------------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through ``path.tmp`` (ignored by git) and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=False) + "\n")


def publish(out: Path, stem: str, data: Mapping[str, Any], markdown: str,
            elapsed_s: float | None = None) -> None:
    """Write ``<stem>.json`` and ``<stem>.md`` under ``out``, print the Markdown, and say
    where they went (and, given ``elapsed_s``, how long the run took) on stderr."""
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    write_json(json_path, data)
    write_atomic(md_path, markdown)
    print(markdown)
    took = "" if elapsed_s is None else f" in {elapsed_s:.1f} s"
    progress(f"wrote {json_path} and {md_path}{took}")


def run_and_publish(
    args: argparse.Namespace, stem: str, run: Callable[[argparse.Namespace], dict[str, Any]],
    render: Callable[[Mapping[str, Any]], str],
    targets: Callable[[Mapping[str, Any]], list[Any]] | None = None,
) -> int:
    """What every benchmark's ``main`` does once its arguments are parsed: run it, add its
    configuration (and wall time, seconds) and its judged targets, write ``<stem>.json``
    and ``<stem>.md``."""
    result, elapsed = run_timed(run, args)
    result = {"config": config_of(args, wall_time_s=round(elapsed, 1)), **result}
    result["targets"] = targets(result) if targets is not None else []
    publish(args.out, stem, result, render(result), elapsed)
    return 0
