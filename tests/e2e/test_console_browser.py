"""The live-calls page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium):
with the simulator running a call, the page shows it, its transcript appears as it is spoken, the Hang up
button ends it (``operator_hangup``: the page's write carries the session's CSRF token), and Sign out ends the
session on the server.

Without the browser the test skips with the reason locally; with ``CI`` set it fails instead (``.ci/run``
installs the packages before ``make test``). Set ``SIPCTL_CONSOLE_SCREENSHOT=/tmp/console.png`` to keep a
screenshot of the page with the call open.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from sip_controller.agent.profile import AgentProfile, Transfer
from sip_controller.config import Settings
from sip_controller.simulator import CallSpec, Step, harness, screenshots
from tests.e2e.browserkit import require_browser

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

TOKEN = "console-e2e-" + secrets.token_hex(16)
CALLER_WORDS = "Hi, I would like to check the status of my order please."
SAID_LINE = "Your order ships on Monday."
WAIT_S = 20.0  # the longest any one thing on the page may take to show up


def _text(driver: webdriver.Chrome, css: str) -> str:
    try:
        return "".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, css))
    except StaleElementReferenceException:  # the stream re-rendered it between find and read
        return ""


def _use_the_page(url: str, call_id: str, profile_dir: Path, screenshot: Path | None) -> tuple[list[str], str]:
    """Everything the operator does, in the browser (blocking: runs in a thread). Returns browser console errors
    and the session cookie the browser held before signing out."""
    driver = screenshots.chrome(profile_dir, (1400, 900))
    try:
        wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.1)
        driver.set_page_load_timeout(WAIT_S)
        driver.get(f"{url}/")
        wait.until(lambda d: d.find_elements(By.ID, "token"))
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "login").click()

        # the call is listed among the live calls, and the stream is connected
        row = f'#live-calls tr[data-call-id="{call_id}"]'
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, row))
        wait.until(lambda d: _text(d, "#status") == "live")
        assert TOKEN not in driver.current_url

        # open it: its transcript shows the caller's words as they are spoken
        driver.find_element(By.CSS_SELECTOR, f"{row} a").click()
        wait.until(lambda d: _text(d, "#detail-call-id") == call_id)
        wait.until(lambda d: CALLER_WORDS in _text(d, "#transcript .line-caller .text"))
        assert _text(driver, "#detail-state") == "attached"
        options = [o.text for o in driver.find_elements(By.CSS_SELECTOR, "#transfer-target option")]
        assert options == ["sales", "support"]
        if screenshot is not None:
            driver.save_screenshot(str(screenshot))

        # live control (#17): a line said now, then mute and unmute, each answered "queued"
        driver.find_element(By.ID, "control-text").send_keys(SAID_LINE)
        driver.find_element(By.ID, "say-now").click()
        wait.until(lambda d: _text(d, "#result") == "queued")
        for action in ("mute", "unmute"):
            driver.execute_script("document.getElementById('result').textContent = ''")
            driver.find_element(By.ID, action).click()
            wait.until(lambda d: _text(d, "#result") == "queued")

        # hang up: the agent says goodbye, the call ends, the page shows it ended and gone from the live list
        driver.find_element(By.ID, "hangup").click()
        wait.until(lambda d: _text(d, "#detail-state") == "ended (operator_hangup)")
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, row))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#recent-calls tr[data-call-id="{call_id}"]'))
        assert not driver.find_element(By.ID, "hangup").is_enabled()
        errors = [
            str(entry.get("message"))
            for entry in driver.get_log("browser")  # type: ignore[no-untyped-call]  # selenium leaves it untyped
            if entry.get("level") == "SEVERE" and "favicon.ico" not in str(entry.get("message"))
        ]

        # sign out: the login form again, and the cookie the browser had is no longer a session
        cookie = driver.get_cookie("sipctl_session")
        assert cookie is not None
        assert cookie["secure"] is True
        assert TOKEN not in str(cookie["value"])
        driver.find_element(By.ID, "logout").click()
        wait.until(lambda d: d.find_elements(By.ID, "token"))
        assert driver.get_cookie("sipctl_session") is None
        return errors, str(cookie["value"])
    finally:
        driver.quit()


async def test_the_live_calls_page_shows_a_call_its_transcript_and_hangs_it_up(tmp_path: Path) -> None:
    require_browser()
    profile = AgentProfile(
        tools=("end_call", "transfer_call"),
        transfer=Transfer(targets={"sales": "tel:+14155550199", "support": "tel:+14155550100"}),
    )
    spec = CallSpec(
        name="long",
        max_call_seconds=300,
        steps=[Step(say=CALLER_WORDS, reply="Of course, let me look that up."), Step(wait=240)],
    )
    wanted = os.environ.get("SIPCTL_CONSOLE_SCREENSHOT")
    screenshot = tmp_path / "console.png"
    # the default (Secure) cookie: browsers count http://127.0.0.1 as a secure context and keep it
    async with harness.running_stack(Settings(profiles={"default": profile}), admin_token=TOKEN) as stack:
        call = await stack.sim.place_call(spec)
        async with asyncio.timeout(WAIT_S):
            while stack.runtime.registry.supervisor(call.call_id) is None:
                await asyncio.sleep(0.05)
        errors, session_id = await asyncio.to_thread(
            _use_the_page, stack.server.url, call.call_id, tmp_path / "chrome-profile", screenshot
        )
        async with httpx.AsyncClient(base_url=stack.server.url) as client:
            replayed = await client.get("/v1/calls", headers={"cookie": f"sipctl_session={session_id}"})
        assert replayed.status_code == 401
        record = await stack.runtime.registry.wait_ended(call.call_id, WAIT_S)
        await stack.sim.wait_ended(call.call_id, WAIT_S)
    assert record.ended_reason == "operator_hangup"
    controls = [what for _, what in record.timeline if what.startswith("control:")]
    assert controls[0] == f"control: say now from operator ({len(SAID_LINE)} chars)"
    assert "control: mute from operator" in controls
    assert "control: unmute from operator" in controls
    assert errors == []  # no script error, no Content-Security-Policy violation
    assert screenshot.stat().st_size > 0
    if wanted:
        shutil.copyfile(screenshot, wanted)
