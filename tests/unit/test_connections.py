"""durable_redis_url forms (one server, Redis Cluster, Sentinel): parsed, validated, and
refused with messages that say how to fix them. No server is contacted here."""

from __future__ import annotations

import pytest
import redis
from celery import Celery

from celery_durable import ConfigurationError
from celery_durable.config import DurableSettings, settings_for
from celery_durable.connections import is_cluster, make_client


def settings(url: str, **extra: object) -> DurableSettings:
    return DurableSettings(redis_url=url, **extra)  # type: ignore[arg-type]


def test_unknown_schemes_list_every_accepted_form() -> None:
    app = Celery("urls", broker="amqp://guest@localhost//", set_as_current=False)
    app.conf.durable_redis_url = "memcached://127.0.0.1:11211"
    with pytest.raises(ConfigurationError, match="redis\\+cluster://.*sentinel://"):
        settings_for(app)


def test_a_cluster_url_has_host_port_pairs_and_database_zero_only() -> None:
    with pytest.raises(ConfigurationError, match="only database 0.*'/3'"):
        make_client(settings("redis+cluster://127.0.0.1:7000/3"))
    with pytest.raises(ConfigurationError, match="cluster node address 'nohost' must be "
                                                  "host:port"):
        make_client(settings("redis+cluster://127.0.0.1:7000,nohost"))


def test_a_sentinel_url_needs_the_master_name() -> None:
    app = Celery("urls", broker="amqp://guest@localhost//", set_as_current=False)
    app.conf.durable_redis_url = "sentinel://127.0.0.1:26379"
    with pytest.raises(ConfigurationError, match="durable_redis_sentinel_master"):
        settings_for(app)


def test_the_broker_sentinels_and_master_are_used_when_no_store_url_is_set() -> None:
    app = Celery("urls", broker="sentinel://:pw@10.0.0.1:26379/4;sentinel://10.0.0.2:26380",
                 set_as_current=False)
    app.conf.broker_transport_options = {"master_name": "mymaster",
                                         "sentinel_kwargs": {"password": "sentinel-pw"}}
    s = settings_for(app)
    assert (s.redis_sentinel_master, s.redis_sentinel_password) == ("mymaster", "sentinel-pw")
    client = make_client(s)  # lazy: no connection is made until the first command
    assert isinstance(client, redis.Redis) and not is_cluster(client)
    pool = client.connection_pool
    assert pool.service_name == "mymaster"  # type: ignore[attr-defined]
    assert pool.connection_kwargs["db"] == 4 and pool.connection_kwargs["password"] == "pw"
    sentinels = pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
    assert [(c.connection_pool.connection_kwargs["host"], c.connection_pool.connection_kwargs[
        "port"]) for c in sentinels] == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    assert sentinels[0].connection_pool.connection_kwargs["password"] == "sentinel-pw"


def test_a_bad_sentinel_part_is_named() -> None:
    with pytest.raises(ConfigurationError, match="every ';'-separated part must be "
                                                  "sentinel://host:port, got 'redis://x:1'"):
        make_client(settings("sentinel://127.0.0.1:26379;redis://x:1",
                             redis_sentinel_master="m"))
