"""The operator actions of the Flower views, as plain functions over a DurableClient.

Pages and the JSON API call the same functions (in Flower's executor: they talk to Redis),
so a form and an API call can never behave differently.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..client import DurableClient
from ..errors import ConfigurationError

#: The actions on a run, as they appear in URLs.
RUN_ACTIONS = ("replay", "fork", "cancel", "send-event", "reset-key")

Getter = Callable[[str], str | None]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an action did: a message for the operator and the run to show next."""

    message: str
    run_id: str
    data: dict[str, Any]


def _required(get: Getter, name: str, action: str) -> str:
    value = (get(name) or "").strip()
    if not value:
        raise ConfigurationError(f"{action} needs the parameter {name!r}")
    return value


def _payload(text: str | None) -> Any:
    if not text or not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"the event payload is not JSON: {exc}") from None


def run_action(client: DurableClient, run_id: str, action: str, get: Getter) -> Outcome:
    """Perform ``action`` on ``run_id`` with parameters read through ``get``."""
    if action == "replay":
        new = client.replay(run_id)
        return Outcome(f"run {run_id} replayed from its last checkpoint", new, {"run_id": new})
    if action == "fork":
        step = _required(get, "from_step", "fork")
        new = client.replay(run_id, from_step=step)
        return Outcome(f"forked run {new} from step {step!r} of {run_id}", new, {"run_id": new})
    if action == "cancel":
        prev = client.cancel(run_id)
        return Outcome(f"run {run_id} cancelled (it was {prev.value})", run_id,
                       {"previous_status": prev.value})
    if action == "send-event":
        key = _required(get, "key", "send-event")
        woken = client.send_event(key, _payload(get("payload")))
        text = (f"event {key!r} delivered to {', '.join(woken)}" if woken
                else f"event {key!r} kept for the next run that waits on it")
        return Outcome(text, run_id, {"woken": woken})
    if action == "reset-key":
        run = client.get_run(run_id)
        key = (get("key") or "").strip() or run.idempotency_key or ""
        if not key:
            raise ConfigurationError(f"run {run_id} has no idempotency key: pass 'key'")
        existed = client.reset_idempotency_key(run.task, key)
        text = (f"idempotency key {key!r} of {run.task} reset: the next call creates a new run"
                if existed else f"idempotency key {key!r} of {run.task} was not set")
        return Outcome(text, run_id, {"existed": existed})
    raise ConfigurationError(f"unknown action {action!r}: use one of {', '.join(RUN_ACTIONS)}")


def set_limit(client: DurableClient, get: Getter) -> Outcome:
    """Change a concurrency limit (``name``, ``limit``), or a rate limit (``name``,
    ``rate``, optional ``burst``; ``rate`` "coded" goes back to the coded one), at runtime."""
    name = _required(get, "name", "setting a limit")
    rate = get("rate")
    if rate is not None:
        burst_text = get("burst") or None
        try:
            burst = int(burst_text) if burst_text else None
        except ValueError:
            raise ConfigurationError(f"burst={burst_text!r} is not an integer") from None
        client.set_rate_limit(name, None if rate.strip() in ("", "coded") else rate, burst)
        return Outcome(f"rate limit {name} set to {rate}", "",
                       {"name": name, "rate": rate, "burst": burst})
    text = _required(get, "limit", "setting a limit")
    try:
        limit = int(text)
    except ValueError:
        raise ConfigurationError(f"limit={text!r} is not an integer") from None
    client.set_concurrency_limit(name, limit)
    return Outcome(f"limit {name} set to {limit}", "", {"name": name, "limit": limit})
