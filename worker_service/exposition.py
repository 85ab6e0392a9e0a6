"""The workers' /metrics: prometheus_client's multiprocess mode across Dramatiq's processes.

Each worker process writes its samples to files in PROMETHEUS_MULTIPROC_DIR; one
Dramatiq fork process serves their sum on SCAN_WORKER_METRICS_HOST:PORT.
prometheus_client is imported lazily here: it picks its storage when first imported,
and worker processes inherit that choice from the main process through fork.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from shared.logging import get_logger
from shared.settings import get_settings

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

log = get_logger(__name__)


def prepare_multiproc_dir() -> tuple[Path, bool]:
    """Point PROMETHEUS_MULTIPROC_DIR at an empty folder; returns it and whether it is ours.

    Run it in the main process before prometheus_client is imported and before the
    workers start. Left-over files would add a previous run's counts to this one's.
    """
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess dir was set")
    given = os.environ.get(MULTIPROC_DIR_ENV)
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="scan-outbox-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_DIR_ENV] = str(path)
    return path, not given


class WorkerCollector:
    """The summed samples of every worker process, limited to the worker's own metrics."""

    def __init__(self, source: MultiProcessCollector, names: Iterable[str]) -> None:
        self._source = source
        self._names = frozenset(names)

    def collect(self) -> Iterator[Metric]:
        for family in self._source.collect():  # type: ignore[no-untyped-call]
            if family.name in self._names:
                yield family


def serve_metrics() -> int:
    """A Dramatiq fork target: serve the workers' metrics until the fork is stopped."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    from shared import metrics

    settings = get_settings()
    names = [family.name for metric in metrics.WORKER_METRICS for family in metric.describe()]
    registry = CollectorRegistry()
    source = MultiProcessCollector(None)  # type: ignore[no-untyped-call]
    registry.register(WorkerCollector(source, names))
    host, port = settings.worker_metrics_host, settings.worker_metrics_port
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.error("worker_metrics_unavailable", host=host, port=port, error=str(exc))
        return 1
    log.info("worker_metrics_serving", host=host, port=port)
    # Dramatiq stops a fork with SIGTERM, whose handler exits this wait.
    threading.Event().wait()
    return 0
