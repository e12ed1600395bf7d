"""The JSON API: the same data and actions as the pages, behind Flower's API auth.

``GET /api/durable/runs`` (filters as the list page), ``GET /api/durable/runs/<run_id>``,
``GET /api/durable/limits``, ``POST /api/durable/runs/<run_id>/<action>`` and
``POST /api/durable/limits``. Payloads are redacted as on the pages.
"""

from __future__ import annotations

import json
from typing import Any

import tornado.web

from ..client import DurableClient
from ..models import RunInfo
from .actions import Outcome, run_action, set_limit
from .base import DurableApi
from .limits import limit_rows, rate_rows
from .params import run_query
from .redaction import Redactor


def run_json(run: RunInfo, redactor: Redactor) -> dict[str, Any]:
    """A run as JSON, with its payloads redacted."""
    data = run.model_dump(mode="json")
    for name in ("args", "kwargs", "result"):
        data[name] = redactor.value(data[name])
    for step in data["steps"]:
        step["value"] = redactor.value(step["value"])
    for event in data["events"]:
        event["fields"] = redactor.fields(event["fields"])
    return data


def _limits_json(client: DurableClient) -> list[dict[str, Any]]:
    return [{"name": r.name, "key": r.key, "coded": r.coded, "runtime": r.runtime,
             "effective": r.effective, "in_use": len(r.holders), "holders": r.holders,
             "waiting": len(r.parked), "parked": r.parked} for r in limit_rows(client)]


def _rates_json(client: DurableClient) -> list[dict[str, Any]]:
    return [r.model_dump() for r in rate_rows(client)]


class RunsApi(DurableApi):
    """``GET /api/durable/runs``: a page of runs, ``next_cursor`` and the counts."""

    @tornado.web.authenticated
    async def get(self) -> None:
        query = self.checked(run_query, self.arg)
        page = await self.blocking(self.client().search_runs, query)
        self.write_json(page.model_dump(mode="json"))


class RunApi(DurableApi):
    """``GET /api/durable/runs/<run_id>``: the run, redacted."""

    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        run = await self.blocking(self.client().get_run, run_id)
        self.write_json(run_json(run, self.redactor()))


class RunActionApi(DurableApi):
    """``POST /api/durable/runs/<run_id>/<action>``: an action; JSON body or form."""

    @tornado.web.authenticated
    async def post(self, run_id: str, action: str) -> None:
        self.deny_if_read_only()
        body = _params(self)
        outcome: Outcome = await self.blocking(run_action, self.client(), run_id, action,
                                               lambda name: _text(body.get(name)))
        self.write_json({"message": outcome.message, "run_id": outcome.run_id, **outcome.data})


def _params(handler: DurableApi) -> dict[str, Any]:
    """An action's parameters: a JSON object body, or form/query arguments."""
    raw = handler.request.body or b""
    content_type = handler.request.headers.get("Content-Type", "")
    if raw and content_type.startswith("application/json"):
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise tornado.web.HTTPError(400, "the body is not JSON: %s", exc) from exc
        if not isinstance(data, dict):
            raise tornado.web.HTTPError(400, "the body must be a JSON object")
        if "payload" in data and not isinstance(data["payload"], str):
            data["payload"] = json.dumps(data["payload"])
        return data
    return {k: handler.arg(k) for k in handler.request.arguments}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class LimitsApi(DurableApi):
    """``/api/durable/limits``: GET the limits and rate limits, POST ``{"name", "limit"}``
    or ``{"name", "rate", "burst"}`` to change one."""

    @tornado.web.authenticated
    async def get(self) -> None:
        self.write_json({"limits": await self.blocking(_limits_json, self.client()),
                         "rates": await self.blocking(_rates_json, self.client())})

    @tornado.web.authenticated
    async def post(self) -> None:
        self.deny_if_read_only()
        body = _params(self)
        outcome = await self.blocking(set_limit, self.client(),
                                      lambda name: _text(body.get(name)))
        self.write_json({"message": outcome.message, **outcome.data})
