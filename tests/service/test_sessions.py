"""Sessions, login throttling and origin checks without a server: bounded tables, expiry, backoff, and the
rules that decide ``Secure`` and same-origin."""

from __future__ import annotations

from typing import cast

import pytest
from starlette.requests import Request
from starlette.responses import Response

from sip_controller.config import Console as ConsoleSettings
from sip_controller.service.admin import SESSION_COOKIE, AdminAuth
from sip_controller.service.sessions import (
    LoginThrottle,
    MemorySessionStore,
    Sessions,
    client_key,
    on_loopback,
    same_origin,
    session_key,
)
from sip_controller.state.console_sessions import LoginBackoff
from sip_controller.state.records import StoreError
from sip_controller.state.store import Store

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _request(
    headers: dict[str, str] | None = None,
    *,
    server: tuple[str, int] | None = ("127.0.0.1", 8000),
    client: tuple[str, int] = ("127.0.0.1", 50000),
) -> Request:
    return Request(
        {
            "type": "http",
            "method": "POST",
            "path": "/login",
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
            "server": server,
            "client": client,
            "scheme": "http",
        }
    )


async def test_sessions_expire_are_revoked_and_the_store_never_holds_the_id() -> None:
    clock = Clock()
    store = MemorySessionStore(10, clock=clock)
    sessions = Sessions(store, ttl_s=60)
    session_id, session = await sessions.create()
    assert session.key == session_key(session_id) != session_id
    assert await store.find(session_id) is None  # looked up by the hash only
    assert await sessions.find(session_id) == session
    assert await sessions.find("forged") is None
    assert await sessions.find(None) is None
    clock.now += 59.9
    assert await sessions.alive(session)
    clock.now += 0.2
    assert await sessions.find(session_id) is None
    assert len(store) == 0  # an expired session found is dropped
    other_id, other = await sessions.create()
    await sessions.revoke(other_id)
    assert not await sessions.alive(other)


async def test_the_session_table_is_bounded_expired_first_then_oldest() -> None:
    clock = Clock()
    store = MemorySessionStore(3, clock=clock)
    short = Sessions(store, ttl_s=10)
    long = Sessions(store, ttl_s=1000)
    first_id, _ = await long.create()
    expiring_id, _ = await short.create()
    third_id, _ = await long.create()
    clock.now += 20  # the short one has expired: it makes room, not the oldest live one
    fourth_id, _ = await long.create()
    assert len(store) == 3
    assert await long.find(first_id) is not None
    assert await long.find(expiring_id) is None
    fifth_id, _ = await long.create()  # full of live sessions: the oldest ends
    assert len(store) == 3
    assert await long.find(first_id) is None
    assert [await long.find(i) is not None for i in (third_id, fourth_id, fifth_id)] == [True, True, True]
    for _ in range(50):
        await long.create()
    assert len(store) == 3


async def test_backoff_doubles_after_the_free_failures_is_capped_and_is_forgotten() -> None:
    clock = Clock()
    throttle = LoginThrottle(free_failures=3, first_wait_s=1, max_wait_s=8, forget_after_s=900, clock=clock)
    assert [await throttle.failed("a") for _ in range(3)] == [0, 0, 0]
    assert await throttle.retry_after("a") == 0
    waits = []
    for _ in range(6):
        waits.append(await throttle.failed("a"))
        assert await throttle.retry_after("a") == waits[-1]
        clock.now += waits[-1]
        assert await throttle.retry_after("a") == 0
    assert waits == [1, 2, 4, 8, 8, 8]
    assert await throttle.retry_after("b") == 0  # per client
    clock.now += 900.5  # quiet for the forget period: a fresh start
    assert await throttle.retry_after("a") == 0
    assert len(throttle) == 0
    assert await throttle.failed("a") == 0


async def test_the_throttle_remembers_a_bounded_number_of_clients() -> None:
    clock = Clock()
    throttle = LoginThrottle(free_failures=1, max_clients=100, clock=clock)
    for i in range(10_000):
        await throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle) == 100
    assert await throttle.failed("10.0.39.15") > 0  # the most recent are the ones kept


@pytest.mark.parametrize(
    ("failures", "wait"), [(0, 0), (5, 0), (6, 1), (7, 2), (9, 8), (14, 256), (15, 300), (10_000, 300)]
)
def test_the_backoff_is_free_then_doubles_up_to_its_cap(failures: int, wait: float) -> None:
    assert LoginBackoff().wait(failures) == wait
    assert LoginBackoff(max_wait_s=3600, forget_after_s=900).forget_s == 3600  # a block is never forgotten early


