"""What `python -m worker_service` imports in its main process before it forks the workers:
what they need to fetch and claim, not what only the fork serving metrics and probes needs
(`worker_service.exposition.serve_metrics`), nor anything of the API or the relay."""

from __future__ import annotations

import subprocess
import sys

# The main process imports before it forks: each of these would delay every worker's first
# fetch, and prometheus_client must not be imported before its multiprocess dir is set.
NOT_BEFORE_THE_FORK = (
    "api_service",
    "fastapi",
    "http.server",
    "httpx",
    "prometheus_client",
    "relay_service",
    "starlette",
    "uvicorn",
    "worker_service.probes",
    "wsgiref",
)

_LOADED = "import sys, worker_service.__main__; print(' '.join(sorted(sys.modules)))"


def loaded_by(code: str) -> set[str]:
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(run.stdout.split())


def test_the_worker_entry_point_imports_nothing_only_the_metrics_fork_needs() -> None:
    loaded = loaded_by(_LOADED)
    packages = {name.split(".")[0] for name in loaded}
    early = [name for name in NOT_BEFORE_THE_FORK if name in packages or name in loaded]
    assert early == []
