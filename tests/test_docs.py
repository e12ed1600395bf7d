"""The documentation cannot drift from the code.

How docs are checked (one mechanism for every page of docs/): each fenced code block in
docs/*.md is included from a file under examples/, which a test runs. The line before the
opening fence names the file::

    <!-- include: examples/quickstart/tasks.py -->

and the block must be a verbatim run of whole lines of that file. So every piece of code a
reader copies from the docs exists in an example that tests/examples/ (or tests/testing/)
executes against real Redis and real workers.

Also checked here: relative links resolve; the README links every page; docs/configuration.md
lists every ``durable_*`` setting of config.py with its real default; docs/cli.md documents
every ``celery durable`` subcommand and option.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from celery_durable.cli import durable
from celery_durable.config import DurableSettings
from celery_durable.retry import RetryPolicy

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
INCLUDE = re.compile(r"^<!-- include: (?P<path>examples/\S+) -->$")
FENCE = re.compile(r"^(`{3,}|~{3,})")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
REQUIRED = ["getting-started", "concepts", "guarantees", "configuration", "flower", "cli",
            "operations", "testing", "migration", "comparison", "design"]


def code_blocks(path: Path) -> Iterator[tuple[int, str | None, list[str]]]:
    """(line number, included file or None, body lines) of each fenced block of ``path``."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        start = i
        fence = opening.group(1)
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            i += 1
        assert i < len(lines), f"{path.name}:{start + 1}: unclosed code block"
        marker = INCLUDE.match(lines[start - 1]) if start > 0 else None
        yield start + 1, marker.group("path") if marker else None, lines[start + 1:i]
        i += 1


def is_excerpt(body: list[str], source: list[str]) -> bool:
    n = len(body)
    return n > 0 and any(source[j:j + n] == body for j in range(len(source) - n + 1))


def test_every_required_page_exists() -> None:
    assert {p.stem for p in PAGES} >= set(REQUIRED)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_code_block_is_included_from_a_tested_example(page: Path) -> None:
    for line, included, body in code_blocks(page):
        where = f"docs/{page.name}:{line}"
        assert included is not None, (
            f"{where}: a code block without '<!-- include: examples/... -->' on the line "
            "before it (see the docstring of tests/test_docs.py)")
        source = ROOT / included
        assert source.is_file(), f"{where}: {included} does not exist"
        assert is_excerpt(body, source.read_text().splitlines()), (
            f"{where}: the block is not a verbatim run of lines of {included}: copy it again")


@pytest.mark.parametrize("page", [*PAGES, ROOT / "README.md", *ROOT.glob("examples/*/README.md")],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.relative_to(ROOT)}: broken link {target}"


def test_the_readme_links_every_page() -> None:
    readme = ROOT / "README.md"
    linked = {(ROOT / t.split("#")[0]).resolve() for t in LINK.findall(readme.read_text())}
    missing = [p.name for p in PAGES if p.resolve() not in linked]
    assert not missing, f"README.md does not link docs/{missing}"


# -- configuration.md -----------------------------------------------------------------------

ROW = re.compile(r"^\| `durable_(?P<name>\w+)` \| (?P<default>[^|]+) \| (?P<unit>[^|]+) \|")


def documented_settings() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in (DOCS / "configuration.md").read_text().splitlines():
        match = ROW.match(line)
        if match:
            rows[match["name"]] = (match["default"].strip(), match["unit"].strip())
    return rows


def test_configuration_lists_every_setting_once() -> None:
    documented = documented_settings()
    fields = set(DurableSettings.model_fields)
    assert not fields - set(documented), (
        f"docs/configuration.md lacks durable_{sorted(fields - set(documented))}: add a row "
        "with its default and unit")
    assert not set(documented) - fields, (
        f"docs/configuration.md documents unknown settings {sorted(set(documented) - fields)}")


@pytest.mark.parametrize("name", sorted(DurableSettings.model_fields))
def test_configuration_shows_the_real_default(name: str) -> None:
    default, unit = documented_settings().get(name, ("", ""))
    assert unit, f"durable_{name}: no unit (write '-' for none)"
    if name == "redis_url":
        assert "broker" in default
        return
    code = re.search(r"`([^`]+)`", default)
    assert code, f"durable_{name}: the default {default!r} has no `code` value"
    value: Any = eval(code.group(1), {"__builtins__": {}, "RetryPolicy": RetryPolicy})
    base = {"redis_url": "redis://127.0.0.1:6379/0"}
    documented = getattr(DurableSettings(**base, **{name: value}), name)
    assert documented == getattr(DurableSettings(**base), name), (
        f"docs/configuration.md says durable_{name} defaults to {code.group(1)}")


# -- cli.md ---------------------------------------------------------------------------------

def cli_sections() -> dict[str, str]:
    text = (DOCS / "cli.md").read_text()
    parts = re.split(r"^## `durable ([a-z-]+)`.*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.mark.parametrize("name", sorted(durable.commands))
def test_cli_documents_every_command_and_option(name: str) -> None:
    section = cli_sections().get(name)
    assert section is not None, f"docs/cli.md has no '## `durable {name}`' section"
    command = durable.commands[name]
    for param in command.params:
        if isinstance(param, click.Option):
            for flag in param.opts:
                if flag.startswith("--") and flag != "--help":
                    assert f"`{flag}" in section, f"durable {name}: {flag} is not documented"
        elif isinstance(param, click.Argument):
            assert param.human_readable_name in section, (
                f"durable {name}: argument {param.human_readable_name} is not documented")
    assert f"durable {name}" in "\n".join(
        "\n".join(body) for _, _, body in code_blocks(DOCS / "cli.md")), (
        f"durable {name}: no example in a code block (include it from cli_tour.sh)")


def test_the_include_check_catches_a_block_that_drifted(tmp_path: Path) -> None:
    """The checker itself: a copied block passes, an edited or unmarked one does not."""
    source = (ROOT / "examples" / "orders" / "tasks.py").read_text().splitlines()
    page = tmp_path / "page.md"
    page.write_text("\n".join([
        "<!-- include: examples/orders/tasks.py -->", "```python", *source[20:23], "```", "",
        "<!-- include: examples/orders/tasks.py -->", "```python", source[20] + " # edited",
        "```", "", "```python", "x = 1", "```", ""]))
    blocks = list(code_blocks(page))
    assert [b[1] for b in blocks] == ["examples/orders/tasks.py"] * 2 + [None]
    assert is_excerpt(blocks[0][2], source)
    assert not is_excerpt(blocks[1][2], source)
