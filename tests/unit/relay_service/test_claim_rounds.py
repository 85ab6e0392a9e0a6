"""One tick of a claiming job: claims repeat while they come back full, stop between claims,
and a database error ends the tick with one warning instead of raising."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.exc import OperationalError
from structlog.testing import capture_logs

from relay_service.claim_rounds import claim_until_short
from shared.logging import get_logger

log = get_logger(__name__)


class Claims:
    """Hands out the given claim sizes in turn, then raises the given error if any."""

    def __init__(self, sizes: list[int], error: Exception | None = None) -> None:
        self.sizes = sizes
        self.error = error
        self.calls = 0

    async def __call__(self) -> int:
        self.calls += 1
        if not self.sizes and self.error is not None:
            raise self.error
        return self.sizes.pop(0)


def test_claims_repeat_while_full_and_end_at_the_first_short_one() -> None:
    claims = Claims([3, 3, 2, 3])
    asyncio.run(claim_until_short(claims, 3, asyncio.Event(), log, "claims_failed"))
    assert claims.calls == 3


def test_an_empty_claim_ends_the_tick_at_once() -> None:
    claims = Claims([0, 3])
    asyncio.run(claim_until_short(claims, 3, asyncio.Event(), log, "claims_failed"))
    assert claims.calls == 1


def test_a_set_stop_claims_nothing() -> None:
    stop = asyncio.Event()
    stop.set()
    claims = Claims([3])
    asyncio.run(claim_until_short(claims, 3, stop, log, "claims_failed"))
    assert claims.calls == 0


def test_a_stop_set_by_a_full_claim_ends_the_tick_after_it() -> None:
    stop = asyncio.Event()

    async def claim() -> int:
        stop.set()
        return 3

    asyncio.run(claim_until_short(claim, 3, stop, log, "claims_failed"))
    assert stop.is_set()


def test_a_database_error_is_one_warning_naming_its_class_never_raised() -> None:
    error = OperationalError("SELECT 1", {}, ConnectionResetError("gone"))
    claims = Claims([3], error=error)
    with capture_logs() as logs:
        asyncio.run(claim_until_short(claims, 3, asyncio.Event(), log, "claims_failed"))
    assert claims.calls == 2
    assert logs == [{"event": "claims_failed", "error": "OperationalError", "log_level": "warning"}]


def test_an_unexpected_error_is_raised_for_the_registry_to_log() -> None:
    claims = Claims([], error=KeyError("x"))
    with pytest.raises(KeyError):
        asyncio.run(claim_until_short(claims, 3, asyncio.Event(), log, "claims_failed"))
