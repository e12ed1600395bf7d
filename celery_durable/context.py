"""RunContext: the state of one attempt of a durable run, reachable through current_run().

The context lives in a ContextVar for the duration of an attempt (never on the Task instance,
which Celery shares between runs). It replays committed steps from the checkpoints loaded
when the attempt started, and commits each new step before returning its value.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from pydantic import BaseModel

from . import otel, signals
from .archive import MAX_ARCHIVE_BYTES
from .children import outcome_of
from .codec import (
    TAG,
    JsonCodec,
    Unencodable,
    describe_unencodable,
    dumps_json,
    from_jsonable,
    is_plain,
    to_jsonable,
)
from .config import DurableSettings
from .errors import (
    CheckpointDecodeError,
    CheckpointTooLargeError,
    ChildRunFailed,
    ConfigurationError,
    LeaseLostError,
    NondeterminismError,
    NotInRunError,
    ProgressTooLargeError,
    RunCancelled,
    RunTimeoutError,
    StoreError,
    WaitTimeout,
)
from .rates import RateRef, reserve
from .retry import RetryPolicy, to_seconds
from .store import RunStore

if TYPE_CHECKING:
    from .concurrency import SlotRef
    from .logcapture import RunLogs
    from .metrics import TaskMeters

P = ParamSpec("P")
R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)

_codec = JsonCodec()
#: One reusable encoder: json.dumps() with options builds a new encoder on every call.
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
#: Checkpoints are compact JSON written by ``_commit``: ``raw_decode`` skips json.loads'
#: type checks and whitespace scans (about half the cost of a replayed step).
_decoder = json.JSONDecoder()

#: last_progress() knows the step saved nothing (distinct from a saved None).
_NO_PROGRESS = object()

_current: ContextVar[RunContext | None] = ContextVar("celery_durable_run", default=None)


class SuspendRun(BaseException):
    """Internal: end this attempt and resume the run later (a sleep, a wait).

    A BaseException so that ``except Exception`` in user code cannot swallow it.
    ``due_ms`` is when a timer publishes the run again (None: only an event wakes it).
    """

    def __init__(self, due_ms: int | None, reason: str, **details: Any) -> None:
        super().__init__(reason)
        self.due_ms = due_ms
        self.reason = reason
        self.details = details


_fast_loads: Callable[[str], Any] | None
try:  # the optional "orjson" extra: faster resumes of long runs
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - depends on the installation
    _fast_loads = None

#: How a tagged value (a datetime, a model, ...) appears in an encoded checkpoint: a
#: checkpoint without it is plain JSON, replayed without walking its value.
_TAG_TEXT = f'"{TAG}"'
#: Largest encoded step input kept with a checkpoint (``durable_record_step_inputs``);
#: larger ones are noted by size only, so recording inputs never fails a step.
MAX_INPUT_BYTES = 4096


def _inputs_record(inputs: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
    """A step's arguments as kept for the trace views: their JSON form, a repr when they
    cannot be encoded, or only their size when they are large."""
    args, kwargs = inputs
    try:
        value: Any = to_jsonable({"args": list(args), "kwargs": kwargs})
    except Unencodable:
        value = {"repr": repr((args, kwargs))[:1000]}
    size = len(_encoder.encode(value))
    return value if size <= MAX_INPUT_BYTES else {"omitted_bytes": size}


def _rate_turn(store: RunStore, ref: RateRef, mode: str) -> dict[str, Any]:
    start = reserve(store, ref, mode)
    return {"dropped": True} if start is None else {"at": start}


def _sleep_record(seconds: float) -> dict[str, int]:
    return {"until": time.time_ns() // 1_000_000 + int(seconds * 1000)}


def describe_error(exc: BaseException) -> dict[str, str]:
    """An exception as stored in the trace: qualified type, message, formatted traceback."""
    kind = type(exc)
    return {
        "error_type": f"{kind.__module__}.{kind.__qualname__}",
        "error_message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


class RunContext:
    """One attempt of a durable run, as seen from inside the task body and its steps.

    ``id`` is the run id (the Celery task id), ``attempt`` counts deliveries of the run to a
    worker (1-based), ``task_name`` is the Celery task name.
    """

    __slots__ = (
        "id", "attempt", "task_name", "owner", "failures", "_token", "_store", "_settings",
        "_committed", "_position", "_occurrences", "_current_step", "replayed", "_keys", "slots",
        "_last_step_id", "_app", "deadline_ms", "traced", "logs", "meters", "_progress",
        "code_version", "recorded_version", "_patches", "durability", "_decoded",
        "_kept_bytes",
    )

    def __init__(
        self,
        *,
        run_id: str,
        attempt: int,
        task_name: str,
        token: str,
        owner: str,
        store: RunStore,
        checkpoints: dict[str, str],
        slots: Sequence[SlotRef] = (),
        failures: int = 0,
        app: Any = None,
        deadline_ms: int | None = None,
        logs: RunLogs | None = None,
        meters: TaskMeters | None = None,
        code_version: str = "",
        recorded_version: str = "",
        durability: str | None = None,
    ) -> None:
        self.id = run_id
        self.attempt = attempt
        self.task_name = task_name
        self._token = token
        #: The id of the worker executing this attempt (it holds the run's lease).
        self.owner = owner
        #: Earlier attempts of this run that ended in an error (the retry policy's count;
        #: resuming from a sleep or a wait is not a failure).
        self.failures = failures
        self._store = store
        self._settings: DurableSettings = store.settings
        #: Position -> payload of every checkpoint of the run: those the claim loaded,
        #: then those this attempt commits.
        self._committed = checkpoints
        #: Characters of the payloads this attempt committed and kept in ``_committed``;
        #: -1 once past archive.MAX_ARCHIVE_BYTES (the run cannot be archived: stop
        #: keeping them, and let ``checkpoints`` say so).
        self._kept_bytes = 0
        #: The checkpoints decoded in one pass at the first replay (position -> record).
        self._decoded: dict[str, Any] | None = None
        self._keys = store.keys.run(run_id)
        #: The concurrency slots this attempt holds (given back when it ends).
        self.slots = list(slots)
        self._position = 0
        self._occurrences: dict[str, int] = {}
        self._current_step: str | None = None
        self._last_step_id = ""
        self._app = app
        #: When the run's ``run_timeout`` expires (epoch ms), or None.
        self.deadline_ms = deadline_ms
        #: Whether the attempt's OpenTelemetry span records (then each step gets a span).
        self.traced = False
        #: Number of steps this attempt answered from checkpoints instead of executing.
        self.replayed = 0
        #: Log records captured in this attempt and not yet written (None: no capture).
        self.logs = logs
        #: This task's Prometheus metrics (None: not recorded).
        self.meters = meters
        #: Progress values of steps, by position, as saved or read in this attempt.
        self._progress: dict[int, Any] = {}
        #: The version of the task's code in this worker, and the one the run records.
        self.code_version = code_version
        self.recorded_version = recorded_version
        self._patches: dict[str, bool] = {}
        #: The task's commit durability (None: durable_commit_durability).
        self.durability = durability

    # -- public API ------------------------------------------------------------------------

    def step(self, name: str, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` as the step ``name``: once per run, checkpointed.

        If this run already committed the step, return the stored value without calling
        ``fn``. Otherwise call it, commit its result (one Redis round trip), and return it.
        """
        return self.run_step(name, fn, args, kwargs, None, record_inputs=True)

    def sleep(self, name: str, seconds: float | timedelta) -> None:
        """Sleep durably: the attempt ends and frees its worker, and a Redis timer publishes
        the run again when ``seconds`` have passed (whatever happens to workers meanwhile).

        The sleep is a step named ``name``: when the run resumes, the sleep is already
        recorded and returns at once; it is never slept twice. Sleeps shorter than
        ``durable_inline_sleep_s`` are slept in place.
        """
        seconds = to_seconds(seconds, f"current_run().sleep({name!r}, seconds)")
        record = self.run_step(name, _sleep_record, (seconds,), {}, None)
        remaining_ms = int(record["until"]) - time.time_ns() // 1_000_000
        if remaining_ms <= 0:
            return
        if remaining_ms <= self._settings.inline_sleep_s * 1000:
            time.sleep(remaining_ms / 1000)
            return
        raise SuspendRun(int(record["until"]), "sleep", step=self._last_step_id)

    def take_turn(self, name: str, ref: RateRef, mode: str) -> bool:
        """Wait for step ``name``'s turn of its rate limit ``ref`` before it executes.

        The turn is itself recorded as a step (``<name>~rate``), so a resumed run neither
        takes a second turn nor waits again. A near turn is waited for in place, a far one
        suspends the run (its worker is free) until it comes. Returns False if a lossy
        limit (``mode="drop"``) skipped the step: it is then not executed at all."""
        record = self.run_step(f"{name}~rate", _rate_turn, (self._store, ref, mode), {}, None)
        if record.get("dropped"):
            self._store.append_event(self.id, "step_skipped", {
                "step": name, "reason": f"over the rate limit {ref.name} ({ref.spec})"},
                token=self._token)
            signals.step_skipped.send(sender=self.task_name, run_id=self.id,
                                      attempt=self.attempt, step=name,
                                      reason=f"rate limit {ref.name}")
            return False
        remaining_ms = int(record["at"]) - time.time_ns() // 1_000_000
        if remaining_ms <= 0:
            return True
        if remaining_ms <= self._settings.inline_sleep_s * 1000:
            time.sleep(remaining_ms / 1000)
            return True
        raise SuspendRun(int(record["at"]), "rate_limit", step=self._last_step_id)

    def wait_for_event(
        self,
        name: str,
        key: str | None = None,
        timeout: float | timedelta | None = None,
        model: type[M] | None = None,
    ) -> Any:
        """Suspend the run until an event is sent to ``key``; return its payload.

        ``DurableClient(app).send_event(key, payload)`` (or the CLI, or Flower) delivers it;
        the worker is free meanwhile. An event sent before the run waits is kept (FIFO, per
        key, for ``durable_event_ttl_s``); each payload is taken by one wait. The payload is
        the committed result of the step ``name``, so a resumed run gets the same one.
        ``key`` defaults to ``"<run id>:<name>"``; ``model`` validates the payload into a
        pydantic model.

        Raises:
            WaitTimeout: ``timeout`` seconds passed without an event (catch it to go on).
        """
        timeout_s = None if timeout is None else to_seconds(timeout, "wait_for_event timeout")
        record = self.run_step(name, self._take_event, (key or f"{self.id}:{name}", timeout_s),
                               {}, None)
        if "timeout" in record:
            raise WaitTimeout(
                f"run {self.id}: no event for step {self._last_step_id!r} (key "
                f"{record['key']!r}) within {record['timeout']} s", key=record["key"])
        payload = record["payload"]
        return model.model_validate(payload) if model is not None else payload

    def _take_event(self, key: str, timeout_s: float | None,
                    child_id: str | None = None) -> dict[str, Any]:
        """The body of a wait step: the event, the timeout, or suspend until one comes.

        A wait for a child also reads the child's record, and re-checks it on a slow safety
        timer, so a child whose outcome event was lost (its worker died right after it
        ended) still wakes its parent."""
        if child_id is not None:
            timeout_s = self._settings.child_recheck_s
        deadline = None if timeout_s is None else time.time_ns() // 1_000_000 + int(
            timeout_s * 1000)
        code, value = self._store.wait_event(key, self.id, self._position - 1, deadline)
        if code == 1:
            return {"key": key, "payload": from_jsonable(json.loads(value))}
        if child_id is not None:
            raw = self._store.read_summaries([child_id])[0]  # the record only
            outcome = outcome_of(raw, _codec.loads)
            if outcome is not None:
                return {"key": key, "payload": outcome}
            if code == 2:  # the safety timer fired: wait again
                code, value = self._store.wait_event(key, self.id, self._position - 1,
                                                     deadline)
                if code == 1:
                    return {"key": key, "payload": from_jsonable(json.loads(value))}
        elif code == 2:
            return {"key": key, "timeout": timeout_s}
        due = None if value == "inf" else int(float(value))
        raise SuspendRun(due, "wait_for_child" if child_id else "wait_for_event", key=key,
                         step=self._current_step or "")

    def call(self, task: Any, *args: Any, **kwargs: Any) -> Any:
        """Start a child durable run and suspend until it ends; return its result.

        ``task`` is a durable task (called with ``args``/``kwargs``) or a signature. The
        child is started once per parent step, even if the parent is retried or resumed.

        Raises:
            ChildRunFailed: the child failed (its error type, message and traceback are
                carried) or was cancelled.
        """
        from .children import as_signature

        sig = as_signature(self._store_app(), task, args, kwargs)
        name = f"call:{sig.task}"
        (child_id,) = self.run_step(name, self._start, ([sig],), {}, None)
        return self._await_child(f"{name}:result", child_id)

    def gather(self, signatures: Sequence[Any]) -> list[Any]:
        """Start children (durable task signatures) and suspend until all have ended;
        return their results in order.

        Every child is started at once. Results are awaited in order; if a child failed,
        ChildRunFailed is raised for the first failed one (in order), and the children
        after it keep running but are not awaited.
        """
        from .children import as_signature

        sigs = [as_signature(self._store_app(), s, (), {}) for s in signatures]
        ids = self.run_step("gather", self._start, (sigs,), {}, None)
        return [self._await_child("gather:result", child_id) for child_id in ids]

    def _start(self, signatures: list[Any]) -> list[str]:
        from .children import start_children

        return start_children(self._store_app(), self._store, self.id,
                              self._current_step or "", signatures)

    def _await_child(self, name: str, child_id: str) -> Any:
        from .children import child_event_key

        record = self.run_step(name, self._take_event, (child_event_key(child_id), None,
                                                        child_id), {}, None)
        outcome = record["payload"]
        if outcome.get("ok"):
            return outcome.get("result")
        raise ChildRunFailed(
            f"run {self.id}: child run {child_id} {outcome.get('status', 'failed')}: "
            f"{outcome.get('error_type', '')}: {outcome.get('error_message', '')}",
            child_id=child_id, error_type=outcome.get("error_type", ""),
            error_message=outcome.get("error_message", ""),
            child_traceback=outcome.get("traceback", ""))

    def _store_app(self) -> Any:
        from celery import current_app

        return current_app if self._app is None else self._app

    @property
    def step_key(self) -> str:
        """A stable key for the step being executed (``<run id>:<step id>``).

        The same step of the same run gets the same key in every attempt, so pass it to
        downstream APIs (payments, emails) as their idempotency key.
        """
        if self._current_step is None:
            raise NotInRunError("current_run().step_key is only defined inside a step")
        return f"{self.id}:{self._current_step}"

    def patched(self, change_id: str) -> bool:
        """Whether this run takes the new code path of change ``change_id``.

        Like Temporal's ``patched()``: True when the run reaches this point for the first
        time (it is not replaying steps an earlier attempt committed after it), False when
        an earlier attempt, on code without the change, already went past it. The first
        answer is recorded in the run, so every later attempt gets the same one. Call it
        outside steps, at the same place in every attempt::

            if current_run().patched("charge-v2"):
                charge_v2(order)
            else:
                charge(order)
        """
        if not isinstance(change_id, str) or not change_id:
            raise ConfigurationError(
                f"patched(change_id) needs a non-empty str, got {change_id!r}")
        if change_id not in self._patches:
            fresh = str(self._position) not in self._committed
            self._patches[change_id] = self._store.decide_patch(self._keys, change_id, fresh)
        return self._patches[change_id]

    def progress(self, value: Any) -> None:
        """Save ``value`` as the progress of the step being executed (one round trip).

        If the attempt dies before the step commits, the step runs again in a later attempt
        and ``last_progress()`` returns this value there, so a long loop can go on where it
        was instead of starting over. The value is encoded like a step result and must stay
        below ``durable_max_progress_bytes`` (64 KiB): save a cursor (a row number, a page
        token), not the data. Each call replaces the previous value of the step.

        Raises:
            NotInRunError: called outside a step.
            ProgressTooLargeError: the encoded value is over the limit.
            LeaseLostError: another attempt took over the run.
        """
        position = self._executing_position("progress()")
        step_id = self._current_step
        try:
            record = _encoder.encode({"v": to_jsonable(value),
                                      "ms": time.time_ns() // 1_000_000, "a": self.attempt})
        except Unencodable as err:
            raise describe_unencodable(
                err, f"the progress of step {step_id!r} of run {self.id}") from None
        size = len(record.encode())
        limit = self._settings.max_progress_bytes
        if size > limit:
            raise ProgressTooLargeError(
                f"the progress of step {step_id!r} of run {self.id} is {size} bytes, more "
                f"than durable_max_progress_bytes={limit}: save a cursor (a row number, a "
                "page token) rather than the data, or raise the limit",
                step=step_id, size=size)
        code = self._store.save_progress(self._keys, self._token, position, record)
        self._check_code(code, f"save the progress of step {step_id!r}")
        self._progress[position] = value

    def last_progress(self, default: Any = None) -> Any:
        """The value last saved with ``progress()`` by the step being executed, in this
        attempt or an earlier one of the run; ``default`` if it never saved any.

        Raises:
            NotInRunError: called outside a step.
        """
        position = self._executing_position("last_progress()")
        if position not in self._progress:
            stored = self._store.load_progress(self._keys, position)
            try:
                self._progress[position] = (_NO_PROGRESS if stored is None
                                            else from_jsonable(json.loads(stored)["v"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckpointDecodeError(
                    f"run {self.id}: the progress saved for step position {position} is "
                    "not a celery-durable progress record") from exc
        value = self._progress[position]
        return default if value is _NO_PROGRESS else value

    def _executing_position(self, what: str) -> int:
        if self._current_step is None:
            raise NotInRunError(
                f"current_run().{what} is only defined inside a step: call it from a "
                "function decorated with @step")
        return self._position - 1

    def extend_timeout(self, seconds: float | timedelta) -> dt.datetime:
        """Keep the run alive for at least ``seconds`` more: its ``run_timeout`` deadline
        becomes now + ``seconds`` unless it is already later (it never moves earlier).

        The new deadline is recorded in the run (and the trace, ``timeout_extended``), so
        later attempts and the timer of a suspended run honour it. Returns the deadline in
        force (UTC).

        Raises:
            ConfigurationError: the task has no ``run_timeout`` to extend.
            LeaseLostError: another attempt took over the run.
        """
        seconds = to_seconds(seconds, "current_run().extend_timeout(seconds)")
        if self.deadline_ms is None:
            raise ConfigurationError(
                f"run {self.id}: extend_timeout() needs a run_timeout: declare "
                f"@durable_task(run_timeout=...) on {self.task_name}")
        wanted = time.time_ns() // 1_000_000 + int(seconds * 1000)
        code = self._store.extend_deadline(self._keys, self._token, wanted, self.deadline_ms)
        self._check_code(code, "extend its run_timeout")
        self.deadline_ms = code
        return dt.datetime.fromtimestamp(code / 1000, tz=dt.UTC)

    @property
    def current_step(self) -> str | None:
        """The id of the step executing now (``fetch#2``), or None between steps."""
        return self._current_step

    @property
    def store(self) -> RunStore:
        return self._store

    @property
    def checkpoints(self) -> Mapping[str, str] | None:
        """Position -> undecoded payload of every checkpoint of the run (loaded by this
        attempt's claim or committed by it), or None when this attempt committed more
        than an archive may hold and stopped keeping them."""
        return self._committed if self._kept_bytes >= 0 else None

    def take_logs(self) -> list[str]:
        """The buffered log records (for the next write to the run), emptying the buffer."""
        logs = self.logs
        return logs.take() if logs is not None and logs.pending else []

    @property
    def position(self) -> int:
        """How many steps this attempt has passed so far (replayed or executed)."""
        return self._position

    # -- machinery -------------------------------------------------------------------------

    def run_step(
        self,
        name: str,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        policy: RetryPolicy | None,
        durability: str | None = None,
        *,
        record_inputs: bool = False,
    ) -> R:
        """Replay or execute one step; ``policy`` retries it inside this attempt;
        ``durability`` (the step's ``@step(durability=...)``) overrides the task's for its
        commit."""
        if self._current_step is not None:
            # A step called from inside a step is part of the outer step's work.
            return fn(*args, **kwargs)
        count = self._occurrences.get(name, 0) + 1
        self._occurrences[name] = count
        step_id = name if count == 1 else f"{name}#{count}"
        self._last_step_id = step_id
        position = self._position
        self._position += 1
        key = str(position)
        stored = self._committed.get(key)
        if not self.traced:
            if stored is not None:
                return self._replay(position, key, step_id, stored)  # type: ignore[no-any-return]
            self.check_deadline(f"before step {step_id!r}")
            return self._execute(position, step_id, fn, args, kwargs, policy, durability,
                                 record_inputs)
        with otel.step_span(self.id, step_id, position, self.attempt,
                            stored is not None) as span:
            try:
                if stored is not None:
                    value = self._replay(position, key, step_id, stored)
                else:
                    self.check_deadline(f"before step {step_id!r}")
                    value = self._execute(position, step_id, fn, args, kwargs, policy,
                                          durability, record_inputs)
            except SuspendRun:
                otel.set_outcome(span, "suspended")
                raise
            except BaseException as exc:
                otel.set_outcome(span, "failed", exc)
                raise
            otel.set_outcome(span, "replayed" if stored is not None else "committed")
            return value  # type: ignore[no-any-return]

    def check_deadline(self, where: str) -> None:
        """Raise RunTimeoutError if the run's ``run_timeout`` has passed."""
        if self.deadline_ms is not None and time.time_ns() // 1_000_000 >= self.deadline_ms:
            raise RunTimeoutError(
                f"run {self.id} exceeded its run_timeout ({where}); it is failed",
                run_id=self.id)

    def _decode_all(self) -> dict[str, Any]:
        """Every checkpoint loaded by the claim, decoded in one call of a C decoder (orjson
        if installed, else the standard one): resuming a long run replays them all, and one
        call per step costs several times as much. Empty if any payload is not a JSON
        object: each is then decoded on its own, and the broken one reported with its
        position."""
        if not self._committed:
            return {}
        text = "[" + ",".join(self._committed.values()) + "]"
        try:
            # orjson refuses what the standard decoder accepts (NaN, integers beyond 64
            # bits): those runs take the standard path.
            records = _fast_loads(text) if _fast_loads is not None else _decoder.decode(text)
        except ValueError:
            try:
                records = _decoder.decode(text)
            except ValueError:
                return {}
        if len(records) != len(self._committed) or not all(type(r) is dict for r in records):
            return {}
        return dict(zip(self._committed, records, strict=True))

    def _replay(self, position: int, key: str, step_id: str, stored: str) -> Any:
        """The recorded value of the step at ``position`` (``key``: the same as a string,
        as the steps hash names it), after checking it was recorded for ``step_id``."""
        decoded = self._decoded
        if decoded is None:
            decoded = self._decoded = self._decode_all()
        try:
            record = decoded.get(key)
            if record is None:
                record, end = _decoder.raw_decode(stored)
                if end != len(stored):
                    raise ValueError("trailing data after the checkpoint")
            recorded_id = record["id"]
            if "v" not in record and "o" not in record:
                raise ValueError("neither a value nor an offloaded result")
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointDecodeError(
                f"run {self.id}: the checkpoint at step position {position} is not a "
                "celery-durable checkpoint (corrupted or written by another program)"
            ) from exc
        if recorded_id != step_id:
            raise NondeterminismError(
                f"run {self.id}: step position {position} was recorded as {recorded_id!r}, "
                f"but this attempt called {step_id!r} there. Step order must be the same "
                "in every attempt: do not branch on time, randomness or external state "
                "outside a step",
                run_id=self.id, position=position, recorded=recorded_id, called=step_id,
            )
        self.replayed += 1
        if "o" in record:
            value = from_jsonable(self._offloaded(position, step_id))
        elif _TAG_TEXT in stored:
            value = from_jsonable(record["v"])
        else:
            value = record["v"]  # plain JSON (no tagged type anywhere): nothing to convert
        if signals.step_replayed.receivers:  # a resume replays many steps: skip when unheard
            signals.step_replayed.send(sender=self.task_name, run_id=self.id,
                                       attempt=self.attempt, step=step_id, position=position)
        return value

    def _offloaded(self, position: int, step_id: str) -> Any:
        """The result of a step that was stored in the run's blobs hash (one round trip)."""
        blob = self._store.load_blob(self._keys, position)
        if blob is None:
            raise CheckpointDecodeError(
                f"run {self.id}: the result of step {step_id!r} (position {position}) was "
                "offloaded, but its blob is missing (deleted or evicted from Redis)")
        return json.loads(blob)

    def _execute(
        self,
        position: int,
        step_id: str,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        policy: RetryPolicy | None,
        durability: str | None = None,
        record_inputs: bool = False,
    ) -> R:
        tries = 0
        while True:
            tries += 1
            started = time.time()
            self._current_step = step_id
            try:
                value = fn(*args, **kwargs)
            except Exception as exc:
                self._current_step = None
                self._record_step_failure(position, step_id, tries, exc)
                if policy is not None and policy.should_retry(exc, tries):
                    time.sleep(policy.delay_for(tries))
                    continue
                raise
            finally:
                self._current_step = None
            inputs = (args, kwargs) if record_inputs and self._settings.record_step_inputs \
                else None
            self._commit(position, step_id, value, started, time.time(), durability, inputs)
            return value

    def _commit(
        self, position: int, step_id: str, value: Any, started: float, finished: float,
        durability: str | None = None,
        inputs: tuple[tuple[Any, ...], dict[str, Any]] | None = None,
    ) -> None:
        plain = is_plain(value)
        try:
            record = {"id": step_id, "v": value if plain else to_jsonable(value),
                      "t0": int(started * 1000), "t1": int(finished * 1000),
                      "a": self.attempt}
        except Unencodable as err:
            raise describe_unencodable(err, f"step {step_id!r} of run {self.id}") from None
        if inputs is not None:
            record["in"] = _inputs_record(inputs)
            plain = False  # (not checked: let dumps_json look)
        # The step id, times and attempt are plain: a plain value makes a plain record.
        payload = dumps_json(record, plain=plain or None)
        limit = self._settings.max_checkpoint_bytes
        if len(payload) > limit // 4 and len(payload.encode()) > limit:
            raise CheckpointTooLargeError(
                f"step {step_id!r} of run {self.id} returned {len(payload.encode())} bytes, "
                f"more than durable_max_checkpoint_bytes={limit}: store large data elsewhere "
                "(S3, a database) and return a reference, or raise the limit",
                step=step_id, size=len(payload.encode()),
            )
        blob = None
        offload = self._settings.offload_bytes
        if offload is not None and len(payload) > offload:
            blob = dumps_json(record.pop("v"))
            if len(blob.encode()) > offload:
                # The checkpoint keeps the size only; the value goes to the blobs hash.
                record["o"] = len(blob.encode())
                payload = dumps_json(record)
            else:
                blob = None
        logs = self.logs
        code = self._store.commit_step(self._keys, self._token, position, step_id, payload,
                                       logs.take() if logs is not None and logs.pending else (),
                                       blob=blob, durability_mode=durability or self.durability)
        self._check_code(code, f"commit step {step_id!r}")
        # Every checkpoint of the run, for the archive of a completed run (archive.py;
        # the script checks them against the steps hash before it packs them).
        if self._kept_bytes >= 0:
            self._kept_bytes += len(payload)
            if self._kept_bytes > MAX_ARCHIVE_BYTES:
                self._kept_bytes = -1
            else:
                self._committed[str(position)] = payload
        if code == 1:
            signals.step_committed.send(
                sender=self.task_name, run_id=self.id, attempt=self.attempt, step=step_id,
                position=position, duration_ms=(finished - started) * 1000)
            if self.meters is not None:
                self.meters.step_committed(finished - started)

    def _record_step_failure(
        self, position: int, step_id: str, tries: int, exc: Exception
    ) -> None:
        fields = {"step": step_id, "pos": position, "attempt": self.attempt, "try": tries,
                  **describe_error(exc)}
        self._check_code(
            self._store.append_event(self.id, "step_failed", fields, token=self._token,
                                     logs=self.take_logs()),
            f"record the failure of step {step_id!r}",
        )
        signals.step_failed.send(sender=self.task_name, run_id=self.id, attempt=self.attempt,
                                 step=step_id, position=position, exception=exc,
                                 try_number=tries)

    def _check_code(self, code: int, what: str) -> None:
        if code >= 0:
            return
        if code == -2:
            raise RunCancelled(f"run {self.id} was cancelled")
        if code == -1:
            raise LeaseLostError(
                f"run {self.id}: attempt {self.attempt} could not {what}: another attempt "
                "took over the run (or it was cancelled); this attempt stops here",
                run_id=self.id, attempt=self.attempt,
            )
        raise StoreError(f"run {self.id}: could not {what}: step positions out of order")


def current_run() -> RunContext:
    """The RunContext of the durable run executing in this thread.

    Raises:
        NotInRunError: outside a durable task (for example in a plain call of the function).
    """
    ctx = _current.get()
    if ctx is None:
        raise NotInRunError(
            "current_run() was called outside a durable run: call it from the body of a "
            "@durable_task (or a step it calls) while a worker executes it"
        )
    return ctx


def get_run_context() -> RunContext | None:
    """The current RunContext, or None outside a durable run (never raises)."""
    return _current.get()


def bind_context(ctx: RunContext | None) -> Any:
    """Make ``ctx`` current; returns the token for :func:`unbind_context`."""
    return _current.set(ctx)


def unbind_context(token: Any) -> None:
    _current.reset(token)
