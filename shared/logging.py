"""The only place that configures logging: structlog, JSON lines unless on a terminal."""

from __future__ import annotations

import logging
import sys

import structlog

UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
QUIET_LIBRARY_LOGGERS = ("apscheduler", "httpx", "httpcore")


def configure_logging(level: str = "INFO", json: bool | None = None) -> None:
    """Route structlog and stdlib records through one renderer on stderr."""
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


class _StderrLogger:
    """Writes each rendered line to `sys.stderr` as it is at the time of the call (Dramatiq's
    processes and tests replace it); a line-buffered stream writes the line in one piece.
    `name` is what `add_logger_name` reports."""

    def __init__(self, name: str) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        sys.stderr.write(message + "\n")

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _stderr_logger(name: str = "", *_args: object) -> _StderrLogger:
    return _StderrLogger(name)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger for module `name`, configured on first use (modules take theirs at import,
    before `configure_logging` runs)."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
