"""The operator console in a real headless Chromium, against a store of simulated calls (#17).

``make screenshots`` (``python -m sip_controller.simulator.screenshots docs/screenshots``) runs the controller
and the simulator on loopback with an admin token and the demo's analysis, places :data:`HISTORY_CALLS` (the demo's
callers and a few more: a transfer, keypad input, a callback request) into its SQLite store, keeps one call live,
and saves ``live.png``, ``calls.png``, ``call.png`` and ``overview.png`` (1280x800) of the four views. The browser
test of the history (``tests/e2e/test_console_history_browser.py``) drives the same pages with :class:`Console`.

Needs Debian's ``chromium`` and ``chromium-driver`` and the dev extra (Selenium).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from sip_controller.agent.analysis import AnalysisSettings
from sip_controller.agent.profile import AgentProfile, Dtmf, DtmfAction, Transfer
from sip_controller.calls.report import TranscriptEntry
from sip_controller.config import Settings
from sip_controller.service.logging import configure_logging
from sip_controller.simulator import CallSpec, Expectation, Step, ToolCall, harness

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SIZE = (1280, 800)
#: the simulator's time runs this much faster than nominal (the tests'); the screenshots' calls last a few seconds
TIME_SCALE = 0.05
SCREENSHOT_TIME_SCALE = 0.3
#: analyses settle within a second or two
QUICK_ANALYSIS = AnalysisSettings(retry_initial_s=0.05, retry_max_s=0.2, poll_s=0.1, max_attempts=2, timeout_s=4.0)
TARGETS = {"sales": "tel:+14155550199", "support": "sip:support@pbx.example.com"}
LIVE_WORDS = "Hi, I would like to check the status of my order please."


def browser_missing() -> list[str]:
    """The browser binaries that are not installed (empty: the console can be driven)."""
    return [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]


def chrome(profile_dir: Path, size: tuple[int, int] = SIZE) -> webdriver.Chrome:
    """A headless Chromium with its own profile folder; the browser's console log is kept (SEVERE = errors)."""
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile_dir}",
        f"--window-size={size[0]},{size[1]}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=subprocess.DEVNULL)
    driver = webdriver.Chrome(service=service, options=options)
    # the page's own size, whatever the window's frame takes
    metrics = {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    return driver


class Console:
    """A browser on the console of the service at ``url``: every wait is bounded by ``wait_s``."""

    def __init__(self, driver: webdriver.Chrome, url: str, *, wait_s: float = 20.0) -> None:
        self.driver = driver
        self.url = url
        self.waiter = WebDriverWait(driver, wait_s, poll_frequency=0.1)
        driver.set_page_load_timeout(wait_s)

    def until(self, check: Callable[[webdriver.Chrome], object]) -> None:
        self.waiter.until(lambda d: bool(check(d)))

    def find(self, css: str) -> list[webdriver.remote.webelement.WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        try:
            return "".join(e.text for e in self.find(css))
        except StaleElementReferenceException:  # re-drawn between find and read
            return ""

    def attribute(self, css: str, name: str) -> str | None:
        try:
            found = self.find(css)
            return found[0].get_attribute(name) if found else None
        except StaleElementReferenceException:
            return None

    def sign_in(self, token: str) -> None:
        self.driver.get(f"{self.url}/")
        self.until(lambda d: self.find("#token"))
        self.find("#token")[0].send_keys(token)
        self.find("#login")[0].click()
        self.until(lambda d: self.find("#nav-calls"))

    def ready(self, css: str) -> None:
        """Wait until the view ``css`` has loaded (its ``data-state`` is ``ready``); a load error fails at once."""

        def check(_: webdriver.Chrome) -> bool:
            state = self.attribute(css, "data-state")
            if state == "error":
                raise AssertionError(f"{css} failed to load: {self.text(css + ' .load-note')}")
            return state == "ready"

        self.until(check)

    def go(self, fragment: str) -> None:
        """Open a view by its link (``#/calls?q=…``), as a bookmark would."""
        self.driver.get(f"{self.url}/{fragment}")

    def search(self, words: str) -> None:
        box = self.find("#filter-q")[0]
        box.clear()
        box.send_keys(words)
        self.find("#filter-apply")[0].click()

    def pick(self, css: str, value: str) -> None:
        Select(self.find(css)[0]).select_by_value(value)

    def shot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))

    def errors(self) -> list[str]:
        """The page's script errors and Content-Security-Policy violations so far."""
        entries = self.driver.get_log("browser")  # type: ignore[no-untyped-call]  # selenium leaves it untyped
        return [
            str(e.get("message"))
            for e in entries
            if e.get("level") == "SEVERE" and "favicon.ico" not in str(e.get("message"))
        ]


