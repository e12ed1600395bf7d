"""The checkpoint store's Redis client, from ``durable_redis_url``: one server, Sentinel or
Redis Cluster.

The URL forms (see README, "Redis Cluster, Sentinel and RabbitMQ")::

    redis://[:password@]host:port/db          one server (also rediss://, unix://)
    redis+cluster://[:password@]host:port[,host:port...]
                                              Redis Cluster: any reachable nodes seed the
                                              slot map (also rediss+cluster:// for TLS)
    sentinel://[:password@]host:port[/db][;sentinel://host:port...]
                                              Sentinel (kombu's form); the master's name is
                                              ``durable_redis_sentinel_master``

Every client gets the same explicit timeouts, bounded retries and RESP2 replies.
"""

from __future__ import annotations

import weakref
from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from .config import CLUSTER_SCHEMES, SENTINEL_SCHEME, DurableSettings
from .errors import ConfigurationError

#: The store's client: a plain (or Sentinel-managed) client, or a Redis Cluster client.
StoreClient: TypeAlias = "redis.Redis | RedisCluster"


def is_cluster(client: Any) -> bool:
    """Whether ``client`` talks to a Redis Cluster (multi-key scripts must stay in a slot)."""
    return isinstance(client, RedisCluster)


#: The connection settings that name a Redis server, database and user (another user may
#: not be allowed to write the keys of the client compared with).
_WHERE = ("host", "port", "path", "db", "username")


def server_of(client: Any) -> tuple[Any, ...] | None:
    """(host, port, socket path, db, user) of a redis-py client's pool: two clients with
    the same value reach the same keys, so one script may write both's. None when the
    pool does not name one server (Sentinel, Cluster)."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    if not isinstance(kwargs, dict) or not (kwargs.get("host") or kwargs.get("path")):
        return None
    return tuple(kwargs.get(name) for name in _WHERE)


#: Per store client, whether each other client's owner (a result backend, a kombu channel)
#: reaches the same keys: fixed by their connection settings, so decided once each.
_same_server: weakref.WeakKeyDictionary[Any, weakref.WeakKeyDictionary[Any, bool]] = (
    weakref.WeakKeyDictionary())


def shares_server(store_client: Any, owner: Any) -> bool:
    """Whether ``owner``'s Redis client (its ``client``: Celery's Redis backend, a kombu
    Redis channel) reaches the keys of ``store_client`` (see :func:`server_of`); decided
    once per pair and kept while both live."""
    known = _same_server.setdefault(store_client, weakref.WeakKeyDictionary())
    shared = known.get(owner)
    if shared is None:
        where = server_of(store_client)
        shared = known[owner] = where is not None and where == server_of(owner.client)
    return shared


def _common(settings: DurableSettings) -> dict[str, Any]:
    # redis-py retries a command after a connection error; every script we send is
    # idempotent (commits check the position, claims carry a nonce), so a re-sent command
    # is harmless.
    return {
        "decode_responses": True,
        "protocol": 2,
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": min(5.0, settings.redis_socket_timeout_s),
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
    }


def _hosts(netloc: str, what: str) -> list[tuple[str, int]]:
    """``host:port`` pairs of a comma-separated netloc (credentials already removed)."""
    hosts = []
    for part in netloc.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ConfigurationError(
                f"durable_redis_url: {what} address {part.strip()!r} must be host:port")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


def _split_auth(netloc: str) -> tuple[str | None, str | None, str]:
    """``(username, password, hosts)`` of a netloc ``[user[:password]@]hosts``."""
    auth, at, hosts = netloc.rpartition("@")
    if not at:
        return None, None, netloc
    user, colon, password = auth.partition(":")
    return (unquote(user) or None, unquote(password) if colon else None, hosts)


def cluster_client(settings: DurableSettings) -> RedisCluster:
    """A Redis Cluster client seeded with every node of the ``redis+cluster://`` URL."""
    url = settings.redis_url
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    if path.strip("/") not in ("", "0"):
        raise ConfigurationError(
            "durable_redis_url: Redis Cluster has only database 0; drop the "
            f"'/{path.strip('/')}' from {scheme}://...")
    user, password, hosts = _split_auth(netloc)
    nodes = [ClusterNode(host, port)  # type: ignore[no-untyped-call, unused-ignore]
             for host, port in _hosts(hosts, "cluster node")]
    return RedisCluster(startup_nodes=nodes, username=user, password=password,
                        ssl=scheme.startswith("rediss"), **_common(settings))


def sentinel_client(settings: DurableSettings) -> redis.Redis:
    """A client of the current master as the Sentinels of the ``sentinel://`` URL name it;
    after a failover its connections follow the new master."""
    master = settings.redis_sentinel_master
    if not master:  # DurableSettings rejects this already; kept for a direct caller
        raise ConfigurationError("durable_redis_sentinel_master is not set")
    sentinels: list[tuple[str, int]] = []
    user = password = None
    db = 0
    for part in settings.redis_url.split(";"):
        parsed = urlsplit(part.strip())
        if parsed.scheme != SENTINEL_SCHEME.removesuffix("://"):
            raise ConfigurationError(
                f"durable_redis_url: every ';'-separated part must be sentinel://host:port, "
                f"got {part.strip()!r}")
        part_user, part_password, hosts = _split_auth(parsed.netloc)
        user, password = part_user or user, part_password or password
        sentinels += _hosts(hosts, "sentinel")
        if parsed.path.strip("/"):
            if not parsed.path.strip("/").isdigit():
                raise ConfigurationError(
                    f"durable_redis_url: the database in {part.strip()!r} must be a number")
            db = int(parsed.path.strip("/"))
    common = _common(settings)
    sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
        sentinels,
        sentinel_kwargs={"socket_timeout": common["socket_timeout"],
                         "socket_connect_timeout": common["socket_connect_timeout"],
                         "password": settings.redis_sentinel_password},
        username=user, password=password, db=db, health_check_interval=30, **common)
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call, unused-ignore]
        master, redis_class=redis.Redis)
    return client


def make_client(settings: DurableSettings) -> StoreClient:
    """The store's client for ``settings.redis_url`` (see the module docstring)."""
    url = settings.redis_url
    if url.startswith(CLUSTER_SCHEMES):
        return cluster_client(settings)
    if url.startswith(SENTINEL_SCHEME):
        return sentinel_client(settings)
    return redis.Redis.from_url(url, health_check_interval=30, **_common(settings))
