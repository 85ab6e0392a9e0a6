"""The recovery scenario's arithmetic: which tasks are "around" a kill, what each verdict
judges, and what no figure may hide."""

from __future__ import annotations

import pytest

from bench import recovery
from bench import recovery_faults as faults


def test_around_keeps_only_tasks_committed_near_the_kill() -> None:
    run = faults.StreamRun([(-1.5, 9.0), (-1.0, 0.1), (0.0, 0.2), (3.0, 0.3), (3.1, 9.0)])
    assert run.around() == [0.1, 0.2, 0.3]


def test_relay_verdict_judges_the_worst_repetition_against_its_calm_twin() -> None:
    killed = [faults.StreamRun([(0.0, 1.0)]), faults.StreamRun([(0.0, 12.5)])]
    calm = [faults.StreamRun([(0.0, 0.5)]), faults.StreamRun([(0.0, 0.5)])]
    judged = recovery._relay_rows(killed, calm)[0]
    assert judged["new"].samples == (0.5, 12.0)  # type: ignore[attr-defined]
    assert judged["verdict"] == "MISSES ≤ 10"


def test_broker_loss_cost_is_the_drain_beyond_the_same_drain_without_loss() -> None:
    lost = faults.LossRun(14.0, 1.9, 2.0, extra_attempts=0, not_succeeded=0)
    calm = faults.LossRun(12.0, None, None, extra_attempts=0, not_succeeded=0)
    judged = recovery._loss_rows(200, [lost], [calm])[0]
    assert judged["new"].median == 2.0  # type: ignore[attr-defined]
    assert judged["verdict"] == "meets ≤ 20"


def test_broker_loss_never_noticed_is_an_error_not_a_figure() -> None:
    unnoticed = faults.LossRun(14.0, None, None, extra_attempts=0, not_succeeded=0)
    with pytest.raises(RuntimeError, match="never noticed"):
        recovery._loss_rows(200, [unnoticed], [unnoticed])


def test_backlog_counts_a_single_harmed_task_as_a_miss() -> None:
    runs = [faults.BacklogRun(0, 0, 200), faults.BacklogRun(1, 3, 200)]
    assert recovery._backlog_rows(200, runs)[0]["verdict"] == "MISSES ≤ 0"


def test_backlog_that_did_not_drain_is_an_error_not_a_figure() -> None:
    with pytest.raises(RuntimeError, match="199 of 200"):
        recovery._backlog_rows(200, [faults.BacklogRun(0, 0, 199)])
