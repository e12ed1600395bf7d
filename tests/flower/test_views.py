"""The durable pages and JSON API of a real ``celery flower`` process, over runs a real
worker made (see conftest.py)."""

from __future__ import annotations

import html
import json
import re
import time
import uuid
from typing import Any
from urllib.parse import quote

import pytest

from tests.flower.conftest import (
    FlowerServer,
    Seeded,
    run_status,
    start_flower,
    stop_process,
    task,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.flower]


def route_paths(run_id: str) -> list[tuple[str, str]]:
    """(method, path) of every route install() adds, with ids filled in."""
    return [
        ("GET", "/durable/runs"),
        ("GET", f"/durable/runs/{run_id}"),
        ("POST", f"/durable/runs/{run_id}/cancel"),
        ("GET", "/durable/limits"),
        ("POST", "/durable/limits"),
        ("GET", "/api/durable/runs"),
        ("GET", f"/api/durable/runs/{run_id}"),
        ("POST", f"/api/durable/runs/{run_id}/cancel"),
        ("GET", "/api/durable/limits"),
        ("POST", "/api/durable/limits"),
    ]


def test_every_route_is_in_the_auth_test() -> None:
    from celery_durable.flower.install import ROUTES

    tested = {path for _, path in route_paths("RID")}
    for route in ROUTES:
        path = (route.regex.pattern.rstrip("$").replace("([^/]+)", "RID")
                .replace("([a-z-]+)", "cancel"))
        assert path in tested, f"{route.regex.pattern}: add it to route_paths()"


def test_no_credentials_no_access(flower: FlowerServer, seeded: Seeded) -> None:
    for method, path in route_paths(seeded.waiting):
        for auth in (None, "Basic " + "dXNlcjp3cm9uZw=="):  # none, then user:wrong
            reply = flower.request(path, method=method, auth=auth,
                                   data=b"" if method == "POST" else None)
            assert reply.status == 401, (method, path, auth, reply.status, reply.body[:200])
            assert seeded.waiting not in reply.body
    assert run_status_via(flower, seeded.waiting) == "suspended"


def run_status_via(flower: FlowerServer, run_id: str) -> str:
    return str(flower.get(f"/api/durable/runs/{run_id}").json()["status"])


def test_runs_list_page(flower: FlowerServer, seeded: Seeded) -> None:
    page = flower.get("/durable/runs")
    assert page.status == 200
    for run_id in (seeded.completed, seeded.failed, seeded.waiting, seeded.hostile):
        assert f'data-run-id="{run_id}"' in page.body
    assert "approve-o-3" in page.body  # the idempotency key is shown with its run
    assert re.search(r'data-status="failed">failed\s*<span class="durable-count">\d+', page.body)
    assert 'id="durable-autorefresh"' in page.body
    failed = flower.get("/durable/runs?status=failed")
    assert seeded.failed in failed.body and seeded.completed not in failed.body


def test_runs_api_filters(flower: FlowerServer, seeded: Seeded) -> None:
    def ids(query: str) -> list[str]:
        reply = flower.get("/api/durable/runs" + query)
        assert reply.status == 200, reply.body
        return [r["id"] for r in reply.json()["runs"]]

    everything = flower.get("/api/durable/runs").json()
    assert set(everything) == {"runs", "next_cursor", "counts"}
    assert everything["counts"]["suspended"] >= 1 and everything["counts"]["failed"] >= 2
    created = [r["created_at"] for r in everything["runs"]]
    assert created == sorted(created, reverse=True)

    assert seeded.failed in ids("?status=failed")
    assert all(r["status"] == "failed"
               for r in flower.get("/api/durable/runs?status=failed").json()["runs"])
    flaky = flower.get("/api/durable/runs?task=flower_tests.flaky").json()["runs"]
    assert seeded.failed in [r["id"] for r in flaky]
    assert {r["task"] for r in flaky} == {"flower_tests.flaky"}
    assert seeded.completed in ids("?queue=flower-tests")
    assert ids("?queue=elsewhere") == []
    assert ids("?q=approve-o-3") == [seeded.waiting]
    assert ids(f"?q={seeded.hostile}") == [seeded.hostile]
    assert ids(f"?q={seeded.hostile}&status=failed") == []
    future = int(time.time() * 1000) + 3_600_000
    assert ids(f"?since={future}") == []
    assert seeded.doomed in ids("?since=2000-01-01T00:00&until=" + str(future))


