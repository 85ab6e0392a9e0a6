"""Request and response models of /api/v1/schedules (apart from `schemas.py`, which the task
and batch routes share)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api_service.schemas import ScanConfig

# A hard ceiling for the schema; the configured limit (`SCAN_SCHEDULE_MAX_DOMAINS`) applies below.
SCHEDULE_DOMAINS_CEILING = 10_000


class ScheduleCreate(BaseModel):
    """A recurring scan: when (cron + time zone, or an interval), what (domains or a batch
    to copy), and whom to tell."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "nightly",
                    "cron": "0 3 * * *",
                    "timezone": "Europe/Paris",
                    "domains": ["example.com", "example.org"],
                    "config": {"keywords": ["login"], "regexes": []},
                    "callback_url": "https://hooks.example.com/changes",
                    "callback": "changes",
                    "missed": "run_once",
                }
            ]
        },
    )

    name: str | None = Field(default=None, max_length=200)
    cron: str | None = Field(
        default=None,
        max_length=200,
        description="A five-field crontab expression, evaluated in `timezone`. Give this or "
        "`interval_s`.",
    )
    timezone: str = Field(default="UTC", max_length=64, description="An IANA time zone name.")
    interval_s: int | None = Field(
        default=None,
        ge=1,
        le=366 * 24 * 3600,
        description="Seconds between runs, from the schedule's creation. At least "
        "`SCAN_SCHEDULE_MIN_INTERVAL_S` (also the shortest gap a cron expression may have).",
    )
    domains: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=SCHEDULE_DOMAINS_CEILING,
        description="Domains scanned at every run, at most `SCAN_SCHEDULE_MAX_DOMAINS`. Give "
        "this or `batch_template`.",
    )
    batch_template: uuid.UUID | None = Field(
        default=None,
        description="One of your batches: its domains (and its config, unless `config` is "
        "given) are copied into the schedule.",
    )
    config: ScanConfig | None = None
    callback_url: str | None = Field(
        default=None,
        max_length=2048,
        description="https URL to POST to after each run (needs a signing secret).",
    )
    callback: Literal["finished", "changes"] = Field(
        default="finished",
        description="`finished`: each run's `batch.finished` callback, as for any batch. "
        "`changes`: a `schedule.run.changed` callback carrying only the domains that changed "
        "since the previous run, and none when nothing changed.",
    )
    missed: Literal["run_once", "skip"] = Field(
        default="run_once",
        description="Ticks missed while no relay could fire them (later than "
        "`SCAN_SCHEDULE_MISFIRE_GRACE_S`): `run_once` runs once for all of them as soon as "
        "it can, `skip` waits for the next tick. Never one run per missed tick.",
    )


class ScheduleOut(BaseModel):
    id: uuid.UUID
    name: str | None
    cron: str | None
    timezone: str
    interval_s: int | None
    domains: list[str]
    config: dict[str, Any]
    callback_url: str | None
    callback: Literal["finished", "changes"]
    missed: Literal["run_once", "skip"]
    paused: bool
    next_fire_at: datetime | None = Field(description="Null while paused.")
    last_fired_at: datetime | None = Field(description="The tick of the latest run.")
    created_at: datetime


class SchedulePage(BaseModel):
    items: list[ScheduleOut]


class ScheduleRunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    tick_at: datetime = Field(description="The tick this run is for.")
    fired_at: datetime
    missed_ticks: int = Field(
        description="Ticks missed before this one and merged into it (run_once) or skipped "
        "with it (skip)."
    )
    batch_id: uuid.UUID | None = Field(
        description="The run's batch (GET /api/v1/batches/{id}); null when skipped."
    )
    skipped_reason: str | None = Field(
        description="`missed` (the skip policy), `rate_limited: …` (the client's create budget "
        "was spent: no batch was made)."
    )
    changes: list[dict[str, Any]] | None = Field(
        description="Once the batch has ended: each domain that changed since the previous run "
        "(title, HTTP status, task status, certificate expiry, findings); null before."
    )


class ScheduleRunPage(BaseModel):
    items: list[ScheduleRunOut]
