"""The relay's registry of periodic jobs: each named, spaced by its setting, the leader's
skipped on any other relay, a failed run logged and never fatal."""

from __future__ import annotations

from typing import Any

from relay_service.scheduler import Job, _guarded, build_scheduler, relay_jobs
from shared.settings import Settings


class Part:
    """Stands in for a relay part: every attribute is a job body counting its runs."""

    def __init__(self) -> None:
        self.runs: list[str] = []

    def __getattr__(self, name: str) -> Any:
        async def run_once() -> None:
            self.runs.append(name)

        return run_once

    def wake(self) -> None:
        self.runs.append("wake")


SETTINGS = Settings(
    relay_poll_interval_s=1.5,
    relay_leader_check_interval_s=2.5,
    relay_redispatch_interval_s=3.5,
    relay_broker_check_interval_s=4.5,
    relay_prune_interval_s=5.5,
    relay_gauges_interval_s=6.5,
    schedule_poll_interval_s=8.0,
    schedule_report_interval_s=9.5,
)


def all_jobs() -> list[Job]:
    part: Any = Part()
    return relay_jobs(SETTINGS, part, part, part, part, part)


def test_every_job_has_its_own_name_and_a_setting_for_its_interval() -> None:
    jobs = all_jobs()
    assert len({job.name for job in jobs}) == len(jobs)
    assert {job.name: job.interval_s for job in jobs} == {
        "outbox_poll": 1.5,
        "leader": 2.5,
        "redispatch": 3.5,
        "broker_check": 4.5,
        "outbox_prune": 5.5,
        "outbox_gauges": 6.5,
        "callbacks_bury": 3.5,
        "callbacks_prune": 5.5,
        "callbacks_gauges": 6.5,
        "schedules": 8.0,
        "run_reports": 9.5,
    }


def test_maintenance_and_pruning_run_on_the_leader_and_the_rest_on_every_relay() -> None:
    leader_only = {job.name for job in all_jobs() if job.leader_only}
    assert leader_only == {
        "redispatch",
        "broker_check",
        "outbox_prune",
        "outbox_gauges",
        "callbacks_bury",
        "callbacks_prune",
    }


def test_the_schedule_poll_carries_a_quarter_of_its_interval_as_jitter() -> None:
    jitter = {job.name: job.jitter_s for job in all_jobs() if job.jitter_s}
    assert jitter == {"schedules": 2.0}


async def test_a_job_for_the_leader_runs_only_while_this_relay_leads() -> None:
    ran: list[str] = []

    async def prune() -> None:
        ran.append("prune")

    job = Job("prune", 1.0, True, prune)
    leading = False
    run = _guarded(job, lambda: leading)
    await run()
    assert ran == []
    leading = True
    await run()
    assert ran == ["prune"]


async def test_a_failed_run_is_logged_and_does_not_raise() -> None:
    async def broken() -> None:
        raise RuntimeError("the database went away")

    await _guarded(Job("broken", 1.0, False, broken), lambda: True)()


async def test_the_scheduler_holds_one_entry_per_job_at_most_one_run_at_a_time() -> None:
    jobs = all_jobs()
    scheduler = build_scheduler(jobs, lambda: True)
    scheduled = scheduler.get_jobs()
    assert sorted(entry.id for entry in scheduled) == sorted(job.name for job in jobs)
    assert all(entry.max_instances == 1 and entry.coalesce for entry in scheduled)
