"""The Kubernetes manifests, compose file, systemd units and Dockerfile, checked offline."""

from __future__ import annotations

import configparser
import re

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from typer.main import get_command

from shared import keys
from shared.cli.main import app
from tests.deploy.manifests import (
    DEPLOY,
    OVERLAYS,
    PORT_SETTINGS,
    Doc,
    component,
    config_data,
    main_container,
    named,
    of_kind,
    probe_targets,
    render,
)

KUBERNETES_VERSION = "1.33"
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication"}
# Seconds each process may take to stop after SIGTERM (see shared/cli/processes.py).
STOP_BUDGET_S = {"api": 20, "relay": 30, "worker": 25}
SCANCTL_COMMANDS = set(get_command(app).commands)  # type: ignore[attr-defined]


@pytest.fixture(params=OVERLAYS)
def docs(request: pytest.FixtureRequest) -> tuple[Doc, ...]:
    return render(request.param)


def all_pod_specs(docs: tuple[Doc, ...]) -> list[tuple[str, Doc]]:
    return [
        (doc["metadata"]["name"], doc["spec"]["template"]["spec"])
        for doc in docs
        if doc["kind"] in ("Deployment", "Job")
    ]


def test_every_manifest_validates_against_the_kubernetes_schema(docs: tuple[Doc, ...]) -> None:
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            assert doc["apiVersion"] == "keda.sh/v1alpha1"
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_every_container_is_locked_down_and_sized(docs: tuple[Doc, ...]) -> None:
    for name, pod in all_pod_specs(docs):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod.get("initContainers", []) + pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) == {"cpu", "memory"}, name


def test_every_service_has_probes_on_the_port_its_process_serves(docs: tuple[Doc, ...]) -> None:
    config = config_data(docs)
    deployments = of_kind(docs, "Deployment")
    assert {component(d) for d in deployments} == set(PORT_SETTINGS)
    for deployment in deployments:
        container = main_container(deployment)
        expected_port = int(config[PORT_SETTINGS[component(deployment)]])
        for kind, path, port in probe_targets(container):
            assert port == expected_port, (deployment["metadata"]["name"], kind)
            assert path.startswith("/")


def test_services_wait_for_the_schema_and_a_migration_job_applies_it(
    docs: tuple[Doc, ...],
) -> None:
    job = named(docs, "Job", "scan-outbox-migrate")
    assert main_container(job)["args"] == ["migrate"]
    for deployment in of_kind(docs, "Deployment"):
        init = deployment["spec"]["template"]["spec"]["initContainers"]
        assert [c["args"][:2] for c in init] == [["migrate", "--check"]]


def test_containers_run_scanctl_commands_that_exist(docs: tuple[Doc, ...]) -> None:
    for _name, pod in all_pod_specs(docs):
        for container in pod.get("initContainers", []) + pod["containers"]:
            assert container["args"][0] in SCANCTL_COMMANDS


def test_grace_periods_cover_each_process_shutdown(docs: tuple[Doc, ...]) -> None:
    for deployment in of_kind(docs, "Deployment"):
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= STOP_BUDGET_S[component(deployment)] + 5, deployment["metadata"]["name"]


def test_availability_policies(docs: tuple[Doc, ...]) -> None:
    deployments = {component(d): d for d in of_kind(docs, "Deployment")}
    budgets = of_kind(docs, "PodDisruptionBudget")
    covered = {b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] for b in budgets}
    assert covered == {d["metadata"]["name"] for d in deployments.values()}
    # Several relays are safe by design; two keep dispatch going while one restarts.
    assert deployments["relay"]["spec"]["replicas"] == 2
    hpa = named(docs, "HorizontalPodAutoscaler", "scan-outbox-api")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "scan-outbox-api"
    # KEDA owns the worker count.
    assert "replicas" not in deployments["worker"]["spec"]


def test_worker_autoscaling_reads_the_list_the_broker_really_uses(docs: tuple[Doc, ...]) -> None:
    scaled = named(docs, "ScaledObject", "scan-outbox-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "scan-outbox-worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    queue = config_data(docs)["SCAN_QUEUE_NAME"]
    assert trigger["metadata"]["listName"] == keys.broker_queue_key(queue)
    auth = named(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    (target,) = auth["spec"]["secretTargetRef"]
    assert (target["parameter"], target["name"]) == ("address", "scan-outbox-secrets")


def test_secrets_are_referenced_never_inlined_in_prod() -> None:
    docs = render("prod")
    assert of_kind(docs, "Secret") == []
    for _name, pod in all_pod_specs(docs):
        for container in pod["containers"]:
            refs = [source.get("secretRef", {}).get("name") for source in container["envFrom"]]
            assert "scan-outbox-secrets" in refs
    assert "DATABASE_URL" not in config_data(docs)


def test_dockerfile_is_one_slim_non_root_image_with_scanctl_entry_points() -> None:
    parser = DockerfileParser(path=str(DEPLOY / "Dockerfile"))
    stages = [i for i, item in enumerate(parser.structure) if item["instruction"] == "FROM"]
    assert len(stages) == 2, "a build stage and a runtime stage"
    final = parser.structure[stages[-1] :]
    instructions = {item["instruction"] for item in final}
    assert "HEALTHCHECK" not in {item["instruction"] for item in parser.structure}
    assert parser.baseimage.endswith("-slim")
    user = [item["value"] for item in final if item["instruction"] == "USER"]
    assert user, "the runtime stage sets a user"
    assert not user[-1].startswith(("0", "root"))
    runs = " ".join(item["value"] for item in final if item["instruction"] == "RUN")
    assert not re.search(r"\b(gcc|build-essential|apt-get install)\b", runs)
    assert "COPY" in instructions
    entrypoint = [item["value"] for item in final if item["instruction"] == "ENTRYPOINT"]
    assert entrypoint == ['["scanctl"]']


def test_compose_and_systemd_run_the_same_scanctl_commands() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name in ("migrate", "api", "relay", "worker"):
        assert compose["services"][name]["command"][0] in SCANCTL_COMMANDS, name
    for unit_path in sorted((DEPLOY / "systemd").glob("*.service")):
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.read(unit_path)
        exec_start = unit["Service"]["ExecStart"].split()
        assert exec_start[0].endswith("/scanctl")
        assert exec_start[1] in SCANCTL_COMMANDS
        service = exec_start[1]
        assert int(unit["Service"]["TimeoutStopSec"]) >= STOP_BUDGET_S[service] + 5
        assert unit["Service"]["Restart"] == "on-failure"
