"""The live-calls page and its event stream on a real uvicorn server: the login flow (form, ``?token=`` once,
the cookie's flags), escaping of caller-controlled text, and the bounded server-sent events stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.servicekit import Service, running_service

pytestmark = pytest.mark.anyio

TOKEN = "console-test-token-0123456789"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
Console = Service


@pytest.fixture
async def console() -> AsyncIterator[Console]:
    async with running_service(TOKEN) as service:
        yield service


async def _console(token: str | None) -> AsyncIterator[Console]:
    async with running_service(token) as service:
        yield service


AUTH = {"Authorization": f"Bearer {TOKEN}"}
COOKIE = {"cookie": f"sipctl_admin={TOKEN}"}


async def test_the_login_form_is_shown_until_authenticated(console: Console) -> None:
    page = await console.client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<form method="post" action="/login">' in page.text
    assert 'id="live-calls"' not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    wrong_cookie = await console.client.get("/", headers={"cookie": "sipctl_admin=not-the-token"})
    assert 'action="/login"' in wrong_cookie.text
    assert 'id="live-calls"' in (await console.client.get("/", headers=COOKIE)).text
    assert 'id="live-calls"' in (await console.client.get("/", headers=AUTH)).text


async def test_a_wrong_token_gets_a_401_page_and_no_cookie(console: Console) -> None:
    response = await console.client.post("/login", data={"token": "wrong-token-0123456789"})
    assert response.status_code == 401
    assert "not valid" in response.text
    assert "set-cookie" not in response.headers
    too_big = await console.client.post("/login", data={"token": "x" * 10_000})
    assert too_big.status_code == 413


async def test_the_right_token_sets_a_strict_http_only_cookie_and_redirects(console: Console) -> None:
    response = await console.client.post("/login", data={"token": TOKEN})
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"sipctl_admin={TOKEN};")
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/"} <= flags
    assert "secure" not in flags  # plain http on loopback
    # behind a TLS-terminating proxy (uvicorn trusts X-Forwarded-Proto from loopback) the cookie is Secure
    https = await console.client.post("/login", data={"token": TOKEN}, headers={"x-forwarded-proto": "https"})
    assert "secure" in {part.strip().lower() for part in https.headers["set-cookie"].split(";")}
    console.client.cookies.clear()


async def test_a_token_in_the_url_is_taken_once_and_stripped(console: Console) -> None:
    response = await console.client.get("/", params={"token": TOKEN, "call": "rtc_1"})
    assert response.status_code == 303
    assert response.headers["location"] == "/?call=rtc_1"
    assert TOKEN not in response.headers["location"]
    assert "httponly" in response.headers["set-cookie"].lower()
    bare = await console.client.get("/", params={"token": TOKEN})
    assert bare.headers["location"] == "/"
    wrong = await console.client.get("/", params={"token": "nope"})
    assert wrong.status_code == 401
    assert "set-cookie" not in wrong.headers
    console.client.cookies.clear()


async def test_everything_is_404_when_no_token_is_configured() -> None:
    async for c in _console(None):
        for method, path in (("GET", "/"), ("GET", f"/?token={TOKEN}"), ("POST", "/login"),
                             ("GET", "/console.js"), ("GET", "/v1/events")):
            assert (await c.client.request(method, path, headers=AUTH)).status_code == 404, path


async def test_caller_controlled_text_is_escaped_in_every_rendered_page(console: Console) -> None:
    await console.place("rtc_xss_1")
    await console.say("rtc_xss_1", HOSTILE)
    pages = [
        await console.client.get("/", headers=COOKIE),
        await console.client.get("/", params={"call": "rtc_xss_1"}, headers=COOKIE),
        await console.client.get("/", params={"call": HOSTILE}, headers=COOKIE),
        await console.client.get("/", params={"token": HOSTILE}),
        await console.client.post("/login", data={"token": HOSTILE}),
    ]
    for page in pages:
        assert page.headers["content-type"].startswith("text/html")
        assert "<script>" not in page.text
        assert "<img" not in page.text
        # the only script is our own file
        assert re.findall(r"<script[^>]*>", page.text) in ([], ['<script src="/console.js">'])
    detail = pages[1].text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in detail
    assert '<option value="sales">sales</option>' in detail
    assert "tel:+14155550199" not in detail  # target names only, never the numbers
    script = await console.client.get("/console.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in script.text
    assert "textContent" in script.text


class EventReader:
    """Reads server-sent events (name, decoded data) from an open stream, one line iterator for the whole stream."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self) -> tuple[str, Any]:
        name = ""
        async for line in self._lines:
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                return name, json.loads(line[6:])
        raise EOFError("the stream ended")

    async def rest(self) -> list[str]:
        return [line async for line in self._lines]


