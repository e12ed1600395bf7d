"""RunStore: the only module that sends Redis commands for runs (see keys.py for the schema).

Hot-path budget: ``commit_step`` is one round trip (one EVALSHA); an attempt costs a constant
number more (claim + its index update, end + its index update). Per-run writes are single
scripts over one hash slot; index writes follow in the same or the next round trip and are
allowed to lag (readers check the run hash).
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery
from redis.client import NEVER_DECODE
from redis.crc import key_slot
from redis.exceptions import NoScriptError, ResponseError

from . import archive, durability
from .config import DurableSettings, settings_for
from .connections import StoreClient, is_cluster, make_client
from .direct import CommandRecorder, DirectLine
from .errors import CheckpointDecodeError, DurabilityError, StoreError
from .indexes import RunIndexes
from .keys import KeySpace, LimitKeys, RunKeys
from .models import TERMINAL_STATUSES, RunStatus
from .results import CeleryResult
from .scripts import Scripts, evalsha, queue_call

if TYPE_CHECKING:
    from .acks import FusedAck

#: Leases renewed per script call by the heartbeat.
LEASE_BATCH = 500
#: How often (s) each thread waits for the reply of a record it could send quietly.
QUIET_RECHECK_S = 5.0


def now_ms() -> int:
    """Current wall-clock time in epoch milliseconds (the unit of every stored timestamp)."""
    return time.time_ns() // 1_000_000


@contextmanager
def _redis_errors(what: str) -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        raise StoreError(f"celery-durable could not {what}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of claim_attempt.lua.

    ``outcome`` is ``claimed`` (this attempt owns the run), ``busy`` (another live attempt
    does), ``done`` (the run already ended; ``status`` and ``result`` say how),
    ``crashed`` (its workers died more than ``durable_max_crashes`` times: now failed) or
    ``noslot`` (a concurrency limit taken in the same round trip is full: not claimed).
    """

    outcome: str
    token: str = ""
    attempt: int = 0
    status: str = ""
    crashes: int = 0
    failures: int = 0
    created_ms: int = 0
    #: Position -> undecoded payload of every committed step: a dict of this claim's own,
    #: which the attempt's RunContext takes over (no copy of a long run's checkpoints).
    checkpoints: dict[str, str] | None = None
    result: str = ""
    owner: str = ""
    lease_expires_ms: int = 0
    holder_pid: int = 0
    #: An extended run_timeout deadline (epoch ms; 0: none recorded).
    deadline_ms: int = 0
    #: The code version recorded for the run ('' if none).
    version: str = ""
    #: The replies of the slots.lua acquires sent with the claim (see ``RunStore.claim``).
    slot_replies: list[list[Any]] = field(default_factory=list)


