"""The call history's part of the console page (#17): the navigation, the pane the script draws in (its profiles
and ended reasons escaped), the script inside ``/console.js`` and its style under the page's CSP hash. The views
themselves are driven in a real browser by ``tests/e2e/test_console_history_browser.py``."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re

import pytest

from sip_controller.config import Limits, Settings
from sip_controller.service import console_batches, console_history
from sip_controller.service.history import ENDED_REASONS
from tests.servicekit import PROFILE, running_service

pytestmark = pytest.mark.anyio

TOKEN = "console-history-token-0123456789"
HOSTILE = '"><script>alert(1)</script>'


async def test_the_page_links_the_views_and_carries_the_filters_choices_escaped() -> None:
    settings = Settings(profiles={"default": PROFILE, HOSTILE: PROFILE}, limits=Limits(hangup_close_wait_s=0.1))
    async with running_service(TOKEN, settings=settings) as service:
        signed_in = await service.client.post("/login", data={"token": TOKEN})
        cookie = signed_in.headers["set-cookie"].split(";")[0]
        page = await service.client.get("/", headers={"cookie": cookie})
        script = await service.client.get("/console.js")
    assert page.status_code == 200
    for view in ("live", "calls", "overview"):
        assert f'<a href="#/{view}" data-view="{view}" id="nav-{view}">' in page.text
    assert "<script>alert" not in page.text
    pane = re.search(r'<main id="history" hidden data-profiles="([^"]*)" data-reasons="([^"]*)"', page.text)
    assert pane is not None
    assert json.loads(html.unescape(pane.group(1))) == sorted(["default", HOSTILE])
    assert json.loads(html.unescape(pane.group(2))) == list(ENDED_REASONS)
    # one script, ours: the live view's, then the history's, then the batches' (#16)
    assert re.findall(r"<script[^>]*>", page.text) == ['<script src="/console.js">']
    assert script.text.endswith(console_history.SCRIPT + console_batches.SCRIPT)
    assert "innerHTML" not in script.text
    assert "http://" not in script.text.replace("http://www.w3.org/2000/svg", "")  # no external asset
    # the history's style is inside the page's one style element, which the CSP allows by its hash
    style = re.search(r"<style>(.*?)</style>", page.text, re.S)
    assert style is not None
    assert console_history.STYLE in style.group(1)
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in page.headers["content-security-policy"]
