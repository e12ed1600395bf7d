"""What Redis executes during a time window: ``INFO commandstats`` deltas and a ``MONITOR`` log.

``INFO commandstats`` counts every command the server executes, including the commands a
Lua script calls (in Redis 7, a ``ZADD`` inside ``slots.lua`` counts as a ``zadd``), and the
server time spent in each. ``MONITOR`` tells the two apart: a script's commands are logged
right after its ``EVALSHA`` with the client ``lua``, so the log gives the commands clients
send (each one a request on a connection; a pipeline sends several in one round trip) and
which script each nested command belongs to. The log also gives each command's client
port, which :func:`bench.worker_procs.local_ports` maps to the process that sent it.

Window boundaries are the benchmark's own ``INFO commandstats`` calls, each followed by an
``ECHO`` marker that the MONITOR reader uses to split its log the same way. The
benchmark's own commands (INFO, ECHO, CLIENT INFO) are left out of every figure.
"""

from __future__ import annotations

import hashlib
import importlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.lock

from celery_durable.scripts import SCRIPT_NAMES, script_source

#: Commands the measuring client itself sends (never counted).
OWN_COMMANDS = frozenset({"info", "echo", "client|info", "monitor"})
MARK = "bench-limits-mark"
END = "bench-limits-end"


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def script_names() -> dict[str, str]:
    """SHA1 -> name of every Lua script shipped in ``celery_durable/lua`` (what EVALSHA
    carries), and of the scripts kombu's Redis transport and Celery's Redis backend define
    as module constants (``kombu:<CONSTANT>``, ``celery:<CONSTANT>``) and redis-py's lock
    scripts."""
    names = {}
    for prefix, module in (("kombu", "kombu.transport.redis"),
                           ("celery", "celery.backends.redis")):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for attr, value in vars(mod).items():
            if attr.isupper() and isinstance(value, str) and "redis.call(" in value:
                names[_sha(value)] = f"{prefix}:{attr}"
    for attr, value in vars(redis.lock.Lock).items():  # kombu's restore mutex uses it
        if attr.startswith("LUA_") and isinstance(value, str):
            names[_sha(value)] = f"redis-py:Lock.{attr}"
    names.update({_sha(script_source(name)): name for name in SCRIPT_NAMES})
    return names


def command_stats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """``INFO commandstats`` as command -> (calls, usec)."""
    info: Mapping[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for name, v in info.items()}


