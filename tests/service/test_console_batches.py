"""The Batches view's part of the console page (#16): its link beside Live/Calls/Overview, the empty pane the script
draws in, the script last inside ``/console.js`` (no markup from data: ``textContent`` only) and its style under the
page's CSP hash. The view itself is driven in a real browser by ``tests/e2e/test_console_batches_browser.py``."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from sip_controller.config import Limits, Settings
from sip_controller.service import console_batches
from tests.servicekit import PROFILE, running_service

pytestmark = pytest.mark.anyio

TOKEN = "console-batches-token-0123456789"


async def test_the_page_links_the_batches_view_and_serves_its_script_and_style() -> None:
    settings = Settings(profiles={"default": PROFILE}, limits=Limits(hangup_close_wait_s=0.1))
    async with running_service(TOKEN, settings=settings) as service:
        signed_in = await service.client.post("/login", data={"token": TOKEN})
        cookie = signed_in.headers["set-cookie"].split(";")[0]
        page = await service.client.get("/", headers={"cookie": cookie})
        script = await service.client.get("/console.js")
    assert page.status_code == 200
    nav = re.search(r"<nav[^>]*>(.*?)</nav>", page.text)
    assert nav is not None
    assert re.findall(r'data-view="(\w+)"', nav.group(1)) == ["live", "calls", "overview", "batches"]
    assert '<a href="#/batches" data-view="batches" id="nav-batches">Batches</a>' in page.text
    assert '<main id="batches" hidden data-csrf-header="x-sipctl-csrf"></main>' in page.text
    assert script.text.endswith(console_batches.SCRIPT)
    assert "innerHTML" not in console_batches.SCRIPT
    assert "insertAdjacentHTML" not in console_batches.SCRIPT
    assert "textContent" in console_batches.SCRIPT
    style = re.search(r"<style>(.*?)</style>", page.text, re.S)
    assert style is not None
    assert console_batches.STYLE in style.group(1)
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in page.headers["content-security-policy"]
