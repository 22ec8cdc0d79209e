"""The admin API on a real uvicorn server: auth, live calls, operator hangup/transfer, the OpenAPI contract
(schemathesis: bad tokens, unknown ids, malformed bodies -> 401/404/409/422, never a 5xx), and /metrics."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis.config import SchemathesisConfig

from sip_controller.config import Console, Settings, TwilioCredentials, TwilioSettings
from sip_controller.service.admin import OPENAPI
from tests.servicekit import PROFILE, Service, incoming, openai_router, running_service

TOKEN = "test-admin-token-0123456789"
CONTRACT_TWILIO = TwilioCredentials(
    account_sid="AC" + "0123456789abcdef" * 2, auth_token=SecretStr("twilio-" + "t" * 25),
    api_base_url="https://api.twilio.test", openai_project_id="proj_contract", public_url="https://calls.example.com",
)  # fmt: skip
CONTRACT_FREE_FAILURES = 100  # it sends ~15
Admin = Service


async def _admin(token: str | None, settings: Settings | None = None) -> AsyncIterator[Admin]:
    async with running_service(token, settings=settings) as service:
        yield service


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    async for a in _admin(TOKEN):
        yield a


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.anyio
async def test_every_admin_route_is_404_when_no_token_is_configured() -> None:
    async for a in _admin(None):
        for method, path in (("GET", "/v1/calls"), ("GET", "/v1/calls/x"), ("POST", "/v1/calls/x/hangup"),
                             ("POST", "/v1/calls/x/transfer"), ("GET", "/v1/openapi.json"),
                             ("POST", "/v1/outbound"), ("GET", "/v1/outbound/out_x")):
            response = await a.client.request(method, path, headers=AUTH)
            assert response.status_code == 404, (method, path)


@pytest.mark.anyio
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}])
async def test_missing_or_wrong_tokens_get_401(admin: Admin, headers: dict[str, str]) -> None:
    response = await admin.client.get("/v1/calls", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.anyio
async def test_live_calls_are_listed_with_the_caller_masked(admin: Admin) -> None:
    await admin.place("rtc_live_1")
    response = await admin.client.get("/v1/calls", headers=AUTH)
    assert response.status_code == 200
    (call,) = response.json()["calls"]
    assert call["call_id"] == "rtc_live_1"
    assert call["live"] is True
    assert call["state"] == "attached"
    assert call["caller"] == "+1415***0123"
    assert "+14155550123" not in response.text
    admin.connector.attached["rtc_live_1"].push(
        {"type": "conversation.item.input_audio_transcription.completed", "item_id": "i", "transcript": "hello"}
    )
    await asyncio.sleep(0.05)
    detail = (await admin.client.get("/v1/calls/rtc_live_1", headers=AUTH)).json()
    assert [t["text"] for t in detail["transcript"]] == ["hello"]


@pytest.mark.anyio
async def test_operator_hangup_now_ends_the_call_as_operator_hangup(admin: Admin) -> None:
    await admin.place("rtc_op_1")
    response = await admin.client.post("/v1/calls/rtc_op_1/hangup?now=true", headers=AUTH)
    assert response.status_code == 202
    record = await admin.runtime.registry.wait_ended("rtc_op_1", 5)
    assert record.ended_reason == "operator_hangup"
    assert admin.router.routes["hangup"].call_count == 1
    again = await admin.client.post("/v1/calls/rtc_op_1/hangup", headers=AUTH)
    assert again.status_code == 409  # known, but no longer live
    assert (await admin.client.post("/v1/calls/nope/hangup", headers=AUTH)).status_code == 404


@pytest.mark.anyio
async def test_polite_operator_hangup_says_goodbye_first(admin: Admin) -> None:
    await admin.place("rtc_op_2")
    assert (await admin.client.post("/v1/calls/rtc_op_2/hangup", headers=AUTH)).status_code == 202
    sideband = admin.connector.attached["rtc_op_2"]
    async with asyncio.timeout(5):
        while "response.create" not in sideband.sent_types()[1:]:
            await asyncio.sleep(0.01)
    assert admin.router.routes["hangup"].call_count == 0  # not before the goodbye was heard


@pytest.mark.anyio
async def test_operator_transfer_checks_the_target(admin: Admin) -> None:
    await admin.place("rtc_tr_1")
    bad = await admin.client.post("/v1/calls/rtc_tr_1/transfer", headers=AUTH, json={"target": "+15550000000"})
    assert bad.status_code == 422
    assert "sales" in bad.json()["error"]
    for body in (b"{", b"[]", b'{"target": 5}'):
        assert (await admin.client.post("/v1/calls/rtc_tr_1/transfer", headers=AUTH, content=body)).status_code == 422
    ok = await admin.client.post("/v1/calls/rtc_tr_1/transfer", headers=AUTH, json={"target": "sales"})
    assert ok.status_code == 202
    sideband = admin.connector.attached["rtc_tr_1"]
    async with asyncio.timeout(5):
        while not any("transferring them to sales" in json.dumps(e) for e in sideband.sent):
            await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_cookie_auth_needs_a_session_and_its_csrf_token_for_writes_bearer_calls_do_not(admin: Admin) -> None:
    await admin.place("rtc_ck_1")
    raw = {"cookie": f"sipctl_admin={TOKEN}"}  # the token itself in a cookie is not a session
    assert (await admin.client.get("/v1/calls", headers=raw)).status_code == 401
    login = await admin.client.post("/login", data={"token": TOKEN})
    admin.client.cookies.clear()
    (session_id,) = [
        h.split(";")[0].partition("=")[2]
        for h in login.headers.get_list("set-cookie")
        if h.startswith("sipctl_session=")
    ]
    cookie = {"cookie": f"sipctl_session={session_id}"}
    assert (await admin.client.get("/v1/calls", headers=cookie)).status_code == 200
    refused = await admin.client.post("/v1/calls/rtc_ck_1/hangup", headers={**cookie, "x-sipctl-request": "1"})
    assert refused.status_code == 403
    assert "csrf" in refused.json()["error"].lower()
    # an API client with the bearer token has no cookie a browser could be tricked into sending: no CSRF token
    assert (await admin.client.post("/v1/calls/rtc_ck_1/hangup", headers=AUTH)).status_code == 202


@pytest.mark.anyio
async def test_metrics_are_low_cardinality_prometheus_text(admin: Admin) -> None:
    await admin.place("rtc_m_1")
    body, headers = incoming("rtc_m_1")
    await admin.client.post("/webhooks/openai", content=body, headers=headers)  # a duplicate
    await admin.client.post("/webhooks/openai", content=b"{}", headers={"webhook-id": "x"})  # forged
    admin.connector.attached["rtc_m_1"].close_from_server(1000)
    await admin.runtime.registry.wait_ended("rtc_m_1", 5)
    response = await admin.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'sipctl_webhooks_received_total{outcome="accepted"} 1.0' in text
    assert 'sipctl_webhooks_received_total{outcome="duplicate"} 1.0' in text
    assert 'sipctl_webhooks_received_total{outcome="invalid_signature"} 1.0' in text
    assert 'sipctl_calls_ended_total{ended_reason="caller_hangup"} 1.0' in text
    assert "sipctl_calls_active 0.0" in text
    assert 'sipctl_openai_request_duration_seconds_count{operation="accept",status_class="2xx"} 1.0' in text
    assert "sipctl_ring_to_answer_seconds_count 1.0" in text
    assert 'sipctl_build_info{version="' in text
    assert 'sipctl_event_webhook_deliveries_total{outcome="delivered"} 0.0' in text  # read from the notifier
    assert "rtc_m_1" not in text
    assert "4155550123" not in text


# ---- the OpenAPI contract, checked by schemathesis against a live server --------------------------------------


class _ServerThread:
    """A uvicorn server with two live calls, on its own event loop in a thread (schemathesis tests are sync)."""

    def __init__(self) -> None:
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        # schemathesis checks that every wrong token is refused (401), many times over from this one address:
        # more than the throttle lets through by default (then 429; see test_console.py)
        console = Console(login_free_failures=CONTRACT_FREE_FAILURES)
        settings = Settings(profiles={"default": PROFILE}, console=console,
                            twilio=TwilioSettings(from_number="+18005550199"))  # fmt: skip
        # Twilio configured, its Calls API mocked: POST /v1/outbound places calls; /twilio/* check signatures
        router = openai_router(None)
        router.post(path__regex=r"/2010-04-01/Accounts/AC[0-9a-f]{32}/Calls\.json$").mock(
            side_effect=lambda _: httpx.Response(201, json={"sid": "CA" + secrets.token_hex(16), "status": "queued"})
        )
        async with running_service(TOKEN, settings=settings, twilio=CONTRACT_TWILIO, router=router) as a:
            await a.place("rtc_contract_1")
            await a.place("rtc_contract_2")
            self.url = str(a.client.base_url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> _ServerThread:
        self._thread.start()
        assert self._ready.wait(20), "the admin server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)


@pytest.fixture(scope="module")
def live_server() -> Iterator[_ServerThread]:
    with _ServerThread() as server:
        yield server


# a well-formed filter can still be meaningless (a cursor this API never issued, `until` before `since`, 2025-13-01,
# a search of punctuation only, an overview over more than 400 days): GET /v1/calls, its export and GET /v1/overview
# refuse it with 400, naming the parameter
# and a well-formed outbound request can name a profile that does not exist, variables it does not declare, or a
# number on the do-not-call list: POST /v1/outbound refuses it with 422, naming the field (POST /v1/outbound/batches
# too, when no row of the batch can be called)
_CONFIG = SchemathesisConfig.from_dict({"operations": [{
    "include-name": "GET /v1/calls",
    "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "429"]}},
}, {
    "include-name": "GET /v1/calls/export",
    "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "429"]}},
}, {
    "include-name": "GET /v1/overview",
    "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "429"]}},
}, {
    "include-name": "POST /v1/outbound",
    "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "401", "422", "429"]}},
}, {
    "include-name": "POST /v1/outbound/batches",
    "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "401", "413", "422", "429"]}},
}]})  # fmt: skip
schema = schemathesis.openapi.from_dict(OPENAPI, config=_CONFIG)


@pytest.mark.serial
@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_admin_api_keeps_its_openapi_contract(case: Any, live_server: _ServerThread) -> None:
    started = time.monotonic()
    response = case.call(base_url=live_server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
    case.validate_response(response, headers={"Authorization": f"Bearer {TOKEN}"})
    assert time.monotonic() - started < 10
