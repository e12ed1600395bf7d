"""Startup checks of the Redis server and of settings that would weaken durability."""

from __future__ import annotations

import logging
import warnings

import redis
from celery import Celery
from redis.cluster import RedisCluster

from .config import DurableSettings
from .connections import StoreClient
from .errors import ConfigurationError

logger = logging.getLogger("celery_durable")

#: Oldest Redis server version the scripts are tested on.
MIN_REDIS_VERSION = (6, 2)


def _warn(message: str) -> None:
    # Workers run as daemons where warnings go unseen: log as well.
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def server_problems(client: StoreClient) -> list[str]:
    """What is wrong with the server for holding checkpoints (empty when all is well); on
    Redis Cluster, with every primary (each problem names its node)."""
    if isinstance(client, RedisCluster):
        problems = []
        for node in client.get_primaries():  # type: ignore[no-untyped-call]
            node_client = client.get_redis_connection(node)
            problems += [f"cluster node {node.name}: {problem}"
                         for problem in _node_problems(node_client)]
        return problems
    return _node_problems(client)


def _node_problems(client: redis.Redis) -> list[str]:
    problems = []
    info = client.info("server")
    version = tuple(int(p) for p in str(info.get("redis_version", "0.0")).split(".")[:2])
    if version < MIN_REDIS_VERSION:
        problems.append(
            f"Redis {info.get('redis_version')} is older than "
            f"{'.'.join(map(str, MIN_REDIS_VERSION))}: upgrade the server"
        )
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.ResponseError:
        policy = None  # CONFIG is disabled (managed Redis): cannot tell
    if policy not in (None, "noeviction"):
        problems.append(
            f"Redis maxmemory-policy is {policy!r}: under memory pressure it may evict "
            "checkpoints, and an evicted checkpoint re-runs its step. Set "
            "'maxmemory-policy noeviction'"
        )
    return problems


def settings_problems(app: Celery, settings: DurableSettings) -> list[str]:
    """Worker settings that conflict with durable runs."""
    problems = []
    options = app.conf.broker_transport_options or {}
    vt = options.get("visibility_timeout")
    if vt is not None and float(vt) < 5 * settings.heartbeat_interval_s:
        problems.append(
            f"broker_transport_options visibility_timeout={vt} s is shorter than 5 "
            f"heartbeats ({5 * settings.heartbeat_interval_s:g} s): live messages could be "
            "redelivered between two heartbeats"
        )
    return problems


def run_startup_checks(app: Celery, settings: DurableSettings, client: StoreClient) -> None:
    """Warn (or raise, with ``durable_eviction_check='error'``) about unsafe conditions."""
    if settings.eviction_check == "ignore":
        problems = settings_problems(app, settings)
    else:
        server = server_problems(client)
        if server and settings.eviction_check == "error":
            raise ConfigurationError("; ".join(server))
        problems = server + settings_problems(app, settings)
    for problem in problems:
        _warn(f"celery-durable: {problem}")
