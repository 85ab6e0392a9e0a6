"""What `python -m worker_service` imports in its main process before it forks the workers:
what they need to fetch and claim, not what only the fork serving metrics and probes needs
(`worker_service.exposition.serve_metrics`), nor anything of the API or the relay."""

from __future__ import annotations

from tests.imports import modules_loaded_by

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


def test_the_worker_entry_point_imports_nothing_only_the_metrics_fork_needs() -> None:
    loaded = modules_loaded_by("import worker_service.__main__")
    assert [name for name in NOT_BEFORE_THE_FORK if name in loaded] == []
