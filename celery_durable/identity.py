"""Worker identity: one id per worker process tree, shared by its pool processes.

The worker bootstep sets the id in the main process before the pool starts, through an
environment variable that forked (prefork) children inherit, so a lease taken in a child
names the worker whose heartbeat renews it. Format: ``<nodename>|<main pid>|<random>``.
The id is also kept per node name, for processes that run several workers (embedded test
workers are threads of one process, and the environment variable names only the last one).
"""

from __future__ import annotations

import os
import socket
import uuid

ENV_VAR = "CELERY_DURABLE_WORKER_ID"

#: Node name -> id of the worker of that name started in this process.
_BY_NODE: dict[str, str] = {}


def new_worker_id(nodename: str) -> str:
    """A fresh id for a starting worker (unique even if the node name is reused)."""
    return f"{nodename}|{os.getpid()}|{uuid.uuid4().hex[:8]}"


def nodename_of(worker_id: str) -> str:
    """The node name part of a worker id."""
    return worker_id.split("|", 1)[0]


def install_worker_id(worker_id: str, nodename: str) -> None:
    """Make ``worker_id`` the id of this process and of the pool processes it starts, and
    of the worker named ``nodename``."""
    os.environ[ENV_VAR] = worker_id
    _BY_NODE[nodename] = worker_id


def current_worker_id(hostname: str | None) -> str:
    """The id of the worker named ``hostname`` (a task request's ``hostname``) or else of
    the worker executing in this process (a fallback id without a bootstep)."""
    if hostname and hostname in _BY_NODE:
        return _BY_NODE[hostname]
    return os.environ.get(ENV_VAR) or f"{hostname or socket.gethostname()}|{os.getpid()}|-"
