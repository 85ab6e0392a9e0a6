"""The freshness verdict of the worker's probes, and the progress files it is made from."""

from __future__ import annotations

from pathlib import Path

from worker_service.progress import (
    ConsumerTurn,
    ConsumerTurns,
    ProcessProgress,
    assess,
    clear_progress,
    read_progress,
    write_progress,
)

MAX_AGE_S = 30.0
NOW = 1000.0


def process(
    pid: int = 1, loop_age_s: float = 0.5, consumers: dict[str, ConsumerTurn] | None = None
) -> ProcessProgress:
    turns = consumers if consumers is not None else {"scans": turn(0.1)}
    return ProcessProgress(pid, NOW - loop_age_s, turns)


def turn(age_s: float, in_broker_call: bool = False) -> ConsumerTurn:
    return ConsumerTurn(NOW - age_s, in_broker_call)


def test_a_process_whose_loop_ticks_and_consumers_turn_is_alive_and_progressing() -> None:
    verdict = assess([process(), process(pid=2)], NOW, MAX_AGE_S)
    assert (verdict.alive, verdict.progressing, verdict.problems) == (True, True, [])
    assert [p["pid"] for p in verdict.processes] == [1, 2]


def test_ages_at_the_threshold_still_pass() -> None:
    at_limit = process(loop_age_s=MAX_AGE_S, consumers={"scans": turn(MAX_AGE_S)})
    verdict = assess([at_limit], NOW, MAX_AGE_S)
    assert verdict.alive
    assert verdict.progressing


def test_a_silent_event_loop_fails_both_probes() -> None:
    verdict = assess([process(), process(pid=2, loop_age_s=31.0)], NOW, MAX_AGE_S)
    assert (verdict.alive, verdict.progressing) == (False, False)
    assert verdict.problems == ["pid 2: event loop silent for 31.0s"]


def test_a_consumer_silent_outside_a_broker_call_fails_both_probes() -> None:
    consumers = {"scans": turn(0.2), "scans.DQ": turn(45.0)}
    verdict = assess([process(consumers=consumers)], NOW, MAX_AGE_S)
    assert (verdict.alive, verdict.progressing) == (False, False)
    assert verdict.problems == ["pid 1: scans.DQ consumer silent for 45.0s"]


def test_a_consumer_waiting_on_the_broker_is_alive_but_not_progressing() -> None:
    consumers = {"scans": turn(120.0, in_broker_call=True)}
    verdict = assess([process(consumers=consumers)], NOW, MAX_AGE_S)
    assert (verdict.alive, verdict.progressing) == (True, False)
    assert verdict.problems == ["pid 1: scans waiting on the broker for 120.0s"]


def test_no_process_at_all_fails_both_probes() -> None:
    verdict = assess([], NOW, MAX_AGE_S)
    assert (verdict.alive, verdict.progressing) == (False, False)
    assert verdict.problems == ["no worker process has reported progress"]


def test_a_clock_read_before_the_write_counts_as_fresh() -> None:
    ahead = ProcessProgress(1, NOW + 0.5, {"scans": ConsumerTurn(NOW + 0.5, False)})
    verdict = assess([ahead], NOW, MAX_AGE_S)
    assert verdict.alive
    assert verdict.processes[0]["loop_age_s"] == 0.0


def test_progress_files_round_trip_and_are_cleared(tmp_path: Path) -> None:
    written = [process(pid=7), process(pid=8, consumers={})]
    for progress in written:
        write_progress(tmp_path, progress)
    write_progress(tmp_path, process(pid=7, loop_age_s=2.0))
    (tmp_path / "worker_counter_1.db").write_bytes(b"")
    assert sorted(read_progress(tmp_path), key=lambda p: p.pid) == [
        process(pid=7, loop_age_s=2.0),
        written[1],
    ]
    clear_progress(tmp_path)
    assert read_progress(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["worker_counter_1.db"]


def test_consumer_turns_record_entering_and_leaving_a_broker_call() -> None:
    turns = ConsumerTurns()
    turns.expect(["scans", "scans.DQ"])
    expected = turns.snapshot()
    assert set(expected) == {"scans", "scans.DQ"}
    assert not any(t.in_broker_call for t in expected.values())
    turns.enter("scans")
    inside = turns.snapshot()["scans"]
    assert inside.in_broker_call
    assert inside.turned_at >= expected["scans"].turned_at
    turns.leave("scans")
    assert not turns.snapshot()["scans"].in_broker_call
    turns.expect(["scans"])
    assert turns.snapshot()["scans"].turned_at >= inside.turned_at
