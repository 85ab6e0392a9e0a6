"""Hints asked for while one is being sent go together in the next, never before the ask."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from shared import wakeups


class SlowRedis:
    """Records each publish (and each pipeline's publishes) and holds it until released."""

    def __init__(self) -> None:
        self.sent: list[list[tuple[str, str]]] = []
        self.release = asyncio.Event()

    async def publish(self, channel: str, payload: str) -> int:
        self.sent.append([(channel, payload)])
        await self.release.wait()
        return 1

    def pipeline(self, transaction: bool = False) -> Any:
        owner = self

        class Pipe:
            def __init__(self) -> None:
                self.queued: list[tuple[str, str]] = []

            async def __aenter__(self) -> Pipe:
                return self

            async def __aexit__(self, *_: object) -> None:
                return None

            def publish(self, channel: str, payload: str) -> None:
                self.queued.append((channel, payload))

            async def execute(self) -> list[int]:
                owner.sent.append(sorted(self.queued))
                await owner.release.wait()
                return [1] * len(self.queued)

        return Pipe()


async def test_hints_asked_during_a_publish_go_together_in_the_next_one() -> None:
    client = SlowRedis()
    hints = wakeups.Hints(client)  # type: ignore[arg-type]
    first, second, third = (uuid.uuid4() for _ in range(3))

    await hints.outbox()
    await asyncio.sleep(0)
    assert client.sent == [[(wakeups.OUTBOX, "")]]
    # While that publish is in flight: nothing more leaves, whatever is asked.
    await hints.outbox()
    await hints.finished([(first, None), (second, None)], callbacks=False)
    await hints.finished([(third, second)], callbacks=True)
    await asyncio.sleep(0)
    assert len(client.sent) == 1

    client.release.set()
    await hints.flush()

    assert len(client.sent) == 2
    channels = dict(client.sent[1])
    assert channels[wakeups.OUTBOX] == ""
    assert channels[wakeups.CALLBACKS] == ""
    assert set(channels[wakeups.FINISHED].split(";")) == {
        f"{first},",
        f"{second},",
        f"{third},{second}",
    }


async def test_no_client_sends_nothing_and_a_waiter_parses_joined_payloads() -> None:
    hints = wakeups.Hints(None)
    await hints.outbox()
    await hints.flush()
    assert hints._sender is None
