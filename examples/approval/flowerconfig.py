"""Flower reads this file from its working directory, so ``celery -A proj flower`` run here
has the Runs tab (one line; any Flower option may follow, e.g. ``port = 5555``)."""

import celery_durable.flower; celery_durable.flower.install()  # noqa: E702, I001
