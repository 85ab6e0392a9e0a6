"""Rows bound for a set-based statement: one array per field, by the field's name, in row
order, so the statement's unnest lines each row's values up again."""

from __future__ import annotations

from dataclasses import dataclass

from shared.db.bulk import column_arrays


@dataclass(frozen=True)
class Move:
    schedule_id: int
    next_fire_at: str | None
    fired_tick: str | None


def test_each_field_becomes_one_array_in_row_order() -> None:
    moves = [Move(1, "a", None), Move(2, None, "b"), Move(3, "c", "c")]
    assert column_arrays(moves) == {
        "schedule_id": [1, 2, 3],
        "next_fire_at": ["a", None, "c"],
        "fired_tick": [None, "b", "c"],
    }


def test_no_rows_bind_nothing() -> None:
    assert column_arrays([]) == {}
