"""The dashboard in a real browser against the three real processes: sign in, watch a task
succeed, replay a dead row with its button, and keep screenshots of the pages."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright
from sqlalchemy import select

from shared.db import outbox, tasks, users
from shared.db.engine import create_engine, create_sessionmaker
from shared.db.models import OutboxMessage
from shared.embedded import EmbeddedUrls
from shared.messages import scan_entry
from shared.settings import Settings
from shared.tokens import hash_token
from tests.browser.conftest import CHROMIUM, needs_chromium
from tests.e2e.stack import Stack, new_stack
from tests.helpers import wait_until
from tests.sites import Site, local_site

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.browser,
    needs_chromium,
    pytest.mark.usefixtures("clean_state"),
]

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEAD_ERROR = "broker unavailable (simulated outage)"


@pytest.fixture
def site() -> Iterator[Site]:
    with local_site() as site:
        yield site


@pytest.fixture
def stack(servers: EmbeddedUrls, site: Site, tmp_path: Path) -> Iterator[Stack]:
    stack = new_stack(servers.database_url, servers.redis_url, site.port, tmp_path)
    stack.env["SCAN_UI_SECRET_KEY"] = uuid.uuid4().hex * 2
    stack.start_all()
    try:
        yield stack
    finally:
        stack.assert_stopped_cleanly(stack.stop_all())


@pytest.fixture
def admin_token(stack: Stack) -> str:
    created = subprocess.run(
        [sys.executable, "-m", "scanctl.main", "users", "create", "ops", "--admin"],
        env=stack.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return created.stdout.strip()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    """A fresh Chromium profile; nothing downloaded, nothing shared with other runs."""
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1360, "height": 900},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def insert_dead_task(settings: Settings, token: str, domain: str) -> tuple[uuid.UUID, int]:
    """A task whose only message died, as the relay leaves one it could not publish.

    Written and killed in one transaction, so no relay ever sees the row alive.
    """

    async def write() -> tuple[uuid.UUID, int]:
        engine = create_engine(settings)
        try:
            async with create_sessionmaker(engine)() as session, session.begin():
                user = await users.get_active_user_by_token_hash(session, hash_token(token))
                assert user is not None
                task_id = uuid.uuid4()
                new = tasks.NewTask(user.id, domain, {}, 3)
                entry = scan_entry(task_id, settings.queue_name)
                await tasks.insert_task_with_message(session, task_id, new, entry)
                stmt = select(OutboxMessage.id).where(OutboxMessage.task_id == task_id)
                outbox_id = (await session.execute(stmt)).scalar_one()
                await outbox.mark_dead(session, outbox_id, DEAD_ERROR)
            return task_id, outbox_id
        finally:
            await engine.dispose()

    # Playwright's sync API keeps an event loop running on this thread.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, write()).result()


def api_status(stack: Stack, token: str, task_id: object) -> str:
    response = httpx.get(
        f"{stack.api_url}/api/v1/tasks/{task_id}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    status: str = response.json()["status"]
    return status


def shows_status(page: Page, status: str) -> bool:
    page.reload()
    return page.locator("h1 .badge").inner_text() == status


def test_an_admin_signs_in_watches_a_scan_succeed_and_replays_a_dead_row(
    stack: Stack, site: Site, admin_token: str, page: Page, settings: Settings, tmp_path: Path
) -> None:
    created = httpx.post(
        f"{stack.api_url}/api/v1/tasks",
        json={"target_domain": "shop.example.com", "config": {"keywords": ["welcome"]}},
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    dead_task, dead_row = insert_dead_task(settings, admin_token, "later.example.com")

    page.goto(f"{stack.api_url}/ui")
    expect(page).to_have_url(f"{stack.api_url}/ui/login")
    page.screenshot(path=str(tmp_path / "login.png"))
    page.fill("#token", admin_token)
    page.click("button[type=submit]")
    expect(page.locator(".verdict")).to_be_visible()
    assert admin_token not in page.url

    page.goto(f"{stack.api_url}/ui/tasks?domain=shop")
    page.screenshot(path=str(tmp_path / "tasks.png"), full_page=True)
    page.click("text=shop.example.com")
    expect(page).to_have_url(f"{stack.api_url}/ui/tasks/{task_id}")
    wait_until(lambda: shows_status(page, "succeeded"), 30, "the task page to show it", every_s=0.3)
    expect(page.locator("ol.timeline")).to_contain_text("finished")
    expect(page.locator(".report")).to_contain_text("shop.example.com")
    page.screenshot(path=str(tmp_path / "task.png"), full_page=True)

    page.click("nav >> text=Outbox")
    row = page.locator("tr", has=page.locator(f"td:text-is('{dead_row}')"))
    expect(row).to_contain_text(DEAD_ERROR)
    page.screenshot(path=str(tmp_path / "outbox.png"), full_page=True)
    row.locator("button", has_text="Replay").click()
    expect(page.locator(".flash")).to_have_text("Replayed 1 dead row; 1 task(s) back to pending.")
    wait_until(
        lambda: api_status(stack, admin_token, dead_task) == "succeeded",
        30,
        "the replayed task to succeed",
        every_s=0.2,
    )

    page.click("nav >> text=Callbacks")
    expect(page.locator("h1")).to_have_text("Callback deliveries")
    expect(page.locator("nav [aria-current=page]")).to_have_text("Callbacks")

    page.click("nav >> text=Overview")
    expect(page.locator(".verdict.ok")).to_contain_text("Healthy")
    relays = page.locator("#relays")
    expect(relays).to_contain_text("1 connected")
    expect(relays.locator(".badge", has_text="leader")).to_have_count(1)
    workers = page.locator("#workers")
    expect(workers.locator("tbody tr")).to_have_count(1)
    page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)

    page.click("text=Sign out")
    expect(page).to_have_url(f"{stack.api_url}/ui/login")
    page.goto(f"{stack.api_url}/ui/outbox")
    expect(page).to_have_url(f"{stack.api_url}/ui/login?next=%2Fui%2Foutbox")
    for name, service in stack.services.items():
        assert admin_token not in service.log(), f"the token reached the {name} log"
