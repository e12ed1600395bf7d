"""examples/migration: the same task before and after celery-durable; a failing upload
makes plain Celery run the whole task again and the durable task resume at the upload. The
README's diff is the diff of the two directories."""

from __future__ import annotations

import difflib
import re

import pytest

from celery_durable.testing import worker_process
from tests.examples.conftest import Example

pytestmark = pytest.mark.slow


def readme_diff(example: Example) -> str:
    text = (example.dir / "README.md").read_text()
    match = re.search(r"^```diff\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)
    assert match, "examples/migration/README.md has no diff block"
    return match.group(1)


def test_the_readme_diff_is_the_diff_of_the_two_directories(example: Example) -> None:
    lines: list[str] = []
    for name in ("proj.py", "tasks.py"):
        before = (example.dir / "before" / name).read_text().splitlines(keepends=True)
        after = (example.dir / "after" / name).read_text().splitlines(keepends=True)
        lines += difflib.unified_diff(before, after, f"before/{name}", f"after/{name}")
    assert readme_diff(example) == "".join(lines)


@pytest.mark.parametrize(("version", "calls"), [
    ("before", {"fetch": 2, "enrich": 2, "upload": 2}),
    ("after", {"fetch": 1, "enrich": 1, "upload": 2}),
])
def test_a_retry_before_and_after(example: Example, version: str,
                                  calls: dict[str, int]) -> None:
    cwd = example.dir / version
    env = {**example.env, "PYTHONPATH": str(cwd)}
    results = example.app
    with worker_process("proj", cwd=cwd, env=env, pool="solo"):
        sent = example.run("-m", "celery", "-A", "proj", "call", "tasks.sync_customer",
                           "--args", '["c-1"]', cwd=cwd)
        assert sent.returncode == 0, sent.stderr
        task_id = sent.stdout.strip().splitlines()[-1]
        result = results.AsyncResult(task_id)
        assert result.get(timeout=60) == {"customer": "c-1", "row": "row-c-1"}
        result.forget()
    counted = {s: int(example.redis.get(f"migration:calls:{s}:c-1") or 0) for s in calls}
    assert counted == calls
