"""Worker identity: one id per worker process tree, shared by its pool processes.

The worker bootstep sets the id in the main process before the pool starts, through an
environment variable that forked (prefork) children inherit, so a lease taken in a child
names the worker whose heartbeat renews it. Format: ``<nodename>|<main pid>|<random>``.
"""

from __future__ import annotations

import os
import socket
import uuid

ENV_VAR = "CELERY_DURABLE_WORKER_ID"


def new_worker_id(nodename: str) -> str:
    """A fresh id for a starting worker (unique even if the node name is reused)."""
    return f"{nodename}|{os.getpid()}|{uuid.uuid4().hex[:8]}"


def install_worker_id(worker_id: str) -> None:
    """Make ``worker_id`` the id of this process and of the pool processes it starts."""
    os.environ[ENV_VAR] = worker_id


def current_worker_id(hostname: str | None) -> str:
    """The id of the worker executing in this process (a fallback id without a bootstep)."""
    return os.environ.get(ENV_VAR) or f"{hostname or socket.gethostname()}|{os.getpid()}|-"
