"""The call history of the console (#17) in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by Selenium), against the real service whose SQLite store holds calls made through the simulator (their
analyses answered by the simulator's ``/v1/responses``): sign in, find a call by words said in it, reveal its
caller, open it (the timeline as a chat, the tool call, the keypad digits, who ended it, the analysis, the cost,
the raw report), follow a deep link, and change the Overview's range.

A screenshot of each view is saved under pytest's tmp folder, or ``$SIPCTL_SCREENSHOTS_DIR`` when set (never
committed; ``make screenshots`` writes the README's). Without the browser the test skips with the reason locally;
with ``CI`` set it fails instead (``.ci/run`` installs the packages before ``make test``).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sip_controller.calls.legs import merge_legs
from sip_controller.calls.report import CallRecord, TranscriptEntry, report_document
from sip_controller.simulator import screenshots
from sip_controller.simulator.screenshots import Console, History
from sip_controller.state.records import NewCall
from tests.e2e.browserkit import require_browser

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

TOKEN = "history-e2e-" + secrets.token_hex(16)
#: the calls in the store: a search for "opening hours" finds only the first
CALLS = [s for s in screenshots.HISTORY_CALLS if s.name in ("opening-hours", "keypad", "caller-hangs-up")]
#: what a link gives the page's session (run in the page by Selenium; the last argument is its callback)
FETCH = """
var done = arguments[arguments.length - 1];
fetch(arguments[0], {credentials: "same-origin"}).then(function (r) { return r.text(); })
  .then(done, function (e) { done("failed: " + e); });
"""


def _use_the_history(history: History, shots: Path, profile_dir: Path) -> list[str]:
    """Everything the operator does, in the browser (blocking: runs in a thread); returns the browser's errors."""
    wanted = history.call_id("opening-hours")
    keypad = history.call_id("keypad")
    driver = screenshots.chrome(profile_dir)
    try:
        page = Console(driver, history.url)
        page.sign_in(history.token)

        # Calls: every stored call, newest first, callers masked
        page.find("#nav-calls")[0].click()
        page.ready("#calls")
        page.until(lambda d: len(page.find("#calls-body tr[data-call-id]")) == len(CALLS))
        assert "+14155550123" not in page.text("#calls-body")

        # pages of two (a link's per=2): older, then newer again
        page.go("#/calls?range=24h&per=2")
        page.until(lambda d: "per=2" in (d.current_url or ""))
        page.until(lambda d: len(page.find("#calls-body tr[data-call-id]")) == 2)
        first = [r.get_attribute("data-call-id") for r in page.find("#calls-body tr[data-call-id]")]
        page.find("#page-older")[0].click()
        page.until(lambda d: page.text("#calls .load-note") == "page 2")
        rest = [r.get_attribute("data-call-id") for r in page.find("#calls-body tr[data-call-id]")]
        assert len(rest) == len(CALLS) - 2
        assert set(first) | set(rest) == {history.call_id(s.name) for s in CALLS}
        assert not page.find("#page-older")[0].is_enabled()
        page.find("#page-newer")[0].click()
        page.until(lambda d: page.text("#calls .load-note") == "page 1")
        assert [r.get_attribute("data-call-id") for r in page.find("#calls-body tr[data-call-id]")] == first

        # find the call by what the caller said; the export links carry the same filter
        page.search("opening hours")
        page.until(lambda d: "q=opening" in (d.current_url or ""))
        page.ready("#calls")
        page.until(lambda d: [r.get_attribute("data-call-id") for r in page.find("#calls-body tr")] == [wanted])
        row = f'#calls-body tr[data-call-id="{wanted}"]'
        assert page.text(f"{row} .number") == "+1415***0123"
        for fmt in ("csv", "jsonl"):
            href = page.attribute(f"#export-{fmt}", "href") or ""
            assert f"/v1/calls/export?format={fmt}&" in href
            assert "q=opening%20hours" in href
            # the link downloads with the page's session: the one call found
            body = driver.execute_async_script(FETCH, href)
            assert wanted in body, body
            assert body.count("rtc_") == 1, body

        # reveal the caller's number (a logged write with the session's CSRF token)
        page.find(f"{row} button.reveal")[0].click()
        page.until(lambda d: page.text(f"{row} .number") == "+14155550123")
        assert not page.find(f"{row} button.reveal")
        page.shot(shots / "calls.png")

        # open it: the timeline as a chat, the tool call, who ended it, the analysis, the cost, the raw report
        page.find(f"{row} a")[0].click()
        page.ready("#call")
        assert page.attribute("#call", "data-call-id") == wanted
        assert "opening hours on Saturday" in page.text("#chat li.caller .text")
        assert "nine in the morning" in page.text("#chat li.assistant .text")
        assert "end_call" in page.text("#chat li.tool")
        assert "caller said goodbye" in page.text("#chat li.tool pre.args")
        assert "call ended: agent_end_call (by the agent)" in page.text("#chat li.event.end")
        assert page.text("#call-ended-by") == "the agent"
        page.until(lambda d: page.attribute("#analysis", "data-status") == "completed")
        assert "opening hours" in page.text("#analysis-summary")
        assert page.text("#analysis-outcome") in ("succeeded", "failed")
        assert "$" in page.text("#cost")
        assert not page.find("#raw-report[open]")
        page.find("#raw-report summary")[0].click()
        raw = json.loads(page.text("#raw-report pre"))
        assert raw["call_id"] == wanted
        page.shot(shots / "call.png")

        # a deep link to another call: its keypad digits in one bubble
        page.go(f"#/calls/{keypad}")
        page.until(lambda d: page.attribute("#call", "data-call-id") == keypad)
        page.ready("#call")
        assert "4721#" in page.text("#chat li.keypad .text")

        # Overview: the last 24 hours, then the last 7 days (per hour) by the range picker
        page.find("#nav-overview")[0].click()
        page.ready("#overview")
        assert page.attribute("#overview", "data-range") == "24h"
        assert page.text("#tile-calls .value") == str(len(CALLS))
        assert page.find("#chart-calls svg rect.bar")
        assert page.find("#chart-reasons svg rect.bar")
        page.pick("#overview-range", "7d")
        page.until(lambda d: page.attribute("#overview", "data-range") == "7d")
        page.ready("#overview")
        assert page.text("#tile-calls .value") == str(len(CALLS))
        assert "range=7d" in (driver.current_url or "")
        page.shot(shots / "overview.png")

        # back to the live view, from the navigation
        page.find("#nav-live")[0].click()
        page.until(lambda d: page.find("#console") and page.find("#console")[0].is_displayed())
        assert not page.find("#history")[0].is_displayed()
        page.shot(shots / "live.png")
        return page.errors()
    finally:
        driver.quit()


