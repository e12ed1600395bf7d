"""Resume data: what a run needs to be published again keeps its place in a canvas."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery_durable.requeue import (
    encode_options,
    publish_resume,
    resume_info,
    stored_resume_info,
)


class Producer:
    channel = object()  # not kombu's Redis channel: the pooled producer is used as it is


class Pool:
    def __init__(self) -> None:
        self.producer = Producer()

    @contextmanager
    def acquire(self, block: bool = True) -> Iterator[Producer]:
        yield self.producer


class RecordingApp:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.producer_pool = Pool()

    def send_task(self, name: str, **options: Any) -> None:
        self.calls.append((name, options))


NEXT = {"task": "t.next", "args": [], "kwargs": {}, "options": {}, "subtask_type": None}


def test_canvas_options_travel_and_expiry_does_not() -> None:
    app = RecordingApp()
    info = resume_info("t.task", (1,), {"b": 2}, "q", {"h": 1},
                       {"chain": [NEXT], "link": [NEXT], "group_id": "g", "expires": 60,
                        "countdown": 5, "chord": None})
    assert publish_resume(app, "run-1", info) is True  # type: ignore[arg-type]
    name, options = app.calls[0]
    assert name == "t.task" and options["task_id"] == "run-1"
    assert options["args"] == [1] and options["kwargs"] == {"b": 2}
    assert options["chain"] == [NEXT] and options["link"] == [NEXT]
    assert options["group_id"] == "g"
    # Published on a producer of the app's pool, and not as a child of the current task.
    assert options["producer"] is app.producer_pool.producer
    assert options["add_to_parent"] is False
    # A resumed run must not be dropped as expired, nor delayed again; unset ones stay out.
    assert "expires" not in options and "countdown" not in options and "chord" not in options


def test_resume_data_written_before_canvas_options_existed_still_publishes() -> None:
    app = RecordingApp()
    legacy = json.dumps({"task": "t.task", "args": [1], "kwargs": {}, "queue": "q",
                         "headers": {}})
    assert publish_resume(app, "run-2", legacy) is True  # type: ignore[arg-type]
    assert app.calls[0][1]["queue"] == "q" and "chain" not in app.calls[0][1]


def test_stored_options_round_trip_through_the_run_record() -> None:
    stored = encode_options({"chain": [NEXT], "producer": object()})
    assert json.loads(stored) == {"chain": [NEXT]}  # only canvas options are kept
    assert encode_options({"queue": "q"}) == ""
    info = json.loads(stored_resume_info("t.task", "[1]", "{}", "q", stored))
    assert info["options"] == {"chain": [NEXT]}
    assert json.loads(stored_resume_info("t.task", "[1]", "{}", "q", "not json"))[
        "options"] == {}


def test_unreadable_resume_data_is_refused_not_published() -> None:
    app = RecordingApp()
    assert publish_resume(app, "run-3", "{oops") is False  # type: ignore[arg-type]
    assert app.calls == []
