"""A fresh clone carries what the README promises: the two commands exist, CI calls the
README's test command, and the committed files alone pass the Redis-backed store tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^\s*(scripts/\w+)\s*$", text, flags=re.MULTILINE)


def test_readme_gives_the_demo_and_test_commands_and_ci_runs_the_latter() -> None:
    commands = readme_commands()
    assert "scripts/demo" in commands and "scripts/test" in commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./scripts/test" in ci and "CI=true" in ci
    test_script = (ROOT / "scripts" / "test").read_text()
    assert "apt-get install" in test_script and 'status" -eq 5' in test_script
    for name in ("demo", "test"):
        assert os.access(ROOT / "scripts" / name, os.X_OK)
    assert os.access(ROOT / ".ci" / "run", os.X_OK)


@pytest.mark.slow
def test_committed_files_alone_pass_the_store_tests(tmp_path: Path) -> None:
    from celery_durable.testing import redis_server

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # A Redis of its own: the clone's session flushes the test databases (the broker's among
    # them), which would drop the kombu bindings this session's workers rely on.
    with redis_server() as url:
        env = {**os.environ, "PYTHONPATH": str(clone), "DURABLE_TEST_REDIS_URL": url}
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/store",
             "tests/unit", "-o", "addopts="],
            cwd=clone, env=env, capture_output=True, text=True, timeout=300,
        )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout
    # The clone's package was the one tested, not the working tree's.
    check = subprocess.run(
        [sys.executable, "-c", "import celery_durable; print(celery_durable.__file__)"],
        cwd=clone, env=env, capture_output=True, text=True, check=True,
    )
    assert check.stdout.strip().startswith(str(clone))
