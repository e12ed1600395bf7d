"""Settings of log capture and metrics, and the pure parts of log capture (no Redis)."""

from __future__ import annotations

import logging
import sys

import pytest
from celery import Celery

from celery_durable import ConfigurationError, metrics
from celery_durable.config import DurableSettings, settings_for
from celery_durable.logcapture import RunLogs, format_message, truncate


def settings(**conf: object) -> DurableSettings:
    app = Celery("obs", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.update({f"durable_{k}": v for k, v in conf.items()})
    return settings_for(app)


def test_defaults() -> None:
    s = settings()
    assert (s.log_capture, s.log_level, s.log_max_records, s.log_max_chars) == (
        True, logging.INFO, 1000, 4000)
    assert (s.metrics, s.metrics_port) == (True, None)


@pytest.mark.parametrize("given, level", [("debug", 10), (" WARNING ", 30), (25, 25)])
def test_log_level_by_name_or_number(given: object, level: int) -> None:
    assert settings(log_level=given).log_level == level


@pytest.mark.parametrize("conf, message", [
    ({"log_level": "LOUD"}, "durable_log_level: unknown log level 'LOUD'"),
    ({"log_level": True}, "durable_log_level"),
    ({"log_max_records": -1}, "durable_log_max_records"),
    ({"log_max_chars": 10}, "durable_log_max_chars"),
    ({"metrics_port": 70000}, "durable_metrics_port"),
    ({"log_capture": "sometimes"}, "durable_log_capture"),
])
def test_bad_values_name_the_setting(conf: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        settings(**conf)


def test_truncate_marks_what_was_cut() -> None:
    assert truncate("abc", 3) == "abc"
    assert truncate("abcdef", 4) == "abcd... [truncated 2 characters]"


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = sys.exc_info() if exc else None
    return logging.LogRecord("app", logging.ERROR, __file__, 1, msg, args, exc_info)


def test_format_message_with_arguments_and_exception() -> None:
    assert format_message(_record("%s=%d", "n", 3)) == "n=3"
    assert format_message(_record("%d", "not a number")) == "%d ('not a number',)"
    try:
        raise KeyError("missing")
    except KeyError:
        text = format_message(_record("lookup failed", exc=True))
    assert text.startswith("lookup failed\nTraceback (most recent call last)")
    assert text.endswith("KeyError: 'missing'")


def test_run_logs_bound_adds_one_notice() -> None:
    logs = RunLogs(settings(log_max_records=2), attempt=3)
    for i in range(5):
        logs.add(_record(f"m{i}"), "step")
    values = logs.take()
    assert len(values) == 3 * 6 and logs.dropped == 3 and logs.take() == []
    assert values[2] == "m0" and values[8] == "m1" and values[4] == "3"
    assert values[13] == "celery_durable.logs" and "durable_log_max_records=2" in values[14]


class _Broken:
    def inc(self, amount: float = 1) -> None:
        raise OSError("disk full")

    def observe(self, amount: float) -> None:
        raise OSError("disk full")


@pytest.mark.skipif(not metrics.AVAILABLE, reason="needs the prometheus extra")
def test_a_failing_metric_never_raises() -> None:
    meters = metrics.meters_for(settings(), "tests.unit.broken")
    assert meters is not None
    for slot in metrics.TaskMeters.__slots__:
        value = _Broken()
        setattr(meters, slot, {s: value for s in metrics.FINISHED_STATUSES}
                if slot == "_finished" else value)
    meters.step_committed(0.1)
    meters.step_replayed()
    meters.run_retrying()
    meters.crash_resumed()
    meters.slot_waited()
    meters.run_finished("completed")
    metrics._meters.pop("tests.unit.broken")


def test_metrics_off_records_nothing() -> None:
    assert metrics.meters_for(settings(metrics=False), "tests.unit.off") is None


def test_handler_joins_only_configured_loggers(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery_durable import logcapture

    root, task = logging.getLogger(), logging.getLogger("celery.task")
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(task, "handlers", [])
    monkeypatch.setattr(task, "propagate", True)
    logcapture.install()
    # Logging is not configured: logging.lastResort must still print warnings.
    assert root.handlers == [] and task.handlers == []
    configured = logging.StreamHandler()
    root.addHandler(configured)
    monkeypatch.setattr(task, "propagate", False)  # as a worker sets it
    logcapture.install()
    logcapture.install()
    assert root.handlers == [configured, logcapture._handler]
    assert task.handlers == [logcapture._handler]
