"""Schedule use cases: validate and create, read, pause, resume, delete, and list the runs.

The relays fire the schedules (`relay_service/firing.py`); here a schedule gets its first fire
time, and a resumed one its next tick after now.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from api_service import task_service
from api_service.domains import normalise_domain
from api_service.ownership import read_owned
from api_service.schedule_schemas import ScheduleCreate, ScheduleOut
from shared import schedule_times
from shared.db import batches, schedules
from shared.db.engine import single_statement
from shared.db.models import Schedule, ScheduleRun, User
from shared.errors import Conflict, InvalidEntries, InvalidInput, NotFound
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)


@dataclass(frozen=True)
class ScheduleRequest:
    domains: list[str]
    config: dict[str, Any]
    spec: schedule_times.Spec
    callback_url: str | None


def _normalised(raw: Sequence[str], settings: Settings) -> list[str]:
    domains: list[str] = []
    errors: list[dict[str, object]] = []
    for index, entry in enumerate(raw):
        try:
            domains.append(normalise_domain(entry))
        except InvalidInput as exc:
            errors.append({"index": index, "field": "domains", "reason": exc.message})
    if errors:
        raise InvalidEntries(
            f"{len(errors)} of {len(raw)} domains are invalid; nothing was created",
            field="domains",
            errors=errors,
        )
    unique = list(dict.fromkeys(domains))
    if len(unique) > settings.schedule_max_domains:
        raise InvalidInput(
            f"a schedule may scan at most {settings.schedule_max_domains} domains, "
            f"this one has {len(unique)}",
            field="domains",
        )
    return unique


def _spec(body: ScheduleCreate, settings: Settings, now: datetime) -> schedule_times.Spec:
    if (body.cron is None) == (body.interval_s is None):
        raise InvalidInput("give either a cron expression or interval_s, not both", field="cron")
    spec = schedule_times.Spec(body.cron, body.timezone, body.interval_s, now)
    try:
        trigger = spec.trigger()
    except schedule_times.InvalidSpec as exc:
        raise InvalidInput(exc.reason, field=exc.field) from exc
    gap_s = body.interval_s or schedule_times.shortest_gap_s(trigger, now)
    if gap_s is not None and gap_s < settings.schedule_min_interval_s:
        field = "interval_s" if body.interval_s is not None else "cron"
        raise InvalidInput(
            f"runs at most every {settings.schedule_min_interval_s} s are allowed; "
            f"this one runs {gap_s:g} s apart",
            field=field,
        )
    return spec


async def _template(
    session: AsyncSession, user: User, batch_id: uuid.UUID, settings: Settings
) -> tuple[list[str], dict[str, Any]]:
    async with session.begin():
        batch = await batches.get_user_batch(session, user.id, batch_id)
        if batch is None:
            raise InvalidInput("is not one of your batches", field="batch_template")
        tasks = await batches.list_batch_tasks(
            session, batch.id, after_position=-1, limit=settings.schedule_max_domains + 1
        )
    return [task.target_domain for task in tasks], dict(batch.config)


async def validate(
    session: AsyncSession, body: ScheduleCreate, settings: Settings, user: User, now: datetime
) -> ScheduleRequest:
    """Every field checked, the bad one named; the domains normalised and unique."""
    spec = _spec(body, settings, now)
    if (body.domains is None) == (body.batch_template is None):
        raise InvalidInput("give either domains or batch_template, not both", field="domains")
    config = body.config.model_dump() if body.config is not None else None
    if body.batch_template is not None:
        template_domains, template_config = await _template(
            session, user, body.batch_template, settings
        )
        domains = _normalised(template_domains, settings)
        config = template_config if config is None else config
    else:
        domains = _normalised(body.domains or [], settings)
    config = config if config is not None else {"keywords": [], "regexes": []}
    if len(json.dumps(config)) > settings.max_config_bytes:
        raise InvalidInput(
            f"must be at most {settings.max_config_bytes} bytes as JSON", field="config"
        )
    callback_url = task_service.checked_callback(user, body.callback_url, settings)
    if body.callback == "changes" and callback_url is None:
        raise InvalidInput("a changes callback needs a callback_url", field="callback")
    return ScheduleRequest(domains, config, spec, callback_url)


async def create_schedule(
    session: AsyncSession, settings: Settings, user: User, body: ScheduleCreate
) -> Schedule:
    """Commit the schedule with its first fire time; 409 once the user holds the maximum."""
    now = datetime.now(UTC)
    request = await validate(session, body, settings, user, now)
    await task_service.check_callback_host(request.callback_url, settings)
    schedule = Schedule(
        id=uuid.uuid4(),
        user_id=user.id,
        name=body.name,
        cron=body.cron,
        timezone=body.timezone,
        interval_s=body.interval_s,
        anchor_at=now,
        domains=request.domains,
        config=request.config,
        callback_url=request.callback_url,
        callback_changes_only=body.callback == "changes",
        missed=body.missed,
        next_fire_at=schedule_times.first_after(request.spec.trigger(), now),
    )
    async with session.begin():
        held = await schedules.count_user_schedules(session, user.id)
        if held >= settings.schedule_max_per_client:
            raise Conflict(
                f"a client may hold at most {settings.schedule_max_per_client} schedules; "
                "delete one first",
                field="schedules",
            )
        await schedules.insert_schedule(session, schedule)
    log.info("schedule_created", schedule_id=str(schedule.id), domains=len(request.domains))
    # Read back: the server filled its defaults (created_at).
    return await read_schedule(session, user, schedule.id)


def schedule_out(schedule: Schedule) -> ScheduleOut:
    return ScheduleOut(
        id=schedule.id,
        name=schedule.name,
        cron=schedule.cron,
        timezone=schedule.timezone,
        interval_s=schedule.interval_s,
        domains=list(schedule.domains),
        config=schedule.config,
        callback_url=schedule.callback_url,
        callback="changes" if schedule.callback_changes_only else "finished",
        missed="skip" if schedule.missed == schedule_times.MissedPolicy.SKIP else "run_once",
        paused=schedule.paused_at is not None,
        next_fire_at=schedule.next_fire_at,
        last_fired_at=schedule.last_fired_at,
        created_at=schedule.created_at,
    )


async def read_schedule(session: AsyncSession, user: User, schedule_id: uuid.UUID) -> Schedule:
    """The user's schedule; another user's is 404 as a missing one."""
    return await read_owned(
        session, schedules.get_user_schedule, user.id, schedule_id, kind="schedule"
    )


async def list_schedules(session: AsyncSession, user: User, limit: int) -> Sequence[Schedule]:
    async with single_statement(session):
        return await schedules.list_user_schedules(session, user.id, limit)


async def _read_again(session: AsyncSession, schedule: Schedule) -> Schedule:
    """`schedule` as now committed (404 if it was deleted meanwhile)."""
    return await read_owned(
        session, schedules.get_user_schedule, schedule.user_id, schedule.id, kind="schedule"
    )


async def pause_schedule(session: AsyncSession, schedule: Schedule) -> Schedule:
    """Paused (idempotent): it fires no more until resumed."""
    async with single_statement(session):
        await schedules.pause(session, schedule.user_id, schedule.id)
    return await _read_again(session, schedule)


async def resume_schedule(session: AsyncSession, schedule: Schedule) -> Schedule:
    """Running again from its next tick after now (idempotent); the ticks while paused are
    not missed ticks: none of them runs."""
    if schedule.paused_at is None:
        return schedule
    spec = schedule_times.Spec(
        schedule.cron, schedule.timezone, schedule.interval_s, schedule.anchor_at
    )
    next_fire_at = schedule_times.first_after(spec.trigger(), datetime.now(UTC))
    async with single_statement(session):
        await schedules.resume(session, schedule.user_id, schedule.id, next_fire_at)
    return await _read_again(session, schedule)


async def delete_schedule(session: AsyncSession, user: User, schedule_id: uuid.UUID) -> None:
    async with single_statement(session):
        deleted = await schedules.delete_schedule(session, user.id, schedule_id)
    if not deleted:
        raise NotFound("no such schedule", field="schedule_id")


async def list_runs(
    session: AsyncSession, user: User, schedule_id: uuid.UUID, limit: int
) -> Sequence[ScheduleRun]:
    schedule = await read_schedule(session, user, schedule_id)
    async with single_statement(session):
        return await schedules.list_runs(session, schedule.id, limit)


async def read_run(
    session: AsyncSession, user: User, schedule_id: uuid.UUID, run_id: int
) -> ScheduleRun:
    schedule = await read_schedule(session, user, schedule_id)
    async with single_statement(session):
        run = await schedules.get_run(session, schedule.id, run_id)
    if run is None:
        raise NotFound("no such run", field="run_id")
    return run
