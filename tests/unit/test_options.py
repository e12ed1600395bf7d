"""Decorator options and settings are checked when declared, with messages that name them."""

from __future__ import annotations

import pytest
from celery import Celery

from celery_durable import ConfigurationError, DurableTask, RetryPolicy, durable_task, step
from celery_durable.config import forget_settings, settings_for


def test_unknown_option_suggests_the_close_name() -> None:
    with pytest.raises(ConfigurationError, match="unknown option 'acks_lat'.*'acks_late'"):
        durable_task(acks_lat=True)


def test_invalid_durable_options() -> None:
    with pytest.raises(ConfigurationError, match="retry=.*must be a RetryPolicy"):
        durable_task(retry=3)
    with pytest.raises(ConfigurationError, match="autoretry_for="):
        durable_task(autoretry_for=(ValueError,))
    with pytest.raises(ConfigurationError, match="subclass of DurableTask"):
        durable_task(base=object)
    with pytest.raises(ConfigurationError, match="name=...\\) must be a str"):
        durable_task(name=5)
    with pytest.raises(ConfigurationError, match="must decorate a function"):
        durable_task()(42)


def test_step_options() -> None:
    with pytest.raises(ConfigurationError, match="without '#'"):
        step(name="a#b")
    with pytest.raises(ConfigurationError, match="must be a RetryPolicy"):
        step(retry={"max_attempts": 2})  # type: ignore[arg-type]


def test_celery_options_pass_through_and_step_is_plain_outside_a_run() -> None:
    app = Celery("opts", broker="redis://127.0.0.1:1/0", set_as_current=False)

    @step
    def double(x: int) -> int:
        return x * 2

    @durable_task(name="opts.t", queue="q1", acks_late=True, time_limit=30, bind=True,
                  retry=RetryPolicy(max_attempts=7))
    def t(self: DurableTask, x: int) -> int:
        return double(x)

    # Registered like shared_task: every app (finalized later) gets it.
    registered = app.tasks["opts.t"]
    assert isinstance(registered, DurableTask)
    assert registered.queue == "q1" and registered.time_limit == 30
    assert registered.durable_retry == RetryPolicy(max_attempts=7)
    assert double(4) == 8  # outside a run: a plain call
    assert registered(5) == 10  # a direct task call is a plain call too


def test_app_task_with_durable_base_keeps_retry_method() -> None:
    app = Celery("base", broker="redis://127.0.0.1:1/0", set_as_current=False)

    @app.task(base=DurableTask, retry=RetryPolicy(max_attempts=4), name="base.t")
    def t() -> int:
        return 1

    assert isinstance(t, DurableTask)
    assert t.durable_retry == RetryPolicy(max_attempts=4)
    assert callable(t.retry) and t.acks_late and t.reject_on_worker_lost


def test_settings_are_validated_and_named() -> None:
    app = Celery("cfg", broker="amqp://guest@localhost//", set_as_current=False)
    with pytest.raises(ConfigurationError, match="durable_redis_url is not set"):
        settings_for(app)
    app.conf.durable_redis_url = "redis://127.0.0.1:6379/2"
    app.conf.durable_lease_ttl_s = -5
    forget_settings(app)
    with pytest.raises(ConfigurationError, match="durable_lease_ttl_s"):
        settings_for(app)
    app.conf.durable_lease_ttl_s = 10
    app.conf.durable_leese_ttl_s = 10
    forget_settings(app)
    with pytest.raises(ConfigurationError, match="durable_leese_ttl_s"):
        settings_for(app)
    del app.conf["durable_leese_ttl_s"]
    forget_settings(app)
    assert settings_for(app).lease_ttl_s == 10
    assert settings_for(app) is settings_for(app)


def test_current_run_outside_a_run() -> None:
    from celery_durable import NotInRunError, current_run

    with pytest.raises(NotInRunError, match="outside a durable run"):
        current_run()


def test_commit_durability_option_and_setting_are_validated() -> None:
    from celery_durable import ConfigurationError, durable_task
    from celery_durable.config import DurableSettings

    with pytest.raises(ConfigurationError, match=r"commit_durability=...\) must be one of"):
        durable_task(commit_durability="disk")(lambda: None)
    app = Celery("opts-durability", broker="redis://127.0.0.1:1/0", set_as_current=False)

    @durable_task(commit_durability="aof", name="opts.aof")
    def aof_task() -> None:
        return None

    assert app.tasks["opts.aof"].durable_commit_durability == "aof"
    assert DurableSettings(redis_url="redis://x").commit_durability == "none"
    with pytest.raises(ValueError):
        DurableSettings(redis_url="redis://x", commit_durability="disk")  # type: ignore[arg-type]


def test_step_durability_option_is_validated() -> None:
    with pytest.raises(ConfigurationError, match=r"@step\(durability=...\) must be one of"):
        step(durability="fsync")
    assert step(durability="replica")(lambda: 1)() == 1  # outside a run: a plain call
