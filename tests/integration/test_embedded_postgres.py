"""The embedded PostgreSQL stops when the process that started it leaves its block, even
after an earlier user of the same folder was killed without stopping it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from shared.embedded import embedded_postgres
from tests.helpers import wait_until

# Starts PostgreSQL on the folder given, says so, then waits to be killed.
HOLDER = """
import sys, time
from pathlib import Path
from shared.embedded import embedded_postgres
with embedded_postgres(Path(sys.argv[1])):
    print("up", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def folder() -> Iterator[Path]:
    """A short path: PostgreSQL's Unix socket lives under it."""
    with tempfile.TemporaryDirectory(prefix="so-pg-") as tmp:
        yield Path(tmp) / "pg"


def postmaster(folder: Path) -> psutil.Process:
    return psutil.Process(int((folder / "postmaster.pid").read_text().split()[0]))


def test_the_server_stops_after_an_earlier_user_of_its_folder_was_killed(folder: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == "up\n"
        finally:
            holder.kill()
    left_running = postmaster(folder)
    assert left_running.is_running()

    with embedded_postgres(folder):
        server = postmaster(folder)
        processes = [server, *server.children(recursive=True)]

    try:
        wait_until(lambda: all(map(is_gone, processes)), 10, "the server's processes to end")
    finally:
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.kill()


def is_gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
