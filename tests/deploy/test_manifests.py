"""The Kubernetes manifests, compose file, systemd units and Dockerfile, checked offline."""

from __future__ import annotations

import base64
import configparser
import ipaddress
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from pydantic import AliasChoices
from typer.main import get_command

from scanctl.main import app
from shared import keys
from shared.settings import Settings
from tests.deploy.manifests import (
    DEPLOY,
    HOST_SETTINGS,
    OVERLAYS,
    PORT_SETTINGS,
    SCALER_ONLY_KEYS,
    SECRET_NAME,
    Doc,
    component,
    config_data,
    main_container,
    named,
    of_kind,
    probe_targets,
    render,
    required_secret_keys,
)

KUBERNETES_VERSION = "1.33"
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication"}
# Seconds each process may take to stop after SIGTERM (see scanctl/processes.py).
STOP_BUDGET_S = {"api": 20, "relay": 30, "worker": 25}
SCANCTL_COMMANDS = set(get_command(app).commands)  # type: ignore[attr-defined]
DEPLOY_GUIDE = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
# The overlays whose Secret is created out of band, and the heading of the guide's section
# that creates it.
GUIDE_SECTIONS = {
    "prod": "### Kubernetes, step by step",
    "prod-sentinel": "### Redis with Sentinel",
    "prod-pgbouncer": "### Behind PgBouncer",
}
PRIVATE_RANGES = [
    ipaddress.ip_network(cidr)
    for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8")
]


@pytest.fixture(params=OVERLAYS)
def docs(request: pytest.FixtureRequest) -> tuple[Doc, ...]:
    return render(request.param)


