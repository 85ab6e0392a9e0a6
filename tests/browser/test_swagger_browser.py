"""The API's own /docs in a real browser: Swagger UI loads with no CDN, its "Authorize"
button takes a bearer token, and "Try it out" then gets an answer instead of a 401."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from scanctl.processes import api_command
from shared.embedded import EmbeddedUrls
from tests.browser.conftest import CHROMIUM, needs_chromium
from tests.browser.test_dashboard_browser import CHROMIUM_ARGS
from tests.e2e.stack import Stack, new_stack
from tests.helpers import scanctl, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.browser,
    needs_chromium,
    pytest.mark.usefixtures("clean_state"),
]


@pytest.fixture
def api(servers: EmbeddedUrls, tmp_path: Path) -> Iterator[Stack]:
    stack = new_stack(servers.database_url, servers.redis_url, 1, tmp_path)
    stack.start("api", api_command("127.0.0.1", stack.api_port))
    wait_until(stack._api_ready, 30, "the API to be ready")
    try:
        yield stack
    finally:
        stack.assert_stopped_cleanly(stack.stop_all())


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1360, "height": 900},
        )
        # Anything not served by the API itself (a CDN) fails the page, as it would offline.
        context.route(
            lambda url: not url.startswith("http://127.0.0.1"), lambda route: route.abort()
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def try_list_tasks(page: Page) -> str:
    """Execute GET /api/v1/tasks from Swagger UI; the live response's status code."""
    operation = page.locator("#operations-tasks-list_tasks_api_v1_tasks_get")
    if not operation.locator(".try-out__btn").is_visible():
        operation.locator(".opblock-summary").click()
    if operation.locator(".try-out__btn", has_text="Try it out").is_visible():
        operation.locator(".try-out__btn").click()
    clear = operation.locator(".btn-clear")
    if clear.is_visible():  # the last answer goes, so the one read below is this one's
        clear.click()
        expect(operation.locator(".live-responses-table")).to_have_count(0)
    operation.locator(".execute").click()
    status = operation.locator(".live-responses-table tbody .response-col_status")
    expect(status).to_be_visible()
    return status.inner_text().strip()


def test_swagger_ui_signs_in_with_the_bearer_scheme_and_tries_a_route(
    api: Stack, page: Page, tmp_path: Path
) -> None:
    created = scanctl("users", "create", "swagger", env=api.env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()

    page.goto(f"{api.api_url}/docs")
    expect(page.locator(".info .title")).to_contain_text("scan-outbox")
    assert try_list_tasks(page) == "401"

    page.locator(".auth-wrapper .authorize").click()
    dialog = page.locator(".modal-ux")
    expect(dialog).to_contain_text("bearerAuth")
    dialog.locator("input").fill(token)
    dialog.locator("button.authorize").click()
    expect(dialog.get_by_role("heading", name="Authorized")).to_be_visible()
    dialog.locator("button.btn-done").click()
    expect(dialog).to_have_count(0)
    page.screenshot(path=str(tmp_path / "swagger.png"), full_page=True)

    assert try_list_tasks(page) == "200"
