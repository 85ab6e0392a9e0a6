"""The commands that start each service, shared by `scanctl api|relay|worker` and `scanctl dev`."""

from __future__ import annotations

import sys


def api_command(host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "api_service.app:main",
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        "--no-access-log",
        "--timeout-graceful-shutdown",
        "20",
    ]


def relay_command() -> list[str]:
    return [sys.executable, "-m", "relay_service"]


def worker_command(
    processes: int = 1, threads: int = 8, shutdown_timeout_ms: int = 25_000
) -> list[str]:
    """Dramatiq's worker through `python -m worker_service`: JSON logs and a metrics port."""
    return [
        sys.executable,
        "-m",
        "worker_service",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--worker-shutdown-timeout",
        str(shutdown_timeout_ms),
    ]
