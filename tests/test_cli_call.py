"""``sipctl call``: POST /v1/outbound on a real running service (Twilio's Calls API mocked by respx), the CLI run
in a thread as a user runs it; its answers and errors as printed."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
import structlog

from sip_controller.cli import main
from tests.service.test_twilio_routes import ACCOUNT, ADMIN, PLACED_SID, SETTINGS, TWILIO
from tests.servicekit import Service, openai_router, running_service

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith(("SIPCTL_", "OPENAI_", "TWILIO_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SIPCTL_ADMIN_TOKEN", ADMIN)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    router = openai_router(None)
    router.post(path__regex=rf"/2010-04-01/Accounts/{ACCOUNT}/Calls\.json", name="twilio_create").respond(
        201, json={"sid": PLACED_SID, "status": "queued"}
    )
    async with running_service(ADMIN, settings=SETTINGS, twilio=TWILIO, router=router) as svc:
        yield svc


async def sipctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``sipctl argv…`` in a thread (it blocks on its HTTP request while this loop serves it); the service's
    own log lines are kept out of what it printed."""
    capsys.readouterr()
    with structlog.testing.capture_logs():
        code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def url(svc: Service) -> str:
    return str(svc.client.base_url).rstrip("/")


def placed_forms(svc: Service) -> list[dict[str, str]]:
    return [dict(parse_qsl(call.request.content.decode())) for call in svc.router.routes["twilio_create"].calls]


async def test_a_call_is_placed_and_its_id_and_callsid_printed(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await sipctl(capsys, "call", "+14155550123", "--profile", "reminders", "--var", "first_name=Ada",
                                  "--idempotency-key", "visit-42", "--url", url(service))  # fmt: skip
    assert (code, err) == (0, "")
    first_line = out.strip()
    assert first_line.startswith("placed out_")
    assert f"CallSid {PLACED_SID}, status queued" in first_line
    outbound_id = first_line.split()[1].rstrip(":")
    row = await service.store.get_twilio_call(id=outbound_id)
    assert row is not None
    assert (row.to_number, row.profile, row.variables, row.idempotency_key) == (
        "+14155550123", "reminders", {"first_name": "Ada"}, "visit-42"
    )
    assert [form["To"] for form in placed_forms(service)] == ["+14155550123"]
    # the same key again: nothing more is placed, the call already placed is shown
    code, out, err = await sipctl(capsys, "call", "+14155550123", "--profile", "reminders", "--var", "first_name=Ada",
                                  "--idempotency-key", "visit-42", "--url", url(service))  # fmt: skip
    assert (code, err) == (0, "")
    assert out.startswith(f"placed {outbound_id} (already placed with this idempotency key): CallSid {PLACED_SID}")
    assert len(placed_forms(service)) == 1


async def test_json_prints_the_services_answer(service: Service, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await sipctl(capsys, "call", "+14155550123", "--profile", "reminders", "--var", "first_name=Bo",
                                "--from", "+18005550142", "--json", "--url", url(service))  # fmt: skip
    assert code == 0
    document = json.loads(out)
    assert (document["http_status"], document["call_sid"], document["from"]) == (201, PLACED_SID, "+18005550142")
    assert placed_forms(service)[0]["From"] == "+18005550142"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["4155550123", "--profile", "reminders", "--var", "first_name=Ada"],
         "refused: to: '4155550123' is not an E.164 number"),
        (["+19005550123", "--profile", "reminders", "--var", "first_name=Ada"], "on the do-not-call list"),
        (["+14155550123", "--profile", "reminders"], "refused: variables: missing: first_name"),
        (["+14155550123", "--profile", "reminders", "--var", "first_name=Ada", "--var", "plan=gold"],
         "not declared by profile 'reminders': plan"),
        (["+14155550123", "--profile", "nope"], "profile: 'nope' is not a profile"),
    ],
)  # fmt: skip
async def test_a_refused_call_says_why_and_places_nothing(
    service: Service, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = await sipctl(capsys, "call", *argv, "--url", url(service))
    assert (code, out) == (1, "")
    assert err.startswith("sipctl: ")
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert placed_forms(service) == []


async def test_a_failure_at_twilio_that_may_have_placed_the_call_says_so(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    service.router.routes["twilio_create"].respond(500, json={"code": 20500, "message": "Internal Server Error"})
    code, _, err = await sipctl(capsys, "call", "+14155550123", "--profile", "reminders", "--var", "first_name=Ada",
                                "--url", url(service))  # fmt: skip
    assert code == 1
    assert "sipctl: Twilio failed: Twilio Calls API: HTTP 500 (code 20500)" in err
    assert "the call may have been placed all the same: check GET /v1/outbound/out_" in err


async def test_a_number_twilio_refuses_shows_twilios_code(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    service.router.routes["twilio_create"].respond(400, json={"code": 21211, "message": "Invalid 'To' Phone Number"})
    code, _, err = await sipctl(capsys, "call", "+14155550123", "--profile", "reminders", "--var", "first_name=Ada",
                                "--url", url(service))  # fmt: skip
    assert code == 1
    assert "Invalid 'To' Phone Number (Twilio code 21211, outbound id out_" in err


async def test_a_wrong_admin_token_is_named(
    service: Service, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIPCTL_ADMIN_TOKEN", "Wr0ng-" + "x" * 30)
    code, _, err = await sipctl(capsys, "call", "+14155550123", "--url", url(service))
    assert code == 1
    assert "refused the admin token: SIPCTL_ADMIN_TOKEN must be the token it runs with" in err


async def test_a_service_without_twilio_says_what_to_configure(capsys: pytest.CaptureFixture[str]) -> None:
    async with running_service(ADMIN, settings=SETTINGS) as svc:
        code, _, err = await sipctl(capsys, "call", "+14155550123", "--url", url(svc))
    assert code == 1
    assert "Twilio is not configured: set TWILIO_ACCOUNT_SID" in err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_service_is_named_with_the_url(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "sipctl.yaml"
    config.write_text(f"port: {port}\n")
    code, out, err = await sipctl(capsys, "--config", str(config), "call", "+14155550123")
    assert (code, out) == (1, "")
    assert err.startswith(f"sipctl: cannot reach the service at http://127.0.0.1:{port} (ConnectError)")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--var", "first_name"], "--var 'first_name': write NAME=VALUE, e.g. --var first_name=Ada"),
        (["--var", "=Ada"], "--var '=Ada': write NAME=VALUE, e.g. --var first_name=Ada"),
        (["--var", "a=1", "--var", "a=2"], "--var a: given twice"),
    ],
)
async def test_bad_variables_are_refused_before_anything_is_sent(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = await sipctl(capsys, "call", "+14155550123", *argv, "--url", "http://127.0.0.1:9")
    assert code == 2
    assert err == f"sipctl: {message}\n"


async def test_without_the_admin_token_nothing_is_sent(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIPCTL_ADMIN_TOKEN")
    code, _, err = await sipctl(capsys, "call", "+14155550123", "--url", "http://127.0.0.1:9")
    assert code == 2
    assert "SIPCTL_ADMIN_TOKEN is not set" in err
