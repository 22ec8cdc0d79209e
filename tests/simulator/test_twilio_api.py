"""The Twilio stand-in's Calls API: Twilio's shapes, its auth, its errors."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.simulator.twilio_receiver import TinyController, twilio_stack

pytestmark = pytest.mark.anyio

HANGUP = "<Response><Hangup/></Response>"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def calls_url(ctl: TinyController, account_sid: str | None = None) -> str:
    assert ctl.sim.twilio is not None
    return f"{ctl.sim.twilio.base_url}/2010-04-01/Accounts/{account_sid or ctl.account.account_sid}/Calls.json"


def form(ctl: TinyController, **extra: str) -> dict[str, str]:
    return {"To": "+14155550111", "From": "+18005550100", "Twiml": HANGUP, **extra}


async def test_create_answers_201_with_the_call_as_twilio_shapes_it() -> None:
    async with twilio_stack() as ctl, httpx.AsyncClient() as client:
        auth = (ctl.account.account_sid, ctl.account.auth_token)
        response = await client.post(calls_url(ctl), data=form(ctl), auth=auth)
        assert response.status_code == 201
        call: dict[str, Any] = response.json()
        assert re.fullmatch(r"CA[0-9a-f]{32}", call["sid"])
        assert call["status"] in ("queued", "initiated")
        assert call["direction"] == "outbound-api"
        assert (call["from"], call["to"], call["account_sid"]) == ("+18005550100", "+14155550111", auth[0])
        assert call["api_version"] == "2010-04-01"
        assert call["uri"] == f"/2010-04-01/Accounts/{auth[0]}/Calls/{call['sid']}.json"
        assert call["duration"] is None
        assert call["answered_by"] is None
        assert call["subresource_uris"]["recordings"].endswith(f"/Calls/{call['sid']}/recordings.json")

        fetched = await client.get(calls_url(ctl).replace("Calls.json", f"Calls/{call['sid']}.json"), auth=auth)
        assert fetched.status_code == 200
        assert fetched.json()["sid"] == call["sid"]
        listed = await client.get(calls_url(ctl), auth=auth)
        assert [c["sid"] for c in listed.json()["calls"]] == [call["sid"]]
        assert ctl.sim.twilio is not None
        record = ctl.sim.twilio.calls[call["sid"]]
        assert [(r.method, r.status) for r in record.requests] == [("POST", 201), ("GET", 200)]
        assert ("To", "+14155550111") in record.requests[0].params


async def test_an_api_key_pair_is_accepted_like_the_auth_token() -> None:
    async with twilio_stack() as ctl, httpx.AsyncClient() as client:
        ((key, secret),) = ctl.account.api_keys.items()
        response = await client.post(calls_url(ctl), data=form(ctl), auth=(key, secret))
        assert response.status_code == 201


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param(None, id="none"),
        pytest.param(("account", "token"), id="wrong-both"),
        pytest.param("wrong-token", id="wrong-token"),
        pytest.param("bearer", id="not-basic"),
    ],
)
async def test_bad_credentials_are_401_with_twilio_20003(credentials: object) -> None:
    async with twilio_stack() as ctl, httpx.AsyncClient() as client:
        headers: dict[str, str] = {}
        auth: tuple[str, str] | None = None
        if credentials == "wrong-token":
            auth = (ctl.account.account_sid, "nope")
        elif credentials == "bearer":
            headers = {"Authorization": f"Bearer {ctl.account.auth_token}"}
        elif isinstance(credentials, tuple):
            auth = credentials
        response = await client.post(calls_url(ctl), data=form(ctl), auth=auth, headers=headers)  # type: ignore[arg-type]
        assert response.status_code == 401
        body = response.json()
        assert body["code"] == 20003
        assert body["status"] == 401
        assert body["more_info"] == "https://www.twilio.com/docs/errors/20003"
        assert response.headers["www-authenticate"].startswith("Basic")
        assert ctl.sim.twilio is not None
        assert ctl.sim.twilio.calls == {}
        assert [r.error_code for r in ctl.sim.twilio.refused] == [20003]


async def test_good_credentials_for_another_account_are_refused() -> None:
    async with twilio_stack() as ctl, httpx.AsyncClient() as client:
        auth = (ctl.account.account_sid, ctl.account.auth_token)
        response = await client.post(calls_url(ctl, "AC" + "1" * 32), data=form(ctl), auth=auth)
        assert response.status_code == 401


@pytest.mark.parametrize(
    ("change", "code"),
    [
        pytest.param({"To": ""}, 21201, id="no-to"),
        pytest.param({"To": "5551234567"}, 21211, id="to-not-e164"),
        pytest.param({"From": ""}, 21213, id="no-from"),
        pytest.param({"From": "clinic"}, 21212, id="from-not-a-number"),
        pytest.param({"From": "+14155550999"}, 21210, id="from-not-owned"),
        pytest.param({"Twiml": ""}, 21205, id="no-instructions"),
        pytest.param({"Twiml": "", "Url": "ftp://x/y"}, 21205, id="bad-url"),
        pytest.param({"StatusCallback": "not a url"}, 21609, id="bad-status-callback"),
        pytest.param({"StatusCallbackEvent": "hungup"}, 21200, id="bad-event"),
        pytest.param({"StatusCallbackMethod": "PUT"}, 21200, id="bad-method"),
        pytest.param({"MachineDetection": "Yes"}, 21200, id="bad-amd"),
        pytest.param({"Timeout": "0"}, 21200, id="bad-timeout"),
    ],
)
async def test_bad_parameters_are_400_with_twilios_code(change: dict[str, str], code: int) -> None:
    async with twilio_stack() as ctl, httpx.AsyncClient() as client:
        auth = (ctl.account.account_sid, ctl.account.auth_token)
        data = {k: v for k, v in {**form(ctl), **change}.items() if v != ""}
        response = await client.post(calls_url(ctl), data=data, auth=auth)
        body = response.json()
        assert (response.status_code, body["code"], body["status"]) == (400, code, 400), body
        assert body["message"]
        assert body["more_info"].endswith(str(code))


async def test_unknown_call_is_404_20404_and_ended_calls_cannot_be_redirected() -> None:
    async with twilio_stack() as ctl, httpx.AsyncClient() as client:
        auth = (ctl.account.account_sid, ctl.account.auth_token)
        missing = calls_url(ctl).replace("Calls.json", f"Calls/CA{'0' * 32}.json")
        response = await client.get(missing, auth=auth)
        assert (response.status_code, response.json()["code"]) == (404, 20404)

        ctl.sim.twilio.script("+14155550111", ctl.sim.twilio.account.default_callee.model_copy(  # type: ignore[union-attr]
            update={"outcome": "busy"}))  # fmt: skip
        created = (await client.post(calls_url(ctl), data=form(ctl), auth=auth)).json()
        assert ctl.sim.twilio is not None
        await ctl.sim.twilio.wait_ended(created["sid"], 5.0)
        one = calls_url(ctl).replace("Calls.json", f"Calls/{created['sid']}.json")
        redirect = await client.post(one, data={"Twiml": HANGUP}, auth=auth)
        assert (redirect.status_code, redirect.json()["code"]) == (400, 21220)
        again = await client.post(one, data={"Status": "completed"}, auth=auth)
        assert again.status_code == 200
        assert again.json()["status"] == "busy"
        bad = await client.post(one, data={"Status": "paused"}, auth=auth)
        assert (bad.status_code, bad.json()["code"]) == (400, 21200)