async def test_the_call_history_in_a_browser_finds_opens_and_charts_stored_calls(tmp_path: Path) -> None:
    require_browser()
    shots = Path(os.environ.get("SIPCTL_SCREENSHOTS_DIR") or tmp_path / "screenshots")
    async with screenshots.history_stack(CALLS, token=TOKEN) as history:
        errors = await asyncio.to_thread(_use_the_history, history, shots, tmp_path / "chrome-profile")
    assert errors == []  # no script error, no Content-Security-Policy violation
    for name in ("live", "calls", "call", "overview"):
        assert (shots / f"{name}.png").stat().st_size > 0


async def _store_parked_call(history: History) -> str:
    """A call parked once on Twilio between two OpenAI legs (#16), finished in the store as the controller writes it:
    the whole call's report (``calls/legs.py``) on its first leg's row."""
    start = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    first = CallRecord(call_id="rtc_parked_1", profile="default", received_at=start, accepted_s=0.2, attached_s=0.4,
                       duration_s=60.0, state="ended", ended_reason="parked")  # fmt: skip
    first.transcripts.append(TranscriptEntry("caller", "Please hold, it may be half an hour.", 5.0))
    last = CallRecord(call_id="rtc_parked_2", profile="default", received_at=start + timedelta(seconds=1860),
                      accepted_s=0.2, attached_s=0.4, duration_s=90.0, state="ended", ended_reason="agent_end_call")
    last.transcripts.append(TranscriptEntry("assistant", "Hi Dana, thanks for coming back.", 1.0))  # fmt: skip
    spell = {"from": start.timestamp() + 60, "to": start.timestamp() + 1860, "listens": 120, "checks": 3,
             "listen_cost_usd": 2.4, "check_cost_usd": 0.0002, "hold_mode_cost_usd": 0.23}  # fmt: skip
    report = merge_legs([report_document(first)], report_document(last), [spell])
    store = history.stack.runtime.store
    await store.record_finished(
        NewCall(call_id="rtc_parked_1", owner="test", profile="default", inputs={}, received_at=start.timestamp(),
                state="ended", caller=None, dialed=None, deadlines={}),
        ended_reason="agent_end_call", report=report, ended_at=start.timestamp() + 1950,
    )  # fmt: skip
    return "rtc_parked_1"


def _open_parked_call(history: History, call_id: str, profile_dir: Path) -> list[str]:
    driver = screenshots.chrome(profile_dir)
    try:
        page = Console(driver, history.url)
        page.sign_in(history.token)
        page.go(f"#/calls/{call_id}")
        page.until(lambda d: page.attribute("#call", "data-call-id") == call_id)
        page.ready("#call")
        assert page.text("#call-parked") == "30:00 (2 OpenAI sessions)"
        legs = [li.text for li in page.find("#legs-list li")]
        assert [leg.split(":")[0] for leg in legs] == ["rtc_parked_1", "rtc_parked_2"]
        assert "parked" in legs[0]
        assert "agent_end_call" in legs[1]
        assert page.text("#park-listen") == "$2.4000"
        assert page.text("#park-saved").startswith("$-2.17")  # parking cost more: shown, not hidden
        return page.errors()
    finally:
        driver.quit()


async def test_a_call_parked_on_twilio_shows_its_openai_sessions_and_what_parking_cost(tmp_path: Path) -> None:
    require_browser()
    specs = [s for s in screenshots.HISTORY_CALLS if s.name == "caller-hangs-up"]
    async with screenshots.history_stack(specs, token=TOKEN) as history:
        call_id = await _store_parked_call(history)
        errors = await asyncio.to_thread(_open_parked_call, history, call_id, tmp_path / "chrome-profile")
    assert errors == []
