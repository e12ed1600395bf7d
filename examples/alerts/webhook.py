"""Post a message to a webhook (Slack, Teams, your own endpoint) when a durable run fails.

Import this module where your workers import their tasks (``app.conf.imports``), and set
``DURABLE_ALERT_WEBHOOK`` to the URL. The receiver only observes: if the webhook is down, the
run is not affected (celery-durable's signals swallow receiver errors).
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

from celery_durable import signals


@signals.run_failed.connect
def post_failure(sender: str | None = None, run_id: str = "", attempt: int = 0,
                 exception: BaseException | None = None, **_: Any) -> None:
    url = os.environ.get("DURABLE_ALERT_WEBHOOK")
    if not url:
        return
    text = (f"durable run {run_id} of {sender} failed after {attempt} attempt(s): "
            f"{type(exception).__name__}: {exception}")
    request = urllib.request.Request(
        url, data=json.dumps({"text": text}).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5):
        pass