def test_runs_api_pages_server_side(flower: FlowerServer, seeded: Seeded) -> None:
    seen: list[str] = []
    cursor: Any = 0
    while cursor is not None:
        page = flower.get(f"/api/durable/runs?limit=2&cursor={cursor}").json()
        assert len(page["runs"]) <= 2
        seen += [r["id"] for r in page["runs"]]
        cursor = page["next_cursor"]
    all_ids = [r["id"] for r in flower.get("/api/durable/runs?limit=500").json()["runs"]]
    assert seen == all_ids and len(set(seen)) == len(seen) >= 5


@pytest.mark.parametrize(("query", "named"), [
    ("?status=sleeping", "unknown run status 'sleeping'"),
    ("?since=yesterday", "since='yesterday' is not a time"),
    ("?limit=0", "limit must be 1..500"),
    ("?cursor=-1", "cursor must be 0.."),
])
def test_runs_api_bad_parameters(flower: FlowerServer, query: str, named: str) -> None:
    reply = flower.get("/api/durable/runs" + query)
    assert reply.status == 400
    assert named in reply.json()["error"]


def test_run_api_and_unknown_run(flower: FlowerServer, seeded: Seeded) -> None:
    run = flower.get(f"/api/durable/runs/{seeded.failed}").json()
    assert run["status"] == "failed" and run["task"] == "flower_tests.flaky"
    assert [s["name"] for s in run["steps"]] == ["prepare"]
    assert "partner rejected o-2" in run["error"]["message"]
    assert "Traceback" in run["error"]["traceback"]
    assert [e["type"] for e in run["events"]].count("step_failed") == 2
    missing = flower.get("/api/durable/runs/no-such-run")
    assert missing.status == 404 and "no durable run 'no-such-run'" in missing.json()["error"]
    assert flower.get("/durable/runs/no-such-run").status == 404


def test_an_archived_run_shows_its_steps_and_trace(flower: FlowerServer, seeded: Seeded,
                                                   flower_app: Any) -> None:
    from celery_durable import DurableClient

    # The completed run's checkpoints and trace are in its archive (archive.py)...
    store = DurableClient(flower_app.app).store
    keys = store.keys.run(seeded.completed)
    assert store.client.exists(keys.archive) and not store.client.exists(keys.steps)
    # ...and its API answer and page show them as they were.
    run = flower.get(f"/api/durable/runs/{seeded.completed}").json()
    assert [s["name"] for s in run["steps"]] == ["fetch_order", "charge"]
    assert run["steps"][1]["value"] == "ch_o-1"
    types = [e["type"] for e in run["events"]]
    assert types[:2] == ["run_created", "attempt_started"] and "run_completed" in types
    assert types.count("step_committed") == 2
    page = flower.get(f"/durable/runs/{seeded.completed}").body
    for name in ("fetch_order", "charge"):
        assert f'data-step="{name}" data-state="committed"' in page


def test_secrets_are_redacted(flower: FlowerServer, seeded: Seeded) -> None:
    run = flower.get(f"/api/durable/runs/{seeded.completed}").json()
    assert run["steps"][0]["value"]["api_key"] == "[redacted]"
    assert run["steps"][0]["value"]["amount"] == 42
    assert run["result"] == {"charge": "ch_o-1", "token": "[redacted]"}
    # Step inputs (durable_record_step_inputs) are shown, and redacted the same way.
    assert run["steps"][0]["inputs"] == {"args": ["o-1"], "kwargs": {}}
    assert run["steps"][1]["inputs"]["args"][0]["api_key"] == "[redacted]"
    page = flower.get(f"/durable/runs/{seeded.completed}")
    assert '<div class="durable-step-input"><div class="small fw-semibold">input</div>' \
        in page.body
    for body in (page.body, json.dumps(run)):
        assert "SECRET" not in body
    assert "[redacted]" in page.body
    # The long note is cut in the preview and kept whole behind "show more".
    assert "show more" in page.body and "x" * 900 in page.body


