"""``install()``: put the durable pages, API and metrics into the Flower about to start.

Flower executes its config file (``flowerconfig.py`` in the working directory, or
``--conf``) before it builds its application from the module-level ``flower.urls.handlers``
and ``flower.urls.settings``. ``install()`` inserts our routes into that list in place,
before Flower's catch-all, so ``--url_prefix`` rewrites them like Flower's own; sets our
template loader; and starts the metrics poller on the IOLoop Flower is about to run.
"""

from __future__ import annotations

import logging
from typing import Any

import flower.urls
from celery import Celery
from tornado.web import url

from ..config import settings_for
from .api import LimitsApi, RunActionApi, RunApi, RunsApi
from .handlers import LimitsView, RunActionView, RunsView, RunView
from .metrics import DurableMetrics, Poller
from .templating import DurableLoader

logger = logging.getLogger("celery_durable.flower")

#: Our routes, in the order they are tried.
ROUTES = [
    url(r"/durable/runs", RunsView, name="durable-runs"),
    url(r"/durable/runs/([^/]+)", RunView, name="durable-run"),
    url(r"/durable/runs/([^/]+)/([a-z-]+)", RunActionView, name="durable-run-action"),
    url(r"/durable/limits", LimitsView, name="durable-limits"),
    url(r"/api/durable/runs", RunsApi),
    url(r"/api/durable/runs/([^/]+)", RunApi),
    url(r"/api/durable/runs/([^/]+)/([a-z-]+)", RunActionApi),
    url(r"/api/durable/limits", LimitsApi),
]

_state: dict[str, Any] = {}


def _celery_app() -> Celery:
    """The app of the running ``celery -A proj flower`` command."""
    import click

    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        app = getattr(ctx.obj, "app", None)
        if isinstance(app, Celery):
            return app
        ctx = ctx.parent
    from celery import current_app

    return current_app._get_current_object()  # type: ignore[attr-defined, no-any-return]


def install(app: Celery | None = None, *, metrics: bool = True) -> None:
    """Add the durable pages, JSON API and metrics to Flower; call it from Flower's config
    file (``flowerconfig.py``). ``app`` defaults to the app of the ``celery flower``
    command. Calling it again does nothing."""
    if _state.get("installed"):
        return
    handlers: list[Any] = flower.urls.handlers
    catch_all = next((i for i, h in enumerate(handlers)
                      if getattr(h, "regex", None) is not None and h.regex.pattern == ".*$"
                      or isinstance(h, tuple) and h[0] == r".*"), len(handlers))
    handlers[catch_all:catch_all] = ROUTES
    flower.urls.settings["template_loader"] = DurableLoader()
    _state["installed"] = True
    if metrics:
        capp = app or _celery_app()
        settings = settings_for(capp)
        poller = Poller(capp, DurableMetrics(), settings.flower_metrics_interval_s)
        poller.start()
        _state["poller"] = poller
    logger.info("celery-durable: Flower pages at /durable/runs")