def profile() -> AgentProfile:
    """The history's profile: end and transfer tools, a keypad digit that transfers, the demo's analysis."""
    return AgentProfile(
        tools=("end_call", "transfer_call"),
        transfer=Transfer(targets=TARGETS),
        dtmf=Dtmf(actions={"0": DtmfAction(action="transfer", target="support")}),
        analysis=harness.DEMO_ANALYSIS,
    )


def settings() -> Settings:
    return Settings(profiles={"default": profile()}, analysis=QUICK_ANALYSIS)


def _goodbye(text: str) -> Step:
    return Step(say=text, tool=ToolCall(name="end_call", arguments={"reason": "caller said goodbye"}),
                then="Thanks for calling, goodbye!")  # fmt: skip


#: the calls of the history (the demo's own callers, and a transfer, keypad input, a callback request)
HISTORY_CALLS = [
    CallSpec(
        name="opening-hours",
        caller="+14155550123",
        steps=[
            Step(
                say="Hi, what are your opening hours on Saturday?",
                reply="On Saturdays we are open from nine in the morning until one in the afternoon.",
            ),
            _goodbye("Great, that is all I needed. Goodbye!"),
        ],
        expect=Expectation(ended_reason="agent_end_call"),
    ),
    CallSpec(
        name="callback",
        caller="+14155550177",
        steps=[
            Step(
                say="Could you arrange a callback about my dental appointment?",
                reply="Of course, someone will call you back this afternoon.",
            ),
            _goodbye("Thanks, bye!"),
        ],
        expect=Expectation(ended_reason="agent_end_call"),
    ),
    CallSpec(
        name="caller-hangs-up",
        caller="+14155550124",
        steps=[
            Step(
                say="Can you tell me the balance on my account?",
                reply="Sure. Could you give me your account number first?",
            ),
            Step(wait=0.5),
            Step(hangup=True),
        ],
        expect=Expectation(ended_reason="caller_hangup"),
    ),
    CallSpec(
        name="transfer",
        caller="+14155550188",
        steps=[
            Step(
                say="I have a question about my invoice, can I talk to someone in sales?",
                tool=ToolCall(name="transfer_call", arguments={"target": "sales"}),
                then="Let me put you through to sales.",
            ),
        ],
        expect=Expectation(ended_reason="transferred"),
    ),
    CallSpec(
        name="keypad",
        caller="+14155550199",
        steps=[
            Step(say="I want to pay my bill, here is my customer number.", reply="Go ahead and type it in."),
            Step(dtmf="4721#"),
            Step(wait=1),
            _goodbye("That was it, goodbye!"),
        ],
        expect=Expectation(ended_reason="agent_end_call"),
    ),
]


def live_call() -> CallSpec:
    """A caller who stays on the line (hung up by :func:`history_stack` when it is done)."""
    return CallSpec(name="live", caller="+14155550142", max_call_seconds=3000,
                    steps=[Step(say=LIVE_WORDS, reply="Of course, let me look that up."), Step(wait=2400)])  # fmt: skip


@dataclass
class History:
    """A running service whose store holds finished calls (by name), and maybe one live call."""

    stack: harness.Stack
    token: str
    calls: dict[str, harness.CallOutcome]
    live_call_id: str | None

    @property
    def url(self) -> str:
        return self.stack.server.url

    def call_id(self, name: str) -> str:
        return self.calls[name].sim.call_id