def test_trace_page(flower: FlowerServer, seeded: Seeded) -> None:
    failed = flower.get(f"/durable/runs/{seeded.failed}").body
    assert 'data-step="prepare" data-state="committed"' in failed
    assert 'data-step="call_partner" data-state="failed"' in failed
    assert "2 failed tries" in failed
    assert "partner rejected o-2" in failed and "Traceback (most recent call last)" in failed
    assert f'href="/task/{seeded.failed}"' in failed  # Flower's own task page
    assert 'id="durable-replay"' in failed
    waiting = flower.get(f"/durable/runs/{seeded.waiting}").body
    assert 'id="durable-current-wait"' in waiting
    assert "waiting for event <code>approve:o-3</code>" in waiting
    assert 'value="approve:o-3"' in waiting  # the send-event form knows the key
    assert "approve-o-3" in waiting  # the idempotency key in the header


def test_log_lines_are_shown_as_text(flower: FlowerServer, seeded: Seeded, flower_app: Any) -> None:
    """A log event as the worker's capture writes it (the browser test sees real ones),
    with markup in its message."""
    from celery_durable import DurableClient

    store = DurableClient(flower_app.app).store
    store.append_event(seeded.doomed, "log", {
        "level": "WARNING", "logger": "shop.payments", "attempt": 1, "step": "",
        "message": "card <b>declined</b> for order o-9"})
    page = flower.get(f"/durable/runs/{seeded.doomed}").body
    row = re.search(r'<tr class="log-WARNING">.*?</tr>', page, re.S)
    assert row is not None, "the log line is not in the logs table"
    assert "shop.payments" in row.group(0)
    assert "card &lt;b&gt;declined&lt;/b&gt; for order o-9" in row.group(0)
    logs = flower.get(f"/api/durable/runs/{seeded.doomed}").json()["logs"]
    assert {"level": "WARNING", "logger": "shop.payments", "step": "", "attempt": 1,
            "message": "card <b>declined</b> for order o-9"}.items() <= logs[-1].items()


def test_html_in_step_names_and_payloads_is_text(flower: FlowerServer, seeded: Seeded) -> None:
    for path in (f"/durable/runs/{seeded.hostile}", "/durable/runs"):
        body = flower.get(path).body
        assert "<script>window.__xss" not in body
    body = flower.get(f"/durable/runs/{seeded.hostile}").body
    assert html.escape("<script>window.__xss_step=1</script>", quote=False) in body
    assert "&lt;script&gt;window.__xss_payload=1&lt;/script&gt;" in body


def test_navbar_has_runs_on_flowers_own_pages(flower: FlowerServer) -> None:
    for path in ("/workers", "/tasks", "/broker", "/durable/runs"):
        body = flower.get(path).body
        assert 'href="/durable/runs"' in body, path
        assert ">Runs</a>" in body


