"""The durable pages: the runs list, a run's trace, the limits page, and their actions.

Actions are HTML form POSTs (Flower's XSRF check applies, and the forms carry the
``_xsrf`` token for OAuth sessions) answered with a redirect back to a page that says what
happened (post/redirect/get, so a reload never repeats an action).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import tornado.web

from ..client import DurableClient
from ..errors import DurableError
from ..models import RateLimitInfo, RunPage, RunStatus, RunSummary
from ..queries import RunQuery
from .actions import Outcome, run_action, set_limit
from .base import DurablePage, http_message
from .limits import LimitRow, by_priority, limit_rows, rate_rows
from .params import run_query
from .redaction import Redactor
from .trace import TraceView, build_trace

#: Seconds between two reloads of the runs list while auto-refresh is on.
REFRESH_S = 5
#: Child runs whose status the trace page reads (a large fan-out lists the rest by id).
MAX_CHILDREN = 200


def _query_or_problem(get: Any) -> tuple[RunQuery, str]:
    try:
        return run_query(get), ""
    except DurableError as exc:
        return RunQuery(), str(exc)


def load_trace(client: DurableClient, run_id: str, redactor: Redactor) -> TraceView:
    """The run and the summaries of its children (blocking: call in the executor)."""
    run = client.get_run(run_id)
    shown = run.children[:MAX_CHILDREN]
    children: list[tuple[str, RunSummary | None]] = list(
        zip(shown, client.summaries(shown), strict=True))
    children += [(child, None) for child in run.children[MAX_CHILDREN:]]
    return build_trace(run, redactor, children)


class RunsView(DurablePage):
    """``/durable/runs``: one page of the runs list (filters as query parameters)."""

    @tornado.web.authenticated
    async def get(self) -> None:
        query, problem = _query_or_problem(self.arg)
        page: RunPage = await self.blocking(self.client().search_runs, query)
        args = {k: self.arg(k) or "" for k in ("status", "task", "queue", "since", "until",
                                                 "q", "limit")}
        next_url = None
        if page.next_cursor is not None:
            next_url = "?" + urlencode({**{k: v for k, v in args.items() if v},
                                        "cursor": page.next_cursor})
        self.render_page("durable_runs.html", active_tab="runs", page=page, query=query,
                         args=args, statuses=[s.value for s in RunStatus], next_url=next_url,
                         first_url="?" + urlencode({k: v for k, v in args.items() if v}),
                         paged=query.cursor > 0, refresh_s=REFRESH_S,
                         **({"problem": problem} if problem else {}))


class RunView(DurablePage):
    """``/durable/runs/<run_id>``: the run's trace."""

    @tornado.web.authenticated
    async def get(self, run_id: str) -> None:
        view = await self.blocking(load_trace, self.client(), run_id, self.redactor())
        self.render_page("durable_run.html", active_tab="runs", view=view, run=view.run,
                         refresh_s=REFRESH_S)


class RunActionView(DurablePage):
    """``POST /durable/runs/<run_id>/<action>``: a form's action, then back to the page
    (``next=list``: the runs list) with its outcome."""

    @tornado.web.authenticated
    async def post(self, run_id: str, action: str) -> None:
        self.deny_if_read_only()
        try:
            outcome: Outcome = await self.blocking(run_action, self.client(), run_id, action,
                                                   self.arg)
        except tornado.web.HTTPError as exc:
            if exc.status_code not in (400, 404):
                raise
            self.flash(problem=http_message(exc))
            self._back(run_id)
            return
        self.flash(notice=outcome.message)
        self._back(outcome.run_id or run_id)

    def _back(self, run_id: str) -> None:
        if self.arg("next") == "list":
            self.redirect(self.reverse_url("durable-runs"))
        else:
            self.redirect(self.reverse_url("durable-run", run_id))


class LimitsView(DurablePage):
    """``/durable/limits``: the limits; a POST (``name``, ``limit``) changes one."""

    @tornado.web.authenticated
    async def get(self) -> None:
        rows: list[LimitRow] = await self.blocking(limit_rows, self.client())
        rates: list[RateLimitInfo] = await self.blocking(rate_rows, self.client())
        self.render_page("durable_limits.html", active_tab="limits", rows=rows, rates=rates,
                         by_priority=by_priority)

    @tornado.web.authenticated
    async def post(self) -> None:
        self.deny_if_read_only()
        try:
            outcome: Outcome = await self.blocking(set_limit, self.client(), self.arg)
            self.flash(notice=outcome.message)
        except tornado.web.HTTPError as exc:
            if exc.status_code != 400:
                raise
            self.flash(problem=http_message(exc))
        self.redirect(self.reverse_url("durable-limits"))


__all__ = ["LimitsView", "RunActionView", "RunView", "RunsView"]