async def test_the_event_stream_needs_auth(console: Console) -> None:
    assert (await console.client.get("/v1/events")).status_code == 401
    assert (await console.client.get("/v1/events", headers={"Authorization": "Bearer wrong"})).status_code == 401
    assert (await console.client.get("/v1/events", params={"call_id": "nope"}, headers=AUTH)).status_code == 404


async def test_the_event_stream_sends_snapshots_and_new_transcript_lines(console: Console) -> None:
    await console.place("rtc_ev_1")
    await console.say("rtc_ev_1", "first line")
    async with asyncio.timeout(10), console.client.stream(
        "GET", "/v1/events", params={"call_id": "rtc_ev_1"}, headers=COOKIE
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = EventReader(response)
        name, calls = await reader.next()
        assert name == "calls"
        (row,) = calls["calls"]
        assert row["call_id"] == "rtc_ev_1"
        assert row["live"] is True
        assert row["caller"] == "+1415***0123"
        assert set(row) >= {"state", "duration_s", "cost_usd"}
        name, first = await reader.next()
        assert name == "transcript"
        assert first["call_id"] == "rtc_ev_1"
        assert first["reset"] is True
        assert [(line["role"], line["text"]) for line in first["lines"]] == [("caller", "first line")]
        await console.say("rtc_ev_1", HOSTILE)
        data: Any = {"lines": []}
        while name != "transcript" or not data["lines"]:
            name, data = await reader.next()
        assert data["reset"] is False
        assert [line["text"] for line in data["lines"]] == [HOSTILE]


async def test_the_stream_is_capped_and_a_closed_one_frees_its_slot() -> None:
    async with asyncio.timeout(30):  # bounded: a stream that outlived its client would hold the server's exit
        async for c in _console(TOKEN):
            async with contextlib.AsyncExitStack() as stack:
                opened = [await _open(c.client) for _ in range(20)]
                for response in opened:
                    stack.push_async_callback(response.aclose)
                assert all(r.status_code == 200 for r in opened)
                over = await c.client.get("/v1/events", headers=AUTH)
                assert over.status_code == 503
                assert over.headers["retry-after"] == "5"
                await opened[0].aclose()  # the client goes away: its slot comes back
                while (again := await _open(c.client)).status_code != 200:
                    await again.aclose()
                    await asyncio.sleep(0.05)
                await again.aclose()


async def _open(client: httpx.AsyncClient) -> httpx.Response:
    return await client.send(client.build_request("GET", "/v1/events", headers=AUTH), stream=True)


async def test_the_stream_ends_by_itself_when_the_service_drains(console: Console) -> None:
    async with asyncio.timeout(10), console.client.stream("GET", "/v1/events", headers=AUTH) as response:
        assert response.status_code == 200
        reader = EventReader(response)
        assert (await reader.next())[0] == "calls"
        console.runtime.registry.draining = True  # what SIGTERM does first; no live call is left
        rest = await reader.rest()  # returns: the server ended the stream
    assert all(not line.startswith("event: ") or line == "event: calls" for line in rest)
