"""Celery's result of a completed run, written by the script that ends its attempt.

When Celery's result backend is the checkpoint store's Redis server and database (one Redis
URL for broker, results and checkpoints is a common setup), end_attempt.lua writes the
task's result meta and publishes it on the result's channel, exactly as Celery's Redis
backend would, in the round trip that completes the run. Celery's own store after the body
(a GET to check the result is not already a success, then a SET and a PUBLISH) is then
skipped, two round trips fewer per run, and the run's end and its result are one write: no
worker crash can leave a run completed without the result its caller waits for.

The check Celery's GET makes (never overwrite a success: a lost worker's late attempt) is
the fencing token's job here: only the attempt holding the run's lease can complete it.

Celery stores the result itself (nothing changes) when the backend is elsewhere, or for a
request with link callbacks or a chain (Celery publishes those first, so the stored result
lists them as children), an ignored result, an eager call, or a value the backend cannot
encode (Celery then reports the error as usual).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from celery import states
from celery.backends.redis import RedisBackend

from .connections import shares_server

if TYPE_CHECKING:
    from celery import Task

    from .store import RunStore




@dataclass(frozen=True, slots=True)
class CeleryResult:
    """What end_attempt.lua writes for Celery: ``key`` (the backend's key of the task,
    its global key prefix included), ``payload`` (the meta, encoded by the backend) and
    ``expires_ms`` (``result_expires``; 0 for none)."""

    key: str
    payload: str | bytes
    expires_ms: int


def for_completed_run(task: Task[Any, Any], store: RunStore, value: Any) -> CeleryResult | None:
    """The result Celery would store for the current request completing with ``value``,
    for end_attempt.lua to write; None when Celery must store it itself."""
    req = task.request
    if (req.is_eager or req.called_directly or req.callbacks or req.chain
            or task.ignore_result or getattr(req, "ignore_result", False)
            or type(task.backend) is not RedisBackend or not store.single_server):
        return None
    #: Celery's own (private) helpers, so the meta is the one its store would write.
    backend: Any = task.backend
    if not shares_server(store.client, backend):
        return None
    run_id = str(req.id)
    try:
        meta = success_meta(backend, req, backend.encode_result(value, states.SUCCESS))
        meta["task_id"] = run_id
        payload = backend.encode(meta)
    except Exception:
        return None  # Celery's own store raises it again and reports it
    if len(payload) > backend._MAX_STR_VALUE_SIZE:
        return None  # Celery refuses it with its own error
    key = backend.get_key_for_task(run_id)
    expires = backend.expires
    return CeleryResult(key=key.decode() if isinstance(key, bytes) else str(key),
                        payload=payload, expires_ms=int(expires * 1000) if expires else 0)


def success_meta(backend: Any, request: Any, result: Any) -> dict[str, Any]:
    """The meta Celery's ``Backend._get_result_meta`` builds for a success, without its
    settings look-ups (``find_value_for_key`` and ``app.now()``'s time zone handling took
    about 60 us per run, more than the rest of the end's client side): the same fields
    and values (tests/integration/test_results.py compares the two). With
    ``result_extended`` on, Celery's own helper builds it."""
    app = backend.app
    if app.conf.result_extended:
        return dict(backend._get_result_meta(result=result, state=states.SUCCESS,
                                             traceback=None, request=request))
    done = datetime.now(timezone.utc).astimezone(app.timezone)
    meta = {"status": states.SUCCESS, "result": result, "traceback": None,
            "children": [child.as_tuple() for child in getattr(request, "children", None)
                         or ()],
            "date_done": done.isoformat()}
    if getattr(request, "group", None):
        meta["group_id"] = request.group
    if getattr(request, "parent_id", None):
        meta["parent_id"] = request.parent_id
    return meta


def stored(task: Task[Any, Any]) -> None:
    """The end wrote the result: tell Celery's tracer not to store it again (its
    ``mark_as_done`` skips an ignored request's result, and still counts a chord part)."""
    task.request.ignore_result = True
