"""A pytest plugin: ``pytest_plugins = ["celery_durable.testing.plugin"]`` in conftest.py.

It is not registered as an entry point on purpose: installing celery-durable never changes
other projects' test sessions. Fixtures:

- ``durable_redis_url`` (session): the URL of a throwaway ``redis-server`` on a free port
  (no eviction, no persistence), or ``$DURABLE_TEST_REDIS_URL`` when set. Without
  redis-server the tests that use it are skipped, or fail when ``CI`` is set.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from ..errors import HarnessError
from .redis_server import redis_server


@pytest.fixture(scope="session")
def durable_redis_url() -> Iterator[str]:
    """A Redis for the whole session: ``redis://127.0.0.1:<port>`` (no database part)."""
    given = os.environ.get("DURABLE_TEST_REDIS_URL")
    if given:
        yield given.rstrip("/")
        return
    with ExitStack() as stack:
        try:
            url = stack.enter_context(redis_server())
        except HarnessError as exc:
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(str(exc))
            pytest.skip(str(exc))
        yield url
        # Celery results still referenced unsubscribe from Redis when they are collected:
        # collect them while the server is up, not at interpreter exit.
        gc.collect()
