"""The HTTP surface on a real uvicorn server: webhook answers, dedupe, health. OpenAI REST mocked by respx."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook

from sip_controller.config import Secrets, Settings
from sip_controller.service.app import create_app
from tests.servicekit import SECRET, Service, running_service

pytestmark = pytest.mark.anyio

OTHER_SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()


def incoming(call_id: str = "rtc_test_1") -> dict[str, Any]:
    return {
        "object": "event",
        "id": "evt_1",
        "type": "realtime.call.incoming",
        "created_at": int(time.time()),
        "data": {
            "call_id": call_id,
            "sip_headers": [
                {"name": "From", "value": "<sip:+14155550123@sip.twilio.com>;tag=abc"},
                {"name": "To", "value": "<sip:proj_x@sip.api.openai.com;transport=tls>"},
            ],
        },
    }


def signed(body: bytes, *, msg_id: str = "wh_1", secret: str = SECRET, at: datetime | None = None) -> dict[str, str]:
    stamp = at or datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, stamp, body.decode()),
        "content-type": "application/json",
    }


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    async with running_service(settings=Settings(), older_secrets=(OTHER_SECRET,)) as svc:
        yield svc


async def post(svc: Service, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await svc.client.post("/webhooks/openai", content=body, headers=headers)


async def test_valid_delivery_is_accepted_once_with_the_profile_body(service: Service) -> None:
    body = json.dumps(incoming()).encode()
    response = await post(service, body, signed(body))
    assert response.status_code == 200
    assert response.json() == {"status": "accepted"}
    record = await _wait_attached(service, "rtc_test_1")
    assert service.accepts() == 1
    sent = json.loads(service.router.routes["accept"].calls.last.request.content)
    assert sent["type"] == "realtime"
    assert sent["audio"]["input"]["format"] == sent["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert service.router.routes["accept"].calls.last.request.headers["authorization"] == "Bearer sk-test"
    assert record.caller == "+14155550123"


async def _wait_attached(svc: Service, call_id: str) -> Any:
    async with asyncio.timeout(5):
        while call_id not in svc.connector.attached:
            await asyncio.sleep(0.01)
    record = svc.runtime.registry.get(call_id)
    assert record is not None
    return record


async def test_duplicates_by_webhook_id_and_by_call_id_accept_once(service: Service) -> None:
    body = json.dumps(incoming("rtc_dup")).encode()
    first, second = await asyncio.gather(
        post(service, body, signed(body, msg_id="wh_same")), post(service, body, signed(body, msg_id="wh_same"))
    )
    third = await post(service, body, signed(body, msg_id="wh_other"))
    statuses = sorted([first.json()["status"], second.json()["status"], third.json()["status"]])
    assert [first.status_code, second.status_code, third.status_code] == [200, 200, 200]
    assert statuses == ["accepted", "duplicate", "duplicate"]
    await _wait_attached(service, "rtc_dup")
    assert service.accepts() == 1


async def test_caller_hangup_ends_the_call(service: Service) -> None:
    body = json.dumps(incoming("rtc_bye")).encode()
    await post(service, body, signed(body))
    await _wait_attached(service, "rtc_bye")
    service.connector.attached["rtc_bye"].close_from_server(1000)
    record = await service.runtime.registry.wait_ended("rtc_bye", 5)
    assert record.ended_reason == "caller_hangup"
    assert service.router.routes["hangup"].call_count == 0


@pytest.mark.parametrize(
    ("mutate", "status", "outcome"),
    [
        (lambda h: {**h, "webhook-signature": "v1,AAAA"}, 401, "invalid_signature"),
        (lambda h: {k: v for k, v in h.items() if k != "webhook-signature"}, 401, "invalid_signature"),
        (lambda h: {k: v for k, v in h.items() if k != "webhook-id"}, 401, "invalid_signature"),
        (lambda h: {**h, "webhook-signature": "garbage without comma"}, 401, "invalid_signature"),
        (lambda h: {**h, "webhook-timestamp": "soon"}, 401, "invalid_signature"),
    ],
)
async def test_bad_signatures_get_401_and_no_accept(service: Service, mutate: Any, status: int, outcome: str) -> None:
    body = json.dumps(incoming("rtc_forged")).encode()
    response = await post(service, body, mutate(signed(body)))
    assert response.status_code == status
    assert response.json()["status"] == outcome
    await asyncio.sleep(0.05)
    assert service.accepts() == 0
    assert service.runtime.registry.get("rtc_forged") is None


async def test_signature_by_unknown_secret_is_refused(service: Service) -> None:
    body = json.dumps(incoming()).encode()
    stranger = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    response = await post(service, body, signed(body, secret=stranger))
    assert response.status_code == 401
    assert service.accepts() == 0


async def test_stale_timestamp_is_401(service: Service) -> None:
    body = json.dumps(incoming()).encode()
    old = datetime.now(UTC) - timedelta(seconds=400)
    response = await post(service, body, signed(body, at=old))
    assert response.status_code == 401
    assert response.json()["status"] == "stale"
    assert service.accepts() == 0


async def test_oversized_body_is_413(service: Service) -> None:
    event = incoming()
    event["padding"] = "x" * (256 * 1024)
    body = json.dumps(event).encode()
    response = await post(service, body, signed(body))
    assert response.status_code == 413
    assert service.accepts() == 0


async def test_oversized_chunked_body_without_length_is_413(service: Service) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(300):
            yield b"x" * 1024

    headers = signed(b"{}")
    response = await service.client.post("/webhooks/openai", content=chunks(), headers=headers)
    assert response.status_code == 413


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b"[1, 2]",
        json.dumps({"type": "realtime.call.incoming", "data": {}}).encode(),
        json.dumps({"type": "realtime.call.incoming", "data": {"call_id": ""}}).encode(),
        json.dumps({"type": "realtime.call.incoming"}).encode(),
    ],
)
async def test_malformed_but_signed_is_400(service: Service, payload: bytes) -> None:
    response = await post(service, payload, signed(payload))
    assert response.status_code == 400
    assert response.json()["status"] == "malformed"
    assert service.accepts() == 0


async def test_other_event_types_are_acknowledged_and_ignored(service: Service) -> None:
    body = json.dumps({"object": "event", "type": "live.session.incoming", "data": {"call_id": "x"}}).encode()
    response = await post(service, body, signed(body))
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert service.accepts() == 0


async def test_other_methods_on_the_webhook_path_get_405(service: Service) -> None:
    for method in ("GET", "PUT", "DELETE"):
        response = await service.client.request(method, "/webhooks/openai")
        assert response.status_code == 405, method
        assert response.headers["allow"] == "POST"
    assert service.accepts() == 0


async def test_webhook_answers_are_json_with_a_length(service: Service) -> None:
    body = json.dumps({"object": "event", "type": "live.session.incoming", "data": {"call_id": "x"}}).encode()
    response = await post(service, body, signed(body))
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)


async def test_health_routes(service: Service) -> None:
    assert (await service.client.get("/livez")).json() == {"status": "ok"}
    ready = await service.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


async def test_draining_answers_503_so_openai_redelivers(service: Service) -> None:
    service.runtime.registry.draining = True
    body = json.dumps(incoming("rtc_late")).encode()
    response = await post(service, body, signed(body))
    assert response.status_code == 503
    assert (await service.client.get("/readyz")).status_code == 503
    assert service.accepts() == 0


def test_create_app_requires_secrets() -> None:
    from sip_controller.config import ConfigError

    with pytest.raises(ConfigError) as info:
        create_app(Settings(), Secrets())
    assert any("OPENAI_API_KEY" in p for p in info.value.problems)
    assert any("OPENAI_WEBHOOK_SECRET" in p for p in info.value.problems)


def test_the_sideband_takes_websockets_own_client_behind_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # the REST calls need no such choice: the HTTP client reads the proxy settings itself
    from sip_controller.realtime.sideband import LeanConnector, connect_websocket
    from sip_controller.service.app import _sideband_connector

    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                 "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(_sideband_connector("https://api.openai.com/v1"), LeanConnector)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert _sideband_connector("https://api.openai.com/v1") is connect_websocket
    assert isinstance(_sideband_connector("http://127.0.0.1:9000/v1"), LeanConnector)  # not proxied by HTTPS_PROXY
    monkeypatch.setenv("NO_PROXY", "api.openai.com")
    assert isinstance(_sideband_connector("https://api.openai.com/v1"), LeanConnector)


# ---- hostile deliveries (Hypothesis): any headers, any body, valid or forged signatures -> never a 5xx ----

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
events = st.fixed_dictionaries(
    {"type": st.sampled_from(["realtime.call.incoming", "live.session.incoming", "x"]) | st.text(max_size=10)},
    optional={
        "id": st.text(max_size=10),
        "data": st.fixed_dictionaries(
            {},
            optional={
                "call_id": st.text(max_size=40) | st.integers() | st.none(),
                "sip_headers": st.lists(
                    st.fixed_dictionaries({"name": st.text(max_size=15), "value": st.text(max_size=40)})
                    | json_values,
                    max_size=5,
                )
                | json_values,
            },
        ),
        "extra": json_values,
    },
)
bodies = st.one_of(
    events.map(lambda e: json.dumps(e).encode()),
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
)
signing = st.sampled_from(["valid", "forged", "missing", "garbage", "stale", "future", "bad_timestamp"])
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


def headers_for(body: bytes, how: str, msg_id: str) -> dict[str, str]:
    now = datetime.now(UTC)
    stamp = {"stale": now - timedelta(seconds=301), "future": now + timedelta(seconds=400)}.get(how, now)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(stamp.timestamp()))}
    if how in ("valid", "stale", "future"):
        try:
            headers["webhook-signature"] = Webhook(SECRET).sign(msg_id, stamp, body.decode())
        except UnicodeDecodeError:
            headers["webhook-signature"] = "v1,AAAA"
    elif how == "forged":
        headers["webhook-signature"] = "v1,bm90IGEgcmVhbCBzaWduYXR1cmU="
    elif how == "garbage":
        headers["webhook-signature"] = "v1 ,,, v2,@@@"
    elif how == "bad_timestamp":
        headers["webhook-timestamp"] = "yesterday"
        headers["webhook-signature"] = "v1,AAAA"
    return headers


def _utf8(body: bytes) -> bool:
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=bodies,
    how=signing,
    msg_id=st.text(alphabet="abcdefghijklmnop0123456789_", min_size=1, max_size=20),
    extra=st.dictionaries(header_text.filter(lambda h: h.strip() and ":" not in h), header_text, max_size=3),
)
async def test_webhook_endpoint_never_answers_5xx(
    service: Service, body: bytes, how: str, msg_id: str, extra: dict[str, str]
) -> None:
    if how == "valid" and not _utf8(body):
        how = "forged"  # Standard Webhooks signs text: a non-UTF-8 body cannot carry a valid signature
    headers: dict[str, Any] = {**extra, **headers_for(body, how, msg_id)}
    try:
        response = await service.client.post("/webhooks/openai", content=body, headers=headers)
    except httpx.LocalProtocolError:
        return  # a header httpx itself refuses to send never reaches the server
    assert response.status_code < 500, (response.status_code, response.text)
    if how != "valid":
        assert response.status_code == 401
    else:
        assert response.status_code in (200, 400)
    if how == "valid" and response.status_code == 200:
        assert response.json()["status"] in ("accepted", "duplicate", "ignored", "rejected")
