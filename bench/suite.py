"""The whole benchmark suite in one command: every benchmark, then docs/benchmarks.md.

Usage (from the repository root; ``scripts/bench`` installs what it needs first)::

    .venv/bin/python -m bench.suite                 # every case, about 9 minutes
    .venv/bin/python -m bench.suite --quick         # tiny sizes (a smoke run, ~1 minute)
    .venv/bin/python -m bench.suite --only resume,memory

Runs each benchmark as ``python -m bench.<name>`` (each starts and stops its own
redis-server and workers) with the sizes below, writes ``<out>/*.json`` and ``*.md``, then
assembles ``--doc`` (docs/benchmarks.md). A benchmark that fails is reported and the others
still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from . import assemble, common

#: (name, arguments of the full run, arguments of the quick run); None: not in quick runs.
BENCHMARKS: tuple[tuple[str, list[str], list[str] | None], ...] = (
    ("run", ["--repeats", "5", "--rounds", "20"],
     ["--repeats", "1", "--rounds", "2", "--batches", "2", "--batch-size", "10"]),
    ("throughput", ["--tasks", "800", "--repeats", "5", "--latency-calls", "200"],
     ["--tasks", "40", "--repeats", "1", "--latency-calls", "5", "--pools", "solo"]),
    ("resume", ["--repeats", "400"], ["--repeats", "2", "--sizes", "10,1000"]),
    ("dbos", ["--repeats", "5", "--rounds", "30"], ["--repeats", "1", "--rounds", "3"]),
    ("limits", ["--repeats", "3", "--rounds", "10", "--runs", "120", "--windows", "2",
                "--window-s", "5"], None),
    ("recovery", ["--repeats", "3", "--stock-repeats", "1"], None),
    ("memory", ["--runs", "500"], ["--runs", "10"]),
    ("durability", ["--repeats", "5"], ["--repeats", "1", "--batches", "2",
                                        "--batch-size", "10"]),
    ("heartbeat", ["--duration", "10", "--profile-duration", "5"],
     ["--runs", "50", "--duration", "2", "--profile-duration", "0"]),
)
ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.make_parser("bench.suite", __doc__)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes; skips bench.limits and bench.recovery")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--doc", type=Path, default=assemble.DOC)
    args = parser.parse_args(argv)
    names = [name for name, _, _ in BENCHMARKS]
    args.only = [n.strip() for n in args.only.split(",") if n.strip()] or names
    unknown = set(args.only) - set(names)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}: use {', '.join(names)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    failed, started = [], time.monotonic()
    for name, full, quick in BENCHMARKS:
        if name not in args.only or (args.quick and quick is None):
            continue
        chosen = quick if args.quick and quick is not None else full
        cmd = [sys.executable, "-m", f"bench.{name}", *chosen,
               "--out", str(args.out)]
        common.progress(f"== bench.{name}: {' '.join(cmd[3:])}")
        t0 = time.monotonic()
        code = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL).returncode
        common.progress(f"== bench.{name}: exit {code} after {time.monotonic() - t0:.0f} s")
        if code != 0:
            failed.append(name)
    note = assemble.NOISY + (" This was a quick run (`--quick`, tiny sizes): its figures "
                             "are not meaningful." if args.quick else "")
    common.write_atomic(args.doc, assemble.render(args.out, note))
    common.progress(f"wrote {args.doc}; suite took {time.monotonic() - started:.0f} s"
                    + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
