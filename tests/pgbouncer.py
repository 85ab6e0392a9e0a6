"""A real PgBouncer (Debian's `pgbouncer` package) in transaction mode, in front of a
PostgreSQL the tests started: the pooler most deployments put before the database."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from shared.embedded import free_port

START_DEADLINE_S = 10.0
STOP_DEADLINE_S = 10.0
# Server connections per database and user pair: fewer than the clients of a test stack (three
# services' pools and a test's own engine), so clients really share server connections.
POOL_SIZE = 8

INI = """\
[databases]
{dbname} = host={host} port={port} dbname={dbname}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {userlist}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 1000
server_reset_query =
logfile =
pidfile =
"""


def pgbouncer_binary() -> str:
    """Debian's pgbouncer (`apt-get install pgbouncer`; .ci/run installs it)."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if not found:
        raise RuntimeError(
            "pgbouncer is not installed: `apt-get install pgbouncer` (see README, Tests)"
        )
    return found


@dataclass
class PgBouncer:
    """A running PgBouncer; `url` reaches the database through it in transaction mode."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logins(self) -> int:
        """Client connections it accepted so far."""
        return self.log().count("login attempt")


def _target(database_url: str) -> tuple[str, str, str, str]:
    """(host or socket folder, port, user, database) of a postgresql:// URL."""
    parts = urlsplit(database_url)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
    return host, str(parts.port or 5432), parts.username or "postgres", parts.path.lstrip("/")


def _run_as(host: str) -> list[str]:
    """PgBouncer refuses to run as root: then it runs as the owner of PostgreSQL's socket
    folder (the embedded server's own user), which may open that socket."""
    if os.geteuid() != 0:
        return []
    owner = Path(host).stat().st_uid if host.startswith("/") else 65534
    import pwd

    return ["-u", pwd.getpwuid(owner).pw_name]


def _wait_listening(process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited:\n{log_path.read_text(errors='replace')}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.2),
        ):
            return
        time.sleep(0.02)
    raise RuntimeError("pgbouncer did not start in time")


@contextlib.contextmanager
def pgbouncer(database_url: str, work_dir: Path) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode on 127.0.0.1 (a free port) in front of `database_url`;
    stopped on exit."""
    host, port, user, dbname = _target(database_url)
    work_dir.mkdir(parents=True, exist_ok=True)
    work_dir.chmod(0o755)
    listen_port = free_port()
    userlist = work_dir / "userlist.txt"
    userlist.write_text(f'"{user}" ""\n')
    ini = work_dir / "pgbouncer.ini"
    ini.write_text(
        INI.format(
            dbname=dbname,
            host=host,
            port=port,
            listen_port=listen_port,
            userlist=userlist,
            pool_size=POOL_SIZE,
        )
    )
    log_path = work_dir / "pgbouncer.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [pgbouncer_binary(), *_run_as(host), str(ini)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_listening(process, listen_port, log_path)
        url = f"postgresql://{user}@127.0.0.1:{listen_port}/{dbname}"
        yield PgBouncer(process, url, log_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def pooled_env(bouncer: PgBouncer, direct_url: str | None) -> dict[str, str]:
    """The environment of services reaching the database through `bouncer`, with or without
    a direct URL for their sessions."""
    env = {"DATABASE_URL": bouncer.url, "DATABASE_POOL_MODE": "transaction"}
    if direct_url is not None:
        env["DATABASE_DIRECT_URL"] = direct_url
    return env
