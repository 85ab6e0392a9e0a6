"""Every probe in the Kubernetes manifests answers 200 from the real process it targets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.embedded import EmbeddedUrls
from tests.deploy.manifests import (
    PORT_SETTINGS,
    component,
    main_container,
    of_kind,
    probe_targets,
    render,
)
from tests.e2e.stack import Stack, new_stack
from tests.helpers import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("clean_state")]


@pytest.fixture
def stack(servers: EmbeddedUrls, tmp_path: Path) -> Iterator[Stack]:
    stack = new_stack(servers.database_url, servers.redis_url, site_port=9, log_dir=tmp_path)
    stack.start_all()
    try:
        yield stack
    finally:
        stack.assert_stopped_cleanly(stack.stop_all())


def answers_200(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_every_manifest_probe_is_served_by_its_process(stack: Stack) -> None:
    checked = []
    for deployment in of_kind(render("prod"), "Deployment"):
        # The stack gives each process a free port through the same setting the
        # manifest's ConfigMap sets, so the probe's path is what is checked here.
        port = stack.env[PORT_SETTINGS[component(deployment)]]
        for kind, path, _ in probe_targets(main_container(deployment)):
            url = f"http://127.0.0.1:{port}{path}"
            wait_until(lambda url=url: answers_200(url), 30, f"{kind} {url} to answer 200")
            checked.append((component(deployment), kind))
    assert len(checked) == 9
