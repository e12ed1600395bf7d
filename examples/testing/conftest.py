"""Fixtures for testing shop.py with celery-durable's pytest helpers (docs/testing.md)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import shop
from celery import Celery

from celery_durable.testing import durable_worker

pytest_plugins = ["celery_durable.testing.plugin"]  # the durable_redis_url fixture


@pytest.fixture(scope="session")
def app(durable_redis_url: str) -> Celery:
    shop.app.conf.update(
        broker_url=f"{durable_redis_url}/0",
        result_backend=f"{durable_redis_url}/0",
        worker_prefetch_multiplier=1,
    )
    return shop.app


@pytest.fixture(scope="session")
def worker(app: Celery) -> Iterator[object]:
    with durable_worker(app, pool="threads", concurrency=2) as w:
        yield w
