"""`python -m worker_service [dramatiq options]`: the Dramatiq worker as scan-outbox runs it.

It wraps Dramatiq's own command line to add what `dramatiq worker_service.actors` lacks:
JSON logs from the main process too (Dramatiq's are plain text otherwise), and the
workers' metrics served on SCAN_WORKER_METRICS_PORT (0 disables it).
"""

from __future__ import annotations

import shutil
import sys

from shared.logging import configure_logging
from shared.settings import get_settings
from worker_service import exposition

FORK_METRICS = "worker_service.exposition:serve_metrics"


def main() -> int:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    metrics_dir, owned = exposition.prepare_multiproc_dir()
    # Imported after the metrics dir is set: nothing in the workers may see prometheus_client first.
    from dramatiq import cli

    from worker_service import runtime

    argv = ["worker_service.actors", "--skip-logging", *sys.argv[1:]]
    if settings.worker_metrics_port:
        argv += ["--fork", FORK_METRICS]
    # Dramatiq re-executes sys.argv to reload on SIGHUP: make that this same command.
    sys.argv = [sys.executable, "-m", "worker_service", *sys.argv[1:]]
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
