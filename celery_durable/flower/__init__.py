"""Run-trace views for Flower: the runs list, run traces, limits, JSON API and metrics.

Enable them with one line in ``flowerconfig.py`` (Flower executes it at startup)::

    import celery_durable.flower; celery_durable.flower.install()

or start Flower with the config file shipped here:
``celery -A proj flower --conf="$(python -m celery_durable.flower)"``.
"""

from __future__ import annotations

from pathlib import Path

try:
    import flower  # noqa: F401
    import prometheus_client  # noqa: F401
    import tornado  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"celery_durable.flower needs Flower ({exc.name} is not installed): "
        "pip install 'celery-durable[flower]'"
    ) from exc

from .install import install

#: A Flower config file that calls install(): pass it to ``celery flower --conf=...``.
CONF_PATH = str(Path(__file__).resolve().parent / "flowerconfig.py")

__all__ = ["CONF_PATH", "install"]
