"""The live-calls page and its event stream on a real uvicorn server: the login flow (form, ``?token=`` once,
the cookie's flags), sessions (opaque ids, expiry, revocation), login throttling, CSRF checks, escaping of
caller-controlled text, and the bounded server-sent events stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from sip_controller.config import Console as ConsoleSettings
from sip_controller.config import Limits, Settings
from tests.servicekit import PROFILE, Service, running_service

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
EVIL = {"origin": "https://evil.example", "sec-fetch-site": "cross-site"}


def _settings(**console: Any) -> Settings:
    return Settings(
        profiles={"default": PROFILE}, limits=Limits(hangup_close_wait_s=0.1), console=ConsoleSettings(**console)
    )


def _flags(set_cookie: str) -> set[str]:
    return {part.strip().lower() for part in set_cookie.split(";")[1:]}


def _session_cookie(response: httpx.Response) -> str:
    """The session id a sign-in set (the cookie header this test client then sends by hand: the cookie is
    ``Secure``, so httpx would not send it over plain http)."""
    for header in response.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        if name == "sipctl_session" and rest.split(";")[0]:
            return rest.split(";")[0]
    raise AssertionError(f"no session cookie in {response.headers.get_list('set-cookie')}")


@dataclass(frozen=True)
class SignedIn:
    session_id: str
    csrf: str

    @property
    def cookie(self) -> dict[str, str]:
        return {"cookie": f"sipctl_session={self.session_id}"}


async def sign_in(c: Console) -> SignedIn:
    response = await c.client.post("/login", data={"token": TOKEN})
    c.client.cookies.clear()
    assert response.status_code == 303, response.text
    session_id = _session_cookie(response)
    page = await c.client.get("/", headers={"cookie": f"sipctl_session={session_id}"})
    found = re.search(r'<input type="hidden" name="csrf" value="([^"]+)">', page.text)
    assert found is not None, page.text
    return SignedIn(session_id, found.group(1))


async def test_the_login_form_is_shown_until_authenticated(console: Console) -> None:
    page = await console.client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<form method="post" action="/login">' in page.text
    assert 'id="live-calls"' not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # same-origin: no Referer to other sites, while our own POSTs carry their true Origin (checked below)
    assert page.headers["referrer-policy"] == "same-origin"
    wrong_cookie = await console.client.get("/", headers={"cookie": "sipctl_session=not-a-session"})
    assert 'action="/login"' in wrong_cookie.text
    me = await sign_in(console)
    assert 'id="live-calls"' in (await console.client.get("/", headers=me.cookie)).text
    assert 'id="live-calls"' in (await console.client.get("/", headers=AUTH)).text


async def test_a_wrong_token_gets_a_401_page_and_no_cookie(console: Console) -> None:
    response = await console.client.post("/login", data={"token": "wrong-token-0123456789"})
    assert response.status_code == 401
    assert "not valid" in response.text
    assert "set-cookie" not in response.headers
    too_big = await console.client.post("/login", data={"token": "x" * 10_000})
    assert too_big.status_code == 413


async def test_the_right_token_sets_a_strict_http_only_secure_session_cookie_and_redirects(console: Console) -> None:
    response = await console.client.post("/login", data={"token": TOKEN})
    console.client.cookies.clear()
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    (cookie,) = [c for c in response.headers.get_list("set-cookie") if c.startswith("sipctl_session=")]
    flags = _flags(cookie)
    assert {"httponly", "samesite=strict", "path=/", "secure"} <= flags
    assert "max-age=43200" in flags  # the session's lifetime (console.session_ttl_s)
    # Secure comes from the configuration, never from a header a client (or a proxy) sends
    plain = await console.client.post("/login", data={"token": TOKEN}, headers={"x-forwarded-proto": "http"})
    console.client.cookies.clear()
    assert "secure" in _flags(next(c for c in plain.headers.get_list("set-cookie") if c.startswith("sipctl_")))


async def test_secure_is_off_only_when_configured_for_plain_http_on_loopback() -> None:
    async with running_service(TOKEN, settings=_settings(secure_cookie=False)) as c:
        response = await c.client.post("/login", data={"token": TOKEN}, headers={"x-forwarded-proto": "https"})
        c.client.cookies.clear()
        assert "secure" not in _flags(next(h for h in response.headers.get_list("set-cookie")
                                           if h.startswith("sipctl_session=")))


async def test_the_cookie_is_an_opaque_session_id_never_the_token(console: Console) -> None:
    response = await console.client.post("/login", data={"token": TOKEN})
    console.client.cookies.clear()
    session_id = _session_cookie(response)
    assert TOKEN not in session_id
    assert all(TOKEN not in h for h in response.headers.get_list("set-cookie"))
    assert len(session_id) >= 32
    again = _session_cookie(await console.client.post("/login", data={"token": TOKEN}))
    console.client.cookies.clear()
    assert again != session_id  # a fresh random id per sign-in
    # the raw token is no longer a credential in a cookie, under the old name or the new
    for cookie in (f"sipctl_admin={TOKEN}", f"sipctl_session={TOKEN}"):
        assert 'action="/login"' in (await console.client.get("/", headers={"cookie": cookie})).text
        assert (await console.client.get("/v1/calls", headers={"cookie": cookie})).status_code == 401
    signed_in = {"cookie": f"sipctl_session={session_id}"}
    assert (await console.client.get("/v1/calls", headers=signed_in)).status_code == 200


async def test_sign_out_revokes_the_session_on_the_server(console: Console) -> None:
    me = await sign_in(console)
    other = await sign_in(console)
    out = await console.client.post("/logout", data={"csrf": me.csrf}, headers=me.cookie)
    assert out.status_code == 303
    cleared = next(h for h in out.headers.get_list("set-cookie") if h.startswith("sipctl_session="))
    assert "max-age=0" in _flags(cleared)
    # a copy of the cookie kept from before is worth nothing now
    assert 'action="/login"' in (await console.client.get("/", headers=me.cookie)).text
    assert (await console.client.get("/v1/calls", headers=me.cookie)).status_code == 401
    assert (await console.client.get("/v1/events", headers=me.cookie)).status_code == 401
    # another browser's session is its own
    assert (await console.client.get("/v1/calls", headers=other.cookie)).status_code == 200


async def test_a_session_expires() -> None:
    async with running_service(TOKEN, settings=_settings(session_ttl_s=0.5)) as c:
        me = await sign_in(c)
        assert (await c.client.get("/v1/calls", headers=me.cookie)).status_code == 200
        await asyncio.sleep(0.6)
        assert (await c.client.get("/v1/calls", headers=me.cookie)).status_code == 401
        assert 'action="/login"' in (await c.client.get("/", headers=me.cookie)).text


async def test_an_open_event_stream_ends_when_its_session_is_revoked(console: Console) -> None:
    me = await sign_in(console)
    async with asyncio.timeout(10), console.client.stream("GET", "/v1/events", headers=me.cookie) as response:
        assert response.status_code == 200
        reader = EventReader(response)
        assert (await reader.next())[0] == "calls"
        out = await console.client.post("/logout", data={"csrf": me.csrf}, headers=me.cookie)
        assert out.status_code == 303
        await reader.rest()  # returns: the server ended the stream


async def test_repeated_wrong_tokens_are_throttled_per_client_with_backoff(console: Console) -> None:
    guesser = {"x-forwarded-for": "198.51.100.7"}  # uvicorn takes the client address from loopback proxies
    for _ in range(5):
        wrong = await console.client.post("/login", data={"token": "wrong-token-0123456789"}, headers=guesser)
        assert wrong.status_code == 401
    blocked = await console.client.post("/login", data={"token": "wrong-token-0123456789"}, headers=guesser)
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) >= 1
    assert "Too many" in blocked.text
    assert "set-cookie" not in blocked.headers
    # while blocked nothing is checked, not even the right token (or the guessing would go on)
    right = await console.client.post("/login", data={"token": TOKEN}, headers=guesser)
    assert right.status_code == 429
    assert (await console.client.get("/", params={"token": TOKEN}, headers=guesser)).status_code == 429
    bearer = await console.client.get("/v1/calls", headers={**guesser, "Authorization": "Bearer wrong-0123456789"})
    assert bearer.status_code == 429
    assert int(bearer.headers["retry-after"]) >= 1
    # the next failure after the wait blocks for longer
    await asyncio.sleep(int(blocked.headers["retry-after"]) + 0.05)
    again = await console.client.post("/login", data={"token": "wrong-token-0123456789"}, headers=guesser)
    assert again.status_code == 429
    assert int(again.headers["retry-after"]) >= 2
    # another client is not affected
    other = await console.client.post("/login", data={"token": TOKEN}, headers={"x-forwarded-for": "203.0.113.9"})
    console.client.cookies.clear()
    assert other.status_code == 303


async def test_bearer_token_guesses_on_the_api_count_too(console: Console) -> None:
    guesser = {"x-forwarded-for": "198.51.100.8", "Authorization": "Bearer wrong-0123456789"}
    statuses = [(await console.client.get("/v1/calls", headers=guesser)).status_code for _ in range(7)]
    assert statuses[:5] == [401] * 5
    assert statuses[5:] == [429, 429]


async def test_a_cross_site_post_to_logout_is_refused_and_the_session_survives(console: Console) -> None:
    me = await sign_in(console)
    # a form on another site can send the cookie's name but not the session's CSRF token, and browsers say
    # where it came from
    for headers, data in (
        ({**me.cookie, **EVIL}, {}),
        ({**me.cookie, **EVIL}, {"csrf": me.csrf}),
        ({**me.cookie, "origin": "https://evil.example"}, {"csrf": me.csrf}),
        ({**me.cookie, "referer": "https://evil.example/page"}, {"csrf": me.csrf}),
        ({**me.cookie, "origin": "null"}, {"csrf": me.csrf}),
        (me.cookie, {}),
        (me.cookie, {"csrf": "not-the-token"}),
    ):
        response = await console.client.post("/logout", data=data, headers=headers)
        assert response.status_code == 403, (headers, data)
        assert "set-cookie" not in response.headers
    assert (await console.client.get("/v1/calls", headers=me.cookie)).status_code == 200
    same_site = {**me.cookie, "origin": str(console.client.base_url).rstrip("/"), "sec-fetch-site": "same-origin"}
    assert (await console.client.post("/logout", data={"csrf": me.csrf}, headers=same_site)).status_code == 303


async def test_sign_in_from_another_site_is_refused(console: Console) -> None:
    response = await console.client.post("/login", data={"token": TOKEN}, headers=EVIL)
    assert response.status_code == 403
    assert "set-cookie" not in response.headers


async def test_cookie_writes_need_the_sessions_csrf_token_and_our_origin(console: Console) -> None:
    await console.place("rtc_csrf_1")
    me = await sign_in(console)
    url = "/v1/calls/rtc_csrf_1/hangup"
    for headers in (
        me.cookie,
        {**me.cookie, "x-sipctl-request": "1"},  # the old fixed header is not enough any more
        {**me.cookie, "x-sipctl-csrf": "not-the-token"},
        {**me.cookie, "x-sipctl-csrf": me.csrf, **EVIL},
    ):
        response = await console.client.post(url, headers=headers)
        assert response.status_code == 403, headers
    assert console.runtime.registry.supervisor("rtc_csrf_1") is not None
    other = await sign_in(console)
    assert (await console.client.post(url, headers={**me.cookie, "x-sipctl-csrf": other.csrf})).status_code == 403
    ours = {**me.cookie, "x-sipctl-csrf": me.csrf, "sec-fetch-site": "same-origin"}
    ok = await console.client.post(url, headers=ours)
    assert ok.status_code == 202


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
    me = await sign_in(console)
    pages = [
        await console.client.get("/", headers=me.cookie),
        await console.client.get("/", params={"call": "rtc_xss_1"}, headers=me.cookie),
        await console.client.get("/", params={"call": HOSTILE}, headers=me.cookie),
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
    me = await sign_in(console)
    async with asyncio.timeout(10), console.client.stream(
        "GET", "/v1/events", params={"call_id": "rtc_ev_1"}, headers=me.cookie
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


async def test_the_call_page_has_live_control_and_its_writes_need_the_csrf_token(console: Console) -> None:
    """#17: say now / next, context, mute and unmute from the page, with the session's CSRF token like hang up."""
    await console.place("rtc_ctl_1")
    me = await sign_in(console)
    page = await console.client.get("/?call=rtc_ctl_1", headers=me.cookie)
    for control in ("control-text", "say-now", "say-next", "context", "mute", "unmute"):
        assert f'id="{control}"' in page.text, control
    url = "/v1/calls/rtc_ctl_1/say"
    body = {"text": "Thanks for waiting."}
    assert (await console.client.post(url, json=body, headers=me.cookie)).status_code == 403
    evil = {**me.cookie, "x-sipctl-csrf": me.csrf, **EVIL}
    assert (await console.client.post(url, json=body, headers=evil)).status_code == 403
    ours = {**me.cookie, "x-sipctl-csrf": me.csrf, "sec-fetch-site": "same-origin"}
    assert (await console.client.post(url, json=body, headers=ours)).status_code == 202
    assert (await console.client.post("/v1/calls/rtc_ctl_1/mute", headers=ours)).status_code == 202
    record = console.runtime.registry.get("rtc_ctl_1")
    assert record is not None
    async with asyncio.timeout(5):
        while "control: mute from operator" not in [what for _, what in record.timeline]:
            await asyncio.sleep(0.01)
