"""End to end (#16): Twilio's answering-machine verdict reaches a replica that does not own the call. Two replicas
on one store (two apps, each its own connection to one SQLite file) beside the simulator's OpenAI side and Twilio
stand-in: replica A places the call, so Twilio sends the call's callbacks (status and AMD) to A; the OpenAI webhook
goes to replica B, which owns the call. A posts the verdict as a ``machine_detected`` command, B's command poller
hands it to the call, and B leaves the voicemail message after the beep."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette

from sip_controller.config import Secrets, Settings
from sip_controller.service.app import Runtime, create_app
from sip_controller.service.loopback import RunningServer, bind_socket, serve
from sip_controller.simulator import Callee, Simulator, TwilioAccount, harness, new_webhook_secret
from sip_controller.state.sqlite import SQLiteStore

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]
SCALE = 0.05
TOKEN = "e2e-admin-token-0123456789"
NUMBER = "+18005550100"


@dataclass
class Replica:
    app: Starlette
    server: RunningServer

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime


@contextlib.asynccontextmanager
async def replica(sim: Simulator, secret: str, settings: Settings, path: Path) -> AsyncIterator[Replica]:
    assert sim.twilio is not None
    sock = bind_socket()
    public_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    secrets = Secrets(
        openai_api_key=SecretStr(sim.api_key), webhook_secrets=(SecretStr(secret),), openai_base_url=sim.base_url,
        admin_token=SecretStr(TOKEN), twilio=harness.twilio_credentials(sim.twilio, public_url),
    )  # fmt: skip
    async with await SQLiteStore.open(path) as store:
        app = create_app(settings, secrets, store=store, drain_timeout_s=2.0)
        async with serve(app, sock=sock) as server:
            yield Replica(app, server)


async def test_a_verdict_sent_to_the_replica_that_placed_the_call_reaches_the_owner(tmp_path: Path) -> None:
    settings = harness.with_demo_outbound(Settings.model_validate({"twilio": {"from_number": NUMBER}}))
    secret = new_webhook_secret()
    account = TwilioAccount()
    path = tmp_path / "state.db"
    async with (
        Simulator(webhook_secret=secret, time_scale=SCALE, twilio=account, project_id=harness.TWILIO_PROJECT_ID) as sim,
        replica(sim, secret, settings, path) as a,
        replica(sim, secret, settings, path) as b,
    ):
        assert sim.twilio is not None
        sim.webhook_url = f"{b.server.url}/webhooks/openai"  # OpenAI's webhook reaches B: B owns the call
        sim.twilio.script("+14155550115", Callee(outcome="voicemail", greeting_seconds=3, max_message_seconds=100))
        async with httpx.AsyncClient(base_url=a.server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
            body = {"to": "+14155550115", "profile": harness.DEMO_OUTBOUND_PROFILE, "variables": {"first_name": "Eve"}}
            placed = await api.post("/v1/outbound", json=body)
        assert placed.status_code == 201, placed.text
        rec = await sim.twilio.wait_ended(placed.json()["call_sid"], 30)
        (call_id,) = rec.openai_call_ids
        with contextlib.suppress(TimeoutError):
            await b.runtime.registry.wait_ended(call_id, 10)
        record = b.runtime.registry.get(call_id)
        assert record is not None
        assert a.runtime.registry.get(call_id) is None  # A never had the call, only its Twilio callbacks
        assert rec.answered_by == "machine_end_beep"
        assert any("Eve" in said and "Example Dental" in said for said in rec.voicemail_message), rec.voicemail_message
        assert record.ended_reason == "voicemail"
        assert (record.twilio or {}).get("answered_by") == "machine_end_beep"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT kind, args, outcome FROM call_commands WHERE call_id = ?", (call_id,)).fetchall()
    assert rows == [("machine_detected", '{"answered_by":"machine_end_beep"}', "posted")]
