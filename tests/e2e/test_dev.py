"""`scanctl dev` as a person runs it: other scanctl commands from the same folder find its
servers through `.data/dev.env`, which is gone once the stack stops; Redis keeps its data;
no process it started outlives it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from shared import devenv
from shared.embedded import EmbeddedUrls, free_port
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

    def __init__(self, folder: Path, **extra_env: str) -> None:
        self.folder = folder
        self.api_port = free_port()
        self.log_path = folder / f"dev-{self.api_port}.log"
        env = clean_env(
            SCAN_API_PORT=str(self.api_port),
            SCAN_RELAY_HEALTH_PORT=str(free_port()),
            SCAN_WORKER_METRICS_PORT=str(free_port()),
            # The banner is read from the log while the stack runs.
            PYTHONUNBUFFERED="1",
            **extra_env,
        )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "scanctl.main", "dev"],
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
        [sys.executable, "-m", "scanctl.main", *args],
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


# Short, so that the frozen worker is killed soon; the services stop well within it when idle.
GRACE_S = 3.0
# Past the grace: the servers' own stops and the SIGKILLs.
GONE_DEADLINE_S = 30.0


def is_gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def worker_main(dev: Dev) -> psutil.Process | None:
    for child in psutil.Process(dev.process.pid).children():
        if "worker_service" in child.cmdline():
            return child
    return None


def every_process_of(dev: Dev) -> list[psutil.Process]:
    """scanctl dev, its descendants (services, their children, redis-server) and the
    PostgreSQL server with its processes (pg_ctl detaches it: not a descendant)."""
    root = psutil.Process(dev.process.pid)
    postmaster_pid = int((dev.folder / ".data" / "pg" / "postmaster.pid").read_text().split()[0])
    postmaster = psutil.Process(postmaster_pid)
    return [root, *root.children(recursive=True), postmaster, *postmaster.children(recursive=True)]


def freeze_the_worker_processes(dev: Dev) -> list[psutil.Process]:
    """SIGSTOP Dramatiq's worker processes (children of the worker service): frozen, they
    act on no SIGTERM, as a worker stuck in a C loop would not."""
    workers = wait_until(
        lambda: (main := worker_main(dev)) is not None and main.children(),
        START_DEADLINE_S,
        "the worker service to fork its worker processes",
    )
    for worker in workers:
        worker.send_signal(signal.SIGSTOP)
    return workers


def assert_all_gone(processes: list[psutil.Process]) -> None:
    try:
        wait_until(
            lambda: all(is_gone(p) for p in processes),
            GONE_DEADLINE_S,
            "every process scanctl dev started to be gone",
            every_s=0.2,
        )
    except AssertionError:
        left = [f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in processes if not is_gone(p)]
        raise AssertionError(f"still running after scanctl dev ended: {left}") from None


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "stop", ["SIGINT", "SIGTERM", "a service dying"], ids=["sigint", "sigterm", "service-died"]
)
def test_scanctl_dev_ends_every_process_it_started_even_a_frozen_worker(
    folder: Path, stop: str
) -> None:
    dev = Dev(folder, SCAN_DEV_STOP_GRACE_S=str(GRACE_S))
    started: list[psutil.Process] = []
    try:
        frozen = freeze_the_worker_processes(dev)
        started = every_process_of(dev)
        names = {p.name() for p in started}
        assert {"redis-server", "postgres"} <= names, names
        assert set(frozen) <= set(started)
        if stop == "a service dying":
            api = next(p for p in started if "uvicorn" in p.cmdline())
            api.kill()
            code = dev.process.wait(timeout=STOP_DEADLINE_S)
            assert code == 1, dev.log()[-3000:]
        else:
            code = dev.stop(getattr(signal, stop))
            assert code == 0, dev.log()[-3000:]

        assert_all_gone(started)
    finally:
        for process in started:
            with contextlib.suppress(psutil.Error):
                process.kill()
        if dev.process.poll() is None:
            os.killpg(dev.process.pid, signal.SIGKILL)
            dev.process.wait()


@pytest.mark.timeout(300)
def test_scanctl_dev_uses_the_given_database_and_embeds_only_redis(
    folder: Path, servers: EmbeddedUrls
) -> None:
    dev = Dev(folder, DATABASE_URL=servers.database_url)
    try:
        ready = httpx.get(f"http://127.0.0.1:{dev.api_port}/readyz", timeout=5).json()
        env_file = devenv.read(folder / ".data" / "dev.env")
    finally:
        code = dev.stop(signal.SIGTERM)
    assert code == 0, dev.log()[-3000:]
    assert "using DATABASE_URL from the environment" in dev.log()
    assert ready == {"status": "ready", "database": "ok", "redis": "ok"}
    assert env_file["DATABASE_URL"] == servers.database_url
    # No embedded PostgreSQL was started; the embedded Redis was.
    assert not (folder / ".data" / "pg").exists()
    assert (folder / ".data" / "redis").exists()
