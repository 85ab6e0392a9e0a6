"""What `python -m relay_service` imports before its claim loop starts: what the claim needs,
not what only the probes, callbacks, listener or schedules need (relay_service/assembly.py)."""

from __future__ import annotations

import subprocess
import sys

# Each costs start-up CPU the first batch would wait for; the API package never belongs in a
# relay at all.
NOT_BEFORE_THE_FIRST_CLAIM = (
    "api_service",
    "apscheduler",
    "dns",
    "fastapi",
    "httpx",
    "relay_service.assembly",
    "relay_service.deliverer",
    "starlette",
    "uvicorn",
)

_PROBE_SUBMODULES = "import sys, relay_service.__main__; print(' '.join(sorted(sys.modules)))"


def test_the_relay_entry_point_imports_none_of_its_side_jobs_libraries() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c", _PROBE_SUBMODULES], capture_output=True, text=True, check=True
    ).stdout.split()
    packages = {name.split(".")[0] for name in loaded}
    early = [name for name in NOT_BEFORE_THE_FIRST_CLAIM if name in packages or name in set(loaded)]
    assert early == []


def test_the_side_jobs_module_still_brings_what_the_relay_runs_beside_its_loop() -> None:
    # The list above is only meaningful while assembly is where those libraries come from.
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, relay_service.assembly; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {"httpx", "apscheduler", "uvicorn", "relay_service.deliverer"} <= set(loaded)
