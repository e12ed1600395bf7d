"""What every durable page and API handler shares: auth, the client, off-IOLoop calls.

Handlers subclass Flower's own ``BaseHandler`` (its basic auth, OAuth cookie check, XSRF
check, navbar and ``url_prefix``); every method is ``@tornado.web.authenticated``. Redis is
only ever read in Flower's executor, never on the IOLoop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import redis
import tornado.web
from flower.api import BaseApiHandler
from flower.views import BaseHandler

from ..client import DurableClient
from ..config import settings_for
from ..errors import DurableError, RunNotFoundError, StoreError
from ..models import RunStatus
from .redaction import Redactor

T = TypeVar("T")

#: Bootstrap colour of each status badge.
BADGES = {
    RunStatus.PENDING.value: "secondary",
    RunStatus.RUNNING.value: "primary",
    RunStatus.RETRYING.value: "warning",
    RunStatus.SUSPENDED.value: "info",
    RunStatus.COMPLETED.value: "success",
    RunStatus.FAILED.value: "danger",
    RunStatus.CANCELLED.value: "dark",
}


def error_status(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and message for an error of an action or a read."""
    if isinstance(exc, RunNotFoundError):
        return 404, str(exc)
    if isinstance(exc, StoreError):
        return 503, f"the durable store is unavailable: {exc}"
    if isinstance(exc, DurableError):
        return 400, str(exc)
    raise exc


def http_message(exc: tornado.web.HTTPError) -> str:
    """The message an HTTPError was raised with (its log message, formatted)."""
    if not exc.log_message:
        return exc.reason or ""
    return str(exc.log_message % exc.args if exc.args else exc.log_message)


def fmt_time(at: dt.datetime | None) -> str:
    """A stored time as shown on the pages (UTC, to the millisecond)."""
    if at is None:
        return "-"
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def fmt_ms(ms: float | None) -> str:
    """A duration given in milliseconds, in the largest unit that keeps it readable."""
    if ms is None:
        return "-"
    if ms < 1:
        return "<1 ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class DurableMixin:
    """Shared by pages and API handlers (mixed into Flower's handler classes)."""

    application: Any
    request: Any

    def client(self) -> DurableClient:
        return DurableClient(self.application.capp)

    def redactor(self) -> Redactor:
        return Redactor(settings_for(self.application.capp).flower_redact)

    @property
    def read_only(self) -> bool:
        return bool(self.application.options.read_only)

    def deny_if_read_only(self) -> None:
        if self.read_only:
            raise tornado.web.HTTPError(403, "Flower runs with --read_only: actions are off")

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in Flower's executor; errors become HTTP errors."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.application.executor,
                                              functools.partial(fn, *args))
        except DurableError as exc:
            raise _http_error(exc) from exc
        except redis.RedisError as exc:
            raise tornado.web.HTTPError(503, "the durable store is unavailable: %s", exc,
                                        reason=_reason(503)) from exc

    def checked(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (no I/O: parsing), its errors as HTTP errors."""
        try:
            return fn(*args)
        except DurableError as exc:
            raise _http_error(exc) from exc

    def arg(self, name: str) -> str | None:
        """A raw request argument (escaped when rendered, never before)."""
        value = self.get_argument(name, None, escape=False)  # type: ignore[attr-defined]
        return None if value is None else str(value)


def _http_error(exc: DurableError) -> tornado.web.HTTPError:
    status, message = error_status(exc)
    return tornado.web.HTTPError(status, "%s", message, reason=_reason(status))


def _reason(status: int) -> str:
    return {400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}.get(status, "Error")


#: The signed cookie carrying an action's outcome to the page it redirects to.
FLASH_COOKIE = "durable_flash"


class DurablePage(DurableMixin, BaseHandler):  # type: ignore[misc]
    """A page: Flower's layout and auth, our template loader (see install)."""

    def flash(self, notice: str = "", problem: str = "") -> None:
        """Show ``notice`` or ``problem`` on the next page this browser loads (a signed
        session cookie, so a crafted link cannot put words in the page's mouth)."""
        self.set_secure_cookie(FLASH_COOKIE, json.dumps([notice, problem]), expires_days=None)

    def _take_flash(self) -> tuple[str, str]:
        raw = self.get_secure_cookie(FLASH_COOKIE, max_age_days=1)
        if raw is None:
            return "", ""
        self.clear_cookie(FLASH_COOKIE)
        try:
            notice, problem = json.loads(raw)
        except ValueError:
            return "", ""
        return str(notice), str(problem)

    def render_page(self, template: str, **kwargs: Any) -> None:
        notice, problem = self._take_flash()
        values: dict[str, Any] = {
            "fmt_time": fmt_time, "fmt_ms": fmt_ms, "badges": BADGES,
            "read_only": self.read_only, "notice": notice, "problem": problem}
        values.update(kwargs)
        self.render(template, **values)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        if status_code in (400, 503) and isinstance(exc, tornado.web.HTTPError):
            self.set_status(status_code)
            self.render("404.html", message=http_message(exc))
            return
        super().write_error(status_code, **kwargs)


class DurableApi(DurableMixin, BaseApiHandler):  # type: ignore[misc]
    """A JSON endpoint: Flower's API auth (401 unless auth is configured or
    FLOWER_UNAUTHENTICATED_API is set), JSON errors ``{"error": message}``."""

    def write_json(self, data: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.write(tornado.escape.json_encode(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        message = self._reason
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            message = http_message(exc)
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Basic realm="flower"')
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(tornado.escape.json_encode({"error": message}))