def _checkpoints(reply: Any) -> dict[str, str]:
    """Position -> undecoded payload, from the steps hash's HGETALL reply: a dict through
    redis-py's pipeline, a flat ``[field, value, ...]`` list (RESP2) or a dict (RESP3) on
    the DirectLine, which applies no response callbacks."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


def waiting_by_rank(fair: Mapping[Any, Any]) -> dict[int, int]:
    """Waiting runs per priority rank, from a queue's bookkeeping hash (its ``p:<rank>``
    counts, kept by _waiting.lua) of a concurrency limit or a rate limit."""
    return {int(str(k)[2:]): int(v) for k, v in fair.items()
            if str(k).startswith("p:") and int(v) > 0}


#: claim_attempt.lua's previous status of a run that the claim itself created.
NEW_RUN = "new"


class RunStore:
    """Typed operations on runs, over one Redis client."""

    def __init__(self, settings: DurableSettings, client: StoreClient | None = None) -> None:
        self.settings = settings
        self.keys = KeySpace(settings.key_prefix)
        self.client: StoreClient = client if client is not None else make_client(settings)
        #: On Redis Cluster a script may only take keys of one hash slot.
        self.cluster = is_cluster(self.client)
        self.scripts = Scripts.register(self.client)
        self._commit_script = self.scripts.commit_step
        #: The hot path's round trips (claim, commit, end) on a connection per thread.
        self._direct = DirectLine(self.client)
        #: Where single hot-path commands go: the DirectLine, or the client without one.
        self._hot: Any = self._direct if self._direct.enabled else self.client
        self.indexes = RunIndexes(self.keys, settings)
        #: What commits wait for, per durability mode (detected on first use).
        self._commit_waits: dict[str, durability.CommitWait | None] = {}
        #: Per thread: when a record_published_run last waited for its reply (monotonic s).
        self._quiet_checks = threading.local()

    # -- attempt lifecycle (workers) -------------------------------------------------------

    def create_run(
        self, run_id: str, task: str, args_json: str, kwargs_json: str, queue: str,
        canvas_json: str = "", idempotency_key: str = "",
    ) -> bool:
        """Record a new pending run (publish side). Returns False if it already existed.
        ``canvas_json`` holds the publish's canvas options (see requeue.CANVAS_OPTIONS);
        ``idempotency_key`` is the call's key, kept on the run for the admin views."""
        def build(pipe: Any) -> None:
            self._queue_create(pipe, run_id, task, args_json, kwargs_json, queue, canvas_json,
                               idempotency_key)

        with _redis_errors(f"record run {run_id}"):
            return bool(self._pipelined(build)[0])

    def _queue_create(self, pipe: Any, run_id: str, task: str, args_json: str,
                      kwargs_json: str, queue: str, canvas_json: str,
                      idempotency_key: str) -> None:
        s, k, ts = self.settings, self.keys.run(run_id), now_ms()
        queue_call(pipe, self.scripts.create_run, k.as_list(),
                   [ts, task, args_json, kwargs_json, queue, s.active_ttl_ms,
                    s.trace_maxlen, canvas_json, idempotency_key])
        self.indexes.new(pipe, run_id, task, ts)

    def record_published_run(
        self, run_id: str, task: str, args_json: str, kwargs_json: str, queue: str,
        idempotency_key: str,
    ) -> None:
        """:meth:`create_run` for a keyed run whose message is out already, without waiting
        for the reply where the connection allows it (``DirectLine.send_quietly``).

        Nobody needs that reply: the message is published, and the worker's claim records
        a run that is missing. Each thread waits for one record every
        :data:`QUIET_RECHECK_S` seconds, so that a server that lost its scripts (a restart,
        SCRIPT FLUSH) gets them again; until then quiet records may be dropped by the
        server, and those runs are recorded by their claim instead (without the key, which
        only the admin views show).

        Raises:
            StoreError: the record could not be sent (the message is published anyway).
        """
        local = self._quiet_checks
        direct = self._direct
        if (direct.enabled and time.monotonic() - getattr(local, "at", -QUIET_RECHECK_S)
                < QUIET_RECHECK_S and direct.can_send_quietly()):
            recorder = CommandRecorder()
            self._queue_create(recorder, run_id, task, args_json, kwargs_json, queue, "",
                               idempotency_key)
            with _redis_errors(f"record run {run_id}"):
                direct.send_quietly(recorder.commands)
            return
        self.create_run(run_id, task, args_json, kwargs_json, queue, "", idempotency_key)
        local.at = time.monotonic()

    def _pipelined(self, build: Callable[[Any], None]) -> list[Any]:
        """Run the commands ``build`` queues in one round trip; if the server lost our
        scripts (restart, SCRIPT FLUSH), load them and run the pipeline again (every
        command we pipeline is idempotent)."""
        if self._direct.enabled:
            return self._pipelined_direct(build)
        for retry in (False, True):
            with self.client.pipeline(False) as pipe:
                build(pipe)
                try:
                    return list(pipe.execute())
                except NoScriptError:
                    if retry:
                        raise
            self.scripts.load_all(self.client)
        raise AssertionError("unreachable")  # pragma: no cover

    def _pipelined_direct(self, build: Callable[[Any], None]) -> list[Any]:
        """_pipelined on this thread's DirectLine: the first error reply is raised, as
        redis-py's pipeline does, once every reply is read."""
        recorder = CommandRecorder()
        build(recorder)
        for retry in (False, True):
            replies = self._direct.pipeline(recorder.commands)
            if retry or not any(isinstance(r, NoScriptError) for r in replies):
                break
            self.scripts.load_all(self.client)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    def claim(
        self,
        run_id: str,
        *,
        owner: str,
        nonce: str,
        task: str,
        args_json: str,
        kwargs_json: str,
        queue: str,
        pid: int = 0,
        delivery_tag: str = "",
        dead_pid: int = 0,
        version: str = "",
        acquire: Sequence[tuple[LimitKeys, list[Any]]] = (),
        listed: bool = True,
    ) -> Claim:
        """Start an attempt: take the fenced lease, load every checkpoint and move the run to
        the ``running`` index (one round trip: the claim script, then HGETALL of the steps
        hash, which no other attempt can change once the claim has bumped the token).

        ``acquire``: slots.lua acquires (keys, :meth:`slot_argv`) sent first in the same
        round trip, one Redis server only (:attr:`single_server`); the claim then happens
        only if the run holds a slot of each, else the outcome is ``noslot``. Their replies
        are in ``Claim.slot_replies`` either way.

        ``listed``: the run was recorded at publish, so it is in the lists of all runs and
        of its task. If not (a run sent by name), the claim's round trip also adds it there
        (``ZADD NX``: a run that is listed after all keeps its place); a run that the claim
        creates while ``listed`` is True is listed one round trip later."""
        if acquire and not self.single_server:
            raise ValueError("slots can be taken with the claim on one Redis server only")
        s, k, ts = self.settings, self.keys.run(run_id), now_ms()
        argv: list[Any] = [ts, owner, nonce, s.lease_ttl_ms, task, s.active_ttl_ms,
                           s.trace_maxlen, args_json, kwargs_json, queue, pid, delivery_tag,
                           s.max_crashes, s.retention_ms, dead_pid or "", version]
        claim_keys = k.as_list()
        if acquire:
            claim_keys += [keys.holders for keys, _ in acquire]
            argv.append(run_id)

        def build(pipe: Any) -> None:
            for keys, slot_argv in acquire:
                queue_call(pipe, self.scripts.slots, keys.as_list(), slot_argv)
            queue_call(pipe, self.scripts.claim_attempt, claim_keys, argv)
            pipe.hgetall(k.steps)
            self.indexes.claimed(pipe, run_id, owner, ts + s.lease_ttl_ms, ts)
            if not listed:
                self.indexes.new(pipe, run_id, task, ts, status=None)

        with _redis_errors(f"start an attempt of run {run_id}"):
            replies = self._pipelined(build)
        slot_replies = [list(r) for r in replies[:len(acquire)]]
        reply, steps = replies[len(acquire):len(acquire) + 2]
        outcome = reply[0]
        self._index_after_claim(run_id, task, owner, ts, reply, listed)
        if outcome == "noslot":
            return Claim("noslot", slot_replies=slot_replies)
        if outcome == "done":
            return Claim("done", status=reply[1], result=reply[2], slot_replies=slot_replies)
        if outcome == "busy":
            return Claim("busy", owner=reply[1], lease_expires_ms=int(reply[2] or 0),
                         holder_pid=int(reply[3] or 0), slot_replies=slot_replies)
        if outcome == "crashed":
            return Claim("crashed", status=RunStatus.FAILED.value, crashes=int(reply[1]),
                         slot_replies=slot_replies)
        return Claim(
            "claimed",
            token=str(reply[1]),
            attempt=int(reply[2]),
            status=reply[3],
            crashes=int(reply[4]),
            failures=int(reply[5]),
            created_ms=int(reply[6]),
            deadline_ms=int(reply[7] or 0),
            version=str(reply[8] or ""),
            checkpoints=_checkpoints(steps),
            slot_replies=slot_replies,
        )

    def _index_after_claim(self, run_id: str, task: str, owner: str, ts: int,
                           reply: Sequence[Any], listed: bool) -> None:
        """Put the indexes right where the claim's optimistic update guessed wrong."""
        if reply[0] == "claimed" and reply[3] == NEW_RUN:
            if listed:
                # A run this claim created although its message said it was recorded (the
                # record was lost): the optimistic update put it in the running and lease
                # indexes; only the lists of all runs and of its task are missing (one
                # round trip, no read back).
                with _redis_errors(f"index run {run_id}"), self.client.pipeline(False) as pipe:
                    self.indexes.new(pipe, run_id, task, ts, status=None)
                    pipe.execute()
        elif reply[0] != "claimed" or reply[3] not in RunStatus._value2member_map_:
            # Not the usual outcome (a duplicate, an ended run, a crash loop, no slot).
            self._repair_indexes(run_id, task, owner)

    def commit_step(
        self, keys: RunKeys, token: str, position: int, step_id: str, checkpoint: str,
        logs: Sequence[str] = (),
        *,
        blob: str | None = None,
        durability_mode: str | None = None,
    ) -> int:
        """Commit a checkpoint: one EVALSHA, the whole per-step cost in Redis. Returns the
        script's code (see commit_step.lua). ``keys`` are the run's keys (built once per
        attempt by the caller); buffered ``logs`` ride in the same round trip; ``blob`` is a
        result offloaded to the run's blobs hash (written by the same script call).
        ``durability_mode`` (default ``durable_commit_durability``) other than ``"none"``
        makes the same round trip wait for the AOF or replica acknowledgement."""
        args: tuple[Any, ...] = (token, position, checkpoint, step_id,
                                 time.time_ns() // 1_000_000)
        script_keys = [keys.run, keys.steps]
        if blob is not None:
            args, script_keys = (*args, blob), [*script_keys, keys.blobs]
        mode = durability_mode or self.settings.commit_durability
        if mode != "none":
            return self._commit_waiting(keys, mode, args, step_id, logs, script_keys)
        try:
            if logs:
                return int(self._with_logs(keys, logs, self._commit_script, script_keys, args)[0])
            return int(evalsha(self._hot, self._commit_script, script_keys, args))
        except redis.RedisError as exc:
            raise StoreError(
                f"celery-durable could not commit step {step_id!r} of {keys.run}: {exc}"
            ) from exc

    def commit_wait(self, mode: str) -> durability.CommitWait | None:
        """What commits in ``mode`` wait for on this store's server (detected once).

        Raises:
            DurabilityError: the server cannot honour ``mode``.
        """
        if mode not in self._commit_waits:
            if self.cluster or not isinstance(self.client, redis.Redis):
                # WAIT/WAITAOF cover one connection's writes; a cluster pipeline spreads a
                # commit's round trip over nodes, so there is no single connection to wait on.
                raise DurabilityError(
                    f"commit durability {mode!r} is not supported with Redis Cluster: use "
                    "durable_commit_durability='none' there, or a single server or Sentinel")
            with _redis_errors(f"detect whether Redis can honour commit durability {mode!r}"):
                caps = durability.detect(self.client)
            s = self.settings
            self._commit_waits[mode] = durability.plan(mode, caps, s.commit_replicas,
                                                       s.commit_wait_timeout_ms)
        return self._commit_waits[mode]

    def _commit_waiting(self, keys: RunKeys, mode: str, args: Sequence[Any], step_id: str,
                        logs: Sequence[str], script_keys: Sequence[str]) -> int:
        """commit_step followed, in the same pipeline (WAIT and WAITAOF cover their own
        connection's writes only), by the wait of ``mode``."""
        what = f"step {step_id!r} of {keys.run}"
        try:
            wait = self.commit_wait(mode)
            calls: list[tuple[Any, Sequence[str], Sequence[Any]]] = []
            if logs:
                calls.append((self.scripts.append_logs, [keys.run, keys.trace],
                              [self.settings.trace_maxlen, *logs]))
            calls.append((self._commit_script, script_keys, args))
            then = wait.queue if wait is not None and wait.sends_command else None
            replies = self._send(calls, then)
            if any(isinstance(r, NoScriptError) for r in replies):
                self.scripts.load_all(self.client)
                replies = self._send(calls[-1:], then)  # the commit is idempotent
            code = replies[len(replies) - (2 if then else 1)]
            if isinstance(code, Exception):
                raise code
            if then is not None and wait is not None:
                wait.check(replies[-1], what)
            return int(code)
        except DurabilityError:
            self._commit_waits.pop(mode, None)  # detect again: replicas come and go
            raise
        except redis.RedisError as exc:
            raise StoreError(f"celery-durable could not commit {what}: {exc}") from exc

    def append_logs(self, run_id: str, logs: Sequence[str]) -> int:
        """Append captured log records (flat values, see append_logs.lua) to the trace."""
        k = self.keys.run(run_id)
        with _redis_errors(f"record the logs of run {run_id}"):
            return int(self.scripts.append_logs([k.run, k.trace],
                                                [self.settings.trace_maxlen, *logs]))

    def _with_logs(self, keys: RunKeys, logs: Sequence[str], script: Any,
                   script_keys: Sequence[str], args: Sequence[Any],
                   then: Callable[[Any], None] | None = None) -> list[Any]:
        """Run ``script`` with the attempt's buffered log records written just before it,
        and the commands ``then`` queues (index updates) after it, in the same round trip.
        A failed log write is dropped (logs never fail a run). Scripts the server lost are
        loaded and only the commands that failed are sent again. Returns the script's
        reply followed by those of ``then``'s commands; an error reply among them is
        raised."""
        recorder = CommandRecorder()
        queue_call(recorder, self.scripts.append_logs, [keys.run, keys.trace],
                   [self.settings.trace_maxlen, *logs])
        queue_call(recorder, script, script_keys, args)
        if then is not None:
            then(recorder)
        commands = recorder.commands
        replies = self._send_commands(commands)
        lost = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if lost:
            self.scripts.load_all(self.client)
            for i, reply in zip(lost, self._send_commands([commands[i] for i in lost]),
                                strict=True):
                replies[i] = reply
        for reply in replies[1:]:
            if isinstance(reply, Exception):
                raise reply
        return replies[1:]

    def _send(self, calls: Sequence[tuple[Any, Sequence[str], Sequence[Any]]],
              then: Callable[[Any], None] | None = None) -> list[Any]:
        """EVALSHA each call in one pipeline, followed by what ``then`` queues; errors are
        returned in place, not raised."""
        recorder = CommandRecorder()
        for script, keys, args in calls:
            queue_call(recorder, script, keys, args)
        if then is not None:
            then(recorder)
        return self._send_commands(recorder.commands)

    def _send_commands(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send ``commands`` (as a CommandRecorder collects them) in one pipeline; errors
        are returned in place, not raised."""
        with self.client.pipeline(False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return list(pipe.execute(raise_on_error=False))

    def append_event(
        self, run_id: str, event_type: str, fields: Mapping[str, Any], token: str = "",
        logs: Sequence[str] = (),
    ) -> int:
        """Append a trace event; fenced when ``token`` is given. Returns the script's code.
        Buffered ``logs`` are written before it, in the same round trip."""
        k = self.keys.run(run_id)
        argv: list[Any] = [token, self.settings.trace_maxlen, "type", event_type]
        for name, value in fields.items():
            argv += [name, value]
        with _redis_errors(f"record a {event_type} event of run {run_id}"):
            if logs:
                return int(self._with_logs(k, logs, self.scripts.append_event,
                                           [k.run, k.trace], argv)[0])
            return int(self.scripts.append_event([k.run, k.trace], argv))

    def load_blob(self, keys: RunKeys, position: int) -> str | None:
        """The offloaded result of the step at ``position``, or None if it is missing."""
        with _redis_errors(f"read the result of step {position} of {keys.run}"):
            value = self.client.hget(keys.blobs, str(position))
        return None if value is None else str(value)

    def read_blobs(self, run_id: str) -> dict[str, str]:
        """Every offloaded step result of the run, by step position."""
        with _redis_errors(f"read the offloaded results of run {run_id}"):
            raw = self.client.hgetall(self.keys.run(run_id).blobs)
        return {str(pos): str(blob) for pos, blob in raw.items()}

    def save_progress(self, keys: RunKeys, token: str, position: int, record: str) -> int:
        """Save the progress of the step at ``position`` (save_progress.lua; fenced).
        Returns the script's code."""
        with _redis_errors(f"save the progress of step {position} of {keys.run}"):
            return int(self.scripts.save_progress([keys.run, keys.progress],
                                                  [token, position, record]))

    def load_progress(self, keys: RunKeys, position: int) -> str | None:
        """The progress record last saved for the step at ``position``, or None."""
        with _redis_errors(f"read the progress of step {position} of {keys.run}"):
            value = self.client.hget(keys.progress, str(position))
        return None if value is None else str(value)

    def extend_deadline(self, keys: RunKeys, token: str, deadline_ms: int,
                        known_ms: int) -> int:
        """Move the run's run_timeout deadline to ``deadline_ms`` unless it is already later
        (extend_timeout.lua; fenced). Returns the deadline in force or a negative code."""
        with _redis_errors(f"extend the timeout of {keys.run}"):
            return int(self.scripts.extend_timeout(
                [keys.run, keys.trace],
                [token, deadline_ms, known_ms, self.settings.trace_maxlen, now_ms()]))

    def set_version(self, keys: RunKeys, token: str, version: str, found: str) -> int:
        """Record that the run goes on with code ``version`` (set_version.lua; fenced)."""
        with _redis_errors(f"record the code version of {keys.run}"):
            return int(self.scripts.set_version(
                [keys.run, keys.trace],
                [token, version, found, self.settings.trace_maxlen, now_ms()]))

    def decide_patch(self, keys: RunKeys, change_id: str, decision: bool) -> bool:
        """Record ``decision`` for ``patched(change_id)`` unless the run already has one;
        return the recorded decision (the first one wins, forever, for this run)."""
        field = f"patch:{change_id}"
        with _redis_errors(f"record patch {change_id!r} of {keys.run}"), \
                self.client.pipeline(False) as pipe:
            pipe.hsetnx(keys.run, field, "1" if decision else "0")
            pipe.hget(keys.run, field)
            _, stored = pipe.execute()
        return bool(stored == "1")

    def end_attempt(
        self,
        run_id: str,
        token: str,
        status: RunStatus,
        event: Mapping[str, Any],
        *,
        task: str,
        owner: str = "",
        result_json: str = "",
        error_json: str = "",
        logs: Sequence[str] = (),
        checkpoints: Mapping[str, str] | None = None,
    ) -> str | None:
        """End the attempt holding ``token``: release the lease, set ``status``, record
        ``event`` (a mapping with a ``type``). Returns the previous status, or None if the
        attempt had been fenced out. Buffered ``logs`` are written first, in the same round
        trip. ``checkpoints`` (position -> payload: every checkpoint of the run, as the
        attempt knows them) make a completed run archived by the same script call (see
        archive.py), unless ``durable_archive`` is off; the script checks them against
        the steps hash and leaves the run as it is if they differ.
        """
        return self.end_attempt_releasing(
            run_id, token, status, event, task=task, owner=owner, result_json=result_json,
            error_json=error_json, logs=logs, checkpoints=checkpoints)[0]

    def end_attempt_releasing(
        self,
        run_id: str,
        token: str,
        status: RunStatus,
        event: Mapping[str, Any],
        *,
        task: str,
        owner: str = "",
        result_json: str = "",
        error_json: str = "",
        logs: Sequence[str] = (),
        checkpoints: Mapping[str, str] | None = None,
        release: Sequence[tuple[LimitKeys, int]] = (),
        celery_result: CeleryResult | None = None,
        ack: FusedAck | None = None,
    ) -> tuple[str | None, list[list[Any]]]:
        """``end_attempt``, and give back the concurrency slots in ``release`` (keys,
        default limit) if the attempt was not fenced out. On one Redis server the releases
        ride in the same round trip, each skipped by slots.lua if a later attempt holds
        the run (the same fencing token end_attempt.lua checks); elsewhere they follow.
        ``celery_result`` (one Redis server, see results.py): Celery's result of the
        run, written and published by the same script call unless the attempt is fenced
        out. ``ack`` (one Redis server, see acks.py): the run's message, acknowledged by
        the same script call unless the attempt is fenced out. Returns the previous status
        (None: fenced out) and the slots.lua replies."""
        s, k, ts = self.settings, self.keys.run(run_id), now_ms()
        terminal = status in TERMINAL_STATUSES
        ttl = s.retention_ms if terminal else s.active_ttl_ms
        packed = None
        if status is RunStatus.COMPLETED and checkpoints is not None and s.archive != "off":
            packed = archive.pack(checkpoints, compress=s.archive == "zlib")
        argv: list[Any] = [token, status.value, ts, ttl, s.trace_maxlen, result_json, error_json,
                           1 if terminal else 0,
                           packed.head if packed else "", packed.digest if packed else ""]
        celery_keys, celery_argv = self._celery_parts(celery_result, ack)
        argv += celery_argv
        for name, value in event.items():
            argv += [name, value]
        script_keys = k.as_list() + celery_keys
        along = release if self.single_server else ()

        def then(pipe: Any) -> None:
            self.indexes.ended(pipe, run_id, status, ts, task=task, owner=owner or None)
            for keys, default in along:
                queue_call(pipe, self.scripts.slots, [*keys.as_list(), k.run],
                           self.slot_argv("release", run_id, default, token=token))

        def build(pipe: Any) -> None:
            queue_call(pipe, self.scripts.end_attempt, script_keys, argv)
            then(pipe)

        with _redis_errors(f"end an attempt of run {run_id}"):
            if logs:
                replies = self._with_logs(k, logs, self.scripts.end_attempt, script_keys, argv,
                                          then=then)
            else:
                replies = self._pipelined(build)
        prev = replies[0]
        if prev == -1 or prev != RunStatus.RUNNING.value:
            self._repair_indexes(run_id, task, owner or None)
        if prev == -1:
            return None, []
        if along:
            slot_replies = [list(r) for r in replies[len(replies) - len(along):]]
        else:
            slot_replies = [self.slot_op(keys, "release", run_id, default)
                            for keys, default in release]
        return str(prev), slot_replies

    def _celery_parts(self, celery_result: CeleryResult | None,
                      ack: FusedAck | None) -> tuple[list[str], list[Any]]:
        """end_attempt.lua's optional keys and its ARGV[11..13]: Celery's result of the
        run and the acknowledgement of its message (both on one Redis server only)."""
        if (celery_result is not None or ack is not None) and not self.single_server:
            raise ValueError("Celery's result and the message's acknowledgement are written "
                             "with the end of an attempt on one Redis server only (their "
                             "keys are in other hash slots)")
        keys: list[str] = []
        if celery_result is not None:
            keys.append(celery_result.key)
        if ack is not None:
            keys += [ack.unacked_key, ack.index_key]
        return keys, [celery_result.payload if celery_result else "",
                      celery_result.expires_ms if celery_result else 0,
                      ack.tag if ack else ""]

    # -- indexes ---------------------------------------------------------------------------

    def _index_transition(
        self,
        run_id: str,
        prev: str,
        status: RunStatus,
        ts: int,
        *,
        task: str,
        owner: str | None,
        lease_expires_ms: int = 0,
    ) -> None:
        """Update the indexes of a transition whose previous status is known (one round
        trip; see RunIndexes.transition)."""
        with _redis_errors(f"index run {run_id}"), self.client.pipeline(False) as pipe:
            self.indexes.transition(pipe, run_id, prev, status, ts, task=task, owner=owner,
                                    lease_expires_ms=lease_expires_ms)
            pipe.execute()

    def _repair_indexes(self, run_id: str, task: str, owner: str | None) -> None:
        """Put the indexes right from the run hash after an optimistic update guessed the
        outcome wrong (two round trips; rare paths only)."""
        with _redis_errors(f"index run {run_id}"):
            raw = self.client.hgetall(self.keys.run(run_id).run)
            record = {str(key): str(value) for key, value in raw.items()}
            with self.client.pipeline(False) as pipe:
                self.indexes.repair(pipe, run_id, record, task=task, owner=owner)
                pipe.execute()

    # -- worker coordination (heartbeat and reaper) -------------------------------------

    def beat(self, worker_id: str, run_ids: Sequence[str], renew: bool) -> None:
        """Record that ``worker_id`` is alive; with ``renew``, extend the leases it holds on
        ``run_ids`` (one round trip for all of them)."""
        s, keys, ts = self.settings, self.keys, now_ms()
        expires = ts + s.lease_ttl_ms

        def build(pipe: Any) -> None:
            pipe.zadd(keys.workers, {worker_id: ts})
            pipe.pexpire(keys.workers, max(s.active_ttl_ms, s.worker_ttl_ms * 10))
            if renew and run_ids:
                self._queue_lease_changes(pipe, worker_id, run_ids, expires)
                pipe.zadd(keys.leases, dict.fromkeys(run_ids, expires), xx=True)

        with _redis_errors("send the worker heartbeat"):
            self._pipelined(build)

    def release_leases(self, worker_id: str, run_ids: Sequence[str]) -> None:
        """Free the leases ``worker_id`` still holds on runs it no longer executes (their
        process died), so their redelivered messages can start the next attempt at once."""
        if not run_ids:
            return

        def build(pipe: Any) -> None:
            self._queue_lease_changes(pipe, worker_id, run_ids, 0)

        with _redis_errors("release leases"):
            self._pipelined(build)

    def _queue_lease_changes(
        self, pipe: Any, worker_id: str, run_ids: Sequence[str], expires: int
    ) -> None:
        """Queue renew_lease.lua for ``run_ids``: one call for all of them (the keys of many
        runs in one script), in batches to bound the script's run time. On Redis Cluster
        a script's keys must share a hash slot: one call per slot (in practice per run),
        all still in one pipeline (one round trip per node)."""
        keys = [self.keys.run(run_id).run for run_id in run_ids]
        batches: list[list[str]] = []
        if self.cluster:
            by_slot: dict[int, list[str]] = {}
            for key in keys:
                by_slot.setdefault(key_slot(key.encode()), []).append(key)
            batches = list(by_slot.values())
        else:
            batches = [keys[start:start + LEASE_BATCH]
                       for start in range(0, len(keys), LEASE_BATCH)]
        for batch in batches:
            queue_call(pipe, self.scripts.renew_lease, batch, [worker_id, expires])

    def forget_worker(self, worker_id: str) -> None:
        """Remove a worker that stopped cleanly (its runs were released or ended)."""
        with _redis_errors("unregister the worker"), self.client.pipeline(False) as pipe:
            pipe.zrem(self.keys.workers, worker_id)
            pipe.delete(self.keys.worker_runs(worker_id))
            pipe.execute()

    def dead_workers(self, limit: int = 20) -> list[str]:
        """Workers whose last heartbeat is older than ``durable_worker_ttl_s``."""
        horizon = now_ms() - self.settings.worker_ttl_ms
        with _redis_errors("read the worker registry"):
            return [str(w) for w in self.client.zrangebyscore(
                self.keys.workers, "-inf", horizon, start=0, num=limit)]

    def take_dead_worker(self, worker_id: str) -> list[str] | None:
        """Claim a dead worker for this reaper (only one reaper wins); returns its runs."""
        with _redis_errors("claim a dead worker"):
            if not self.client.zrem(self.keys.workers, worker_id):
                return None
            key = self.keys.worker_runs(worker_id)
            runs = [str(r) for r in self.client.smembers(key)]
            self.client.delete(key)
        return runs

    def expired_leases(self, limit: int = 100) -> list[str]:
        """Runs whose lease, as indexed, has expired (the reaper re-checks each run)."""
        with _redis_errors("read the lease index"):
            return [str(r) for r in self.client.zrangebyscore(
                self.keys.leases, "-inf", now_ms(), start=0, num=limit)]

    def reap(self, run_id: str, dead_owner: str, reaper: str) -> list[str] | None:
        """Fence and free a stalled run (see reap_run.lua). Returns
        ``[delivery_tag, task, args, kwargs, queue, holder, canvas]``, or None if not
        stalled."""
        k, ts = self.keys.run(run_id), now_ms()
        grace = self.settings.lease_ttl_ms
        with _redis_errors(f"reap run {run_id}"):
            reply = self.scripts.reap_run(
                [k.run, k.trace], [ts, dead_owner, reaper, self.settings.trace_maxlen, grace])
            if not reply:
                # Not stalled: drop it from the candidates unless its lease is still held.
                expires = self.client.hget(k.run, "lease_expires_ms")
                if expires and int(expires) > 0:
                    self.client.zadd(self.keys.leases, {run_id: int(expires)}, xx=True)
                else:
                    self.client.zrem(self.keys.leases, run_id)
                return None
            # Still a candidate until a claim takes it: if this reaper dies before the run
            # is back on its queue, the reaper's lease expires and another one resumes it.
            self.client.zadd(self.keys.leases, {run_id: ts + grace})
        return [str(x) for x in reply]

    # -- idempotency keys -----------------------------------------------------------------

    def claim_idempotency(
        self, redis_key: str, run_id: str, fp: str, ts: int, ttl_ms: int
    ) -> tuple[int, str]:
        """Run claim_idempotency.lua: ``(1, value)`` if ``run_id`` now owns the key."""
        with _redis_errors("claim an idempotency key"):
            won, value = evalsha(self._hot, self.scripts.claim_idempotency, [redis_key],
                                 [run_id, fp, ts, ttl_ms])
        return int(won), str(value)

    def release_idempotency(self, redis_key: str, run_id: str = "") -> bool:
        """Free an idempotency key if it still names ``run_id`` (any run if '')."""
        with _redis_errors("release an idempotency key"):
            return bool(self.scripts.release_idempotency([redis_key], [run_id]))

    def idempotency_run(self, redis_key: str) -> str | None:
        """The run an idempotency key names, or None if the key is gone."""
        with _redis_errors("read an idempotency key"):
            raw = self.client.get(redis_key)
        return str(json.loads(raw)["run"]) if raw else None

    def note_tick(self, entry: str, tick: str, ttl_ms: int) -> None:
        """Remember that a beat is about to claim ``tick`` of ``entry``."""
        key = self.keys.beat_ticks(entry)
        with _redis_errors("record a beat tick"), self.client.pipeline(False) as pipe:
            pipe.zadd(key, {tick: now_ms()}, nx=True)
            pipe.pexpire(key, ttl_ms)
            pipe.execute()

    def ticks_older_than(self, entry: str, before_ms: int) -> list[str]:
        with _redis_errors("read beat ticks"):
            return [str(t) for t in self.client.zrangebyscore(
                self.keys.beat_ticks(entry), "-inf", before_ms, start=0, num=100)]

    def forget_tick(self, entry: str, tick: str) -> None:
        with _redis_errors("forget a beat tick"):
            self.client.zrem(self.keys.beat_ticks(entry), tick)

    def run_exists(self, run_id: str) -> bool:
        with _redis_errors(f"read run {run_id}"):
            return bool(self.client.exists(self.keys.run(run_id).run))

    # -- timers (sleeps, wait timeouts, parked backoffs) -----------------------------------

    def schedule(self, run_id: str, due_ms: int | None, resume_json: str) -> None:
        """Keep what is needed to publish the run again, and publish it at ``due_ms``
        (from the Redis timer, never an ETA); None: only an event will wake it."""
        with _redis_errors(f"schedule run {run_id}"), self.client.pipeline(False) as pipe:
            pipe.hset(self.keys.run(run_id).run, "resume", resume_json)
            if due_ms is not None:
                pipe.zadd(self.keys.timers, {run_id: due_ms})
                pipe.pexpire(self.keys.timers, self.settings.active_ttl_ms)
            pipe.execute()

    def debounce_call(self, redis_key: str, run_id: str, quiet_ms: int, longest_ms: int,
                      mode: str, info_json: str) -> tuple[str, bool, int, int]:
        """Join the open burst of ``redis_key`` or open one for ``run_id`` (see
        debounce.lua), and make sure a dispatcher will look at the burst (one round trip):
        ``(run id, opened, due_ms, calls)``."""
        ts = now_ms()
        argv: list[Any] = ["call", ts, run_id, quiet_ms, longest_ms, mode, info_json,
                           self.settings.active_ttl_ms]

        def build(pipe: Any) -> None:
            queue_call(pipe, self.scripts.debounce, [redis_key], argv)
            # NX: the first call's time is the earliest the burst can be due; a dispatcher
            # that comes too early learns the real due time and sets the timer again.
            pipe.zadd(self.keys.debounce_timers, {redis_key: ts + quiet_ms}, nx=True)
            pipe.pexpire(self.keys.debounce_timers, self.settings.active_ttl_ms)

        with _redis_errors("debounce a call"):
            run, opened, due, calls = self._pipelined(build)[0]
        return str(run), bool(opened), int(due), int(calls)

    def due_debounces(self, limit: int = 100) -> list[str]:
        with _redis_errors("read the debounce timers"):
            return [str(k) for k in self.client.zrangebyscore(
                self.keys.debounce_timers, "-inf", now_ms(), start=0, num=limit)]

    def take_debounce(self, redis_key: str) -> list[Any] | None:
        """Claim a due debounce timer (exactly one dispatcher wins; None for the others)
        and close its burst if it is due: ``[run id, 'fire', resume data, calls]``,
        ``[run id, 'wait', due_ms]`` (the timer is set again) or ``['', 'gone']``."""
        with _redis_errors("start a debounced run"):
            if not self.client.zrem(self.keys.debounce_timers, redis_key):
                return None
            raw = self.client.hget(redis_key, "run")
            if raw is None:
                return ["", "gone"]
            reply = list(self.scripts.debounce([redis_key], ["fire", now_ms(), str(raw)]))
            if reply[0] == "wait":
                self.client.zadd(self.keys.debounce_timers, {redis_key: int(reply[1])})
            return [str(raw), *reply]

    def set_arguments(self, run_id: str, args_json: str, kwargs_json: str) -> None:
        """Record the arguments a run will start with (a debounced run takes its last
        call's)."""
        with _redis_errors(f"record the arguments of run {run_id}"):
            self.client.hset(self.keys.run(run_id).run,
                             mapping={"args": args_json, "kwargs": kwargs_json})

    def wake(self, run_ids: Sequence[str], due_ms: int) -> None:
        """Bring the timers of ``run_ids`` forward to ``due_ms`` (never later)."""
        if not run_ids:
            return
        with _redis_errors("wake runs"):
            # LT: add missing timers, and only ever move existing ones earlier.
            self.client.zadd(self.keys.timers, dict.fromkeys(run_ids, due_ms), lt=True)

    def create_fork(
        self,
        run_id: str,
        task: str,
        args_json: str,
        kwargs_json: str,
        queue: str,
        checkpoints: dict[str, str],
        *,
        origin: str,
        from_step: str,
        blobs: dict[str, str] | None = None,
    ) -> None:
        """Record a new pending run that starts with ``checkpoints`` (positions 0..n-1) and
        the offloaded results (``blobs``) they refer to."""
        s, k, ts = self.settings, self.keys.run(run_id), now_ms()

        def build(pipe: Any) -> None:
            queue_call(pipe, self.scripts.create_run, k.as_list(),
                       [ts, task, args_json, kwargs_json, queue, s.active_ttl_ms,
                        s.trace_maxlen])
            if checkpoints:
                pipe.hset(k.steps, mapping=checkpoints)
                pipe.pexpire(k.steps, s.active_ttl_ms)
            if blobs:
                pipe.hset(k.blobs, mapping=blobs)
                pipe.pexpire(k.blobs, s.active_ttl_ms)
            pipe.hset(k.run, mapping={"step_count": len(checkpoints), "forked_from": origin,
                                      "forked_at_step": from_step})
            queue_call(pipe, self.scripts.append_event, [k.run, k.trace],
                       ["", s.trace_maxlen, "type", "run_forked_from", "origin", origin,
                        "from_step", from_step, "reused", len(checkpoints)])
            self.indexes.new(pipe, run_id, task, ts)

        with _redis_errors(f"record fork {run_id}"):
            self._pipelined(build)

    def link_child(self, parent_id: str, child_id: str) -> None:
        """Record the parent/child link on both runs (for traces and cascading cancels)."""
        s = self.settings
        with _redis_errors("link a child run"), self.client.pipeline(False) as pipe:
            pipe.sadd(self.keys.children(parent_id), child_id)
            pipe.pexpire(self.keys.children(parent_id), s.active_ttl_ms)
            pipe.hset(self.keys.run(child_id).run, "parent", parent_id)
            pipe.execute()

    def children_of(self, run_id: str) -> list[str]:
        with _redis_errors(f"read the children of run {run_id}"):
            return sorted(str(c) for c in self.client.smembers(self.keys.children(run_id)))

    # -- events -------------------------------------------------------------------------

    def wait_event(self, key: str, run_id: str, position: int, deadline_ms: int | None
                   ) -> tuple[int, str]:
        """Run wait_event.lua: ``(1, payload)``, ``(0, deadline)`` or ``(2, deadline)``."""
        argv: list[Any] = [run_id, position, now_ms(),
                           "inf" if deadline_ms is None else deadline_ms,
                           int(self.settings.event_ttl_s * 1000)]
        with _redis_errors(f"wait for event {key!r}"):
            code, value = self.scripts.wait_event(self.keys.event(key), argv)
        return int(code), str(value)

    def send_event(self, key: str, payload_json: str) -> list[str]:
        """Run send_event.lua; returns the runs waiting on ``key``."""
        with _redis_errors(f"send event {key!r}"):
            waiters = self.scripts.send_event(
                self.keys.event(key), [payload_json, int(self.settings.event_ttl_s * 1000)])
        return [str(w) for w in waiters]

    def event_waiters(self, key: str) -> list[str]:
        with _redis_errors(f"read the waiters of event {key!r}"):
            return [str(w) for w in self.client.zrange(self.keys.event(key)[1], 0, -1)]

    # -- admin transitions ----------------------------------------------------------------

    def cancel_run(self, run_id: str, reason: str) -> str:
        """Run cancel_run.lua and update the indexes; returns the previous status."""
        s, k, ts = self.settings, self.keys.run(run_id), now_ms()
        with _redis_errors(f"cancel run {run_id}"):
            prev = str(self.scripts.cancel_run(
                k.as_list(), [ts, s.retention_ms, s.trace_maxlen, reason]))
            if prev and prev not in {t.value for t in TERMINAL_STATUSES}:
                self.client.zrem(self.keys.timers, run_id)
                raw = self.client.hget(k.run, "task") or ""
                self._index_transition(run_id, prev, RunStatus.CANCELLED, ts, task=str(raw),
                                       owner=None)
        return prev

    def fail_held_run(self, run_id: str, owner: str, error: dict[str, str]) -> bool:
        """Fail a run whose attempt was killed (hard time limit), if ``owner`` holds it."""
        s, k, ts = self.settings, self.keys.run(run_id), now_ms()
        with _redis_errors(f"fail run {run_id}"):
            failed = bool(self.scripts.fail_run(k.as_list(), [
                owner, ts, s.retention_ms, s.trace_maxlen, json.dumps(error),
                error["error_type"], error["error_message"]]))
            if failed:
                raw = self.client.hget(k.run, "task") or ""
                self._index_transition(run_id, RunStatus.RUNNING.value, RunStatus.FAILED, ts,
                                       task=str(raw), owner=owner)
        return failed

    def reopen_run(self, run_id: str) -> str:
        """Run reopen_run.lua and update the indexes; returns the previous status."""
        s, k, ts = self.settings, self.keys.run(run_id), now_ms()
        with _redis_errors(f"replay run {run_id}"):
            prev = str(self.scripts.reopen_run(k.as_list(), [ts, s.active_ttl_ms,
                                                             s.trace_maxlen]))
            if prev in (RunStatus.FAILED.value, RunStatus.CANCELLED.value):
                raw = self.client.hget(k.run, "task") or ""
                self._index_transition(run_id, prev, RunStatus.PENDING, ts, task=str(raw),
                                       owner=None)
        return prev

    def due_timers(self, limit: int = 100) -> list[str]:
        with _redis_errors("read the timers"):
            return [str(r) for r in self.client.zrangebyscore(
                self.keys.timers, "-inf", now_ms(), start=0, num=limit)]

    def take_timer(self, run_id: str) -> tuple[bool, str | None]:
        """Claim a due timer: ``(True, resume data)`` for the one dispatcher that wins
        (the data is None if the run has not been suspended yet), ``(False, None)`` for
        the others."""
        with _redis_errors("take a timer"):
            if not self.client.zrem(self.keys.timers, run_id):
                return False, None
            value = self.client.hget(self.keys.run(run_id).run, "resume")
        return True, (str(value) if value else None)

    def cancel_timer(self, run_id: str) -> None:
        with _redis_errors("cancel a timer"):
            self.client.zrem(self.keys.timers, run_id)

    # -- concurrency limits -----------------------------------------------------------------

    def slot_op(
        self, keys: LimitKeys, op: str, run_id: str, default_limit: int, info_json: str = "",
        hold_ms: int | None = None, rank: int = 0, fairness_key: str = "",
        message: tuple[str, str] | None = None,
    ) -> list[Any]:
        """Run slots.lua (see its header for the reply). ``hold_ms``: how long an acquired
        slot lasts before it must be renewed (default: the lease TTL); ``rank`` and
        ``fairness_key`` place a run that has to wait; ``message`` (list key, body): the
        run's broker message, when this server and db are the broker's
        (``publisher.capture``): admitted, the script publishes it; parked, it keeps it for
        the release that hands the run a slot."""
        argv = self.slot_argv(op, run_id, default_limit, info_json, hold_ms, rank, fairness_key,
                              message=message)
        with _redis_errors(f"{op} a concurrency slot"):
            return list(self.scripts.slots(keys.as_list(), argv))

    def slot_argv(
        self, op: str, run_id: str, default_limit: int, info_json: str = "",
        hold_ms: int | None = None, rank: int = 0, fairness_key: str = "", *,
        token: str = "", message: tuple[str, str] | None = None,
    ) -> list[Any]:
        """The ARGV of a slots.lua call (for ``slot_op``, or to send with a claim or an
        end): ``token``, the lease token a release checks (with the run's hash as its
        eighth key)."""
        s = self.settings
        key, body = message or ("", "")
        return [op, run_id, now_ms(), hold_ms or s.lease_ttl_ms, default_limit, info_json,
                int(s.slot_handoff_s * 1000), s.active_ttl_ms, rank, fairness_key,
                s.priority_step, token, key, body]

    def rate_reserve(self, keys: Sequence[str], count: float, period_ms: int, burst: int,
                     mode: str) -> int:
        """Reserve the next turn (rate.lua 'reserve'): the epoch ms the caller may start at,
        or -1 (lossy, over the rate)."""
        with _redis_errors("take a turn of a rate limit"):
            reply = self.scripts.rate(list(keys[:2]), ["reserve", now_ms(), count, period_ms,
                                                       burst, "wait" if mode != "drop" else mode])
        return int(reply[0])

    def rate_take(
        self, keys: Sequence[str], member: str, count: float, period_ms: int, burst: int,
        run_id: str, info_json: str, *, rank: int = 0, fairness_key: str = "",
        first: bool = False,
    ) -> tuple[int, int]:
        """A run's turn of a rate limit (rate.lua 'take'): ``(start_ms, -1)`` when it may
        start then (now or within the lookahead), ``(-2, position)`` when it waits in the
        limit's queue; then its dispatcher is due (``member`` names the queue in the rate
        timers and the registry), in a second round trip only for a run that waits."""
        s = self.settings
        argv: list[Any] = ["take", now_ms(), count, period_ms, burst, "wait", run_id,
                           info_json, rank, fairness_key, s.priority_step,
                           s.rate_lookahead_ms, int(s.slot_handoff_s * 1000), s.active_ttl_ms,
                           "1" if first else "0"]
        with _redis_errors("take a turn of a rate limit"):
            reply = self.scripts.rate(list(keys), argv)
            start, position, due = int(reply[0]), int(reply[4]), int(reply[5])
            if start == -2:
                with self.client.pipeline(False) as pipe:
                    pipe.zadd(self.keys.rate_timers, {member: due}, lt=True)
                    pipe.pexpire(self.keys.rate_timers, s.active_ttl_ms)
                    pipe.sadd(self.keys.rate_queues, member)
                    pipe.execute()
        return start, position

    def due_rate_queues(self, limit: int = 100) -> list[str]:
        """Rate queues whose dispatcher is due (members: JSON ``[base, sub]``)."""
        with _redis_errors("read the rate timers"):
            return [str(m) for m in self.client.zrangebyscore(
                self.keys.rate_timers, "-inf", now_ms(), start=0, num=limit)]

    def rate_dispatch(self, keys: Sequence[str], member: str) -> list[Any] | None:
        """Claim a rate queue's due timer (exactly one dispatcher wins; None for the others)
        and hand its next turns out (rate.lua 'dispatch'): ``[due_ms, count, period_ms,
        burst, run1, info1, start1, ...]``."""
        s = self.settings
        with _redis_errors("dispatch a rate limit"):
            if not self.client.zrem(self.keys.rate_timers, member):
                return None
            return list(self.scripts.rate(list(keys), [
                "dispatch", now_ms(), "", "", "", "", "", "", 0, "", 0, s.rate_lookahead_ms,
                int(s.slot_handoff_s * 1000), s.active_ttl_ms, "0"]))

    def rate_confirm(self, keys: Sequence[str], member: str, run_ids: Sequence[str],
                     due_ms: int) -> None:
        """The dispatcher published ``run_ids``: forget their hand-overs, and set the
        queue's next dispatch at ``due_ms`` (-1: nothing waits, leave the registry)."""
        with _redis_errors("confirm rate hand-overs"), self.client.pipeline(False) as pipe:
            if run_ids:
                pipe.zrem(keys[5], *run_ids)
                pipe.hdel(keys[3], *run_ids)
            if due_ms >= 0:
                pipe.zadd(self.keys.rate_timers, {member: due_ms}, lt=True)
                pipe.pexpire(self.keys.rate_timers, self.settings.active_ttl_ms)
            pipe.execute()
            if due_ms < 0:
                # A run that started waiting meanwhile set the timer again (rate_take).
                if not self.client.zscore(self.keys.rate_timers, member):
                    self.client.srem(self.keys.rate_queues, member)

    def rate_queue_members(self) -> list[str]:
        """The registry of rate queues with waiting runs (JSON ``[base, sub]``)."""
        with _redis_errors("read the registry of rate queues"):
            return [str(m) for m in self.client.smembers(self.keys.rate_queues)]

    def ensure_rate_timers(self, members: Sequence[str]) -> int:
        """The safety net: give every registered rate queue a due timer unless it has one
        (a dispatcher that died between taking the timer and setting it again). Returns how
        many were missing."""
        if not members:
            return 0
        with _redis_errors("check the rate timers"):
            added = self.client.zadd(self.keys.rate_timers, dict.fromkeys(members, now_ms()),
                                     nx=True)
        return int(added or 0)

    def reset_rate_states(self, state_keys: Sequence[str]) -> None:
        """Forget the turns booked on these rate states (a runtime rate change); the keys
        of one limit share its Cluster slot, so one DEL does."""
        if state_keys:
            with _redis_errors("reset rate limits"):
                self.client.delete(*state_keys)

    def drop_rate_timer(self, member: str) -> None:
        """Forget a rate timer (one that names no readable queue)."""
        with _redis_errors("drop a rate timer"):
            self.client.zrem(self.keys.rate_timers, member)

    def wake_rate_queues(self, members: Sequence[str]) -> None:
        """Make the dispatchers of these rate queues due now (a rate changed)."""
        if not members:
            return
        with _redis_errors("wake rate queues"):
            self.client.zadd(self.keys.rate_timers, dict.fromkeys(members, now_ms()), lt=True)

    def rate_waiting(self, keys: Sequence[str]) -> tuple[int, dict[int, int]]:
        """How many runs wait in a rate queue, and how many of each priority rank."""
        with _redis_errors("read a rate queue"), self.client.pipeline(False) as pipe:
            pipe.zcard(keys[2])
            pipe.hgetall(keys[4])
            waiting, fair = pipe.execute()
        return int(waiting), waiting_by_rank(fair)

    def set_rate_config(self, config_key: str, count: float | None, period_ms: int = 0,
                        burst: int = 1) -> None:
        """Write a runtime rate (or, with ``count`` None, go back to the coded one)."""
        with _redis_errors("change a rate limit"):
            if count is None:
                self.client.delete(config_key)
            else:
                self.client.hset(config_key, mapping={"count": count, "period_ms": period_ms,
                                                      "burst": burst})

    def rate_state(self, keys: Sequence[str]) -> tuple[dict[str, str], float]:
        """A rate limit's runtime config and its theoretical arrival time (ms, 0: idle)."""
        with _redis_errors("read a rate limit"), self.client.pipeline(False) as pipe:
            pipe.hgetall(keys[0])
            pipe.get(keys[1])
            config, tat = pipe.execute()
        return {str(k): str(v) for k, v in config.items()}, float(tat or 0)

    @property
    def single_server(self) -> bool:
        """Whether the store is one Redis server (or a Sentinel-managed one), where a
        script may read keys of different hash slots: some round trips are then merged
        (slots taken with the claim, given back with the end). False on Redis Cluster."""
        return self._direct.enabled

    def renew_slots(self, holders: Sequence[tuple[str, str]]) -> None:
        """Extend slot leases: ``(holders key, run id)`` pairs, one round trip."""
        if not holders:
            return
        expires = now_ms() + self.settings.lease_ttl_ms
        with _redis_errors("renew concurrency slots"), self.client.pipeline(False) as pipe:
            for key, run_id in holders:
                pipe.zadd(key, {run_id: expires}, xx=True)
            pipe.execute()

    # -- reads (admin API) -----------------------------------------------------------------

    def read_run(self, run_id: str) -> tuple[dict[str, str], dict[str, str], list[str]]:
        """The run hash, the checkpoints and the raw trace entries (oldest first; see
        events.py) in one round trip, from the steps hash and trace list or, for an
        archived run, from its archive followed by the entries written since."""
        k = self.keys.run(run_id)
        with _redis_errors(f"read run {run_id}"), self.client.pipeline(False) as pipe:
            pipe.hgetall(k.run)
            pipe.hgetall(k.steps)
            pipe.lrange(k.trace, 0, -1)
            pipe.execute_command("GET", k.archive, **{NEVER_DECODE: []})
            run, steps, trace, packed = pipe.execute()
        if packed is not None:
            steps, trace = self._merge_archive(run_id, packed, steps, trace)
        return run, steps, trace

    def read_traces(self, run_ids: Sequence[str]) -> list[list[str]]:
        """The raw trace entries of each run (as ``read_run`` gives them), one round trip."""
        if not run_ids:
            return []
        with _redis_errors("read run traces"), self.client.pipeline(False) as pipe:
            for run_id in run_ids:
                k = self.keys.run(run_id)
                pipe.lrange(k.trace, 0, -1)
                pipe.execute_command("GET", k.archive, **{NEVER_DECODE: []})
            replies = pipe.execute()
        traces = []
        for run_id, trace, packed in zip(run_ids, replies[::2], replies[1::2], strict=True):
            if packed is not None:
                trace = self._merge_archive(run_id, packed, {}, trace)[1]
            traces.append(list(trace))
        return traces

    def _merge_archive(self, run_id: str, packed: bytes, steps: dict[str, str],
                       trace: list[str]) -> tuple[dict[str, str], list[str]]:
        """An archived run's checkpoints and trace entries: the archive's, then those
        written since (the trace capped at durable_trace_maxlen, newest kept, as the list
        itself would be)."""
        try:
            archived_steps, archived_trace = archive.unpack(packed)
        except CheckpointDecodeError as exc:
            raise CheckpointDecodeError(f"run {run_id}: {exc}", run_id=run_id) from exc
        merged = archived_trace + list(trace)
        return {**archived_steps, **steps}, merged[-self.settings.trace_maxlen:]

    def read_summaries(self, run_ids: Sequence[str]) -> list[dict[str, str]]:
        """The run hashes (without checkpoints) of ``run_ids``; a missing run gives ``{}``."""
        if not run_ids:
            return []
        with _redis_errors("read runs"), self.client.pipeline(False) as pipe:
            for run_id in run_ids:
                pipe.hgetall(self.keys.run(run_id).run)
            return list(pipe.execute())

    def index_page(self, index_key: str, start: int, count: int) -> list[str]:
        """Run ids of an index, newest first."""
        with _redis_errors("read the run index"):
            return [str(i) for i in self.client.zrevrange(index_key, start, start + count - 1)]

    def index_window(
        self, index_key: str, min_ms: int | None, max_ms: int | None, start: int, count: int
    ) -> list[str]:
        """Run ids of an index scored within ``[min_ms, max_ms]`` (epoch ms, None = open),
        newest first, from position ``start`` of that window (server-side paging)."""
        high = "+inf" if max_ms is None else max_ms
        low = "-inf" if min_ms is None else min_ms
        with _redis_errors("read the run index"):
            return [str(i) for i in self.client.zrevrangebyscore(
                index_key, high, low, start=start, num=count)]

    def status_counts(self) -> dict[str, int]:
        """The size of every status index, one round trip."""
        statuses = list(RunStatus)
        with _redis_errors("count runs"), self.client.pipeline(False) as pipe:
            for status in statuses:
                pipe.zcard(self.keys.status_index(status))
            sizes = pipe.execute()
        return {st.value: int(n) for st, n in zip(statuses, sizes, strict=True)}

    def waiting_limits(self) -> list[str]:
        """The registry of limits with waiting runs (members: JSON ``[base, sub, limit]``)."""
        with _redis_errors("read the registry of limits"):
            return [str(m) for m in self.client.smembers(self.keys.limits)]

    def idempotency_runs(self, redis_keys: Sequence[str]) -> list[str | None]:
        """The run each idempotency key names (None where the key does not exist)."""
        if not redis_keys:
            return []
        with _redis_errors("read idempotency keys"), self.client.pipeline(False) as pipe:
            for key in redis_keys:
                pipe.get(key)
            values = pipe.execute()
        return [str(json.loads(v)["run"]) if v else None for v in values]

    def prune_indexes(self, batch: int = 500) -> int:
        """Remove index entries of runs that expired, and status-index entries that no
        longer match their run's status (indexes may lag; see keys.py). Returns the count."""
        removed = 0
        status_prefix = self.keys.status_index(RunStatus.PENDING).rsplit(":", 1)[0] + ":"
        with _redis_errors("prune the run indexes"):
            for key in self.client.scan_iter(match=self.keys.index_pattern(), count=200):
                key = str(key)
                status = key.removeprefix(status_prefix) if key.startswith(status_prefix) \
                    else None
                start = 0
                while True:
                    ids = [str(i) for i in self.client.zrange(key, start, start + batch - 1)]
                    if not ids:
                        break
                    with self.client.pipeline(False) as pipe:
                        for run_id in ids:
                            pipe.hget(self.keys.run(run_id).run, "status")
                        actual = pipe.execute()
                    stale = [r for r, s in zip(ids, actual, strict=True)
                             if s is None or (status is not None and s != status)]
                    if stale:
                        removed += int(self.client.zrem(key, *stale))
                    start += batch - len(stale)
        return removed

    def ping(self) -> bool:
        with _redis_errors("reach Redis"):
            return bool(self.client.ping())

    def close(self) -> None:
        """Close the client's connections and this thread's DirectLine connection."""
        self._direct.close()
        self.client.close()


_stores: weakref.WeakKeyDictionary[Celery, tuple[int, RunStore]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def store_for(app: Celery) -> RunStore:
    """The app's RunStore for this process (created on first use, and again after a fork)."""
    pid = os.getpid()
    entry = _stores.get(app)
    if entry is None or entry[0] != pid:
        with _lock:
            entry = _stores.get(app)
            if entry is None or entry[0] != pid:
                entry = (pid, RunStore(settings_for(app)))
                _stores[app] = entry
    return entry[1]


def forget_store(app: Celery) -> None:
    """Drop the app's cached store (after changing its settings)."""
    _stores.pop(app, None)
