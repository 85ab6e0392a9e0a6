"""The relay leader's knowledge of where every queued task's message is.

Three checks, every `relay_broker_check_interval_s`, each acting only on what it knows:

- **Broker epoch.** A key the leader writes into the broker's Redis, remembered (with the
  server's run id) in `broker_state`. If the key is gone or different, the broker lost its
  data (a restart without persistence, a failover to an empty replica, FLUSHALL): every
  task queued before that moment is sent again at once. A new run id with the key intact is
  a restart that kept its data: the next walk checks every queued task, however young.
- **Dead consumers.** The broker's own requeue of the messages fetched by workers silent for
  `broker_heartbeat_timeout_s` (workers beat from a thread, so a busy one never looks dead).
- **The walk.** For tasks queued longer than `queued_check_floor_s`, one HEXISTS per message
  on the queue's message hash, which holds a message from enqueue until its ack, whether it
  waits in the queue or sits in a live consumer's prefetch. A missing message is gone (acked
  without a claim, dead-lettered, lost): its task is sent again, conditional on the task
  still waiting for that very message. A backlog of any length is left alone.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime

import redis
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared import dramatiq_private, keys, maintenance_jobs
from shared.db import recovery
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)

# Pages of `relay_broker_check_batch_size` one check walks at most; the next check goes on
# from where this one stopped, so a huge backlog costs a bounded amount per check.
PAGES_PER_CHECK = 10
# What a broker check may meet besides database errors.
BROKER_ERRORS = (redis.RedisError, OSError)


@dataclass
class CheckCounts:
    broker_reset: int = 0
    message_lost: int = 0


class BrokerWatch:
    """Runs the three checks; one instance per relay, used only while it leads."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        broker: RedisBroker,
        settings: Settings,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.broker = broker
        self.settings = settings
        self.cursor = recovery.WALK_START
        # Until a full walk is done, young queued tasks are checked too: a restarted broker
        # (or a new leader that has not watched it) may have lost the newest messages.
        self.full_walk = True

    async def check(self) -> CheckCounts:
        counts = CheckCounts()
        counts.broker_reset = await self.check_epoch()
        await asyncio.to_thread(self.requeue_dead_consumers)
        counts.message_lost = await self.walk()
        return counts

    # --- epoch ------------------------------------------------------------------

    def _read_broker(self) -> tuple[str | None, str | None]:
        client = dramatiq_private.client_of(self.broker)
        epoch = client.get(keys.BROKER_EPOCH_KEY)
        run_id = client.info("server").get("run_id")
        return (epoch.decode() if isinstance(epoch, bytes) else epoch), run_id

    async def check_epoch(self) -> int:
        """Send again every queued task if the broker lost its data; how many were sent."""
        async with self.sessionmaker() as session:
            known = await recovery.get_broker_state(session)
            # Everything queued up to here was published before the check read the broker.
            checked_at = await recovery.database_now(session)
        epoch, run_id = await asyncio.to_thread(self._read_broker)
        if known is not None and epoch == known.epoch:
            if run_id != known.run_id:
                log.info("broker_restarted", run_id=run_id)
                self.full_walk = True
                await self._remember(recovery.BrokerState(epoch, run_id))
            return 0
        sent = 0
        if epoch is None:
            epoch = uuid.uuid4().hex
            # NX: two leaders for a moment (an old one not yet fenced) agree on one epoch.
            client = dramatiq_private.client_of(self.broker)
            await asyncio.to_thread(client.set, keys.BROKER_EPOCH_KEY, epoch, nx=True)
            epoch, run_id = await asyncio.to_thread(self._read_broker)
        if known is not None:
            log.warning("broker_data_lost", previous_epoch=known.epoch, epoch=epoch)
            sent = await self._redispatch_queued_before(checked_at)
            self.full_walk = True
        if epoch is not None:
            await self._remember(recovery.BrokerState(epoch, run_id))
        return sent

    async def _redispatch_queued_before(self, before: datetime) -> int:
        limit = self.settings.relay_redispatch_batch_size
        sent = 0
        while True:
            async with self.sessionmaker() as session, session.begin():
                ids = await recovery.redispatch_queued_before(session, before, limit)
                await maintenance_jobs.send_again(session, ids, self.settings.queue_name)
            sent += len(ids)
            if len(ids) < limit:
                return sent

    async def _remember(self, state: recovery.BrokerState) -> None:
        async with self.sessionmaker() as session, session.begin():
            await recovery.set_broker_state(session, state)

    # --- dead consumers ---------------------------------------------------------

    def requeue_dead_consumers(self) -> None:
        """The broker's maintenance, run now: messages fetched by workers silent for the
        heartbeat timeout go back to the queue (still acked only after a run)."""
        dramatiq_private.run_maintenance(
            self.broker,
            self.settings.queue_name,
            int(self.settings.broker_heartbeat_timeout_s * 1000),
        )

    # --- the walk ---------------------------------------------------------------

    async def walk(self) -> int:
        """Check up to PAGES_PER_CHECK pages of queued tasks; how many were sent again."""
        floor_s = 0.0 if self.full_walk else self.settings.queued_check_floor_s
        sent = 0
        for _ in range(PAGES_PER_CHECK):
            async with self.sessionmaker() as session:
                page = await recovery.list_queued_messages(
                    session, floor_s, self.cursor, self.settings.relay_broker_check_batch_size
                )
            if page:
                self.cursor = (page[-1].queued_at, page[-1].task_id)
                sent += await self._send_again_missing(page)
            if len(page) < self.settings.relay_broker_check_batch_size:
                self.cursor = recovery.WALK_START
                self.full_walk = False
                break
        return sent

    def _missing(self, page: list[recovery.QueuedMessage]) -> list[recovery.QueuedMessage]:
        located = [m for m in page if m.broker_message_id is not None and m.queue is not None]
        pipe = dramatiq_private.client_of(self.broker).pipeline(transaction=False)
        for message in located:
            pipe.hexists(
                keys.broker_messages_key(str(message.queue)), str(message.broker_message_id)
            )
        present = pipe.execute()
        return [m for m, found in zip(located, present, strict=True) if not found]

    async def _send_again_missing(self, page: list[recovery.QueuedMessage]) -> int:
        missing = await asyncio.to_thread(self._missing, page)
        if not missing:
            return 0
        async with self.sessionmaker() as session, session.begin():
            ids = await recovery.redispatch_lost(session, missing)
            await maintenance_jobs.send_again(session, ids, self.settings.queue_name)
        if ids:
            log.warning("queued_messages_lost", tasks=len(ids))
        return len(ids)
