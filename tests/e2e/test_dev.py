"""`scanctl dev` as a person runs it: other scanctl commands from the same folder find its
servers through `.data/dev.env`, which is gone once the stack stops; Redis keeps its data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from shared import devenv
from shared.embedded import free_port
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

START_DEADLINE_S = 60.0
STOP_DEADLINE_S = 45.0


@pytest.fixture
def folder() -> Iterator[Path]:
    """A short path: PostgreSQL's Unix socket lives under it, and socket paths are short."""
    with tempfile.TemporaryDirectory(prefix="so-dev-") as tmp:
        yield Path(tmp)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any server URL, as in a fresh terminal."""
    env = {k: v for k, v in os.environ.items() if k not in devenv.URL_VARIABLES}
    env.update(extra)
    return env


class Dev:
    """One `scanctl dev` process in `folder`, with its own ports."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.api_port = free_port()
        self.log_path = folder / f"dev-{self.api_port}.log"
        env = clean_env(
            SCAN_API_PORT=str(self.api_port),
            SCAN_RELAY_HEALTH_PORT=str(free_port()),
            SCAN_WORKER_METRICS_PORT=str(free_port()),
            # The banner is read from the log while the stack runs.
            PYTHONUNBUFFERED="1",
        )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "shared.cli.main", "dev"],
                cwd=folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self._ready, START_DEADLINE_S, "scanctl dev to serve its API", every_s=0.2)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"scanctl dev exited early:\n{self.log()[-3000:]}")
        try:
            url = f"http://127.0.0.1:{self.api_port}/readyz"
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"scanctl dev ignored the signal:\n{self.log()[-3000:]}") from None


def scanctl_in(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli.main", *args],
        cwd=folder,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.timeout(300)
def test_scanctl_finds_the_dev_stack_from_another_process_until_it_stops(folder: Path) -> None:
    env_file = folder / ".data" / "dev.env"
    dev = Dev(folder)
    try:
        assert env_file.stat().st_mode & 0o777 == 0o600
        assert "scanctl status" in dev.log()
        status = scanctl_in(folder, "status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        report = json.loads(status.stdout)
        assert report["healthy"], report["reasons"]
        assert report["database"]["reachable"]
        assert report["redis"]["reachable"]
        with redis.Redis.from_url(devenv.read(env_file)["REDIS_URL"]) as client:
            client.set("kept-across-restarts", "yes")
    finally:
        code = dev.stop(signal.SIGTERM)
    assert code == 0, dev.log()[-3000:]
    assert not env_file.exists()

    again = Dev(folder)
    try:
        with redis.Redis.from_url(devenv.read(env_file)["REDIS_URL"]) as client:
            assert client.get("kept-across-restarts") == b"yes"
    finally:
        code = again.stop(signal.SIGINT)
    assert code == 0, again.log()[-3000:]
    assert not env_file.exists()