def stats_delta(
    before: Mapping[str, tuple[int, int]], after: Mapping[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    """Calls and usec per command between two snapshots (own commands left out)."""
    delta = {}
    for name, (calls, usec) in after.items():
        c0, u0 = before.get(name, (0, 0))
        if name not in OWN_COMMANDS and calls - c0 > 0:
            delta[name] = (calls - c0, usec - u0)
    return delta


@dataclass
class Logged:
    """One MONITOR line: the client's port ('' for script-internal commands), whether the
    command was called by a script, the command name (EVALSHA as ``evalsha:<script>``)."""

    port: str
    lua: bool
    command: str
    script: str = ""  # for a script-internal command: the script that called it


@dataclass
class CommandLog:
    """MONITOR in a thread; :meth:`mark` splits the log into windows."""

    url: str
    own_port: str
    scripts: dict[str, str] = field(default_factory=script_names)
    windows: list[list[Logged]] = field(default_factory=list)
    error: BaseException | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._read, name="bench-monitor", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("MONITOR did not start")

    def _read(self) -> None:
        client = redis.Redis.from_url(self.url, socket_timeout=60, socket_connect_timeout=5)
        current: list[Logged] | None = None
        last_script = ""
        try:
            with client.monitor() as monitor:  # type: ignore[no-untyped-call]
                self._ready.set()
                while True:
                    entry: dict[str, Any] = monitor.next_command()
                    words = str(entry["command"]).split(" ")
                    name = words[0].lower()
                    port = str(entry["client_port"])
                    if port == self.own_port:
                        if name == "echo" and len(words) > 1 and words[1] == MARK:
                            current = []
                            self.windows.append(current)
                        elif name == "echo" and len(words) > 1 and words[1] == END:
                            return
                        continue
                    lua = entry["client_type"] == "lua"
                    if name == "evalsha" and len(words) > 1:
                        last_script = self.scripts.get(words[1], words[1][:8])
                        name = f"evalsha:{last_script}"
                    elif name in ("eval", "evalsha_ro", "eval_ro", "fcall"):
                        last_script = name
                    if current is not None:
                        current.append(Logged("" if lua else port, lua, name,
                                              last_script if lua else ""))
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            self._ready.set()
            client.close()

    def stop(self, client: redis.Redis) -> None:
        client.echo(END)
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.error is not None:
            raise RuntimeError(f"MONITOR reader failed: {self.error!r}") from self.error


@dataclass
class Window:
    """What Redis executed during one window, per second."""

    seconds: float
    #: INFO commandstats: command -> calls/s (every command, including script-internal ones)
    calls: dict[str, float]
    #: INFO commandstats: command -> server µs/s
    usec: dict[str, float]
    #: MONITOR: command -> top-level commands/s (what clients send; EVALSHA by script)
    top_level: dict[str, float]
    #: MONITOR: "<script>: <command>" -> script-internal commands/s
    in_scripts: dict[str, float]
    #: MONITOR: source (process) -> top-level commands/s
    by_source: dict[str, float]
    #: MONITOR: "<source> <command>" -> top-level commands/s
    by_source_command: dict[str, float]

    def total(self, what: str) -> float:
        return float(sum(getattr(self, what).values()))

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else
                    {n: round(x, 3) for n, x in sorted(v.items())})
                for k, v in self.__dict__.items()}


def _per_s(counter: Mapping[str, float], seconds: float) -> dict[str, float]:
    return {k: v / seconds for k, v in sorted(counter.items()) if v}


def observe(
    url: str,
    windows: int,
    seconds: float,
    sources: Callable[[], dict[str, str]],
    during: Callable[[int], None] | None = None,
) -> list[Window]:
    """``windows`` consecutive windows of ``seconds`` (or, with ``during``, one window per
    call of ``during(i)`` however long it takes). ``sources()`` maps client ports to a
    process label, read at the end (connections closed by then count as ``other``)."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        own_port = str(client.client_info()["addr"]).rsplit(":", 1)[1]
        log = CommandLog(url, own_port)
        log.start()
        stats = [command_stats(client)]
        times = [time.monotonic()]
        client.echo(MARK)
        for i in range(windows):
            if during is None:
                time.sleep(seconds)
            else:
                during(i)
            stats.append(command_stats(client))
            times.append(time.monotonic())
            client.echo(MARK)
        log.stop(client)
        labels = sources()
    finally:
        client.close()
    result = []
    for i in range(windows):
        elapsed = times[i + 1] - times[i]
        delta = stats_delta(stats[i], stats[i + 1])
        logged = log.windows[i] if i < len(log.windows) else []
        top = Counter(e.command for e in logged if not e.lua)
        nested = Counter(f"{e.script}: {e.command}" for e in logged if e.lua)
        source = Counter(labels.get(e.port, "other") for e in logged if not e.lua)
        source_command = Counter(f"{labels.get(e.port, 'other')} {e.command}"
                                 for e in logged if not e.lua)
        result.append(Window(
            seconds=elapsed,
            calls=_per_s({k: c for k, (c, _) in delta.items()}, elapsed),
            usec=_per_s({k: u for k, (_, u) in delta.items()}, elapsed),
            top_level=_per_s(top, elapsed),
            in_scripts=_per_s(nested, elapsed),
            by_source=_per_s(source, elapsed),
            by_source_command=_per_s(source_command, elapsed),
        ))
    return result
