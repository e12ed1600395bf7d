"""A template loader over Flower's templates and ours, with a "Runs" item in the navbar.

Tornado asks ``settings["template_loader"]`` for every template of every handler, Flower's
included, so patching ``navbar.html`` as it is loaded puts the item on every Flower page
without a copy of Flower's template. Our pages are in ``templates/`` next to this module
and extend Flower's ``base.html``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tornado.template import Loader, Template

logger = logging.getLogger("celery_durable.flower")

#: Our templates.
TEMPLATES = Path(__file__).resolve().parent / "templates"
#: Where the item goes: before the end of the first list of navbar.html (Workers, Tasks,
#: Broker). A Flower upgrade that drops it makes the guard test fail.
NAVBAR_ANCHOR = "</ul>"
NAVBAR_ITEM = """<li class="nav-item">
          <a class="nav-link{% if active_tab == 'runs' %} active{% end %}"
            href="{{ reverse_url('durable-runs') }}"
            {% if active_tab == 'runs' %}aria-current="page"{% end %}>Runs</a>
        </li>
        <li class="nav-item">
          <a class="nav-link{% if active_tab == 'limits' %} active{% end %}"
            href="{{ reverse_url('durable-limits') }}"
            {% if active_tab == 'limits' %}aria-current="page"{% end %}>Limits</a>
        </li>
      """


def flower_templates() -> Path:
    """The directory of the installed Flower's templates."""
    import flower

    return Path(flower.__file__).resolve().parent / "templates"


def patch_navbar(text: str) -> str | None:
    """``navbar.html`` with our items, or None if the anchor is gone (Flower changed)."""
    where = text.find(NAVBAR_ANCHOR)
    if where < 0 or "reverse_url('tasks')" not in text[:where]:
        return None
    return text[:where] + NAVBAR_ITEM + text[where:]


class DurableLoader(Loader):
    """Loads ``name`` from our templates, else from Flower's (patching its navbar)."""

    def __init__(self, flower_dir: Path | None = None) -> None:
        super().__init__(str(TEMPLATES))
        self.flower_dir = flower_dir or flower_templates()

    def resolve_path(self, name: str, parent_path: str | None = None) -> str:
        return name

    def _create_template(self, name: str) -> Template:
        ours = TEMPLATES / name
        path = ours if ours.is_file() else self.flower_dir / name
        text = path.read_text("utf-8")
        if name == "navbar.html" and path.parent == self.flower_dir:
            patched = patch_navbar(text)
            if patched is None:
                logger.warning("celery-durable: Flower's navbar.html has no %r after its "
                               "Tasks item; the Runs item is not shown (the pages still "
                               "work at /durable/runs)", NAVBAR_ANCHOR)
            else:
                text = patched
        return Template(text, name=name, loader=self)
