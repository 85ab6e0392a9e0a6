"""The workers' /metrics: prometheus_client's multiprocess mode across Dramatiq's processes.

Each worker process writes its samples (and its progress, `worker_service.progress`) to files
in PROMETHEUS_MULTIPROC_DIR; one Dramatiq fork process serves their sum, and the probes judging
that progress (`worker_service.probes`), on SCAN_WORKER_METRICS_HOST:PORT.
prometheus_client is imported lazily here: it picks its storage when first imported,
and worker processes inherit that choice from the main process through fork. So are the HTTP
server and the probes, which only the fork process serving them needs: the main process
imports this module before it forks the workers, whose first fetch would wait for them.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.logging import get_logger
from shared.settings import get_settings
from worker_service import progress

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

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
    progress.clear_progress(path)
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


def _quiet_handler() -> type[WSGIRequestHandler]:
    from wsgiref.simple_server import WSGIRequestHandler

    class QuietHandler(WSGIRequestHandler):
        """No line per request: probes arrive every few seconds."""

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return QuietHandler


def _server_class(host: str, port: int) -> type[WSGIServer]:
    from prometheus_client.exposition import ThreadingWSGIServer

    class Server(ThreadingWSGIServer):
        # IPv6 when the host is an IPv6 address ("::"), as prometheus_client's own server does.
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

    return Server


def serve_metrics() -> int:
    """A Dramatiq fork target: serve the workers' metrics and probes until the fork is stopped."""
    from wsgiref.simple_server import make_server

    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.multiprocess import MultiProcessCollector

    from shared import metrics
    from worker_service import probes

    settings = get_settings()
    names = [family.name for metric in metrics.WORKER_METRICS for family in metric.describe()]
    registry = CollectorRegistry()
    source = MultiProcessCollector(None)  # type: ignore[no-untyped-call]
    registry.register(WorkerCollector(source, names))
    app = probes.ProbeApp(
        make_wsgi_app(registry),
        Path(os.environ[MULTIPROC_DIR_ENV]),
        settings.worker_progress_max_age_s,
        probes.broker_check(settings),
    )
    host, port = settings.worker_metrics_host, settings.worker_metrics_port
    try:
        server = make_server(
            host, port, app, _server_class(host, port), handler_class=_quiet_handler()
        )
    except OSError as exc:
        log.error("worker_metrics_unavailable", host=host, port=port, error=str(exc))
        return 1
    threading.Thread(target=server.serve_forever, name="scan-outbox-probes", daemon=True).start()
    log.info("worker_metrics_serving", host=host, port=port)
    # Dramatiq stops a fork with SIGTERM, whose handler exits this wait.
    threading.Event().wait()
    return 0
