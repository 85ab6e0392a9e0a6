"""SCAN_SCANNER: a `module:function` path the worker loads, or refuses to start on."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench import stub_scanner
from shared.settings import Settings
from worker_service import runtime, scanner


def test_the_default_scanner_is_the_real_scan() -> None:
    assert runtime.load_scanner(Settings().scanner) is scanner.scan_domain


def test_a_scanner_path_loads_the_function_it_names() -> None:
    assert runtime.load_scanner("bench.stub_scanner:scan") is stub_scanner.scan


async def test_the_stub_scanner_returns_a_result_at_once() -> None:
    result = await stub_scanner.scan("example.com", {}, Settings())
    assert result["domain"] == "example.com"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("worker_service.scanner", "expected module:function"),
        (":scan", "expected module:function"),
        ("bench.stub_scanner:", "expected module:function"),
        ("no_such_module_here:scan", "cannot import: ModuleNotFoundError"),
        ("bench.stub_scanner:missing", "bench.stub_scanner has no missing"),
        ("bench.stub_scanner:SCANNER_PATH", "not callable"),
    ],
)
def test_an_unusable_scanner_path_is_refused_saying_why(path: str, reason: str) -> None:
    with pytest.raises(runtime.ScannerUnavailable) as refused:
        runtime.load_scanner(path)
    assert reason in refused.value.message
    assert repr(path) in refused.value.message


def test_the_worker_refuses_to_start_with_an_unusable_scanner() -> None:
    # Checked before Dramatiq starts: no broker or database is needed to refuse.
    env = {
        **os.environ,
        "SCAN_SCANNER": "no_such_module_here:scan",
        "SCAN_WORKER_METRICS_PORT": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "worker_service", "--processes", "1", "--concurrency", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("Error: SCAN_SCANNER=")
    assert "ModuleNotFoundError" in done.stderr
