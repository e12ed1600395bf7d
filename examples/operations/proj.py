"""An app configured from celeryconfig.py: ``celery -A proj worker``, ``celery -A proj
durable doctor``."""

from __future__ import annotations

from celery import Celery

app = Celery("proj")
app.config_from_object("celeryconfig")
