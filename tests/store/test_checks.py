"""Startup checks against real servers: eviction policy, settings conflicts."""

from __future__ import annotations

import pytest
import redis
from celery import Celery

from celery_durable import ConfigurationError
from celery_durable.checks import run_startup_checks, server_problems, settings_problems
from celery_durable.config import DurableSettings


def test_noeviction_server_has_no_problem(redis_base_url: str) -> None:
    assert server_problems(redis.Redis.from_url(redis_base_url)) == []


def test_evicting_server_is_reported_and_can_be_fatal(redis_base_url: str) -> None:
    client = redis.Redis.from_url(redis_base_url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        problems = server_problems(client)
        assert len(problems) == 1 and "'allkeys-lru'" in problems[0]
        app = Celery("checks", set_as_current=False)
        settings = DurableSettings(redis_url=redis_base_url, eviction_check="error")
        with pytest.raises(ConfigurationError, match="noeviction"):
            run_startup_checks(app, settings, client)
        with pytest.warns(RuntimeWarning, match="allkeys-lru"):
            run_startup_checks(app, DurableSettings(redis_url=redis_base_url), client)
    finally:
        client.config_set("maxmemory-policy", "noeviction")


def test_conflicting_settings() -> None:
    app = Celery("checks", set_as_current=False)
    app.conf.broker_transport_options = {"visibility_timeout": 2}
    problems = settings_problems(app, DurableSettings(redis_url="redis://x"))
    assert len(problems) == 1 and "visibility_timeout=2" in problems[0]
    with pytest.raises(ValueError, match="durable_lease_ttl_s must be at least 3"):
        DurableSettings(redis_url="redis://x", lease_ttl_s=2, heartbeat_interval_s=1)