def test_clients_are_told_apart_by_address_and_ipv6_by_its_64() -> None:
    assert client_key(_request(client=("198.51.100.7", 1))) == "198.51.100.7"
    one = client_key(_request(client=("2001:db8:1:2::1", 1)))
    assert one == client_key(_request(client=("2001:db8:1:2:ffff::9", 1))) == "2001:db8:1:2::/64"
    assert one != client_key(_request(client=("2001:db8:1:3::1", 1)))
    assert client_key(_request(client=("::ffff:198.51.100.7", 1))) == "198.51.100.7"


@pytest.mark.parametrize(
    ("headers", "ours"),
    [
        ({}, True),  # not a browser page (curl, an API client with a cookie): the CSRF token decides
        ({"sec-fetch-site": "same-origin", "origin": "https://anything.example"}, True),
        ({"sec-fetch-site": "cross-site", "host": "calls.example", "origin": "https://calls.example"}, False),
        ({"sec-fetch-site": "same-site"}, False),  # a sibling subdomain is another origin
        ({"host": "calls.example", "origin": "https://calls.example"}, True),
        ({"host": "calls.example:8443", "origin": "https://calls.example:8443"}, True),
        ({"host": "calls.example:443", "origin": "https://calls.example"}, True),
        ({"host": "calls.example", "origin": "https://evil.example"}, False),
        ({"host": "calls.example", "origin": "https://calls.example.evil.example"}, False),
        ({"host": "calls.example", "origin": "null"}, False),
        ({"host": "127.0.0.1:8000", "x-forwarded-host": "calls.example", "origin": "https://calls.example"}, True),
        ({"host": "calls.example", "referer": "https://calls.example/?call=rtc_1"}, True),
        ({"host": "calls.example", "referer": "https://evil.example/calls.example"}, False),
    ],
)
def test_same_origin(headers: dict[str, str], ours: bool) -> None:
    assert same_origin(_request(headers)) is ours


def test_loopback_is_the_local_end_of_the_connection() -> None:
    assert on_loopback(_request(server=("127.0.0.1", 8000)))
    assert on_loopback(_request(server=("::1", 8000)))
    assert not on_loopback(_request(server=("10.1.2.3", 8000)))
    assert not on_loopback(_request(server=None))
    # no header makes a remote connection look local
    assert not on_loopback(_request({"host": "127.0.0.1", "x-forwarded-for": "127.0.0.1"}, server=("10.1.2.3", 80)))


async def _cookie_flags(auth: AdminAuth, request: Request) -> set[str]:
    response = Response()
    await auth.start_session(request, response)
    (cookie,) = [v.decode() for k, v in response.raw_headers if k == b"set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    return {part.strip().lower() for part in cookie.split(";")[1:]}


async def test_secure_is_dropped_only_when_configured_off_and_on_loopback() -> None:
    token = "a-Strong-test-token-4f9c2e71"
    default = AdminAuth(token)
    plain = AdminAuth(token, ConsoleSettings(secure_cookie=False))
    remote = ("10.1.2.3", 8000)
    assert "secure" in await _cookie_flags(default, _request())
    assert "secure" in await _cookie_flags(default, _request(server=remote))
    assert "secure" not in await _cookie_flags(plain, _request())
    # configured off, but the connection is not on loopback (an ingress, a LAN): the flag stays
    assert "secure" in await _cookie_flags(plain, _request({"x-forwarded-proto": "http"}, server=remote))


class _StoreAway:
    """A store that cannot be reached."""

    async def find_console_session(self, key: str, **_: object) -> None:
        raise StoreError("the store is closed")

    async def login_wait(self, client: str) -> float:
        raise StoreError("the store is closed")


async def test_a_store_that_is_away_is_answered_503_not_500() -> None:
    auth = AdminAuth("a-Strong-test-token-4f9c2e71", store=cast("Store", _StoreAway()))
    for headers in ({"authorization": "Bearer anything"}, {"cookie": f"{SESSION_COOKIE}=some-session"}):
        denied = await auth.authorize(_request(headers))
        assert denied is not None
        assert denied.status_code == 503
        assert denied.headers["retry-after"] == "1"
