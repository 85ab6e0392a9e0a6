"""Every Redis client of scan-outbox, built from settings: a plain URL, or a primary found
through Redis Sentinel.

With `REDIS_SENTINELS` unset a client connects to the host of `REDIS_URL` (or `BROKER_URL`
for the broker). With it set, the client asks those Sentinels where the primary of
`REDIS_SENTINEL_MASTER` is, and the URL gives only the rest: its credentials, database number
and scheme (`rediss://` is TLS, to the primary and the Sentinels alike); its host is not used.
redis-py's `SentinelConnectionPool` asks the Sentinels again whenever a connection fails or a
demoted primary answers READONLY, so after a failover every client reaches the new primary on
its next command (the command that met the failure raises, and its caller retries as for any
Redis error).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection as AsyncSSLConnection
from redis.asyncio.connection import parse_url as async_parse_url
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.connection import SSLConnection, parse_url
from redis.sentinel import Sentinel

from shared.settings import Settings, parse_sentinels

# A Sentinel that does not answer within this long is skipped for the next (when the client
# itself has no timeout): a hung Sentinel must not hang discovery.
SENTINEL_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class RedisTarget:
    """Where a client connects: `url` alone, or the primary `master` found via `sentinels`."""

    # Kept out of repr: both may carry a password.
    url: str = field(repr=False)
    sentinels: tuple[tuple[str, int], ...]
    master: str
    sentinel_password: str | None = field(repr=False)


def target(settings: Settings, *, broker: bool = False) -> RedisTarget:
    """The safeguards' Redis, or with `broker` the Dramatiq broker's."""
    url = settings.effective_broker_url if broker else settings.redis_url.get_secret_value()
    password = settings.redis_sentinel_password
    return RedisTarget(
        url=url,
        sentinels=parse_sentinels(settings.redis_sentinels),
        master=settings.redis_sentinel_master,
        sentinel_password=password.get_secret_value() if password else None,
    )


def _timeouts(timeout_s: float | None) -> dict[str, Any]:
    if timeout_s is None:
        return {}
    return {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}


@dataclass(frozen=True)
class _Flavour:
    """redis-py's blocking or asyncio classes: both sides take the same arguments."""

    redis_class: type[redis.Redis] | type[aioredis.Redis]
    sentinel_class: type[Sentinel] | type[AsyncSentinel]
    parse_url: Callable[[str], Any]
    ssl_class: type


_BLOCKING = _Flavour(redis.Redis, Sentinel, parse_url, SSLConnection)
_ASYNCIO = _Flavour(aioredis.Redis, AsyncSentinel, async_parse_url, AsyncSSLConnection)


def _primary_options(url: str, flavour: _Flavour) -> tuple[dict[str, Any], bool]:
    """What the URL says besides its address, and whether it asks for TLS."""
    options: dict[str, Any] = dict(flavour.parse_url(url))
    for address_part in ("host", "port", "path"):
        options.pop(address_part, None)
    connection_class = options.pop("connection_class", None)
    tls = connection_class is not None and issubclass(connection_class, flavour.ssl_class)
    if tls:
        options["ssl"] = True
    return options, tls


def _sentinel_options(found: RedisTarget, tls: bool, timeout_s: float | None) -> dict[str, Any]:
    options: dict[str, Any] = _timeouts(timeout_s or SENTINEL_TIMEOUT_S)
    if found.sentinel_password:
        options["password"] = found.sentinel_password
    if tls:
        options["ssl"] = True
    return options


def _client(
    flavour: _Flavour,
    settings: Settings,
    broker: bool,
    timeout_s: float | None,
    options: dict[str, Any],
) -> Any:
    """A client of `flavour` for the target the settings name, straight or through Sentinel."""
    found = target(settings, broker=broker)
    options.update(_timeouts(timeout_s))
    if not found.sentinels:
        return flavour.redis_class.from_url(found.url, **options)
    primary, tls = _primary_options(found.url, flavour)
    sentinel = flavour.sentinel_class(
        found.sentinels, sentinel_kwargs=_sentinel_options(found, tls, timeout_s)
    )
    return sentinel.master_for(found.master, **primary, **options)


def sync_client(
    settings: Settings, *, broker: bool = False, timeout_s: float | None = None, **options: Any
) -> redis.Redis:
    """A blocking client; `timeout_s` bounds every call (None: a hung Redis blocks)."""
    client: redis.Redis = _client(_BLOCKING, settings, broker, timeout_s, options)
    return client


def async_client(
    settings: Settings, *, broker: bool = False, timeout_s: float | None = None, **options: Any
) -> aioredis.Redis:
    """An asyncio client; `timeout_s` bounds every call (None: a hung Redis blocks)."""
    client: aioredis.Redis = _client(_ASYNCIO, settings, broker, timeout_s, options)
    return client


async def aclose(client: aioredis.Redis) -> None:
    """Close an asyncio client and, through Sentinel, its connections to the Sentinels too
    (closing the client alone leaves those open)."""
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    await client.aclose()
    if manager is not None:
        for sentinel in manager.sentinels:
            await sentinel.aclose()


def separate_broker(settings: Settings) -> bool:
    """The broker is the safeguards' Redis unless BROKER_URL names another one."""
    return target(settings, broker=True) != target(settings)
