"""Retry policies against a respx-mocked OpenAI: what is retried, for how long, and what is final."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from sip_controller.realtime.rest import CallGone, InvalidRequest, RateLimited, RealtimeCalls, ServerError
from sip_controller.realtime.retries import RetryPolicy, accept_within_budget, with_quick_retries

pytestmark = pytest.mark.anyio
BASE = "https://openai.test/v1"
FAST = RetryPolicy(wait_initial=0.001, wait_max=0.01, wait_jitter=0.001, gone_grace_s=0.2, attempts=4, timeout_s=2)


@pytest.fixture
def router() -> respx.Router:
    return respx.Router(base_url=BASE, assert_all_called=False)


@pytest.fixture
async def api(router: respx.Router) -> AsyncIterator[RealtimeCalls]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as client:
        yield RealtimeCalls(client, base_url=BASE, api_key="sk-test")


def _error(status: int, code: str = "x", headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"error": {"message": f"HTTP {status}", "type": "invalid_request_error", "code": code, "param": None}}
    return httpx.Response(status, json=body, headers=headers)


async def test_accept_retries_5xx_429_and_transport_errors_then_succeeds(
    api: RealtimeCalls, router: respx.Router
) -> None:
    route = router.post("/realtime/calls/c1/accept").mock(
        side_effect=[
            _error(500),
            _error(429, headers={"retry-after": "0.01"}),
            httpx.ConnectError("refused"),
            _error(503),
            httpx.Response(200),
        ]
    )
    retried: list[int] = []
    attempts = await accept_within_budget(
        api, "c1", {"type": "realtime"}, deadline=time.monotonic() + 5, policy=FAST,
        on_retry=lambda exc: retried.append(exc.status),
    )
    assert attempts == 5
    assert route.call_count == 5
    assert retried == [500, 429, 0, 503]


async def test_accept_honours_retry_after(api: RealtimeCalls, router: respx.Router) -> None:
    router.post("/realtime/calls/c1/accept").mock(
        side_effect=[_error(429, headers={"retry-after": "0.3"}), httpx.Response(200)]
    )
    started = time.monotonic()
    await accept_within_budget(api, "c1", {}, deadline=started + 5, policy=FAST)
    assert time.monotonic() - started >= 0.3


async def test_retry_after_beyond_the_ring_budget_is_not_waited_for(api: RealtimeCalls, router: respx.Router) -> None:
    route = router.post("/realtime/calls/c1/accept").mock(return_value=_error(429, headers={"retry-after": "30"}))
    started = time.monotonic()
    with pytest.raises(RateLimited):
        await accept_within_budget(api, "c1", {}, deadline=started + 1, policy=FAST)
    assert route.call_count == 1
    assert time.monotonic() - started < 1


async def test_accept_gives_up_when_the_ring_budget_ends(api: RealtimeCalls, router: respx.Router) -> None:
    route = router.post("/realtime/calls/c1/accept").mock(return_value=_error(500))
    started = time.monotonic()
    with pytest.raises(ServerError):
        await accept_within_budget(api, "c1", {}, deadline=started + 0.3, policy=FAST)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 1.0
    assert route.call_count > 2


async def test_a_404_right_after_the_webhook_is_retried_briefly(api: RealtimeCalls, router: respx.Router) -> None:
    router.post("/realtime/calls/c1/accept").mock(side_effect=[_error(404, "call_id_not_found"), httpx.Response(200)])
    assert await accept_within_budget(api, "c1", {}, deadline=time.monotonic() + 5, policy=FAST) == 2


async def test_a_lasting_404_means_the_call_is_gone(api: RealtimeCalls, router: respx.Router) -> None:
    route = router.post("/realtime/calls/c1/accept").mock(return_value=_error(404, "call_id_not_found"))
    started = time.monotonic()
    with pytest.raises(CallGone):
        await accept_within_budget(api, "c1", {}, deadline=started + 5, policy=FAST)
    assert time.monotonic() - started < 1.0  # the grace (0.2 s), not the ring budget
    assert route.call_count >= 2


async def test_a_400_is_final_at_once(api: RealtimeCalls, router: respx.Router) -> None:
    route = router.post("/realtime/calls/c1/accept").mock(return_value=_error(400, "unknown_parameter"))
    with pytest.raises(InvalidRequest):
        await accept_within_budget(api, "c1", {}, deadline=time.monotonic() + 5, policy=FAST)
    assert route.call_count == 1


async def test_a_hung_request_is_cut_at_the_deadline(api: RealtimeCalls, router: respx.Router) -> None:
    import asyncio

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200)

    router.post("/realtime/calls/c1/accept").mock(side_effect=slow)
    started = time.monotonic()
    with pytest.raises(Exception, match="ring budget"):
        await accept_within_budget(api, "c1", {}, deadline=started + 0.2, policy=FAST)
    assert time.monotonic() - started < 1.0


async def test_quick_retries_for_hangup(api: RealtimeCalls, router: respx.Router) -> None:
    route = router.post("/realtime/calls/c1/hangup").mock(side_effect=[_error(502), _error(500), httpx.Response(200)])
    await with_quick_retries(lambda: api.hangup("c1"), FAST)
    assert route.call_count == 3


async def test_quick_retries_are_bounded_and_never_retry_a_404(api: RealtimeCalls, router: respx.Router) -> None:
    route = router.post("/realtime/calls/c1/hangup").mock(return_value=_error(500))
    with pytest.raises(ServerError):
        await with_quick_retries(lambda: api.hangup("c1"), FAST)
    assert route.call_count == FAST.attempts
    gone = router.post("/realtime/calls/c2/hangup").mock(return_value=_error(404, "call_id_not_found"))
    with pytest.raises(CallGone):
        await with_quick_retries(lambda: api.hangup("c2"), FAST)
    assert gone.call_count == 1
