"""Signals reach observers with the documented arguments; a webhook receiver example."""

from __future__ import annotations

import http.server
import json
import threading
import uuid
from typing import Any

import pytest

from celery_durable import signals


def test_signals_of_a_retried_run(worker, tasks, token) -> None:
    run_id = str(uuid.uuid4())
    seen: list[tuple[str, dict[str, Any]]] = []
    sigs = [signals.run_started, signals.step_committed, signals.step_replayed,
            signals.step_failed, signals.run_retrying, signals.run_completed]

    def receiver(sender: Any = None, signal: Any = None, **kwargs: Any) -> None:
        if kwargs.get("run_id") == run_id:
            seen.append((signal.name, kwargs))

    for sig in sigs:
        sig.connect(receiver, weak=False)
    try:
        result = tasks.counters_task.apply_async((token,), {"failures": 1}, task_id=run_id)
        assert result.get(timeout=30) == {"result": 20}
    finally:
        for sig in sigs:
            sig.disconnect(receiver)
    names = [n for n, _ in seen]
    assert names == [
        "durable_run_started", "durable_step_committed", "durable_step_committed",
        "durable_step_failed", "durable_run_retrying",
        "durable_run_started", "durable_step_replayed", "durable_step_replayed",
        "durable_step_committed", "durable_run_completed",
    ]
    committed = [kw for n, kw in seen if n == "durable_step_committed"]
    assert [c["step"] for c in committed] == ["load", "enrich", "flaky_save"]
    assert seen[-1][1]["result"] == {"result": 20}
    assert seen[5][1]["attempt"] == 2


def test_signals_of_a_failed_run_replayed(worker, tasks, client, token) -> None:
    run_id = str(uuid.uuid4())
    seen: list[tuple[str, dict[str, Any]]] = []
    sigs = [signals.run_started, signals.run_failed, signals.run_completed,
            signals.step_committed, signals.step_replayed]

    def receiver(sender: Any = None, signal: Any = None, **kwargs: Any) -> None:
        if kwargs.get("run_id") == run_id:
            seen.append((signal.name, kwargs))

    for sig in sigs:
        sig.connect(receiver, weak=False)
    try:
        result = tasks.fail_once_per_key.apply_async((token,), task_id=run_id)
        with pytest.raises(ValueError, match="first run fails"):
            result.get(timeout=30)
        assert client.replay(run_id) == run_id
        replayed = tasks.fail_once_per_key.AsyncResult(run_id)  # a fresh one: no cached state
        assert replayed.get(timeout=30) == "second run succeeds"
    finally:
        for sig in sigs:
            sig.disconnect(receiver)
    assert [n for n, _ in seen] == [
        "durable_run_started", "durable_run_failed",
        "durable_run_started", "durable_run_completed",
    ]
    assert [kw["attempt"] for _, kw in seen] == [1, 1, 2, 2]
    assert isinstance(seen[1][1]["exception"], ValueError)


@pytest.fixture
def webhook():  # type: ignore[no-untyped-def]
    received: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()
    server.server_close()


def test_webhook_example_posts_failures(worker, tasks, token, webhook, monkeypatch) -> None:
    import examples.alerts.webhook as alerts  # noqa: F401 - connects the receiver

    url, received = webhook
    monkeypatch.setenv("DURABLE_ALERT_WEBHOOK", url)
    result = tasks.non_retryable_task.delay(token)
    with pytest.raises(Exception, match="card declined"):
        result.get(timeout=30)
    assert any(result.id in m["text"] and "card declined" in m["text"] for m in received)