def test_actions_through_the_api(flower: FlowerServer, seeded: Seeded,
                                 flower_app: Any) -> None:
    pending = task(flower_app, "approval").apply_async(("o-api",),
                                                        idempotency_key="approve-o-api").id
    wait_for("the api run to wait", lambda: run_status(flower_app, pending) == "suspended")
    sent = flower.post_json(f"/api/durable/runs/{pending}/send-event",
                            {"key": "approve:o-api", "payload": {"approved": "yes"}})
    assert sent.status == 200, sent.body
    assert sent.json()["woken"] == [pending]
    wait_for("the api run to complete",
             lambda: run_status(flower_app, pending) == "completed")
    assert flower.get(f"/api/durable/runs/{pending}").json()["result"] == {"approved": "yes"}

    reset = flower.post_json(f"/api/durable/runs/{pending}/reset-key", {})
    assert reset.json()["existed"] is True
    again = task(flower_app, "approval").apply_async(("o-api",),
                                                      idempotency_key="approve-o-api").id
    assert again != pending
    cancelled = flower.post_json(f"/api/durable/runs/{again}/cancel", {})
    assert cancelled.status == 200, cancelled.body
    wait_for("the cancel", lambda: run_status(flower_app, again) == "cancelled")

    forked = flower.post_json(f"/api/durable/runs/{seeded.completed}/fork",
                              {"from_step": "charge"})
    assert forked.status == 200, forked.body
    fork_id = forked.json()["run_id"]
    wait_for("the fork", lambda: run_status(flower_app, fork_id) == "completed")
    origin_page = flower.get(f"/durable/runs/{seeded.completed}").body
    assert f'href="/durable/runs/{fork_id}"><code>{fork_id}</code></a> from step charge' \
        in origin_page
    fork_page = flower.get(f"/durable/runs/{fork_id}").body
    assert "forked from" in fork_page and f'href="/durable/runs/{seeded.completed}"' in fork_page
    bad = flower.post_json(f"/api/durable/runs/{seeded.completed}/replay", {})
    assert bad.status == 400 and "only failed or cancelled runs" in bad.json()["error"]
    unknown = flower.post_json(f"/api/durable/runs/{seeded.completed}/explode", {})
    assert unknown.status == 400 and "unknown action 'explode'" in unknown.json()["error"]


def test_edit_a_limit(flower: FlowerServer) -> None:
    changed = flower.post_json("/api/durable/limits",
                               {"name": "task:flower_tests.limited", "limit": 5})
    assert changed.status == 200, changed.body
    rows = flower.get("/api/durable/limits").json()["limits"]
    row = next(r for r in rows if r["name"] == "task:flower_tests.limited")
    assert (row["coded"], row["runtime"], row["effective"]) == (3, 5, 5)
    queue = next(r for r in rows if r["name"] == "queue:flower-tests")
    assert (queue["coded"], queue["key"], queue["waiting"]) == (50, None, 0)
    assert "queue:flower-tests" in flower.get("/durable/limits").body
    # The page form posts the same change (Flower's XSRF check lets same-origin posts in).
    form = flower.request("/durable/limits", method="POST",
                          data=b"name=task%3Aflower_tests.limited&limit=4",
                          headers={"Content-Type": "application/x-www-form-urlencoded",
                                   "Sec-Fetch-Site": "same-origin"})
    assert form.status == 302 and form.headers["Location"] == "/durable/limits"
    shown = flower.get("/durable/limits", headers={"Cookie": flash_cookie(form)}).body
    assert "<td>4</td>" in shown
    assert 'id="durable-notice"' in shown and "limit task:flower_tests.limited set to 4" in shown
    bad = flower.post_json("/api/durable/limits", {"name": "task:flower_tests.limited",
                                                   "limit": -1})
    assert bad.status == 400 and "must be an int >= 0" in bad.json()["error"]


def test_rate_limits_are_shown_and_edited(flower: FlowerServer) -> None:
    rates = {r["name"]: r for r in flower.get("/api/durable/limits").json()["rates"]}
    assert rates["task:flower_tests.rated"]["coded"] == "10/s"
    assert rates["step:call_api"]["coded"] == "30/m"
    assert rates["task:flower_tests.rated"]["available_now"] == 2  # the burst, idle
    changed = flower.post_json("/api/durable/limits",
                               {"name": "task:flower_tests.rated", "rate": "20/s", "burst": 4})
    assert changed.status == 200, changed.body
    try:
        rates = {r["name"]: r for r in flower.get("/api/durable/limits").json()["rates"]}
        assert rates["task:flower_tests.rated"]["runtime"] == "20/s"
        page = flower.get("/durable/limits").body
        assert 'data-rate="task:flower_tests.rated"' in page and "<td>20/s</td>" in page
        bad = flower.post_json("/api/durable/limits",
                               {"name": "task:flower_tests.rated", "rate": "lots"})
        assert bad.status == 400 and "'100/m'" in bad.json()["error"]
    finally:
        flower.post_json("/api/durable/limits",
                         {"name": "task:flower_tests.rated", "rate": "coded"})
    rates = {r["name"]: r for r in flower.get("/api/durable/limits").json()["rates"]}
    assert rates["task:flower_tests.rated"]["runtime"] is None


