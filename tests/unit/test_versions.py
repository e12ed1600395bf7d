"""Code versions: the digest follows the task's and its steps' source; options are checked."""

from __future__ import annotations

import importlib.util
import textwrap
import types
import uuid
from pathlib import Path

import pytest

from celery_durable import ConfigurationError, durable_task
from celery_durable.versions import extra_queues, routed_queue, source_version


def _module(tmp_path: Path, step_body: str, task_body: str = "return fetch() + 1",
            in_file: bool = True) -> types.ModuleType:
    source = textwrap.dedent(f"""
        from celery_durable import step

        @step
        def fetch():
            {step_body}

        def task():
            {task_body}
    """)
    name = "versioned_example"
    if not in_file:
        module = types.ModuleType(name)
        exec(compile(source, f"<{name}>", "exec"), module.__dict__)
        return module
    folder = tmp_path / uuid.uuid4().hex
    folder.mkdir()
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("in_file", [True, False])
def test_the_version_follows_the_steps_the_task_calls(tmp_path: Path, in_file: bool) -> None:
    def version(step_body: str, task_body: str = "return fetch() + 1") -> str:
        return source_version(_module(tmp_path, step_body, task_body, in_file).task)

    base = version("return 1")
    assert len(base) == 12
    assert version("return 1") == base
    assert version("return 5") != base                      # a step the task calls changed
    assert version("return 1", "return fetch() + 2") != base  # the task itself changed


def test_version_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="version_policy=...\\) must be one of"):
        durable_task(version_policy="skip")
    with pytest.raises(ConfigurationError, match="without '@'"):
        durable_task(version="v1@x")


def test_routed_queues() -> None:
    assert routed_queue("celery", "v1") == "celery@v1"
    assert routed_queue("celery@v2", "v1") == "celery@v1"

    class App:
        tasks: dict[str, object] = {}

    assert extra_queues(App(), ["celery"]) == []
