"""Every Redis key is built in keys.py (so durable_key_prefix covers all of them): no other
module or script spells a key name of ours."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent.parent / "celery_durable"
#: Fragments of our key names (see keys.py); a string holding one builds a key by hand.
KEY_PARTS = re.compile(
    r"durable:|(^|[}:])(index|idem|limit|event|worker|timers|workers|leases|limits):|"
    r":(run|steps|trace|progress|blobs|archive|children|holders|parked|woken|info|config|mailbox|"
    r"waiters|taken|runs)$|\{[^}]*\}:")


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "<>"
                           for v in node.values)
            found.append((node.lineno, text))
    return found


def test_no_module_but_keys_builds_a_key_name() -> None:
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name in ("keys.py", "config.py"):  # config holds the default prefix
            continue
        tree = ast.parse(path.read_text())
        for line, text in _strings(tree):
            if " " in text or "\n" in text:  # messages and docs, not key names
                continue
            if KEY_PARTS.search(text):
                offenders.append(f"{path.name}:{line}: {text!r}")
    assert offenders == []


def test_no_script_spells_a_key_name() -> None:
    # Scripts get every key through KEYS (Redis Cluster requires it): no quoted key names.
    offenders = []
    for path in sorted((PACKAGE / "lua").glob("*.lua")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("--", 1)[0]
            for literal in re.findall(r"'([^']*)'", code):
                if ":" in literal and KEY_PARTS.search(literal):
                    offenders.append(f"{path.name}:{number}: {literal!r}")
    assert offenders == []
