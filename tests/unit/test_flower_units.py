"""The pure parts of the Flower views: the navbar patch (a guard against Flower template
drift), redaction, the trace builder, query parameters and the settings they read."""

from __future__ import annotations

import datetime as dt

import pytest
from celery import Celery
from tornado.template import Template

from celery_durable.config import forget_settings, settings_for
from celery_durable.errors import ConfigurationError
from celery_durable.flower.params import parse_time, run_query
from celery_durable.flower.redaction import REDACTED, Redactor, show
from celery_durable.flower.templating import NAVBAR_ANCHOR, flower_templates, patch_navbar
from celery_durable.flower.trace import build_trace
from celery_durable.models import (
    ErrorInfo,
    LogRecordInfo,
    RunInfo,
    RunStatus,
    StepInfo,
    TraceEvent,
)
from celery_durable.queries import RunQuery


def test_flowers_navbar_still_has_the_anchor_the_runs_item_needs() -> None:
    navbar = (flower_templates() / "navbar.html").read_text()
    patched = patch_navbar(navbar)
    assert patched is not None, (
        f"Flower's navbar.html (in {flower_templates()}) no longer has {NAVBAR_ANCHOR!r} "
        "after its Tasks item: update celery_durable/flower/templating.py for this Flower")
    first_list = patched[:patched.index(NAVBAR_ANCHOR, patched.index("durable-runs"))]
    assert "reverse_url('tasks')" in first_list and "reverse_url('durable-runs')" in first_list
    assert patched.count("reverse_url('durable-runs')") == 1
    Template(patched, name="navbar.html")  # still a valid template


def test_flowers_base_template_still_has_the_blocks_our_pages_fill() -> None:
    base = (flower_templates() / "base.html").read_text()
    for block in ("navbar", "container", "extra_scripts", "title"):
        assert f"{{% block {block} %}}" in base, (
            f"Flower's base.html has no {{% block {block} %}}: the durable pages extend it")
    assert 'id="url_prefix"' in base and "bootstrap" in base


def test_a_navbar_without_the_anchor_is_left_alone() -> None:
    assert patch_navbar("<nav><div>no list here</div></nav>") is None


def test_redaction_follows_keys_at_any_depth() -> None:
    r = Redactor(("password", "api[_-]?key", "token"))
    value = {"user": "ann", "Password": "p", "nested": [{"API-Key": "k", "ok": 1}],
             "tokens": ["a"], "list": [1, {"x": {"auth_token": "t"}}]}
    assert r.value(value) == {"user": "ann", "Password": REDACTED,
                              "nested": [{"API-Key": REDACTED, "ok": 1}], "tokens": REDACTED,
                              "list": [1, {"x": {"auth_token": REDACTED}}]}
    assert r.fields({"secret_token": "x", "payload": '{"password": "p", "n": 2}', "n": "1"}) \
        == {"secret_token": REDACTED, "payload": '{"password": "[redacted]", "n": 2}', "n": "1"}
    assert Redactor(()).value({"password": "p"}) == {"password": "p"}


def test_long_values_have_a_preview_and_the_full_text() -> None:
    shown = show({"note": "x" * 2000}, Redactor(()), limit=100)
    assert shown.truncated and len(shown.preview) <= 104 and "x" * 2000 in shown.full
    short = show([1, 2], Redactor(()))
    assert not short.truncated and short.preview == short.full


def _at(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def test_trace_of_a_run_with_retries_waits_and_logs() -> None:
    def ev(ms: int, type_: str, **fields: str) -> TraceEvent:
        return TraceEvent(id=f"{ms}-0", at=_at(ms), type=type_, fields={"type": type_, **fields})

    err = {"error_type": "ValueError", "error_message": "no", "traceback": "Traceback ..."}
    run = RunInfo(
        id="r", task="t", status=RunStatus.SUSPENDED, attempt=2, created_at=_at(1000),
        updated_at=_at(5000), finished_at=None, step_count=1,
        steps=[StepInfo(position=0, name="fetch", attempt=1, started_at=_at(2000),
                        finished_at=_at(3000), duration_ms=1000, value={"token": "t"})],
        events=[ev(1500, "attempt_started", attempt="1", worker="w1"),
                ev(3100, "step_failed", step="charge", attempt="1", **{"try": "1"}, **err),
                ev(3200, "attempt_failed", attempt="1", retry_in_s="1.000", **err),
                ev(4000, "attempt_started", attempt="2", worker="w2"),
                ev(4200, "run_suspended", reason="wait_for_event", key="k", step="approve",
                   until_ms="")],
        logs=[LogRecordInfo(at=_at(4100), level="INFO", logger="app", message="<b>hi</b>",
                            step="", attempt=2)],
    )
    view = build_trace(run, Redactor(("token",)), [], now=_at(6000))
    fetch, charge = view.steps
    assert (fetch.state, charge.state) == ("committed", "failed")
    assert fetch.value is not None and REDACTED in fetch.value.full
    assert fetch.offset_pct == pytest.approx((2000 - 1500) / (6000 - 1500) * 100)
    assert fetch.width_pct == pytest.approx(1000 / 4500 * 100)
    assert [f.error.message for f in charge.failures] == ["no"]
    assert [(a.attempt, a.worker, a.outcome) for a in view.attempts] == [
        (1, "w1", "failed, retrying"), (2, "w2", "suspended")]
    assert view.current_wait is not None and view.current_wait.key == "k"
    assert [line.message for line in view.logs] == ["<b>hi</b>"]
    assert view.worker == "w2" and view.duration_ms is None
    assert view.queued_ms == 500 and view.elapsed_ms == 5000


def test_child_waits_name_the_child() -> None:
    run = RunInfo(id="p", task="t", status=RunStatus.SUSPENDED, attempt=1,
                  created_at=_at(0), updated_at=_at(1), finished_at=None, step_count=0,
                  error=ErrorInfo(type="x", message="y"),
                  events=[TraceEvent(id="5-0", at=_at(5), type="run_suspended",
                                     fields={"reason": "wait_for_child", "key": "child:c1"})])
    view = build_trace(run, Redactor(()), [("c1", None)], now=_at(10))
    assert view.current_wait is not None and view.current_wait.child_id == "c1"


def test_query_parameters() -> None:
    args = {"status": "failed", "task": "t", "since": "2026-12-01T10:00",
            "until": "1896000000000", "q": " key-1 ", "limit": "20", "cursor": "40"}
    since = int(dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC).timestamp() * 1000)
    assert run_query(args.get) == RunQuery(
        status=RunStatus.FAILED, task="t", since_ms=since, until_ms=1896000000000,
        search="key-1", limit=20, cursor=40)
    assert run_query({}.get) == RunQuery()
    assert parse_time("since", "2026-12-01T10:00:00+01:00") == parse_time(
        "since", "2026-12-01T09:00")
    with pytest.raises(ConfigurationError, match="until='soon' is not a time"):
        run_query({"until": "soon"}.get)
    with pytest.raises(ConfigurationError, match="unknown run status 'done'"):
        run_query({"status": "done"}.get)
    with pytest.raises(ConfigurationError, match="the time range is empty"):
        RunQuery(since_ms=10, until_ms=5)


