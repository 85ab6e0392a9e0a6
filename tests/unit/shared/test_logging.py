"""Every library's log records come out as one JSON object per line, with the bound ids."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import logging.config
import sys
from collections.abc import Iterator

import pytest
import structlog
from uvicorn.config import LOGGING_CONFIG

from shared import logging as shared_logging
from shared.logging import UVICORN_LOGGERS, configure_logging, get_logger

NAMES = ("", *UVICORN_LOGGERS, "dramatiq")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back for the other tests."""
    saved = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
        for name in NAMES
    }
    level = logging.getLogger().level
    config = structlog.get_config()
    write_line = shared_logging._write_line
    yield
    shared_logging._write_line = write_line
    for name, (handlers, propagate) in saved.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).propagate = propagate
    logging.getLogger().setLevel(level)
    structlog.configure(**config)


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def uvicorn_configures_its_loggers(access_log: bool) -> None:
    """What `uvicorn ... --no-access-log` does before it loads the app."""
    logging.config.dictConfig(copy.deepcopy(LOGGING_CONFIG))
    if not access_log:
        logging.getLogger("uvicorn.access").handlers = []
        logging.getLogger("uvicorn.access").propagate = False


def test_uvicorn_and_dramatiq_lines_are_json_with_the_bound_request_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    uvicorn_configures_its_loggers(access_log=True)
    logging.basicConfig(format="[%(asctime)s] plain text", force=True)  # as Dramatiq's CLI does
    configure_logging("INFO", json=True)
    with structlog.contextvars.bound_contextvars(request_id="req-42"):
        logging.getLogger("uvicorn.error").info("Started server process [%d]", 7)
        logging.getLogger("uvicorn.access").info('%s - "%s"', "127.0.0.1", "GET /livez")
        logging.getLogger("dramatiq.worker.Worker").warning("Shutting down...")
        get_logger("api_service").info("task_created", task_id="t-1")

    lines = json_lines(capsys.readouterr().err)
    assert [line["event"] for line in lines] == [
        "Started server process [7]",
        '127.0.0.1 - "GET /livez"',
        "Shutting down...",
        "task_created",
    ]
    assert all(line["request_id"] == "req-42" for line in lines)
    assert lines[0]["logger"] == "uvicorn.error"
    assert lines[3]["task_id"] == "t-1"


def test_a_silenced_access_log_stays_silent(capsys: pytest.CaptureFixture[str]) -> None:
    uvicorn_configures_its_loggers(access_log=False)
    configure_logging("INFO", json=True)
    logging.getLogger("uvicorn.access").info("GET /metrics")
    logging.getLogger("uvicorn.error").info("ready")
    assert [line["event"] for line in json_lines(capsys.readouterr().err)] == ["ready"]


def test_exceptions_stay_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json=True)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("uvicorn.error").exception("failed")
    (line,) = json_lines(capsys.readouterr().err)
    assert "ValueError: boom" in str(line["exception"])


def test_http_clients_log_only_their_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json=True)
    logging.getLogger("httpx").info('HTTP Request: GET http://example.test/ "HTTP/1.1 200 OK"')
    logging.getLogger("httpcore.connection").info("connect_tcp.started")
    logging.getLogger("httpx").warning("retrying")
    assert [line["event"] for line in json_lines(capsys.readouterr().err)] == ["retrying"]


class Writes:
    """A stderr that keeps each write apart."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_lines_of_one_loop_turn_go_out_together_at_the_next_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stderr = Writes()
    monkeypatch.setattr(sys, "stderr", stderr)
    configure_logging("INFO", json=True, batch_lines=True)
    log = get_logger("worker_service.lifecycle")
    seen_before_the_turn: list[str] = []

    async def runs_ending_together() -> None:
        for n in range(3):
            log.info("task_finished", task_id=f"t-{n}")
        seen_before_the_turn.extend(stderr.writes)
        for _ in range(2):
            await asyncio.sleep(0)

    asyncio.run(runs_ending_together())
    assert seen_before_the_turn == []
    assert len(stderr.writes) == 1
    assert [line["task_id"] for line in json_lines(stderr.writes[0])] == ["t-0", "t-1", "t-2"]


def test_lines_logged_off_any_loop_are_written_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = Writes()
    monkeypatch.setattr(sys, "stderr", stderr)
    configure_logging("INFO", json=True, batch_lines=True)
    get_logger("worker_service").info("worker_ready")
    assert [line["event"] for line in json_lines("".join(stderr.writes))] == ["worker_ready"]
    assert len(stderr.writes) == 1


def test_lines_still_pending_when_the_loop_stops_are_written_by_the_flush(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stderr = Writes()
    monkeypatch.setattr(sys, "stderr", stderr)
    configure_logging("INFO", json=True, batch_lines=True)
    loop = asyncio.new_event_loop()
    try:
        loop.call_soon(lambda: get_logger("worker_service").info("task_finished"))
        loop.call_soon(loop.stop)
        loop.run_forever()
    finally:
        loop.close()
    assert stderr.writes == []
    shared_logging.flush_pending_lines()
    assert [line["event"] for line in json_lines("".join(stderr.writes))] == ["task_finished"]
