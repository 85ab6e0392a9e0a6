"""The Dramatiq actor as the worker process declares it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from shared.embedded import free_port
from shared.settings import Settings
from worker_service import lifecycle

SHOW_OPTIONS = "import json, worker_service.actors as a; print(json.dumps(a.scan_domain.options))"


def test_the_actor_leaves_retries_to_the_outbox_and_outlasts_the_scan() -> None:
    # Declaring the actor builds the broker without connecting to it.
    env = {
        **os.environ,
        "BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
        "SCAN_TOTAL_TIMEOUT_S": "90",
    }
    shown = subprocess.run(
        [sys.executable, "-c", SHOW_OPTIONS],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    options = json.loads(shown.stdout.strip().splitlines()[-1])

    assert options["max_retries"] == 0
    limit_ms = lifecycle.actor_time_limit_ms(Settings(total_timeout_s=90))
    assert options["time_limit"] == limit_ms
    assert limit_ms > (90 + lifecycle.SCAN_GRACE_S) * 1000
