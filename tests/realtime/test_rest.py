"""Tests for sip_controller.realtime.rest: REST calls against a respx-mocked OpenAI, typed errors, sideband URL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx

from sip_controller.realtime.rest import (
    DEFAULT_TIMEOUT,
    AuthError,
    CallGone,
    InvalidRequest,
    OpenAIError,
    RateLimited,
    RealtimeCalls,
    ServerError,
    TransportError,
    new_http_client,
    sideband_url,
)

BASE = "https://api.openai.com/v1"
KEY = "sk-test-123"
CALL = "rtc_u1_9c6574da8b8a41a18da9308f4ad974ce"


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    # respx patches httpx's client (using="httpx"), so it mocks the production client whatever its transport
    with respx.mock(assert_all_called=False, assert_all_mocked=True, using="httpx") as mock:
        yield mock


@pytest.fixture
async def api(router: respx.MockRouter) -> AsyncIterator[RealtimeCalls]:
    async with new_http_client() as client:
        yield RealtimeCalls(client, base_url=BASE + "/", api_key=KEY)


def body_of(request: httpx.Request) -> Any:
    return json.loads(request.content) if request.content else None


def error_json(message: str, *, type_: str = "invalid_request_error", code: Any = None, param: Any = None) -> Any:
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}


# ---- endpoints ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_accept(router: respx.MockRouter, api: RealtimeCalls) -> None:
    route = router.post(f"{BASE}/realtime/calls/{CALL}/accept").mock(return_value=httpx.Response(200))
    body = {"type": "realtime", "model": "gpt-realtime-2.1", "audio": {"output": {"voice": "marin"}}}
    await api.accept(CALL, body)
    assert route.call_count == 1
    request = route.calls.last.request
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/realtime/calls/{CALL}/accept"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert "openai-beta" not in request.headers
    assert body_of(request) == body


@pytest.mark.anyio
async def test_reject_default_and_custom_code(router: respx.MockRouter, api: RealtimeCalls) -> None:
    route = router.post(f"{BASE}/realtime/calls/{CALL}/reject").mock(return_value=httpx.Response(200))
    await api.reject(CALL)
    await api.reject(CALL, 486)
    assert route.call_count == 2
    assert body_of(route.calls[0].request) == {"status_code": 603}
    assert body_of(route.calls[1].request) == {"status_code": 486}
    assert route.calls[1].request.headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.anyio
async def test_refer(router: respx.MockRouter, api: RealtimeCalls) -> None:
    route = router.post(f"{BASE}/realtime/calls/{CALL}/refer").mock(return_value=httpx.Response(200))
    await api.refer(CALL, "tel:+14155550199")
    request = route.calls.last.request
    assert request.method == "POST"
    assert body_of(request) == {"target_uri": "tel:+14155550199"}
    assert request.headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.anyio
async def test_hangup_has_no_body(router: respx.MockRouter, api: RealtimeCalls) -> None:
    route = router.post(f"{BASE}/realtime/calls/{CALL}/hangup").mock(return_value=httpx.Response(200))
    await api.hangup(CALL)
    request = route.calls.last.request
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/realtime/calls/{CALL}/hangup"
    assert request.content == b""
    assert request.headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.anyio
@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_any_2xx_is_success(router: respx.MockRouter, api: RealtimeCalls, status: int) -> None:
    route = router.post(f"{BASE}/realtime/calls/{CALL}/accept").mock(return_value=httpx.Response(status))
    await api.accept(CALL, {"type": "realtime"})
    assert route.called


@pytest.mark.anyio
async def test_call_id_is_quoted_in_the_path(router: respx.MockRouter, api: RealtimeCalls) -> None:
    route = router.post(url__regex=r".*/hangup$").mock(return_value=httpx.Response(200))
    await api.hangup("a/b?c#d e")
    request = route.calls.last.request
    assert request.url.raw_path == b"/v1/realtime/calls/a%2Fb%3Fc%23d%20e/hangup"


@pytest.mark.anyio
async def test_base_url_trailing_slash_and_custom_host(router: respx.MockRouter) -> None:
    route = router.post("http://127.0.0.1:9000/v1/realtime/calls/rtc_1/accept").mock(return_value=httpx.Response(200))
    async with new_http_client() as client:
        calls = RealtimeCalls(client, base_url="http://127.0.0.1:9000/v1/", api_key="k")
        assert calls.base_url == "http://127.0.0.1:9000/v1"
        await calls.accept("rtc_1", {"type": "realtime"})
    assert route.call_count == 1


@pytest.mark.anyio
async def test_requests_use_the_default_timeout(router: respx.MockRouter, api: RealtimeCalls) -> None:
    route = router.post(f"{BASE}/realtime/calls/{CALL}/hangup").mock(return_value=httpx.Response(200))
    await api.hangup(CALL)
    timeout = route.calls.last.request.extensions["timeout"]
    assert timeout == DEFAULT_TIMEOUT.as_dict()


# ---- typed errors ------------------------------------------------------------------------------------------


async def fail_with(router: respx.MockRouter, api: RealtimeCalls, response: httpx.Response) -> OpenAIError:
    router.post(f"{BASE}/realtime/calls/{CALL}/accept").mock(return_value=response)
    with pytest.raises(OpenAIError) as info:
        await api.accept(CALL, {"type": "realtime"})
    return info.value


@pytest.mark.anyio
async def test_404_is_call_gone(router: respx.MockRouter, api: RealtimeCalls) -> None:
    err = await fail_with(router, api, httpx.Response(404, json=error_json("Call not found", code="call_id_not_found")))
    assert isinstance(err, CallGone)
    assert (err.operation, err.status, err.code, err.message) == ("accept", 404, "call_id_not_found", "Call not found")


@pytest.mark.anyio
async def test_404_without_body_is_call_gone(router: respx.MockRouter, api: RealtimeCalls) -> None:
    err = await fail_with(router, api, httpx.Response(404))
    assert isinstance(err, CallGone)
    assert err.code == "call_id_not_found"
    assert err.message == "Not Found"


@pytest.mark.anyio
@pytest.mark.parametrize(("header", "expected"), [("7", 7.0), ("1.5", 1.5), ("-3", 0.0), (None, None)])
async def test_429_is_rate_limited_with_retry_after(
    router: respx.MockRouter, api: RealtimeCalls, header: str | None, expected: float | None
) -> None:
    headers = {"Retry-After": header} if header is not None else {}
    err = await fail_with(
        router, api, httpx.Response(429, headers=headers, json=error_json("slow down", code="rate_limit_exceeded"))
    )
    assert isinstance(err, RateLimited)
    assert err.status == 429
    assert err.retry_after == expected
    assert err.code == "rate_limit_exceeded"
    assert err.message == "slow down"


@pytest.mark.anyio
async def test_429_with_http_date_retry_after(router: respx.MockRouter, api: RealtimeCalls) -> None:
    err = await fail_with(router, api, httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}))
    assert isinstance(err, RateLimited)
    assert err.retry_after is None


@pytest.mark.anyio
@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_is_server_error(router: respx.MockRouter, api: RealtimeCalls, status: int) -> None:
    err = await fail_with(router, api, httpx.Response(status, text="<html>oops</html>"))
    assert isinstance(err, ServerError)
    assert err.status == status
    assert err.message  # reason phrase when the body is not JSON


@pytest.mark.anyio
async def test_400_is_invalid_request_with_message_and_param(router: respx.MockRouter, api: RealtimeCalls) -> None:
    err = await fail_with(
        router,
        api,
        httpx.Response(
            400,
            json=error_json(
                "Unknown parameter: 'audio.input.turn_detection.threshold'.",
                code="unknown_parameter",
                param="audio.input.turn_detection.threshold",
            ),
        ),
    )
    assert isinstance(err, InvalidRequest)
    assert err.status == 400
    assert err.message == "Unknown parameter: 'audio.input.turn_detection.threshold'."
    assert err.param == "audio.input.turn_detection.threshold"
    assert err.code == "unknown_parameter"
    assert "audio.input.turn_detection.threshold" in str(err)
    assert str(err).startswith("accept: HTTP 400")


@pytest.mark.anyio
async def test_422_is_invalid_request(router: respx.MockRouter, api: RealtimeCalls) -> None:
    err = await fail_with(router, api, httpx.Response(422, json={"error": "not an object"}))
    assert isinstance(err, InvalidRequest)
    assert err.param is None
    assert err.code is None


@pytest.mark.anyio
@pytest.mark.parametrize("status", [401, 403])
async def test_401_403_are_auth_errors(router: respx.MockRouter, api: RealtimeCalls, status: int) -> None:
    err = await fail_with(
        router, api, httpx.Response(status, json=error_json("Incorrect API key", code="invalid_api_key"))
    )
    assert isinstance(err, AuthError)
    assert err.status == status
    assert err.message == "Incorrect API key"
    assert KEY not in str(err)


@pytest.mark.anyio
async def test_non_string_code_and_param_are_dropped(router: respx.MockRouter, api: RealtimeCalls) -> None:
    err = await fail_with(router, api, httpx.Response(400, json=error_json("bad", code=400, param=["x"])))
    assert isinstance(err, InvalidRequest)
    assert err.code is None
    assert err.param is None
    assert err.message == "bad"


@pytest.mark.anyio
async def test_errors_name_the_operation(router: respx.MockRouter, api: RealtimeCalls) -> None:
    router.post(f"{BASE}/realtime/calls/{CALL}/hangup").mock(return_value=httpx.Response(404))
    router.post(f"{BASE}/realtime/calls/{CALL}/refer").mock(return_value=httpx.Response(500))
    with pytest.raises(CallGone) as gone:
        await api.hangup(CALL)
    assert gone.value.operation == "hangup"
    with pytest.raises(ServerError) as server:
        await api.refer(CALL, "sip:agent@example.com")
    assert server.value.operation == "refer"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.ReadTimeout("read timed out"),
        httpx.RemoteProtocolError("peer closed"),
    ],
)
async def test_transport_errors(router: respx.MockRouter, api: RealtimeCalls, exc: Exception) -> None:
    router.post(f"{BASE}/realtime/calls/{CALL}/accept").mock(side_effect=exc)
    with pytest.raises(TransportError) as info:
        await api.accept(CALL, {"type": "realtime"})
    err = info.value
    assert err.status == 0
    assert err.operation == "accept"
    assert err.__cause__ is exc
    if isinstance(exc, httpx.TimeoutException):
        assert "timed out" in err.message


def test_error_hierarchy() -> None:
    for cls in (CallGone, RateLimited, ServerError, InvalidRequest, AuthError, TransportError):
        assert issubclass(cls, OpenAIError)


# ---- sideband URL ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("https://api.openai.com/v1", "wss://api.openai.com/v1/realtime?call_id=rtc_1"),
        ("https://api.openai.com/v1/", "wss://api.openai.com/v1/realtime?call_id=rtc_1"),
        ("http://127.0.0.1:8123/v1", "ws://127.0.0.1:8123/v1/realtime?call_id=rtc_1"),
        ("http://127.0.0.1:8123", "ws://127.0.0.1:8123/realtime?call_id=rtc_1"),
        ("http://127.0.0.1:8123/", "ws://127.0.0.1:8123/realtime?call_id=rtc_1"),
    ],
)
def test_sideband_url(base: str, expected: str) -> None:
    assert sideband_url(base, "rtc_1") == expected


@pytest.mark.anyio
async def test_the_client_builds_the_same_sideband_urls(api: RealtimeCalls) -> None:
    for call_id in ("rtc_1", "a b&c=d#e?f+g", "x/y"):
        assert api.sideband_url(call_id) == sideband_url(BASE, call_id)


def test_sideband_url_quotes_the_call_id() -> None:
    url = sideband_url(BASE, "a b&c=d#e?f+g")
    assert url == "wss://api.openai.com/v1/realtime?call_id=a%20b%26c%3Dd%23e%3Ff%2Bg"
    assert httpx.URL(url).params["call_id"] == "a b&c=d#e?f+g"


@pytest.mark.parametrize("base", ["ftp://example.com/v1", "api.openai.com/v1", "wss://api.openai.com/v1"])
def test_sideband_url_refuses_non_http(base: str) -> None:
    with pytest.raises(ValueError, match="http"):
        sideband_url(base, "rtc_1")


@pytest.mark.anyio
async def test_client_sideband_url_and_headers(api: RealtimeCalls) -> None:
    assert api.sideband_url(CALL) == f"wss://api.openai.com/v1/realtime?call_id={CALL}"
    headers = api.sideband_headers
    assert headers == {"Authorization": f"Bearer {KEY}"}
    headers["Authorization"] = "changed"
    assert api.sideband_headers == {"Authorization": f"Bearer {KEY}"}
    assert "OpenAI-Beta" not in api.sideband_headers


# ---- the in-flight bound ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_requests_past_the_in_flight_cap_wait_for_a_slot_then_time_out(
    router: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sip_controller.realtime import rest as openai_api

    monkeypatch.setattr(openai_api, "DEFAULT_TIMEOUT", httpx.Timeout(5.0, pool=0.2))
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200)

    route = router.post(f"{BASE}/realtime/calls/{CALL}/hangup").mock(side_effect=slow)
    async with new_http_client() as client:
        api = RealtimeCalls(client, base_url=BASE, api_key=KEY, max_in_flight=1)
        first = asyncio.create_task(api.hangup(CALL))
        await asyncio.sleep(0.05)
        with pytest.raises(TransportError, match="PoolTimeout"):
            await api.hangup(CALL)  # the one slot is taken: waits 0.2 s, then gives up
        release.set()
        await first
        await api.hangup(CALL)  # the slot was given back
    assert route.call_count == 2