def test_runs_waiting_for_a_rate_are_shown_per_key_and_priority(flower: FlowerServer,
                                                                 flower_app: Any) -> None:
    # Published to a queue no worker reads: the first run of the tenant takes its turn, the
    # other two wait, one of them with a high priority (0 goes first with a Redis broker).
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    task = flower_app.rated_per_tenant
    for n, priority in ((0, None), (1, None), (2, 0)):
        task.apply_async((tenant, n), queue="flower-nowhere", priority=priority)
    rates = [r for r in flower.get("/api/durable/limits").json()["rates"]
             if r["key"] == tenant]
    assert len(rates) == 1 and rates[0]["name"] == "task:flower_tests.rated_per_tenant"
    assert rates[0]["waiting"] == 2 and rates[0]["waiting_by_priority"] == {"9": 1, "0": 1}
    page = flower.get("/durable/limits").body
    assert f"<td>{tenant}</td>" in page and "rank 9: 1, rank 0: 1" in page


def test_cross_site_posts_are_refused(flower: FlowerServer, seeded: Seeded) -> None:
    for path in (f"/durable/runs/{seeded.waiting}/cancel",
                 f"/api/durable/runs/{seeded.waiting}/cancel"):
        reply = flower.request(path, method="POST", data=b"",
                               headers={"Sec-Fetch-Site": "cross-site"})
        assert reply.status == 403, (path, reply.status)
    assert run_status_via(flower, seeded.waiting) == "suspended"


