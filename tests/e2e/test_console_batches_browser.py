"""The console's Batches view (#16) in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven
by Selenium), against the real service dialling a batch through the simulator's Twilio stand-in: sign in, open
Batches, watch the batch's progress bar and counts by outcome move, pause it (nothing more is called), resume it,
and see it finish. Without the browser the test skips with the reason locally; with ``CI`` set it fails instead."""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from sip_controller.agent.profile import AgentProfile
from sip_controller.config import Settings, TwilioSettings
from sip_controller.simulator import Callee, TwilioAccount, harness, screenshots
from sip_controller.simulator.screenshots import Console
from tests.e2e.browserkit import require_browser

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

TOKEN = "batches-e2e-" + secrets.token_hex(16)
ROWS = 6
NUMBERS = [f"+1415555{n:04d}" for n in range(100, 100 + ROWS)]
#: one call every two seconds: the batch is still dialling while the browser looks at it
PACING = {"calls_per_second": 0.5, "max_in_flight": 2}


def _progress(page: Console, row: str) -> tuple[int, int]:
    value = page.attribute(f"{row} progress", "value")
    top = page.attribute(f"{row} progress", "max")
    return int(float(value or 0)), int(float(top or 0))


@dataclass
class Shared:
    """Between the browser's thread and the event loop: the browser is on the Batches view (then the batch is made,
    so that its pacing runs while the browser looks), the batch's id, and the Twilio calls placed so far."""

    watching: threading.Event = field(default_factory=threading.Event)
    made: threading.Event = field(default_factory=threading.Event)
    batch_id: str = ""
    placed: int = 0


def _use_the_batches(url: str, shared: Shared, shots: Path, profile_dir: Path) -> list[str]:
    """What the operator does, in the browser (blocking: runs in a thread); returns the browser's errors."""
    driver = screenshots.chrome(profile_dir)
    try:
        page = Console(driver, url)
        page.sign_in(TOKEN)
        page.find("#nav-batches")[0].click()
        page.ready("#batch-list")
        assert page.attribute("#nav-batches", "aria-current") == "page"
        assert page.find("#console")[0].is_displayed() is False  # the live view is hidden
        assert "No batches yet" in page.text("#batches-body")
        shared.watching.set()
        assert shared.made.wait(20), "the batch was not made"
        row = f'#batches-body tr[data-batch-id="{shared.batch_id}"]'
        page.until(lambda d: page.find(row))
        batch_id = shared.batch_id
        assert page.text(f"{row} td.id") == batch_id
        # progress: the bar and the counts move on their own (the view refreshes itself)
        page.until(lambda d: _progress(page, row)[0] >= 1)
        assert _progress(page, row)[1] == ROWS
        page.until(lambda d: "busy" in page.text(f"{row} .outcome[data-outcome=busy]"))
        assert f"/ {ROWS}" in page.text(f"{row} .progress-text")
        page.shot(shots / "batches.png")

        # pause: the buttons change, and no call is placed while it is paused
        page.find(f"{row} button[data-action=pause]")[0].click()
        page.until(lambda d: page.attribute(row, "data-status") == "paused")
        assert page.find(f"{row} button[data-action=resume]")
        assert not page.find(f"{row} button[data-action=pause]")
        assert page.text(f"{row} .badge") == "paused"
        page.until(lambda d: not page.text(f"{row} .outcome[data-outcome=calling]"))  # the calls under way end
        calls_then = shared.placed
        finished_then = _progress(page, row)[0]
        assert finished_then < ROWS
        time.sleep(3.0)  # a running batch would have placed another call (one each two seconds) by now
        assert shared.placed == calls_then
        assert _progress(page, row)[0] == finished_then

        # resume: it dials on to the end
        page.find(f"{row} button[data-action=resume]")[0].click()
        page.until(lambda d: page.attribute(row, "data-status") in ("running", "done"))
        page.until(lambda d: page.attribute(row, "data-status") == "done")
        assert _progress(page, row) == (ROWS, ROWS)
        assert page.text(f"{row} .outcome[data-outcome=busy] b") == str(ROWS)
        assert not page.find(f"{row} button")  # a finished batch has no actions
        page.find("#nav-live")[0].click()
        page.until(lambda d: page.find("#console")[0].is_displayed())
        assert page.find("#batches")[0].is_displayed() is False
        return page.errors()
    finally:
        driver.quit()


async def test_the_batches_view_shows_progress_and_pauses_and_resumes_a_batch(tmp_path: Path) -> None:
    require_browser()
    settings = Settings(profiles={"default": AgentProfile()}, twilio=TwilioSettings(from_number="+18005550100"))
    async with harness.running_stack(settings, time_scale=0.05, admin_token=TOKEN, twilio=TwilioAccount()) as stack:
        for number in NUMBERS:
            stack.twilio.script(number, Callee(outcome="busy"))
        shared = Shared()

        async def make_and_count() -> None:
            async with asyncio.timeout(60):
                while not shared.watching.is_set():
                    await asyncio.sleep(0.02)
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=stack.server.url, headers=headers) as api:
                body = {"rows": [{"to": n} for n in NUMBERS], "pacing": PACING}
                made = await api.post("/v1/outbound/batches", json=body)
            assert made.status_code == 201, made.text
            shared.batch_id = made.json()["id"]
            shared.made.set()
            while True:
                shared.placed = sum(1 for c in stack.twilio.calls.values() if c.to in NUMBERS)
                await asyncio.sleep(0.02)

        helper = asyncio.create_task(make_and_count())
        try:
            shots = Path(os.environ.get("SIPCTL_SCREENSHOTS_DIR") or tmp_path / "shots")
            errors = await asyncio.to_thread(_use_the_batches, stack.server.url, shared, shots, tmp_path / "chrome")
        finally:
            helper.cancel()
            await asyncio.gather(helper, return_exceptions=True)
        assert errors == []
        assert sorted(c.to for c in stack.twilio.calls.values()) == sorted(NUMBERS)  # each number once
