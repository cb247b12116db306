"""The web console in a real headless Chromium (Debian's ``chromium``, driven by Playwright's
Python package through ``executable_path``) against a real local stack: sign in with a key,
find a run, open it, see its log line and its timeline, stop it from the page; a user does not
see another user's run; a wrong key is refused; an admin's billing page shows the numbers of
``mcli billing``. Each step leaves a screenshot under ``test-artifacts/console/``
(``RUNPLANE_TEST_ARTIFACTS`` moves it).

Without a browser (no ``chromium`` on the PATH, nor ``RUNPLANE_CHROMIUM``) these tests skip,
saying so; ``.ci/run`` installs Debian's package when it is missing."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright, expect

from cli.stackkey import read_key
from tests.e2e.mcli_helpers import ROOT, Mcli, running_stack, user_key
from tests.waiting import eventually

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("RUNPLANE_CHROMIUM") or shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip(
        "no browser: install Debian's chromium (apt-get install chromium) or set"
        " RUNPLANE_CHROMIUM to a Chromium binary",
        allow_module_level=True,
    )
ARTIFACTS = Path(os.environ.get("RUNPLANE_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "console"
WAIT_MS = 30_000
SAID = "hello from the console test"
UNFINISHED = re.compile(r"\b(PENDING|QUEUED|STARTING|RUNNING|TERMINATING)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def mcli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mcli]:
    with running_stack(tmp_path_factory.mktemp("console") / "stack", nodes=1) as running:
        yield running


@pytest.fixture(scope="module")
def keys(mcli: Mcli) -> dict[str, str]:
    found = {name: asyncio.run(user_key(mcli.stack, name)) for name in ("ana", "ben")}
    admin = read_key(mcli.stack.state_dir)
    assert admin is not None
    return {**found, "admin": admin}


@pytest.fixture
async def page(mcli: Mcli) -> AsyncIterator[Page]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM)
        try:
            opened = await browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            opened.on("pageerror", lambda error: errors.append(str(error)))
            opened.set_default_timeout(WAIT_MS)
            await opened.goto(mcli.stack.api_url.removesuffix("/graphql") + "/")
            yield opened
            assert errors == [], errors  # no script failed on any page
        finally:
            await browser.close()


def as_user(mcli: Mcli, key: str) -> Mcli:
    return Mcli(env={**mcli.env, "MOSAICML_API_KEY": key}, stack=mcli.stack)


def submit(mcli: Mcli, tmp_path: Path, name: str, command: str) -> str:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(
        f"name: {name}\nimage: local\ncommand: |\n  {command}\ncompute:\n  cluster: local\n"
        "  gpus: 1\n"
    )
    out = mcli.ok("run", "-f", str(spec))
    match = re.search(r"✔ Run (\S+) submitted\.", out)
    assert match, out
    return match[1]


async def sign_in(page: Page, key: str) -> None:
    await page.fill("#key", key)
    await page.click("form.sign-in button[type=submit]")
    await page.wait_for_selector("header nav")


async def shot(page: Page, name: str) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def test_a_user_finds_a_run_reads_it_and_stops_it_and_sees_no_one_elses(
    page: Page, mcli: Mcli, keys: dict[str, str], tmp_path: Path
) -> None:
    ana, ben = as_user(mcli, keys["ana"]), as_user(mcli, keys["ben"])
    theirs = submit(ben, tmp_path, "bens", "sleep 600")
    mine = submit(ana, tmp_path, "anas", f'echo "{SAID}"; sleep 600')
    await sign_in(page, keys["ana"])
    runs = page.locator("table.runs")
    await expect(runs.get_by_role("link", name=mine)).to_be_visible()
    await expect(runs.locator("tr", has_text=mine)).to_contain_text("RUNNING", timeout=WAIT_MS)
    await expect(runs).not_to_contain_text(theirs)
    await expect(page.locator("header nav")).not_to_contain_text("Audit")  # an admin's page
    await shot(page, "runs")

    await runs.get_by_role("link", name=mine).click()
    await expect(page.locator("#log-output")).to_contain_text(SAID)
    await expect(page.locator("svg.timeline rect[data-status=RUNNING]")).to_have_count(1)
    await expect(page.locator("#yaml")).to_contain_text("name: anas")
    await expect(page.locator("#events")).to_contain_text("attempt.running")
    await shot(page, "run")

    stop = page.locator("button.action-stop")
    await stop.click()
    await expect(stop).to_have_text("Confirm stop")
    await stop.click()
    await expect(page.locator(".run-header .status")).to_have_text("STOPPED")
    await expect(page.locator("button.action-restart")).to_be_visible()
    assert "Stopped" in ana.ok("get", "runs", mine)
    await shot(page, "stopped")

    await page.goto(page.url.split("#")[0] + f"#/runs/{theirs}")
    await expect(page.get_by_role("alert")).to_contain_text("not found")
    await shot(page, "not-yours")
    mcli.ok("stop", "run", theirs, "--all-users", "-y")


async def test_a_wrong_key_is_refused(page: Page, keys: dict[str, str]) -> None:
    await page.fill("#key", keys["ana"][:-3] + "xyz")
    await page.click("form.sign-in button[type=submit]")
    await expect(page.locator("form.sign-in .error")).to_contain_text("refused")
    await expect(page.locator("header nav")).to_have_count(0)
    await shot(page, "wrong-key")


async def test_an_admin_sees_everyones_runs_and_the_bill_of_mcli(
    page: Page, mcli: Mcli, keys: dict[str, str], tmp_path: Path
) -> None:
    done = submit(as_user(mcli, keys["ben"]), tmp_path, "short", "echo done")
    # every run ends (none is counted up to now), so the bill holds still
    await eventually(
        lambda: not UNFINISHED.search(mcli.ok("get", "runs", "--all-users")),
        what="every run ended",
        interval=0.5,
    )
    await sign_in(page, keys["admin"])
    await expect(page.locator("table.runs")).to_contain_text(done)
    await expect(page.locator("table.runs tr", has_text=done)).to_contain_text("COMPLETED")
    for name in ("runs", "utilization", "billing", "audit"):
        await expect(page.locator(f"header nav a[data-page={name}]")).to_be_visible()

    await page.click("header nav a[data-page=utilization]")
    await expect(page.locator("section.cluster[data-cluster=local]")).to_be_visible()
    await shot(page, "utilization")

    await page.click("header nav a[data-page=audit]")
    await expect(page.locator("table.audit")).to_contain_text("run.submitted")
    await shot(page, "audit")

    await page.click("header nav a[data-page=billing]")
    await page.fill("input[name=from]", "2000-01-01")
    await page.click("#page form.filters button[type=submit]")
    await expect(page.locator("section.billing[data-by=user]")).to_be_visible()
    await shot(page, "billing")
    shown = {}
    for line in await page.locator("section.billing[data-by=user] tbody tr").all():
        cells = await line.locator("td").all_inner_texts()
        shown[cells[0]] = cells[1]
    billed = mcli.ok("billing", "--by", "user", "--output", "csv")
    expected = {row["user"]: row["gpu_hours"] for row in csv.DictReader(io.StringIO(billed))}
    assert set(expected) >= {"ana", "ben"}
    assert {user: shown[user] for user in expected} == expected
