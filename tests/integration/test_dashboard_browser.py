"""The emulator's dashboard in a real browser, while rows go through the function app.

Debian's Chromium (``make setup`` installs it) driven by Playwright, with the system browser
(Playwright's own browser download is not used). The stack is this module's own: an emulator
told where the app's dead letters are (as ``make run`` does), devhost serving the app, and the
session's Azurite. Screenshots go to ``artifacts/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.azurite import KEY, Azurite
from tests.emulator.conftest import REPO, WORKSPACE_NAME, Api, EmulatorProcess, start_emulator
from tests.integration.test_devhost import ROWS, Devhost, app_environment, start_devhost

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
#: Headless and quiet: without the background-networking flags Chromium tries (and noisily
#: fails) to reach Google services from a machine with no such network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "artifacts"
WAIT_MS = 10_000  # the page should update within about half a second; this bounds a failure
PHONE = {"width": 375, "height": 740}
HOSTILE = "<script>alert(1)</script>"
LIVE = re.compile(r"^Live\b")


@dataclass
class Stack:
    emulator: EmulatorProcess
    devhost: Devhost
    http: requests.Session
    api: Api

    def push(self, rows: list[dict[str, Any]], **params: str) -> requests.Response:
        """Rows through the function app's Power BI-compatible route."""
        return self.http.post(
            f"{self.devhost.base}/api/datasets/SalesMarketing/tables/Product/rows",
            json={"rows": rows},
            params=params,
            timeout=60,
        )