def test_redact_setting_is_validated() -> None:
    app = Celery("redact", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.durable_flower_redact = ["ok", "(unclosed"]
    with pytest.raises(ConfigurationError, match=r"durable_flower_redact.*'\(unclosed'"):
        settings_for(app)
    app.conf.durable_flower_redact = ["session"]
    forget_settings(app)
    assert settings_for(app).flower_redact == ("session",)


def test_without_flower_the_import_says_what_to_install() -> None:
    import subprocess
    import sys

    code = ("import sys; sys.modules['flower'] = None\n"
            "try:\n    import celery_durable.flower\n"
            "except ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "pip install 'celery-durable[flower]'" in out and "flower" in out


def test_python_m_prints_the_shipped_conf_file() -> None:
    import subprocess
    import sys
    from pathlib import Path

    from celery_durable.flower import CONF_PATH

    out = subprocess.run([sys.executable, "-m", "celery_durable.flower"], capture_output=True,
                         text=True, timeout=60, check=True).stdout.strip()
    assert out == CONF_PATH
    assert "celery_durable.flower.install()" in Path(out).read_text()


@pytest.mark.parametrize(("position", "shown"), [("0", "1st"), ("2", "3rd"), ("10", "11th"),
                                                 ("21", "22nd"), ("", "?")])
def test_a_run_parked_for_a_slot_waits_for_it(position: str, shown: str) -> None:
    run = RunInfo(id="r", task="t", status=RunStatus.PENDING, attempt=0, created_at=_at(0),
                  updated_at=_at(1), finished_at=None, step_count=0,
                  events=[TraceEvent(id="1-0", at=_at(1), type="slot_denied",
                                     fields={"limit": "task:t", "position": position,
                                             "held": "2", "max": "2"})])
    wait = build_trace(run, Redactor(()), [], now=_at(5)).current_wait
    assert wait is not None and wait.reason == "slot" and wait.key == "task:t"
    assert wait.detail == f"{shown} in line, 2/2 in use"


def test_each_attempt_ends_the_way_its_first_ending_event_says() -> None:
    def ev(ms: int, type_: str, **fields: str) -> TraceEvent:
        return TraceEvent(id=f"{ms}-0", at=_at(ms), type=type_, fields=fields)

    run = RunInfo(id="r", task="t", status=RunStatus.CANCELLED, attempt=2, created_at=_at(0),
                  updated_at=_at(9), finished_at=_at(9), step_count=0,
                  events=[ev(1, "attempt_started", attempt="1", worker="w1"),
                          ev(2, "crash_detected", crashes="1", holder="w1"),
                          ev(3, "attempt_started", attempt="2", worker="w2"),
                          ev(4, "run_suspended", reason="sleep", until_ms="9000"),
                          ev(5, "run_cancelled", reason="by ops")])
    view = build_trace(run, Redactor(()), [], now=_at(10))
    assert [a.outcome for a in view.attempts] == ["worker died", "suspended"]
    assert view.current_wait is None  # a cancelled run waits for nothing
    assert view.waits[0].until == _at(9000)


def test_durations_and_times_as_shown() -> None:
    from celery_durable.flower.base import fmt_ms, fmt_time

    assert [fmt_ms(v) for v in (None, 0.2, 12.4, 1500, 90_000, 600_000, 9_000_000)] == [
        "-", "<1 ms", "12 ms", "1.50 s", "90.00 s", "10.0 min", "2.5 h"]
    assert fmt_time(_at(1_500)) == "1970-01-01 00:00:01.500 UTC" and fmt_time(None) == "-"