def all_pod_specs(docs: tuple[Doc, ...]) -> list[tuple[str, Doc]]:
    return [
        (doc["metadata"]["name"], doc["spec"]["template"]["spec"])
        for doc in docs
        if doc["kind"] in ("Deployment", "StatefulSet", "Job")
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


def is_ours(container: Doc) -> bool:
    """A container of the scan-outbox image (not the dev overlay's PostgreSQL or Redis)."""
    return str(container["image"]).rsplit(":", 1)[0].endswith("scan-outbox")


def test_containers_run_scanctl_commands_that_exist(docs: tuple[Doc, ...]) -> None:
    for _name, pod in all_pod_specs(docs):
        for container in pod.get("initContainers", []) + pod["containers"]:
            if is_ours(container):
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
    queue = config_data(docs)["SCAN_QUEUE_NAME"]
    assert trigger["metadata"]["listName"] == keys.broker_queue_key(queue)
    auth = named(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    parameters = {target["parameter"]: target["key"] for target in auth["spec"]["secretTargetRef"]}
    # A Redis with a password or TLS must not break autoscaling: both always reach the scaler.
    assert parameters["password"] == "REDIS_PASSWORD"
    assert parameters["tls"] == "REDIS_TLS"
    if trigger["type"] == "redis":
        assert parameters["address"] == "REDIS_ADDRESS"
    else:
        assert trigger["type"] == "redis-sentinel"
        # The very keys the pods read their Sentinel settings from.
        assert parameters["addresses"] == "REDIS_SENTINELS"
        assert parameters["sentinelMaster"] == "REDIS_SENTINEL_MASTER"
        assert parameters["sentinelPassword"] == "REDIS_SENTINEL_PASSWORD"


def test_the_sentinel_overlay_scales_through_the_sentinels() -> None:
    (trigger,) = named(render("prod-sentinel"), "ScaledObject", "scan-outbox-worker")["spec"][
        "triggers"
    ]
    assert trigger["type"] == "redis-sentinel"
    assert "REDIS_SENTINELS" in required_secret_keys(render("prod-sentinel"))
    assert "REDIS_SENTINELS" not in required_secret_keys(render("prod"))


def test_the_pgbouncer_overlay_pools_every_process_and_gives_the_relay_a_session() -> None:
    docs = render("prod-pgbouncer")
    assert config_data(docs)["DATABASE_POOL_MODE"] == "transaction"
    session_readers = {
        doc["metadata"]["name"]
        for doc in docs
        if doc["kind"] in ("Deployment", "Job")
        and any(v["name"] == "DATABASE_DIRECT_URL" for v in main_container(doc).get("env", []))
    }
    # The relay's leader lock and the migrations need a session; API and workers do not.
    assert session_readers == {"scan-outbox-relay", "scan-outbox-migrate"}
    assert "DATABASE_DIRECT_URL" in required_secret_keys(docs)
    assert "DATABASE_POOL_MODE" not in config_data(render("prod"))


@pytest.mark.parametrize("overlay", ["prod", "prod-sentinel", "prod-pgbouncer"])
def test_secrets_are_referenced_never_inlined_in_prod(overlay: str) -> None:
    docs = render(overlay)
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


def env_name(name: str) -> str:
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"SCAN_{name.upper()}"


SETTING_NAMES = {env_name(name) for name in Settings.model_fields}


def test_each_overlay_creates_the_namespace_its_objects_live_in(docs: tuple[Doc, ...]) -> None:
    (namespace,) = of_kind(docs, "Namespace")
    name = namespace["metadata"]["name"]
    others = [doc for doc in docs if doc["kind"] != "Namespace"]
    assert {doc["metadata"].get("namespace") for doc in others} == {name}


def test_every_setting_a_manifest_sets_is_a_real_setting(docs: tuple[Doc, ...]) -> None:
    config = config_data(docs)
    unknown = set(config) - SETTING_NAMES
    assert not unknown, f"ConfigMap keys no process reads: {unknown}"
    for _name, pod in all_pod_specs(docs):
        for container in pod.get("initContainers", []) + pod["containers"]:
            if is_ours(container):
                names = {entry["name"] for entry in container.get("env", [])}
                assert names <= SETTING_NAMES, names - SETTING_NAMES
    for secret in of_kind(docs, "Secret"):
        unknown = set(secret.get("data", {})) - SETTING_NAMES - SCALER_ONLY_KEYS
        assert not unknown, f"Secret keys no process or scaler reads: {unknown}"


def test_each_process_listens_where_its_probes_and_service_reach_it(
    docs: tuple[Doc, ...],
) -> None:
    config = config_data(docs)
    for deployment in of_kind(docs, "Deployment"):
        assert config[HOST_SETTINGS[component(deployment)]] == "0.0.0.0"


def test_the_dev_secret_holds_every_required_key_and_valid_settings() -> None:
    docs = render("dev")
    secret = named(docs, "Secret", SECRET_NAME)
    data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    missing = required_secret_keys(docs) - set(data)
    assert not missing, f"the dev Secret lacks {missing}"
    given = {**config_data(docs), **data}
    values = {
        name: given[env_name(name)] for name in Settings.model_fields if env_name(name) in given
    }
    settings = Settings.model_validate(values)
    assert settings.ui_secret_key is not None


@pytest.mark.parametrize("overlay", sorted(GUIDE_SECTIONS))
def test_the_deploy_guide_creates_every_secret_key_its_overlay_needs(overlay: str) -> None:
    guide = DEPLOY_GUIDE.read_text()
    heading = GUIDE_SECTIONS[overlay]
    assert heading in guide, heading
    section = guide.split(heading, 1)[1].split("\n### ", 1)[0]
    missing = {key for key in required_secret_keys(render(overlay)) if f"{key}=" not in section}
    assert not missing, f"{heading!r} never creates {missing}"


def egress_policies_of(docs: tuple[Doc, ...], labels: dict[str, str]) -> list[Doc]:
    """The egress policies whose pod selector matches `labels`."""

    def selects(policy: Doc) -> bool:
        selector = policy["spec"]["podSelector"]
        if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
            return False
        for expression in selector.get("matchExpressions", []):
            assert expression["operator"] == "In"
            if labels.get(expression["key"]) not in expression["values"]:
                return False
        return True

    policies = of_kind(docs, "NetworkPolicy")
    return [p for p in policies if "Egress" in p["spec"]["policyTypes"] and selects(p)]


def web_rules(policy: Doc) -> list[Doc]:
    """The egress rules towards addresses (ipBlock), where scans and callbacks go."""
    return [rule for rule in policy["spec"]["egress"] if rule.get("to")]


def test_every_pod_of_the_service_has_its_egress_restricted(docs: tuple[Doc, ...]) -> None:
    for doc in docs:
        if doc["kind"] not in ("Deployment", "Job") or not doc["metadata"]["name"].startswith(
            "scan-outbox"
        ):
            continue
        labels = doc["spec"]["template"]["metadata"]["labels"]
        policies = egress_policies_of(docs, labels)
        assert policies, f"no egress policy selects {doc['metadata']['name']}"
        rules = [rule for policy in policies for rule in policy["spec"]["egress"]]
        ports = {(port["protocol"], port["port"]) for rule in rules for port in rule["ports"]}
        assert {("UDP", 53), ("TCP", 5432), ("TCP", 6379), ("TCP", 26379)} <= ports
        reach = [rule for policy in policies for rule in web_rules(policy)]
        name = component(doc)
        if name in ("worker", "relay"):
            (web,) = reach
            assert {p["port"] for p in web["ports"]} >= {443}
            for peer in web["to"]:
                block = peer["ipBlock"]
                if block["cidr"] == "0.0.0.0/0":
                    excepted = [ipaddress.ip_network(c) for c in block["except"]]
                    assert all(net in excepted for net in PRIVATE_RANGES), block
        else:
            assert not reach, f"{name} may reach arbitrary addresses"
