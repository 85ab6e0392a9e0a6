"""`python -m relay_service`: the relay, its listener, jobs and probes, until SIGINT/SIGTERM.

Start-up is ordered for a relay restarted in front of a backlog: the claim loop starts on
the few imports it needs, and the rest (`relay_service.assembly`) is imported in a thread
while its first batch is on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from dramatiq.brokers.redis import RedisBroker

from relay_service.publisher import DramatiqPublisher
from relay_service.relay import Relay
from shared import gc_pauses
from shared.db.engine import create_engine
from shared.dramatiq_broker import create_broker
from shared.dramatiq_private import client_of
from shared.logging import configure_logging, get_logger
from shared.settings import Settings, get_settings

log = get_logger("relay_service")


async def _run_until_stopped(
    tasks: list[asyncio.Task[None]], stop: asyncio.Event, grace_s: float
) -> int:
    """Wait for `stop` (or a task dying), then give the tasks `grace_s` to finish their batch."""
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    crashed = [task for task in tasks if task in done and task.exception() is not None]
    for task in crashed:
        log.error("relay_task_crashed", error=repr(task.exception()))
    stop.set()
    stopping.cancel()
    _, late = await asyncio.wait(tasks, timeout=grace_s)
    for task in late:
        # Cancelling rolls the batch's transaction back: its rows stay unpublished.
        log.warning("relay_batch_abandoned")
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*late, return_exceptions=True)
    return 1 if crashed else 0


def _import_assembly() -> None:
    # Run in a thread: the event loop keeps serving the first claim and publish meanwhile.
    import relay_service.assembly  # noqa: F401


async def _serve_with(
    settings: Settings,
    stop: asyncio.Event,
    broker: RedisBroker,
    relay: Relay,
    tasks: list[asyncio.Task[None]],
) -> int:
    """Bring up the probes, the scheduler and the other loops beside the running `relay`,
    then run until stopped."""
    await asyncio.to_thread(_import_assembly)
    from relay_service import assembly

    parts = assembly.build(settings, stop, relay.engine, broker, relay)
    gc_pauses.freeze_startup_objects()
    try:
        if settings.relay_health_port:
            try:
                await parts.health.start()
            except OSError as exc:
                log.error("relay_probe_port_unavailable", error=str(exc))
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
                return 1
        tasks += assembly.start_loops(settings, parts, relay, stop)
        log.info("relay_started", batch_size=settings.relay_batch_size)
        return await _run_until_stopped(tasks, stop, settings.relay_shutdown_timeout_s)
    finally:
        await assembly.close(parts)


async def serve(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM; the exit code (0 after a clean stop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    engine = create_engine(settings)
    broker = create_broker(
        settings, middleware=[], socket_timeout_s=settings.relay_broker_timeout_s
    )
    relay = Relay(engine, DramatiqPublisher(broker), settings)
    tasks = [asyncio.create_task(relay.run(stop))]
    try:
        return await _serve_with(settings, stop, broker, relay, tasks)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        client_of(broker).connection_pool.disconnect()
        await engine.dispose()
        log.info("relay_stopped")


SESSION_URL_MISSING = (
    "relay: DATABASE_POOL_MODE=transaction needs DATABASE_DIRECT_URL: the leader's advisory "
    "lock and LISTEN live in a server session, which a transaction pooler does not keep"
)


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    if not settings.has_session_url:
        print(SESSION_URL_MISSING, file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(serve(settings)))


if __name__ == "__main__":
    main()
