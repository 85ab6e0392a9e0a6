"""The commands that start each service, shared by `scanctl api|relay|worker` and `scanctl dev`."""

from __future__ import annotations

import sys

THREADS_REFUSED = (
    "--threads is gone: a worker process runs its scans as coroutines; "
    "use --concurrency N (SCAN_WORKER_CONCURRENCY) for scans in flight per process"
)


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
    processes: int = 1, concurrency: int | None = None, shutdown_timeout_ms: int = 25_000
) -> list[str]:
    """`python -m worker_service`: Dramatiq's worker with scans as coroutines, JSON logs and a
    metrics port; `concurrency` None leaves it to SCAN_WORKER_CONCURRENCY."""
    command = [
        sys.executable,
        "-m",
        "worker_service",
        "--processes",
        str(processes),
        "--worker-shutdown-timeout",
        str(shutdown_timeout_ms),
    ]
    if concurrency is not None:
        command += ["--concurrency", str(concurrency)]
    return command
