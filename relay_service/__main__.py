"""`python -m relay_service`: wire the relay, its listener and scheduler; stop on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal

from relay_service.listener import NotifyListener
from relay_service.publisher import DramatiqPublisher
from relay_service.relay import Relay
from relay_service.scheduler import build_scheduler
from shared import keys
from shared.broker import create_broker
from shared.db.engine import create_engine, create_sessionmaker
from shared.logging import configure_logging, get_logger
from shared.settings import Settings, get_settings

log = get_logger("relay_service")


async def serve(settings: Settings) -> None:
    engine = create_engine(settings)
    broker = create_broker(settings, middleware=[])
    relay = Relay(create_sessionmaker(engine), DramatiqPublisher(broker), settings)
    listener = NotifyListener(
        settings.asyncpg_dsn, keys.OUTBOX_CHANNEL, relay.wake, settings.relay_listen_reconnect_max_s
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    scheduler = build_scheduler(relay, settings)
    scheduler.start()
    log.info("relay_started", batch_size=settings.relay_batch_size)
    try:
        # The current batch finishes before `run` returns: nothing is cut mid-transaction.
        await asyncio.gather(relay.run(stop), listener.run(stop))
    finally:
        scheduler.shutdown(wait=False)
        broker.close()
        await engine.dispose()
        log.info("relay_stopped")


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
