"""Redis or PostgreSQL goes away while creates flow: the database stays the source of truth."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.relays import Db
from tests.faults.scenario import scenario
from tests.faults.servers import FaultServers
from tests.faults.site import CountingSite

# One worker runs the fault scenarios in turn (`--dist loadgroup`): one set of restartable
# servers, and no two scenarios' stacks competing for the CPUs while recovery deadlines run.
pytestmark = [pytest.mark.faults, pytest.mark.xdist_group("faults")]


def api_sample(api_url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{api_url}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def test_redis_stopped_then_restarted_empty_loses_no_task(
    servers_reset: FaultServers,
    db: Db,
    site: CountingSite,
    broker: redis.Redis,
    token: str,
    tmp_path: Path,
) -> None:
    # Messages the broker held are gone with it: maintenance sends their tasks again.
    with scenario(
        "Redis stopped for seconds, restarted empty",
        servers_reset,
        db,
        site,
        broker,
        token,
        tmp_path,
        creates=200,
        rate_per_s=30,
        SCAN_QUEUED_STALE_S="4",
    ) as run:
        run.after_creates(50)
        servers_reset.redis.stop()
        run.after_creates(150)  # about three seconds of creates with Redis away
        servers_reset.redis.start()
        report = run.finish()
        failures = api_sample(
            run.stack.api_url, "scan_outbox_safeguard_failures_total", safeguard="rate_limit"
        )
    # Redis is a safeguard: every create was accepted, and the rate limit failed open.
    assert report.accepted == report.creates, report.line()
    assert failures >= 1


def test_postgresql_restarted_while_creates_are_in_flight(
    servers_reset: FaultServers,
    db: Db,
    site: CountingSite,
    broker: redis.Redis,
    token: str,
    tmp_path: Path,
) -> None:
    with scenario(
        "PostgreSQL restarted under creates",
        servers_reset,
        db,
        site,
        broker,
        token,
        tmp_path,
        creates=200,
        rate_per_s=30,
        SCAN_QUEUED_STALE_S="4",
    ) as run:
        run.after_creates(50)
        servers_reset.postgres.stop()
        run.after_creates(90)
        servers_reset.postgres.start()
        report = run.finish()
        refusals = [o for o in run.driver.outcomes if o.status is not None and o.status >= 500]
    assert report.refused >= 1, report.line()
    # An outage is a 503 the client may retry, never an internal error.
    assert {o.status for o in refusals} == {503}, refusals[:3]
