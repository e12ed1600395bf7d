"""The Lua scripts in ``lua/``, loaded once per process and registered per Redis client.

Each script keeps one invariant and opens with its KEYS/ARGV/returns header. redis-py's
``Script`` objects send EVALSHA and reload the script by themselves after a NOSCRIPT reply;
the hot path (one call per step) uses ``evalsha`` below, which does the same with less
Python per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.exceptions import NoScriptError

SCRIPT_NAMES = (
    "create_run", "claim_attempt", "commit_step", "append_event", "end_attempt",
    "renew_lease", "reap_run", "claim_idempotency", "release_idempotency",
    "slots", "cancel_run", "reopen_run", "wait_event", "send_event", "fail_run",
    "append_logs", "debounce", "rate", "save_progress", "extend_timeout", "set_version",
)


#: Scripts that keep runs waiting in order: ``lua/_waiting.lua`` (the order of a queue of
#: waiting runs, with fairness keys and priorities) is prepended to them.
WAITING_QUEUES = ("slots", "rate")
#: The scripts that append trace entries, with ``_trace.lua`` (the entry format) in front.
TRACE_WRITERS = ("create_run", "claim_attempt", "append_event", "append_logs", "end_attempt",
                 "cancel_run", "fail_run", "reap_run", "reopen_run", "extend_timeout",
                 "set_version")
#: The scripts that archive completed runs, with ``_archive.lua`` (the packing) in front.
ARCHIVE_WRITERS = ("end_attempt",)


@cache
def script_source(name: str) -> str:
    """The text of ``lua/<name>.lua`` (read once per process), with the shared queue,
    trace and archive functions in front of the scripts that use them."""
    lua = resources.files(__package__).joinpath("lua")
    text = lua.joinpath(f"{name}.lua").read_text("utf-8")
    if name in WAITING_QUEUES:
        text = lua.joinpath("_waiting.lua").read_text("utf-8") + text
    if name in ARCHIVE_WRITERS:
        text = lua.joinpath("_archive.lua").read_text("utf-8") + text
    if name in TRACE_WRITERS:
        text = lua.joinpath("_trace.lua").read_text("utf-8") + text
    return text


@dataclass(frozen=True, slots=True)
class Scripts:
    """The package's scripts, registered on one client."""

    create_run: Script
    claim_attempt: Script
    commit_step: Script
    append_event: Script
    end_attempt: Script
    renew_lease: Script
    reap_run: Script
    claim_idempotency: Script
    release_idempotency: Script
    slots: Script
    cancel_run: Script
    reopen_run: Script
    wait_event: Script
    send_event: Script
    fail_run: Script
    append_logs: Script
    save_progress: Script
    extend_timeout: Script
    set_version: Script
    debounce: Script
    rate: Script

    @classmethod
    def register(cls, client: redis.Redis | RedisCluster) -> Scripts:
        return cls(**{name: client.register_script(script_source(name)) for name in SCRIPT_NAMES})

    def load_all(self, client: redis.Redis | RedisCluster) -> None:
        """Load every script into the server's script cache (after a restart or a flush);
        a cluster client loads them on every primary."""
        for name in SCRIPT_NAMES:
            client.script_load(getattr(self, name).script)


def queue_call(pipe: Any, script: Script, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Queue an EVALSHA of ``script`` on ``pipe``.

    Unlike calling the Script with ``client=pipe``, this does not make redis-py send a
    SCRIPT EXISTS round trip before every pipeline; a NOSCRIPT reply is handled by
    RunStore, which loads the scripts and runs the pipeline again. The command is queued
    by name because redis-py's cluster pipeline blocks its ``evalsha`` method, while it
    routes an EVALSHA command by its keys' slot (so ``keys`` must share one).
    """
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)


def evalsha(client: Any, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """EVALSHA ``script`` on ``client`` (a redis-py client or a ``direct.DirectLine``) in
    one round trip; after a NOSCRIPT reply (server restart, SCRIPT FLUSH), load the script
    and send it again.

    Same outcome as calling the ``Script``, without the per-call work redis-py does there
    (it re-checks the client and the script's encoding on every call): 11 of the ~300 Python
    calls of a ``commit_step`` (bench.run's count). On a cluster client the command is
    routed by its keys' slot, and SCRIPT LOAD goes to every primary.
    """
    try:
        return client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    except NoScriptError:
        client.script_load(script.script)
        return client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
