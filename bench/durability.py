"""Cost of the commit durability modes (``durable_commit_durability``): µs per step commit.

Usage (from the repository root)::

    .venv/bin/python -m bench.durability [--repeats 5] [--batches 20] [--batch-size 50]

Starts its own redis-servers: one without persistence, one with ``appendonly yes``
(``appendfsync everysec``), one with ``appendfsync always``, and a master (AOF everysec) with
one replica. On each, ``RunStore.commit_step`` runs in batches on a claimed run (checkpoint
records shaped like a step's) in the mode given; the figure is the median batch, µs per
commit, and the ratio to ``none`` on the server without persistence, measured in the same
repeat. On Redis < 7.2 the ``aof`` mode is honoured only with ``appendfsync always`` (nothing
to wait for: the server fsyncs before replying) or by waiting for a replica (WAIT); on 7.2+
it sends WAITAOF. Writes ``bench/results/durability.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import redis

from celery_durable import DurabilityError
from celery_durable.config import DurableSettings
from celery_durable.store import RunStore

from . import common
from .redis_server import RedisServer, throwaway_redis
from .targets import fmt_summary, summary

#: (label, server, mode): the configurations measured, the first is the reference.
CONFIGS = (("none, no persistence", "plain", "none"),
           ("none, AOF everysec", "everysec", "none"),
           ("aof, AOF everysec", "everysec", "aof"),
           ("aof, appendfsync always", "always", "aof"),
           ("replica (WAIT 1), AOF everysec", "master", "replica"),
           ("aof → replica fallback, AOF everysec", "master", "aof"))
SERVERS = {"plain": (), "everysec": ("--appendonly", "yes", "--appendfsync", "everysec"),
           "always": ("--appendonly", "yes", "--appendfsync", "always"),
           "master": ("--appendonly", "yes", "--appendfsync", "everysec",
                      "--repl-diskless-sync-delay", "0")}
PAYLOAD = json.dumps({"id": "step", "v": "x" * 160, "t0": 1, "t1": 2, "a": 1})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.make_parser("bench.durability", __doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20, help="batches per configuration "
                        "and repeat (default 20)")
    parser.add_argument("--batch-size", type=int, default=50)
    common.add_common_args(parser, "durability.json and durability.md")
    args = parser.parse_args(argv)
    if min(args.repeats, args.batches, args.batch_size) < 1:
        parser.error("--repeats, --batches and --batch-size must be >= 1")
    return args


@contextmanager
def servers(exe: str) -> Iterator[dict[str, RedisServer]]:
    """Every server of SERVERS, plus a replica of ``master`` in sync with it."""
    with ExitStack() as stack:
        started = {name: stack.enter_context(throwaway_redis(exe, extra))
                   for name, extra in SERVERS.items()}
        master = started["master"]
        replica = stack.enter_context(
            throwaway_redis(exe, ("--replicaof", "127.0.0.1", str(master.port))))
        client = redis.Redis.from_url(master.url)
        rclient = redis.Redis.from_url(replica.url)
        try:
            deadline = time.monotonic() + 30
            while not (client.info("replication")["connected_slaves"] >= 1 and
                       rclient.info("replication")["master_link_status"] == "up"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica did not sync within 30 s")
                time.sleep(0.05)
        finally:
            client.close()
            rclient.close()
        yield started


class Committer:
    """A claimed run on one server, committing positions in order in one mode."""

    def __init__(self, server: RedisServer, mode: str) -> None:
        self.mode = mode
        self.store = RunStore(DurableSettings.model_validate(
            {"redis_url": f"{server.url}/0", "commit_durability": mode}))
        self._new_run()
        self.wait = self.store.commit_wait(mode)

    def _new_run(self) -> None:
        self.run_id = uuid.uuid4().hex
        self.store.create_run(self.run_id, "bench.durability", "[]", "{}", "bench")
        got = self.store.claim(self.run_id, owner="bench", nonce=uuid.uuid4().hex,
                               task="bench.durability", args_json="[]", kwargs_json="{}",
                               queue="bench")
        self.token, self.keys, self.pos = got.token, self.store.keys.run(self.run_id), 0

    def batch_us(self, size: int) -> float:
        """µs per commit of ``size`` commits (a fresh run past 5,000 steps)."""
        if self.pos > 5000:
            self._new_run()
        t0 = time.perf_counter()
        for _ in range(size):
            code = self.store.commit_step(self.keys, self.token, self.pos, "step", PAYLOAD)
            if code != 1:
                raise RuntimeError(f"commit returned {code}")
            self.pos += 1
        return (time.perf_counter() - t0) * 1e6 / size

    def close(self) -> None:
        self.store.client.close()


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    with common.bench_redis(args.redis_server) as (_, info), servers(args.redis_server) as srv:
        committers: dict[str, Committer] = {}
        unavailable: dict[str, str] = {}
        for label, server, mode in CONFIGS:
            try:
                committers[label] = Committer(srv[server], mode)
            except DurabilityError as exc:  # this server cannot honour the mode
                unavailable[label] = str(exc)
        try:
            for c in committers.values():
                c.batch_us(args.batch_size)  # warm up
            repeats = []
            for r in range(args.repeats):
                batches: dict[str, list[float]] = {label: [] for label in committers}
                for _ in range(args.batches):  # interleaved: drift hits every config alike
                    for label, c in committers.items():
                        batches[label].append(c.batch_us(args.batch_size))
                med = {label: float(statistics.median(v)) for label, v in batches.items()}
                ref = med[CONFIGS[0][0]]
                repeats.append({"us": med, "ratio": {k: v / ref for k, v in med.items()}})
                common.progress(f"repeat {r + 1}/{args.repeats}: " + ", ".join(
                    f"{k} {v:.0f} µs" for k, v in med.items()))
            waits = {label: (c.wait.mode if c.wait is not None else "nothing")
                     for label, c in committers.items()}
        finally:
            for c in committers.values():
                c.close()
    labels = list(committers)
    return {"machine": info, "repeats": repeats, "waits": waits, "unavailable": unavailable,
            "summary": {label: {"us": summary([r["us"][label] for r in repeats]),
                                "ratio": summary([r["ratio"][label] for r in repeats])}
                        for label in labels}}


WAIT_TEXT = {"nothing": "nothing", "aof": "WAITAOF 1 0", "replica": "WAIT 1",
             "fsync-always": "nothing (the server fsyncs before replying)"}


def render_markdown(result: Mapping[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        "## Commit durability modes (`bench.durability`)",
        "",
        f"`RunStore.commit_step` in batches of {cfg['batch_size']}, {cfg['batches']} batches "
        f"per configuration, interleaved; µs per commit, median (min–max) of "
        f"{cfg['repeats']} repeats; ratio to mode `none` on a server without persistence.",
        "",
        "| mode, server | the commit waits for | µs per commit | ratio |",
        "|---|---|---|---|",
    ]
    for label, s in result["summary"].items():
        lines.append(f"| {label} | {WAIT_TEXT[result['waits'][label]]} | "
                     f"{fmt_summary(s['us'])} | {fmt_summary(s['ratio'], '×')} |")
    for label, why in result["unavailable"].items():
        lines.append(f"| {label} | cannot be honoured: DurabilityError at the first commit "
                     f"(“{why.split(':')[0]}”) | – | – |")
    lines += ["", common.machine_line(result["machine"], "python", "redis_server", "redis_py"),
              ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return common.run_and_publish(args, "durability", run_benchmark, render_markdown)


if __name__ == "__main__":
    sys.exit(main())
