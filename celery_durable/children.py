"""Child runs: a run starts other durable runs and waits for their outcome.

A child's id is derived from the parent's id and the step that starts it, and the start
goes through an idempotency key, so a parent that is retried or resumed never starts a
second child. When a child ends, its worker sends the outcome as an event on
``child:<child id>``, which the parent's wait step takes (and which waits in the mailbox if
the parent is not waiting yet).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from celery import Celery, Signature

from .errors import ConfigurationError
from .store import RunStore
from .waits import send_event

#: Message header naming the parent run of a child run.
PARENT_HEADER = "durable_parent"
_NAMESPACE = uuid.UUID("6f1d2a4e-9a55-4cf0-9b0f-2d1f7c6a8e31")


def child_event_key(child_id: str) -> str:
    return f"child:{child_id}"


def child_id_for(parent_id: str, step_id: str, index: int) -> str:
    """The id of the ``index``-th child started by step ``step_id`` of run ``parent_id``."""
    return str(uuid.uuid5(_NAMESPACE, f"{parent_id}\0{step_id}\0{index}"))


def as_signature(app: Celery, target: Any, args: Sequence[Any], kwargs: dict[str, Any]
                 ) -> Signature:
    """A signature of a durable task from a task or a signature (plus extra arguments)."""
    from .task import DurableTask

    if isinstance(target, Signature):
        sig = target.clone(args=tuple(args), kwargs=kwargs) if args or kwargs else target
    elif hasattr(target, "s"):
        sig = target.s(*args, **kwargs)
    else:
        raise ConfigurationError(
            f"current_run().call() takes a durable task or a signature, got {target!r}")
    task = app.tasks.get(str(sig.task))
    if not isinstance(task, DurableTask):
        raise ConfigurationError(
            f"child task {sig.task!r} is not a durable task: decorate it with @durable_task "
            "(only durable runs report their outcome to their parent)")
    return sig


def start_children(
    app: Celery, store: RunStore, parent_id: str, step_id: str,
    signatures: Sequence[Signature],
) -> list[str]:
    """Start each child once (idempotently); returns their run ids in order."""
    ids = []
    for index, sig in enumerate(signatures):
        child_id = child_id_for(parent_id, step_id, index)
        task: Any = app.tasks[str(sig.task)]
        task.apply_async(
            sig.args, sig.kwargs, task_id=child_id, idempotency_key=f"child:{child_id}",
            idempotency_ttl=store.settings.active_ttl_s, idempotency_conflict="ignore",
            headers={**(sig.options.get("headers") or {}), PARENT_HEADER: parent_id},
            **{k: v for k, v in sig.options.items() if k not in ("headers", "task_id")},
        )
        store.link_child(parent_id, child_id)
        ids.append(child_id)
    return ids


def notify_parent(app: Celery, store: RunStore, child_id: str, headers: dict[str, Any] | None,
                  outcome: dict[str, Any]) -> None:
    """Tell the parent (if any) how this child ended."""
    if headers and headers.get(PARENT_HEADER):
        send_event(app, store, child_event_key(child_id), outcome)


def outcome_of(raw: dict[str, str], decode: Any) -> dict[str, Any] | None:
    """A child's outcome read from its run record, if it has ended."""
    status = raw.get("status")
    if status == "completed":
        return {"ok": True, "result": decode(raw.get("result"))}
    if status in ("failed", "cancelled"):
        import json

        error = json.loads(raw["error"]) if raw.get("error") else {
            "error_type": "celery_durable.errors.RunCancelled",
            "error_message": f"child run was {status}", "traceback": ""}
        return {"ok": False, "status": status, **error}
    return None
