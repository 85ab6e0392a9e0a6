"""The only place that configures logging: structlog, JSON lines unless on a terminal."""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading

import structlog

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
QUIET_LIBRARY_LOGGERS = ("apscheduler", "httpx", "httpcore")


def configure_logging(
    level: str = "INFO", json: bool | None = None, *, batch_lines: bool = False
) -> None:
    """Route structlog and stdlib records through one renderer on stderr. With `batch_lines`,
    our own lines logged on an event loop during one turn of it go out in one write at its
    next turn (`_LoopLines`); elsewhere they are written at once."""
    global _write_line
    _write_line = _LOOP_LINES.write if batch_lines else _write_now
    if json is None:
        json = not sys.stderr.isatty()
    # Records of other libraries (uvicorn, Dramatiq) come through the stdlib; they get the
    # same fields as ours before the one renderer.
    foreign_processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    # Our own lines go straight to stderr, not through the stdlib's records and handlers: a
    # line costs about 18 µs instead of 42 (`python -m bench.task_cost`), which a worker pays once
    # per task.
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # The console renderer formats exceptions itself.
            *([structlog.processors.format_exc_info] if json else []),
            renderer,
        ],
        logger_factory=_stderr_logger,
        # Calls below `level` return at once: no processor runs, no line is built. A worker
        # logs a few DEBUG lines per task, which would otherwise cost as much as INFO ones.
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=foreign_processors,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _reroute_own_handlers()
    # The poll job runs every second; its "running job" lines would drown everything else.
    # The HTTP clients log every request at INFO: a scan makes several, and its result says
    # what they answered, so they would only multiply a worker's one line per task.
    for name in QUIET_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def _reroute_own_handlers() -> None:
    """Send uvicorn's and Dramatiq's loggers through the root renderer, not their own handlers.

    Uvicorn configures its loggers before it loads the app, with handlers that do not
    propagate; a logger it silenced (`--no-access-log`: no handler, no propagation) stays silent.
    """
    for name in (*UVICORN_LOGGERS, "dramatiq"):
        logger = logging.getLogger(name)
        if logger.handlers:
            logger.handlers.clear()
            logger.propagate = True


def _write_now(line: str) -> None:
    # `sys.stderr` as it is at the time of the call: Dramatiq's processes and tests replace it.
    sys.stderr.write(line)


class _LoopLines:
    """Lines logged on an event loop, gathered until the loop's next turn and written in one
    piece. In a Dramatiq worker process stderr is a pipe to the main process, which writes
    every message it reads: a line per task cost a pipe message per task on both sides,
    where the runs whose ends commit together now cost one. A line logged off any loop is
    written at once; what is still pending when the process exits is written then."""

    def __init__(self) -> None:
        # By thread: each runs one loop at most, and only that thread touches its list.
        self.pending: dict[int, list[str]] = {}

    def write(self, line: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            _write_now(line)
            return
        thread = threading.get_ident()
        pending = self.pending.get(thread)
        if pending is None:
            pending = self.pending[thread] = []
            # The callbacks of this turn are already counted: this one runs at the next.
            loop.call_soon(self.flush, thread)
        pending.append(line)

    def flush(self, thread: int) -> None:
        """Write the pending lines of `thread`'s loop in one piece."""
        pending = self.pending.pop(thread, None)
        if pending:
            _write_now("".join(pending))

    def flush_all(self) -> None:
        for thread in list(self.pending):
            self.flush(thread)


_LOOP_LINES = _LoopLines()
_write_line = _write_now


def flush_pending_lines() -> None:
    """Write the lines of loops stopped before their next turn. Also run at exit; a process
    that ends without running its exit handlers (a forked worker process) calls it itself."""
    _LOOP_LINES.flush_all()


atexit.register(flush_pending_lines)


class _StderrLogger:
    """Writes each rendered line to stderr, in one piece (at once, or with the lines of the
    same loop turn: `configure_logging(batch_lines=True)`). `name` is what `add_logger_name`
    reports."""

    def __init__(self, name: str) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        _write_line(message + "\n")

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _stderr_logger(name: str = "", *_args: object) -> _StderrLogger:
    return _StderrLogger(name)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger for module `name`, configured on first use (modules take theirs at import,
    before `configure_logging` runs)."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
