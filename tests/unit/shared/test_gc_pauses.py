"""Start-up objects leave every later collection, without a full pass at start-up."""

from __future__ import annotations

import subprocess
import sys

_FREEZE = """
import gc, time
import shared.gc_pauses as g
import sqlalchemy.ext.asyncio, dramatiq, structlog, shared.settings
passes = []
def seen(phase, info):
    if phase == "start":
        passes.append(info["generation"])
gc.callbacks.append(seen)
g.freeze_startup_objects()
print(max(passes, default=-1), gc.get_freeze_count() > 10_000)
"""


def test_freezing_moves_what_start_up_imported_out_of_reach_with_no_full_pass() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _FREEZE], capture_output=True, text=True, check=True
    ).stdout.split()
    # The oldest generation collected is the middle one: no full pass (generation 2).
    assert out == ["1", "True"]
