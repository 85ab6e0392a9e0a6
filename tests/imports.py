"""What a fresh interpreter has imported: for the tests that keep start-up imports light."""

from __future__ import annotations

import subprocess
import sys


def with_packages(names: set[str]) -> set[str]:
    """`names` and the top-level package of each (`sqlalchemy` for `sqlalchemy.orm`)."""
    return names | {name.split(".")[0] for name in names}


def modules_loaded_by(code: str) -> set[str]:
    """Every module (and top-level package) a new `python -c` has loaded after running `code`."""
    run = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return with_packages(set(run.stdout.split()))
