"""Which Redis a client is built for: a plain URL, or a primary found through Sentinel."""

from __future__ import annotations

import pytest
import redis
from pydantic import ValidationError
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.sentinel import SentinelConnectionPool, SentinelManagedSSLConnection

from shared import redis_clients
from shared.settings import Settings


def settings(**values: object) -> Settings:
    return Settings.model_validate({"REDIS_URL": "redis://:data-secret@cache:6380/2", **values})


def test_without_sentinels_a_client_connects_to_the_url_host() -> None:
    client = redis_clients.sync_client(settings(), timeout_s=0.5)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("cache", 6380, 2)
    assert kwargs["password"] == "data-secret"
    assert kwargs["socket_timeout"] == 0.5


def test_sentinels_are_read_as_hosts_and_ports_with_the_sentinel_port_by_default() -> None:
    found = redis_clients.target(
        settings(REDIS_SENTINELS="s1:26380, s2 ,[::1]:26381", REDIS_SENTINEL_MASTER="cache")
    )
    assert found.sentinels == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert found.master == "cache"


@pytest.mark.parametrize("bad", ["s1:0", "s1:notaport", ":26379"])
def test_a_malformed_sentinel_address_is_refused_with_the_setting_named(bad: str) -> None:
    with pytest.raises(ValidationError, match="REDIS_SENTINELS"):
        settings(REDIS_SENTINELS=bad)


def test_with_sentinels_the_url_gives_credentials_and_db_and_the_sentinels_the_primary() -> None:
    client = redis_clients.sync_client(
        settings(REDIS_SENTINELS="s1:26379,s2:26379", REDIS_SENTINEL_PASSWORD="sentinel-secret"),
        timeout_s=0.5,
    )
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert "host" not in pool.connection_kwargs
    assert pool.connection_kwargs["password"] == "data-secret"
    assert pool.connection_kwargs["db"] == 2
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["host"] for s in sentinels] == ["s1", "s2"]
    assert sentinels[0].connection_pool.connection_kwargs["password"] == "sentinel-secret"


def test_rediss_means_tls_to_the_primary_and_to_the_sentinels() -> None:
    client = redis_clients.sync_client(
        settings(REDIS_URL="rediss://:pw@ignored/0", REDIS_SENTINELS="s1:26379")
    )
    pool = client.connection_pool
    assert pool.connection_class is SentinelManagedSSLConnection
    sentinel = pool.sentinel_manager.sentinels[0]
    assert issubclass(sentinel.connection_pool.connection_class, redis.SSLConnection)


def test_the_async_client_goes_through_the_same_sentinels() -> None:
    client = redis_clients.async_client(settings(REDIS_SENTINELS="s1:26379"), timeout_s=0.5)
    assert isinstance(client.connection_pool, AsyncSentinelPool)
    assert client.connection_pool.service_name == "mymaster"


def test_the_broker_is_separate_only_when_broker_url_names_another_redis() -> None:
    assert not redis_clients.separate_broker(settings())
    assert not redis_clients.separate_broker(
        settings(BROKER_URL="redis://:data-secret@cache:6380/2")
    )
    assert redis_clients.separate_broker(settings(BROKER_URL="redis://:data-secret@cache:6380/3"))


def test_a_target_never_shows_its_passwords() -> None:
    found = redis_clients.target(
        settings(REDIS_SENTINELS="s1:26379", REDIS_SENTINEL_PASSWORD="sentinel-secret")
    )
    assert "secret" not in repr(found)
