"""`python -m worker_service [--concurrency N] [--prefetch N] [dramatiq options]`: the worker.

The one way to start the worker (`dramatiq worker_service.actors` refuses: see
`async_worker.AsyncWorkerOnly`). It wraps Dramatiq's own command line: scans as coroutines,
`--concurrency` of them per process (SCAN_WORKER_CONCURRENCY) with `--prefetch` more fetched
(SCAN_WORKER_PREFETCH) instead of a thread per scan; JSON logs from the main process too
(Dramatiq's are plain text otherwise); and the workers' metrics served on
SCAN_WORKER_METRICS_PORT (0 disables it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from scanctl.processes import THREADS_REFUSED
from shared.logging import configure_logging
from shared.settings import get_settings
from worker_service import exposition

FORK_METRICS = "worker_service.exposition:serve_metrics"


def split_options(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our options, and the rest for Dramatiq; SystemExit(2) with a message for `--threads`."""
    parser = argparse.ArgumentParser(prog="python -m worker_service", add_help=False)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--prefetch", type=int)
    parser.add_argument("--threads", "-t")
    ours, rest = parser.parse_known_args(argv)
    if ours.threads is not None:
        parser.exit(2, f"Error: {THREADS_REFUSED}\n")
    for name in ("concurrency", "prefetch"):
        value = getattr(ours, name)
        if value is not None and value < (1 if name == "concurrency" else 0):
            parser.exit(2, f"Error: --{name} {value} is out of range\n")
    return ours, rest


def main() -> int:
    ours, dramatiq_args = split_options(sys.argv[1:])
    # Through the environment: worker processes read their settings, forked or spawned.
    if ours.concurrency is not None:
        os.environ["SCAN_WORKER_CONCURRENCY"] = str(ours.concurrency)
    if ours.prefetch is not None:
        os.environ["SCAN_WORKER_PREFETCH"] = str(ours.prefetch)
    get_settings.cache_clear()
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json, batch_lines=True)
    metrics_dir, owned = exposition.prepare_multiproc_dir()
    # Imported after the metrics dir is set: nothing in the workers may see prometheus_client first.
    from dramatiq import cli

    from worker_service import async_worker, runtime

    argv = ["worker_service.actors", "--skip-logging", *dramatiq_args]
    if settings.worker_metrics_port:
        argv += ["--fork", FORK_METRICS]
    # Dramatiq re-executes sys.argv to reload on SIGHUP: make that this same command.
    sys.argv = [sys.executable, "-m", "worker_service", *sys.argv[1:]]
    # Dramatiq's CLI builds each worker process's Worker from this name (workers are forked).
    cli.Worker = async_worker.configured(settings)  # type: ignore[attr-defined]
    try:
        # Refused here, once and plainly, rather than as a failed message per task.
        runtime.load_scanner(settings.scanner)
        args = cli.make_argument_parser().parse_args(argv)  # type: ignore[no-untyped-call]
        code: int = cli.main(args)  # type: ignore[no-untyped-call]
    except runtime.ScannerUnavailable as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        if owned:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
