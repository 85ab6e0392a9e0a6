"""What `python -m relay_service` imports before its claim loop starts: what the claim needs,
not what only the probes, callbacks, listener or schedules need (relay_service/assembly.py)."""

from __future__ import annotations

from tests.imports import modules_loaded_by

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


def test_the_relay_entry_point_imports_none_of_its_side_jobs_libraries() -> None:
    loaded = modules_loaded_by("import relay_service.__main__")
    assert [name for name in NOT_BEFORE_THE_FIRST_CLAIM if name in loaded] == []


def test_the_side_jobs_module_still_brings_what_the_relay_runs_beside_its_loop() -> None:
    # The list above is only meaningful while assembly is where those libraries come from.
    loaded = modules_loaded_by("import relay_service.assembly")
    assert {"httpx", "apscheduler", "uvicorn", "relay_service.deliverer"} <= loaded