@contextlib.asynccontextmanager
async def history_stack(
    specs: list[CallSpec],
    *,
    token: str,
    live: bool = False,
    time_scale: float = TIME_SCALE,
    store_path: Path | None = None,
    timeout: float = 30.0,
) -> AsyncIterator[History]:
    """The service (SQLite store, admin token, analysis by the simulator) after ``specs``' calls ended and were
    analysed; with ``live``, a call that stays up until the block ends."""
    async with harness.running_stack(settings(), time_scale=time_scale, admin_token=token,
                                     store_path=store_path) as stack:  # fmt: skip
        outcomes = await asyncio.gather(*(harness.run_call(stack, spec, timeout=timeout) for spec in specs))
        problems = {o.spec.name: o.problems for o in outcomes if o.problems}
        if problems:
            raise RuntimeError(f"history calls failed: {problems}")
        live_id: str | None = None
        if live:
            placed = await stack.sim.place_call(live_call())
            live_id = placed.call_id
            for _ in range(int(timeout / 0.05)):  # until the caller's first words are transcribed
                if any(t.role == "caller" for t in _transcripts(stack, live_id)):
                    break
                await asyncio.sleep(0.05)
            else:
                raise TimeoutError(f"the live call said nothing within {timeout:.0f}s")
        try:
            yield History(stack, token, {o.spec.name: o for o in outcomes}, live_id)
        finally:
            if live_id is not None:
                async with httpx.AsyncClient(base_url=stack.server.url) as admin:
                    await admin.post(f"/v1/calls/{live_id}/hangup", params={"now": "true"},
                                     headers={"authorization": f"Bearer {token}"})  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await stack.runtime.registry.wait_ended(live_id, timeout)


def _transcripts(stack: harness.Stack, call_id: str) -> list[TranscriptEntry]:
    record = stack.runtime.registry.get(call_id)
    return list(record.transcripts) if record is not None else []


def take_screenshots(history: History, out: Path, profile_dir: Path) -> list[str]:
    """The four views, saved as ``out/{live,calls,call,overview}.png``; returns the browser's errors."""
    driver = chrome(profile_dir)
    try:
        page = Console(driver, history.url)
        page.sign_in(history.token)
        if history.live_call_id is not None:
            page.go(f"?call={history.live_call_id}")
            page.until(lambda d: LIVE_WORDS in page.text("#transcript .line-caller .text"))
            page.until(lambda d: page.text("#status") == "live")
            page.shot(out / "live.png")
        page.go("#/calls?range=24h")
        page.ready("#calls")
        page.shot(out / "calls.png")
        page.go(f"#/calls/{history.call_id('keypad')}")
        page.ready("#call")
        page.until(lambda d: page.attribute("#analysis", "data-status") == "completed")
        page.shot(out / "call.png")
        page.go("#/overview?range=24h")
        page.ready("#overview")
        page.shot(out / "overview.png")
        return page.errors()
    finally:
        driver.quit()


async def _main(out: Path) -> int:
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="sipctl-screenshots-") as tmp:
        async with history_stack(HISTORY_CALLS, token=token, live=True, time_scale=SCREENSHOT_TIME_SCALE) as history:
            errors = await asyncio.to_thread(take_screenshots, history, out, Path(tmp) / "chrome")
    for error in errors:
        print(f"browser error: {error}", file=sys.stderr)
    for name in ("live", "calls", "call", "overview"):
        print(out / f"{name}.png")
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m sip_controller.simulator.screenshots OUT_DIR", file=sys.stderr)
        return 2
    if missing := browser_missing():
        print(f"headless Chromium not installed ({', '.join(missing)}): apt-get install chromium chromium-driver",
              file=sys.stderr)  # fmt: skip
        return 2
    configure_logging("error")
    return asyncio.run(_main(Path(args[0])))


if __name__ == "__main__":
    sys.exit(main())