@pytest.fixture(scope="module")
def stack(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("dashboard")
    container = f"dl-{uuid.uuid4().hex[:10]}"
    emulator = start_emulator(
        "--deadletter-container",
        container,
        tmp=tmp,
        env={**os.environ, "EMULATOR_DEADLETTER_CONNECTION": azurite.connection_string},
    )
    env = app_environment(emulator, azurite, f"rows-{uuid.uuid4().hex[:10]}")
    env["DEADLETTER_CONTAINER"] = container
    settings = tmp / "local.settings.json"
    settings.write_text(json.dumps({"IsEncrypted": False, "Values": {}}))
    devhost: Devhost | None = None
    http = requests.Session()
    http.trust_env = False
    try:
        devhost = start_devhost(env, settings)
        yield Stack(emulator, devhost, http, Api(emulator))
    finally:
        http.close()
        if devhost is not None:
            devhost.stop()
        emulator.stop()


@dataclass
class Console:
    """Everything the page said on its console, its uncaught errors and any dialog."""

    messages: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def watch(self, page: Any) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        page.on("dialog", self._dialog)

    def _console(self, message: Any) -> None:
        self.messages.append(f"{message.type}: {message.text}")
        if message.type == "error":
            self.errors.append(f"console error: {message.text}")

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make setup` (it installs Debian's chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


def test_dashboard_shows_rows_arriving_through_the_function_app(stack: Stack, browser: Any) -> None:
    from playwright.sync_api import expect

    console = Console()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    console.watch(page)
    try:
        # GIVEN the dashboard open before anything was pushed
        page.goto(f"{stack.emulator.base}/")
        expect(page.locator("#live-status")).to_have_text(LIVE, timeout=WAIT_MS)
        expect(page.locator("[data-region=datasets]")).to_contain_text("No datasets yet")
        expect(page.locator("[data-region=deadletters]")).to_contain_text("0 rows waiting")
        page.evaluate("window.__notReloaded = true")

        # WHEN two rows go through the function app (which creates the dataset on first push)
        response = stack.push(ROWS)
        assert response.status_code == 200, response.text

        # THEN the page shows the dataset, the count and the rows, without a reload
        table = page.locator("[data-region=table]")
        expect(page.locator("#row-count")).to_have_text("2", timeout=WAIT_MS)
        expect(table.locator("h2")).to_contain_text("Product in SalesMarketing")
        expect(table.locator("table.rows")).to_contain_text("Laptop 15")
        expect(table.locator("table.rows")).to_contain_text("Dock 4K")
        datasets = page.locator("[data-region=datasets]")
        expect(datasets.locator("h3")).to_have_text("SalesMarketing")
        expect(datasets).to_contain_text(WORKSPACE_NAME)
        expect(datasets).to_contain_text("ProductID Int64")  # the schema
        expect(datasets).to_contain_text("2 / 1,000,000")  # rows in the last hour

        # AND more rows keep arriving on the same page, without taking keyboard focus away
        datasets.get_by_role("link", name="Product", exact=True).focus()
        more = [{**ROWS[0], "ProductID": 10 + i, "Product": f"Tablet {i}"} for i in range(3)]
        assert stack.push(more).status_code == 200
        expect(page.locator("#row-count")).to_have_text("5", timeout=WAIT_MS)
        expect(datasets).to_contain_text("5 rows")
        assert page.evaluate("document.activeElement.textContent") == "Product"
        expect(table.locator("table.rows tbody tr").first).to_contain_text("Tablet 2")
        expect(page.locator("svg[role=img] desc")).to_contain_text("5 rows in the last 60")

        # AND a row the app cannot deliver shows up as a dead letter waiting (queue mode: the
        # queue function dead-letters what the table refuses)
        bad = {**ROWS[0], "ProductID": "not a number"}
        assert stack.push([bad], mode="queue").status_code == 202
        expect(page.locator("#dead-letter-rows")).to_have_text("1", timeout=30_000)
        expect(page.locator("[data-region=deadletters]")).to_contain_text(
            "SalesMarketing / Product"
        )

        # AND a dataset named like markup is shown as text, and runs nothing
        stack.api.create_dataset(
            [{"name": "T", "columns": [{"name": "c", "dataType": "string"}]}], name=HOSTILE
        )
        expect(datasets.locator("h3", has_text=HOSTILE)).to_have_text(HOSTILE, timeout=WAIT_MS)
        assert page.evaluate("window.__notReloaded") is True
        page.screenshot(path=str(ARTIFACTS / "dashboard-desktop.png"), full_page=True)
    finally:
        context.close()
    assert not console.dialogs, console.dialogs
    assert not console.errors, "\n".join(console.messages)


def test_dashboard_fits_a_phone(stack: Stack, browser: Any) -> None:
    from playwright.sync_api import expect

    console = Console()
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True)
    page = context.new_page()
    console.watch(page)
    try:
        # A long value must scroll inside the rows table, not widen the page.
        wide = {**ROWS[1], "ProductID": 99, "Product": "Ultra-wide " * 20}
        assert stack.push([wide]).status_code == 200
        page.goto(f"{stack.emulator.base}/")
        expect(page.locator("#live-status")).to_have_text(LIVE, timeout=WAIT_MS)
        count = page.locator("#row-count")
        expect(count).to_be_visible()
        rows_before = int(count.inner_text().replace(",", ""))
        # The reader has scrolled the wide rows table sideways: an update keeps it there.
        box = page.locator("[data-region=table] .scroll")
        box.evaluate("box => { box.scrollLeft = 120; }")
        assert box.evaluate("box => box.scrollLeft") > 0, "the rows table is wider than a phone"
        assert stack.push(ROWS).status_code == 200
        expect(count).to_have_text(f"{rows_before + 2:,}", timeout=WAIT_MS)
        assert box.evaluate("box => box.scrollLeft") == 120
        box.evaluate("box => { box.scrollLeft = 0; }")

        overflow = page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
        assert overflow[0] <= overflow[1], f"the page scrolls sideways: {overflow}"
        for locator in [
            page.locator("h1"),
            page.locator("[data-region=datasets] h3", has_text="SalesMarketing"),
            page.locator("[data-region=datasets] meter").first,
            page.locator("[data-region=table] table.rows"),
            page.locator("#dead-letter-rows"),
        ]:
            locator.scroll_into_view_if_needed()
            expect(locator).to_be_visible()
            box = locator.bounding_box()
            assert box is not None and box["x"] >= 0, locator
        page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
    finally:
        context.close()
    assert not console.dialogs, console.dialogs
    assert not console.errors, "\n".join(console.messages)


def test_dashboard_shows_members_roles_and_the_tenant_setting(stack: Stack, browser: Any) -> None:
    """Issue 17: the access panel lists each workspace's members and roles and the tenant
    setting, and follows a grant (the real Add Group User call) and the switch going off
    without a reload."""
    from playwright.sync_api import expect

    base = stack.emulator.base
    name = f"Access {uuid.uuid4().hex[:6]}"
    created = stack.http.post(
        f"{base}/_emulator/workspaces",
        json={
            "name": name,
            "members": [
                {
                    "identifier": "emulator-user",
                    "principalType": "User",
                    "groupUserAccessRight": "Admin",
                    "displayName": "Emulator user",
                }
            ],
        },
        timeout=30,
    )
    assert created.status_code == 201, created.text
    workspace = created.json()["id"]
    console = Console()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    console.watch(page)
    try:
        # GIVEN the dashboard showing the new workspace with its one Admin
        page.goto(f"{base}/")
        expect(page.locator("#live-status")).to_have_text(LIVE, timeout=WAIT_MS)
        members = page.locator(f"ul.members[data-workspace='{workspace}'] li")
        expect(members).to_have_count(1)
        expect(members.first).to_contain_text("Emulator user")
        expect(members.first).to_contain_text("User · Admin")
        expect(page.locator("#tenant-setting")).to_contain_text("on for every service principal")
        # the default workspace lists the system-assigned managed identity as Member
        expect(page.locator("[data-region=access]")).to_contain_text(
            "System-assigned managed identity"
        )

        # WHEN the Admin grants an app Contributor with Add Group User, and the switch goes off
        granted = stack.api.request(
            "POST",
            f"{stack.emulator.api}/groups/{workspace}/users",
            json={
                "identifier": "00000000-0000-0000-0000-0000000051a1",
                "principalType": "App",
                "groupUserAccessRight": "Contributor",
            },
        )
        assert granted.status_code == 200, granted.text
        off = stack.http.put(
            f"{base}/_emulator/tenant", json={"servicePrincipalsEnabled": False}, timeout=30
        )
        assert off.status_code == 200, off.text

        # THEN the page shows both, without a reload
        expect(members).to_have_count(2, timeout=WAIT_MS)
        expect(members.nth(1)).to_contain_text("App · Contributor")
        expect(page.locator("#tenant-setting")).to_contain_text("off", timeout=WAIT_MS)
        page.screenshot(path=str(ARTIFACTS / "dashboard-access.png"), full_page=True)
    finally:
        restored = stack.http.put(
            f"{base}/_emulator/tenant", json={"servicePrincipalsEnabled": True}, timeout=30
        )
        assert restored.status_code == 200, restored.text
        context.close()
    assert not console.dialogs, console.dialogs
    assert not console.errors, "\n".join(console.messages)


def test_dead_letter_panel_counts_what_waits_and_never_shows_the_key(
    stack: Stack, azurite: Azurite
) -> None:
    """Blobs not yet replayed are waiting; replayed ones are not; the account key appears
    nowhere (not in the page, the JSON, nor the emulator's banner)."""
    from azure.storage.blob import BlobServiceClient

    from shared.contracts import Target
    from shared.stores.deadletter import BlobDeadLetterStore, DeadLetter

    state_url = f"{stack.emulator.base}/_emulator/dashboard/state"

    def dead_letters() -> dict[str, Any]:
        body: dict[str, Any] = stack.http.get(state_url, timeout=10).json()["deadLetters"]
        return body

    def wait_for_rows(expected: int) -> dict[str, Any]:
        deadline = time.monotonic() + 20  # the emulator looks every 3 s
        while (found := dead_letters())["waitingRows"] != expected:
            assert time.monotonic() < deadline, f"expected {expected} rows waiting: {found}"
            time.sleep(0.2)
        return found

    container_name = next(
        line.split("container ")[1].split(" at ")[0]
        for line in stack.emulator.output
        if "Dead letters:" in line
    )
    before = dead_letters()
    assert before["container"] == container_name and before["error"] is None
    container = BlobServiceClient.from_connection_string(
        azurite.connection_string
    ).get_container_client(container_name)
    store = BlobDeadLetterStore(container)
    letters = [DeadLetter("bad value", {"n": i}, index=i, column="n") for i in range(3)]
    store.write(Target("Elsewhere", "T"), letters, "test")
    replayed = store.write(Target("Elsewhere", "T"), letters[:2], "test")
    container.get_blob_client(replayed.split("/", 1)[1]).set_blob_metadata(
        {"rows": "2", "replayed": "true"}
    )
    after = wait_for_rows(before["waitingRows"] + 3)
    assert after["waitingBlobs"] == before["waitingBlobs"] + 1

    page = stack.http.get(f"{stack.emulator.base}/", timeout=10).text
    assert "Elsewhere / T" in page and "1 blob replayed" in page
    for text in [page, json.dumps(after), "\n".join(stack.emulator.output)]:
        assert azurite.connection_string not in text
        assert "AccountKey" not in text and KEY not in text
