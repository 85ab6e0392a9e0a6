"""The env file `scanctl dev` keeps beside its embedded servers, so other scanctl commands
started from the same folder find them.

It holds `DATABASE_URL` and `REDIS_URL` as `NAME=value` lines (readable by a shell's
`set -a; . FILE`), mode 0600, and exists only while the embedded servers run.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

from shared.embedded import EmbeddedUrls

DEFAULT_DATA_DIR = Path(".data")
FILE_NAME = "dev.env"
# Any of these in the environment means the caller chose its servers: the file is not read.
URL_VARIABLES = ("DATABASE_URL", "SCAN_DATABASE_URL", "REDIS_URL", "SCAN_REDIS_URL")
WRITTEN = ("DATABASE_URL", "REDIS_URL")


def env_file(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def write(data_dir: Path, urls: EmbeddedUrls) -> Path:
    """Write the file atomically, readable by its owner only; returns its path."""
    path = env_file(data_dir)
    partial = path.with_name(f".{FILE_NAME}.partial")
    text = (
        f"DATABASE_URL={shlex.quote(urls.database_url)}\nREDIS_URL={shlex.quote(urls.redis_url)}\n"
    )
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.replace(partial, path)
    return path


def file_to_read(environ: Mapping[str, str], data_dir: Path = DEFAULT_DATA_DIR) -> Path | None:
    """The running dev stack's file, unless the environment names its own servers."""
    if any(environ.get(name) for name in URL_VARIABLES):
        return None
    path = env_file(data_dir)
    return path if path.is_file() else None


def read(path: Path) -> dict[str, str]:
    """The URLs the file names, by their environment names."""
    values = dotenv_values(path)
    return {name: value for name in WRITTEN if (value := values.get(name))}
