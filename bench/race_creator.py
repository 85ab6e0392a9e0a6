"""`python -m bench.race_creator METHOD`: create tasks by one of `race`'s methods until killed.

The `race` benchmark SIGKILLs this process mid-load to show the other half of the
original bug: a task committed by "commit, then send" whose process dies before the send
has no message at all, while scan-outbox's message was committed with the task.
"""

from __future__ import annotations

import asyncio
import sys

from bench import race
from shared.db.engine import create_engine, create_sessionmaker
from shared.dramatiq_broker import create_broker
from shared.settings import get_settings


async def _create_until_killed(method: str) -> None:
    settings = get_settings()
    engine = create_engine(settings)
    broker = create_broker(settings, middleware=[], socket_timeout_s=10)
    await race.create_for(create_sessionmaker(engine), method, float("inf"), race.sender(broker))


def main() -> int:
    method = sys.argv[1]
    if method not in race.METHODS:
        print(f"unknown method {method!r}; known: {', '.join(race.METHODS)}", file=sys.stderr)
        return 2
    asyncio.run(_create_until_killed(method))
    return 0


if __name__ == "__main__":
    sys.exit(main())
