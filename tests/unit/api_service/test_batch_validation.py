"""Batch validation without a database: every bad entry by index, duplicates as one,
the fingerprint that tells a retry from another request, and task cursors."""

from __future__ import annotations

import pytest

from api_service import batch_service
from api_service.schemas import BatchCreate
from shared.db.models import User
from shared.errors import InvalidEntries, InvalidInput
from shared.settings import Settings

SETTINGS = Settings(_env_file=None, batch_max_tasks=5)  # type: ignore[call-arg]
USER = User(id=1, name="alice", token_hash="x", is_admin=False)


def batch(*domains: str, **extra: object) -> BatchCreate:
    return BatchCreate.model_validate({"tasks": [{"target_domain": d} for d in domains], **extra})


def test_every_bad_entry_is_listed_with_its_index_and_reason() -> None:
    with pytest.raises(InvalidEntries) as refused:
        batch_service.validate_batch(
            batch("ok.example.com", "http://x.example.com", "localhost", "b.example.org"),
            SETTINGS,
            USER,
        )
    assert refused.value.field == "tasks"
    assert [(e["index"], e["field"]) for e in refused.value.errors] == [
        (1, "target_domain"),
        (2, "target_domain"),
    ]
    assert refused.value.details()["errors"] == refused.value.errors


def test_duplicates_after_normalisation_keep_the_first_place() -> None:
    request = batch_service.validate_batch(
        batch("B.example.com", "a.example.com", "b.EXAMPLE.com.", "a.example.com"), SETTINGS, USER
    )
    assert request.domains == ["b.example.com", "a.example.com"]


def test_more_entries_than_the_setting_is_refused_naming_tasks() -> None:
    with pytest.raises(InvalidInput, match="at most 5 domains") as refused:
        batch_service.validate_batch(
            batch(*(f"d{n}.example.com" for n in range(6))), SETTINGS, USER
        )
    assert refused.value.field == "tasks"


def test_the_fingerprint_follows_meaning_not_spelling() -> None:
    def fingerprint(*domains: str, **extra: object) -> str:
        return batch_service.validate_batch(batch(*domains, **extra), SETTINGS, USER).fingerprint

    same = fingerprint("a.example.com", "b.example.com")
    assert fingerprint("A.example.com", "b.example.com", "a.example.com") == same
    assert fingerprint("b.example.com", "a.example.com") != same
    assert fingerprint("a.example.com", "b.example.com", config={"keywords": ["x"]}) != same


@pytest.mark.parametrize("position", [0, 7, 999])
def test_cursors_round_trip(position: int) -> None:
    cursor = batch_service.encode_position(position)
    assert batch_service.decode_position(cursor) == position


@pytest.mark.parametrize("cursor", ["", "!!", "LTE", "YWJj"])
def test_foreign_cursors_are_refused_naming_cursor(cursor: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        batch_service.decode_position(cursor)
    assert refused.value.field == "cursor"
