"""What `scanctl` imports before it knows which command runs: Typer and the command table, not
the libraries only some commands use (scanctl/lazy_commands.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.imports import modules_loaded_by, with_packages

# Each costs every invocation start-up CPU, `--help` and a mistyped command included.
NOT_BEFORE_A_COMMAND_RUNS = ("dns", "httpx", "redis", "sqlalchemy")

# Runs scanctl as `python -m scanctl.main ARGS` does, then names every module it imported.
_PROBE = """
import atexit, runpy, sys
atexit.register(lambda: print(" ".join(sorted(sys.modules)), file=sys.stderr))
sys.argv = ["scanctl", *sys.argv[1:]]
runpy.run_module("scanctl.main", run_name="__main__")
"""


def _loaded_by(*args: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, check=False
    )
    return with_packages(set(done.stderr.splitlines()[-1].split())), done


def test_importing_the_entry_point_loads_no_server_library() -> None:
    loaded = modules_loaded_by("import scanctl.main")
    assert [name for name in NOT_BEFORE_A_COMMAND_RUNS if name in loaded] == []


@pytest.mark.parametrize(
    ("args", "exit_code"),
    [(["--help"], 0), ([], 2), (["statu"], 2), (["--bogus"], 2)],
    ids=["help", "no-arguments", "mistyped-command", "unknown-option"],
)
def test_help_and_argument_errors_load_no_server_library(args: list[str], exit_code: int) -> None:
    loaded, done = _loaded_by(*args)
    assert done.returncode == exit_code, done.stderr
    assert [name for name in NOT_BEFORE_A_COMMAND_RUNS if name in loaded] == []


def test_a_command_that_runs_loads_what_it_needs() -> None:
    # The probe above is only meaningful while it sees what a command imports.
    loaded, done = _loaded_by("users", "--help")
    assert done.returncode == 0, done.stderr
    assert "sqlalchemy" in loaded


@pytest.mark.parametrize("command", ["scan", "schedules"])
def test_a_command_of_the_http_api_loads_no_database_or_redis_client(command: str) -> None:
    loaded, done = _loaded_by(command, "--help")
    assert done.returncode == 0, done.stderr
    assert "httpx" in loaded
    assert [name for name in ("redis", "sqlalchemy", "asyncpg") if name in loaded] == []