def test_page_action_redirects_with_the_outcome(flower: FlowerServer, seeded: Seeded) -> None:
    reply = flower.request(f"/durable/runs/{seeded.completed}/fork", method="POST",
                           data=b"from_step=no-such-step",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 302
    assert reply.headers["Location"] == f"/durable/runs/{seeded.completed}"
    shown = flower.get(reply.headers["Location"], headers={"Cookie": flash_cookie(reply)}).body
    assert 'id="durable-problem"' in shown and "no-such-step" in shown
    # The message travels in a signed cookie: a crafted link cannot show one.
    crafted = flower.get(f"/durable/runs/{seeded.completed}?error=call+us&notice=call+us").body
    assert "call us" not in crafted and 'id="durable-problem"' not in crafted
    forged = flower.get(f"/durable/runs/{seeded.completed}",
                        headers={"Cookie": 'durable_flash="[\"call us\", \"\"]"'}).body
    assert "call us" not in forged


def flash_cookie(reply: Any) -> str:
    found = re.search(r"(durable_flash=[^;]+)", reply.headers.get("Set-Cookie", ""))
    assert found, f"no flash cookie in {reply.headers}"
    return found.group(1)


def test_metrics(flower: FlowerServer, seeded: Seeded) -> None:
    def scrape() -> str:
        reply = flower.get("/metrics", auth=None)  # Flower serves /metrics without auth
        assert reply.status == 200
        return reply.body

    def value(text: str, sample: str) -> float:
        found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
        return float(found.group(1)) if found else -1.0

    checkout = 'task="flower_tests.checkout"'
    expected = {
        f"durable_flower_steps_committed_total{{{checkout}}}": lambda v: v >= 2,
        f"durable_flower_step_duration_seconds_count{{{checkout}}}": lambda v: v >= 2,
        'durable_flower_runs{status="suspended"}': lambda v: v >= 1,
        'durable_flower_runs{status="failed"}': lambda v: v >= 2,
        'durable_flower_retries_total{kind="step",task="flower_tests.flaky"}': lambda v: v >= 2,
        'durable_flower_runs_finished_total{status="failed",task="flower_tests.doomed"}':
            lambda v: v >= 1,
        'durable_flower_slot_limit{limit="task:flower_tests.limited"}': lambda v: v >= 3,
        'durable_flower_slots_in_use{limit="task:flower_tests.limited"}': lambda v: v == 0,
        'durable_flower_parked_runs{limit="task:flower_tests.limited"}': lambda v: v == 0,
        "durable_flower_poll_errors_total": lambda v: v == 0,
    }

    def unmet() -> list[str]:
        text = scrape()
        return [name for name, ok in expected.items() if not ok(value(text, name))]

    deadline = time.monotonic() + 20  # the poll runs every second (flowerapp's setting)
    while (missing := unmet()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not missing, f"these metrics never reached their values: {missing}"
    text = scrape()
    assert "approve" not in text and seeded.waiting not in text  # no keys or ids in labels


def test_url_prefix(redis_base_url: str, seeded: Seeded, flower_app: Any) -> None:
    server = start_flower(redis_base_url, "--url_prefix=ops/flower")
    try:
        page = server.get("/durable/runs")
        assert page.status == 200
        assert 'href="/ops/flower/durable/runs"' in page.body  # navbar item, prefixed
        assert f'href="/ops/flower/durable/runs/{quote(seeded.failed)}"' in page.body
        assert f'action="/ops/flower/durable/runs/{seeded.failed}/replay"' in page.body
        assert 'href="/ops/flower/durable/runs"' in server.get("/workers").body
        trace = server.get(f"/durable/runs/{seeded.waiting}")
        assert trace.status == 200 and 'href="/ops/flower/task/' in trace.body
        assert server.get(f"/api/durable/runs/{seeded.failed}").json()["id"] == seeded.failed
        sent = server.request(f"/durable/runs/{seeded.waiting}/send-event", method="POST",
                              data=b"key=nobody-waits-here",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert sent.status == 302
        assert sent.headers["Location"] == f"/ops/flower/durable/runs/{seeded.waiting}"
        assert server.get("/durable/runs", auth=None).status == 401
        assert server.get("/api/durable/runs", auth=None).status == 401
    finally:
        stop_process(server.proc)


def test_read_only(redis_base_url: str, seeded: Seeded) -> None:
    server = start_flower(redis_base_url, "--read_only=True")
    try:
        page = server.get("/durable/runs")
        assert page.status == 200 and "durable-replay" not in page.body  # no action forms
        trace = server.get(f"/durable/runs/{seeded.failed}")
        assert trace.status == 200 and 'id="durable-actions"' not in trace.body
        assert "<form" not in server.get("/durable/limits").body
        refused = server.post_json(f"/api/durable/runs/{seeded.failed}/replay", {})
        assert refused.status == 403 and "--read_only" in refused.json()["error"]
        for path in (f"/durable/runs/{seeded.failed}/replay", "/durable/limits"):
            assert server.request(path, method="POST", data=b"").status == 403
        assert server.post_json("/api/durable/limits",
                                {"name": "task:flower_tests.limited", "limit": 9}).status == 403
        assert run_status_via(server, seeded.failed) == "failed"
    finally:
        stop_process(server.proc)


def test_parent_and_child_runs_link_to_each_other(flower: FlowerServer, flower_worker: Any,
                                                  flower_app: Any) -> None:
    parent = task(flower_app, "parent").delay(20).id
    wait_for("the parent run", lambda: run_status(flower_app, parent) == "completed")
    run = flower.get(f"/api/durable/runs/{parent}").json()
    assert run["result"] == 41 and len(run["children"]) == 1
    child = run["children"][0]
    page = flower.get(f"/durable/runs/{parent}").body
    assert f'href="/durable/runs/{child}"' in page
    assert re.search(rf"{child}</code></a>\s*<span class=\"badge text-bg-success\">completed",
                     page)
    assert f'href="/durable/runs/{parent}"' in flower.get(f"/durable/runs/{child}").body


def test_sleeping_run_then_cancel_from_its_page(flower: FlowerServer, flower_worker: Any,
                                                flower_app: Any) -> None:
    napper = task(flower_app, "napper").delay().id
    wait_for("the nap", lambda: run_status(flower_app, napper) == "suspended")
    page = flower.get(f"/durable/runs/{napper}").body
    assert re.search(r"sleeping until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC", page)
    assert 'id="durable-cancel"' in page
    reply = flower.request(f"/durable/runs/{napper}/cancel", method="POST", data=b"",
                           headers={"Sec-Fetch-Site": "same-origin"})
    assert reply.status == 302
    assert run_status(flower_app, napper) == "cancelled"
    shown = flower.get(f"/durable/runs/{napper}", headers={"Cookie": flash_cookie(reply)}).body
    assert f"run {napper} cancelled (it was suspended)" in shown
    assert 'id="durable-cancel"' not in shown and 'id="durable-replay"' in shown


def test_oauth_sessions(redis_base_url: str, seeded: Seeded) -> None:
    """With OAuth (--auth), the pages and API need Flower's signed login cookie, and the
    forms' XSRF token is checked."""
    from tornado.web import create_signed_value

    secret = "durable-test-secret"
    server = start_flower(redis_base_url, "--auth=.*@example.com", f"--cookie_secret={secret}",
                          basic_auth=False)
    try:
        for method, path in route_paths(seeded.waiting):
            reply = server.request(path, method=method, auth=None,
                                   data=b"" if method == "POST" else None)
            if method == "GET":
                assert reply.status == 302, (path, reply.status)
                assert reply.headers["Location"].startswith("/login?next=")
            else:
                assert reply.status == 403, (path, reply.status)
        user = create_signed_value(secret, "user", "ann@example.com").decode()
        page = server.get(f"/durable/runs/{seeded.waiting}", auth=None,
                          headers={"Cookie": f"user={user}"})
        assert page.status == 200 and 'name="_xsrf"' in page.body
        xsrf = re.search(r"_xsrf=([^;]+)", page.headers.get("Set-Cookie", ""))
        assert xsrf is not None
        form = re.search(r'name="_xsrf" value="([^"]+)"', page.body)
        assert form is not None
        cookies = f"user={user}; _xsrf={xsrf.group(1)}"
        missing = server.request(f"/durable/runs/{seeded.waiting}/send-event", method="POST",
                                 auth=None, data=b"key=nobody-waits",
                                 headers={"Cookie": cookies})
        assert missing.status == 403  # no _xsrf field: refused
        sent = server.request(f"/durable/runs/{seeded.waiting}/send-event", method="POST",
                              auth=None, data=f"key=nobody-waits&_xsrf={form.group(1)}".encode(),
                              headers={"Cookie": cookies,
                                       "Content-Type": "application/x-www-form-urlencoded"})
        assert sent.status == 302, sent.body
        outsider = create_signed_value(secret, "user", "eve@elsewhere.org").decode()
        assert server.get("/api/durable/runs", auth=None,
                          headers={"Cookie": f"user={outsider}"}).status == 302
    finally:
        stop_process(server.proc)


def test_redis_down_is_a_clear_503(flower_app: Any) -> None:
    from tests.conftest import free_port

    dead = f"redis://127.0.0.1:{free_port()}"  # nothing listens there
    server = start_flower(dead)
    try:
        api = server.get("/api/durable/runs")
        assert api.status == 503, api.body
        assert "the durable store is unavailable" in api.json()["error"]
        page = server.get("/durable/runs")
        assert page.status == 503 and "the durable store is unavailable" in page.body
    finally:
        stop_process(server.proc)


def test_list_actions_come_back_to_the_list(flower: FlowerServer, flower_worker: Any,
                                           flower_app: Any) -> None:
    run_id = task(flower_app, "checkout").apply_async(("o-list",),
                                                      idempotency_key="list-key").id
    wait_for("the keyed run", lambda: run_status(flower_app, run_id) == "completed")
    listed = flower.get("/durable/runs?q=list-key").body
    assert f"/durable/runs/{run_id}/reset-key" in listed  # offered in the row's menu
    reply = flower.request(f"/durable/runs/{run_id}/reset-key", method="POST",
                           data=b"next=list",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 302 and reply.headers["Location"] == "/durable/runs"
    shown = flower.get("/durable/runs", headers={"Cookie": flash_cookie(reply)}).body
    assert "idempotency key &#x27;list-key&#x27; of flower_tests.checkout reset" in shown
    again = task(flower_app, "checkout").apply_async(("o-list",), idempotency_key="list-key").id
    assert again != run_id


def test_crash_resumes_and_attempt_retries_are_counted(
        flower: FlowerServer, flower_worker: Any, flower_app: Any) -> None:
    """Both come from the trace of runs that finished. A crash resume is a
    ``crash_detected`` event (what a claim records when the previous attempt's worker died;
    the chaos suite makes real ones): one is added to a waiting run, which then finishes."""
    from celery_durable import DurableClient

    client = DurableClient(flower_app.app)
    run_id = task(flower_app, "approval").delay("o-crash").id
    wait_for("the run to wait", lambda: run_status(flower_app, run_id) == "suspended")
    client.store.append_event(run_id, "crash_detected", {"crashes": 1, "holder": "w|1|x"})
    client.send_event("approve:o-crash", True)
    wait_for("the run to complete", lambda: run_status(flower_app, run_id) == "completed")

    retried = task(flower_app, "second_time").delay().id
    wait_for("the retried run", lambda: run_status(flower_app, retried) == "completed")

    def counted() -> bool:
        text = flower.get("/metrics", auth=None).body
        return ('durable_flower_crash_resumes_total{task="flower_tests.approval"} 1.0' in text
                and 'durable_flower_retries_total{kind="attempt",task="flower_tests.second_time"}'
                ' 1.0' in text)

    wait_for("the crash resume and the retry in /metrics", counted)
    assert "crash_detected" in flower.get(f"/durable/runs/{run_id}").body
    trace = flower.get(f"/durable/runs/{retried}").body
    assert "failed, retrying" in trace and "upstream hung up" in trace


def test_a_paused_limit_shows_its_waiting_run(flower: FlowerServer, flower_worker: Any,
                                              flower_app: Any) -> None:
    name = "task:flower_tests.limited"

    def row() -> dict[str, Any]:
        limits = flower.get("/api/durable/limits").json()["limits"]
        return dict(next(r for r in limits if r["name"] == name and r["key"] is None))

    assert flower.post_json("/api/durable/limits", {"name": name, "limit": 0}).status == 200
    try:
        run_id = task(flower_app, "limited").delay().id
        wait_for("the run to wait for a slot", lambda: row()["parked"] == [run_id])
        page = flower.get("/durable/limits").body
        assert f'href="/durable/runs/{run_id}"' in page
        assert run_status(flower_app, run_id) != "completed"
        trace = flower.get(f"/durable/runs/{run_id}").body
        assert re.search(r'id="durable-current-wait">\s*<strong>Waiting:</strong>\s*for a slot '
                         r'of concurrency limit <a href="/durable/limits"><code>'
                         r'task:flower_tests.limited</code></a> \(1st in line, 0/0 in use', trace)
    finally:
        assert flower.post_json("/api/durable/limits", {"name": name, "limit": 3}).status == 200
    wait_for("the run to get its slot", lambda: run_status(flower_app, run_id) == "completed")
    assert row()["waiting"] == 0 and row()["effective"] == 3
