"""Flower reads this file from its working directory: it adds the durable run views
(``/durable/runs``) to ``celery -A proj flower``."""

import celery_durable.flower

celery_durable.flower.install()
