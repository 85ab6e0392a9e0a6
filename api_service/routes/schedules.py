"""/api/v1/schedules: recurring scans, their pause and resume, and the runs they made (each run
is a batch: GET /api/v1/batches/{batch_id} follows it)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from api_service import paging, responses, schedule_service
from api_service.deps import CurrentUser, SessionDep, SettingsDep
from api_service.schedule_schemas import (
    ScheduleCreate,
    ScheduleOut,
    SchedulePage,
    ScheduleRunOut,
    ScheduleRunPage,
)
from shared.db.models import Schedule

router = APIRouter(prefix="/api/v1/schedules", tags=["schedules"])

_ERRORS = responses.errors(401, 404, 409, 422, 503)
_CREATE_ERRORS = responses.errors(401, 404, 409, 413, 422, 503)
PAGE_SIZE_DEFAULT = 100


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=ScheduleOut, responses=_CREATE_ERRORS
)
async def create_schedule(
    body: ScheduleCreate,
    response: Response,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
) -> ScheduleOut:
    """A recurring scan; the first run comes at its first tick after now. 409 once the client
    holds `SCAN_SCHEDULE_MAX_PER_CLIENT` schedules."""
    schedule = await schedule_service.create_schedule(session, settings, user, body)
    response.headers["Location"] = f"/api/v1/schedules/{schedule.id}"
    return schedule_service.schedule_out(schedule)


async def get_page_size(
    settings: SettingsDep, limit: paging.LongLimitQuery = PAGE_SIZE_DEFAULT
) -> int:
    return paging.page_size(limit, settings)


# The `limit` of the schedules and of a schedule's runs, both read whole up to it.
PageSize = Annotated[int, Depends(get_page_size)]


@router.get("", response_model=SchedulePage, responses=_ERRORS)
async def list_schedules(user: CurrentUser, session: SessionDep, size: PageSize) -> SchedulePage:
    """The caller's schedules, oldest first, with their next fire times."""
    rows = await schedule_service.list_schedules(session, user, size)
    return SchedulePage(items=[schedule_service.schedule_out(row) for row in rows])


async def owned_schedule(
    schedule_id: uuid.UUID, user: CurrentUser, session: SessionDep
) -> Schedule:
    """The caller's schedule the path names; another client's is 404 as a missing one."""
    return await schedule_service.read_schedule(session, user, schedule_id)


OwnedSchedule = Annotated[Schedule, Depends(owned_schedule)]


@router.get("/{schedule_id}", response_model=ScheduleOut, responses=_ERRORS)
async def get_schedule(schedule: OwnedSchedule) -> ScheduleOut:
    return schedule_service.schedule_out(schedule)


@router.post("/{schedule_id}/pause", response_model=ScheduleOut, responses=_ERRORS)
async def pause_schedule(schedule: OwnedSchedule, session: SessionDep) -> ScheduleOut:
    """No more runs until resumed (pausing a paused schedule changes nothing)."""
    paused = await schedule_service.pause_schedule(session, schedule)
    return schedule_service.schedule_out(paused)


@router.post("/{schedule_id}/resume", response_model=ScheduleOut, responses=_ERRORS)
async def resume_schedule(schedule: OwnedSchedule, session: SessionDep) -> ScheduleOut:
    """Runs again from its next tick after now; the ticks while paused never run."""
    resumed = await schedule_service.resume_schedule(session, schedule)
    return schedule_service.schedule_out(resumed)


@router.delete("/{schedule_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
async def delete_schedule(schedule_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> None:
    """The schedule and its run records; the runs' batches stay."""
    await schedule_service.delete_schedule(session, user, schedule_id)


@router.get("/{schedule_id}/runs", response_model=ScheduleRunPage, responses=_ERRORS)
async def list_runs(
    schedule_id: uuid.UUID, user: CurrentUser, session: SessionDep, size: PageSize
) -> ScheduleRunPage:
    """The schedule's runs, latest tick first: each run's batch, or why it was skipped."""
    # Read here, not as a dependency: a bad `limit` is 422 before the schedule is looked up.
    runs = await schedule_service.list_runs(session, user, schedule_id, size)
    return ScheduleRunPage(items=[ScheduleRunOut.model_validate(run) for run in runs])


@router.get("/{schedule_id}/runs/{run_id}", response_model=ScheduleRunOut, responses=_ERRORS)
async def get_run(
    schedule_id: uuid.UUID, run_id: int, user: CurrentUser, session: SessionDep
) -> ScheduleRunOut:
    """One run, with its changes since the previous run once its batch has ended."""
    run = await schedule_service.read_run(session, user, schedule_id, run_id)
    return ScheduleRunOut.model_validate(run)
