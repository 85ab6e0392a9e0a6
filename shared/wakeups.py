"""Wake-up hints: Redis PUBLISH after a commit, a subscriber that turns them into wakes.

A hint only shortens a wait. Every loop it wakes (the relay, the deliverer, a waiting GET)
also polls the database on its own interval, so a hint that is lost, late, or never sent
costs at most that interval, never a task. Hints are sent after the commit, outside the
transaction: a `pg_notify` inside it would take PostgreSQL's one notify lock through the
commit's WAL flush and serialise every notifying commit on the server (docs/design.md).

Channels (in the broker's Redis, where the relays and workers already are):
- `scan-outbox:wake:outbox`: outbox rows were committed, due now; payload empty.
- `scan-outbox:wake:finished`: tasks ended; payload "task_id,batch_id" (batch may be empty),
  several joined by ";".
- `scan-outbox:wake:callbacks`: a delivery may have been written; payload empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterable, Mapping

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared import backoff, keys, metrics, redis_clients
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

OUTBOX = keys.WAKE_OUTBOX_CHANNEL
FINISHED = keys.WAKE_FINISHED_CHANNEL
CALLBACKS = keys.WAKE_CALLBACKS_CHANNEL

HEALTH_CHECK_INTERVAL_S = 1.0
RECONNECT_MIN_S = 0.1

# Called with a hint's payload, or with None after a (re)subscription: hints may have been
# missed while unsubscribed, so everything waiting should look again.
Handler = Callable[[str | None], None]


def create_client(settings: Settings) -> aioredis.Redis:
    """A client for the broker's Redis (plain or through Sentinel) whose calls give up after
    `redis_timeout_s`: a hint never holds up the request or run that sends it for longer."""
    return redis_clients.async_client(
        settings, broker=True, timeout_s=settings.redis_timeout_s, retry_on_timeout=False
    )


def finished_payload(task_id: uuid.UUID, batch_id: uuid.UUID | None) -> str:
    return f"{task_id},{batch_id or ''}"


class Hints:
    """Sends hints after commits, in the background; never raises (a failure is counted
    and logged).

    At most one publish is in flight per process: hints asked for meanwhile wait for it and
    go together in the next one (a finish hint's payloads joined by ";"). Every hint still
    leaves after the commit it follows, and a burst of commits costs a few publishes, not
    one round trip each on the path of the request or run that asked.
    """

    def __init__(self, client: aioredis.Redis | None) -> None:
        # None: hints are off, every wait ends by its poll.
        self.client = client
        self._pending: dict[str, set[str]] = {}
        self._sender: asyncio.Task[None] | None = None

    async def outbox(self) -> None:
        """Outbox rows due now were committed."""
        self._ask([(OUTBOX, "")])

    async def finished(
        self, ended: Iterable[tuple[uuid.UUID, uuid.UUID | None]], callbacks: bool
    ) -> None:
        """Tasks `ended` (task id, batch id) were committed in a terminal state; `callbacks`:
        one of them may have written a delivery."""
        hints = [(FINISHED, finished_payload(task, batch)) for task, batch in ended]
        if hints and callbacks:
            hints.append((CALLBACKS, ""))
        self._ask(hints)

    async def callbacks(self) -> None:
        """Deliveries due now were committed."""
        self._ask([(CALLBACKS, "")])

    async def flush(self) -> None:
        """Return once every hint asked for so far has been sent (or has failed)."""
        while self._sender is not None and not self._sender.done():
            await asyncio.shield(self._sender)

    async def aclose(self) -> None:
        await self.flush()
        if self.client is not None:
            await redis_clients.aclose(self.client)

    def _ask(self, hints: list[tuple[str, str]]) -> None:
        if self.client is None or not hints:
            return
        for channel, payload in hints:
            self._pending.setdefault(channel, set()).add(payload)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_pending())

    async def _send_pending(self) -> None:
        while self._pending:
            pending, self._pending = self._pending, {}
            await self._publish([(channel, ";".join(p)) for channel, p in pending.items()])

    async def _publish(self, messages: list[tuple[str, str]]) -> None:
        assert self.client is not None
        try:
            if len(messages) == 1:
                await self.client.publish(*messages[0])
                return
            async with self.client.pipeline(transaction=False) as pipe:
                for channel, payload in messages:
                    pipe.publish(channel, payload)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            metrics.WAKEUP_HINTS_FAILED.inc(len(messages))
            log.warning("wakeup_hint_failed", hints=len(messages), error=type(exc).__name__)


class HintListener:
    """Subscribes to the channels of `handlers` and calls each channel's handler with every
    hint's payload, and with None after each (re)subscription; reconnects with backoff.

    While unsubscribed no hint arrives; the woken loops' own polls cover the gap.
    """

    def __init__(
        self, settings: Settings, handlers: Mapping[str, Handler], reconnect_max_s: float, name: str
    ) -> None:
        self.settings = settings
        self.handlers = dict(handlers)
        self.reconnect_max_s = reconnect_max_s
        self.name = name
        self.connected = False
        self.connections = 0

    def _handle(self, message: Mapping[str, object]) -> None:
        channel, data = message.get("channel"), message.get("data")
        handler = self.handlers.get(channel.decode() if isinstance(channel, bytes) else "")
        if handler is not None and isinstance(data, bytes):
            handler(data.decode())

    def _wake_all(self) -> None:
        for handler in self.handlers.values():
            handler(None)

    async def _listen_until_lost(self, stop: asyncio.Event) -> None:
        # No socket timeout: the read below waits for hints; the ping notices a dead link.
        client = redis_clients.async_client(
            self.settings, broker=True, socket_connect_timeout=5.0, client_name=self.name
        )
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*self.handlers)
            self.connected = True
            self.connections += 1
            log.info("wakeup_hints_subscribed", listener=self.name)
            # Whatever was committed while nobody listened is looked at now.
            self._wake_all()
            await self._read(pubsub, stop)
        finally:
            self.connected = False
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
            with contextlib.suppress(RedisError, OSError):
                await redis_clients.aclose(client)

    async def _read(self, pubsub: aioredis.client.PubSub, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        ping_due = loop.time() + HEALTH_CHECK_INTERVAL_S
        pong_due: float | None = None
        while not stop.is_set():
            message = await pubsub.get_message(timeout=HEALTH_CHECK_INTERVAL_S / 2)
            if message is not None:
                if message.get("type") == "pong":
                    pong_due = None
                else:
                    self._handle(message)
            now = loop.time()
            if pong_due is not None and now > pong_due:
                raise TimeoutError("no answer to a ping")
            if now >= ping_due:
                await pubsub.ping()
                ping_due, pong_due = now + HEALTH_CHECK_INTERVAL_S, now + HEALTH_CHECK_INTERVAL_S

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until `stop`, reconnecting with backoff."""
        failures = 0
        while not stop.is_set():
            try:
                await self._listen_until_lost(stop)
                failures, error = 0, "connection closed"
            except (RedisError, OSError, TimeoutError) as exc:
                error = type(exc).__name__
            if stop.is_set():
                return
            failures += 1
            delay_s = backoff.backoff_s(failures, RECONNECT_MIN_S, self.reconnect_max_s)
            log.warning(
                "wakeup_hints_lost", listener=self.name, error=error, retry_in_s=round(delay_s, 3)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay_s)
