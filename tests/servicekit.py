"""A real controller on loopback for HTTP-surface tests: OpenAI's REST mocked by respx, sidebands faked, calls
placed by signed webhooks. Shared by the admin API and live-calls page tests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import respx
from pydantic import SecretStr
from standardwebhooks import Webhook
from starlette.applications import Starlette

from sip_controller.agent.profile import AgentProfile, Transfer
from sip_controller.config import Limits, Secrets, Settings, TwilioCredentials
from sip_controller.realtime.rest import RealtimeCalls
from sip_controller.realtime.sideband import FakeConnector
from sip_controller.service.app import Runtime, create_app
from sip_controller.service.loopback import serve
from sip_controller.state.sqlite import SQLiteStore
from sip_controller.state.store import Store

BASE = "https://openai.test/v1"
SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()
PROFILE = AgentProfile(tools=("end_call", "transfer_call"), transfer=Transfer(targets={"sales": "tel:+14155550199"}))


def openai_router(base_url: str | None = BASE) -> respx.Router:
    """OpenAI's four call endpoints answering 200, each route named after its operation; ``base_url=None``
    matches any host (for tests that point the API at a local WebSocket server)."""
    router = respx.Router(assert_all_called=False) if base_url is None else respx.Router(
        base_url=base_url, assert_all_called=False
    )
    for op in ("accept", "reject", "hangup", "refer"):
        router.post(path__regex=rf"/realtime/calls/[^/]+/{op}", name=op).respond(200)
    return router


@contextlib.asynccontextmanager
async def mocked_api(router: respx.Router) -> AsyncIterator[RealtimeCalls]:
    """A RealtimeCalls client whose requests ``router`` answers."""
    async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as client:
        yield RealtimeCalls(client, base_url=BASE, api_key="sk-test")


def incoming(call_id: str) -> tuple[bytes, dict[str, str]]:
    """A signed ``realtime.call.incoming`` delivery from +14155550123."""
    body = json.dumps(
        {
            "object": "event",
            "id": f"evt_{call_id}",
            "type": "realtime.call.incoming",
            "data": {
                "call_id": call_id,
                "sip_headers": [{"name": "From", "value": "<sip:+14155550123@sip.twilio.com>;tag=1"}],
            },
        }
    ).encode()
    now = datetime.now(UTC)
    headers = {
        "webhook-id": f"wh_{call_id}",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(f"wh_{call_id}", now, body.decode()),
    }
    return body, headers


@dataclass
class Service:
    client: httpx.AsyncClient
    app: Starlette
    router: respx.Router
    connector: FakeConnector
    store: Store

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    def accepts(self) -> int:
        return int(self.router.routes["accept"].call_count)

    async def place(self, call_id: str) -> None:
        """Deliver the webhook and wait until the call's (fake) sideband is attached."""
        body, headers = incoming(call_id)
        assert (await self.client.post("/webhooks/openai", content=body, headers=headers)).status_code == 200
        async with asyncio.timeout(5):
            while call_id not in self.connector.attached:
                await asyncio.sleep(0.01)

    async def say(self, call_id: str, text: str) -> None:
        """The caller says ``text``; returns once the controller recorded it."""
        self.connector.attached[call_id].push(
            {"type": "conversation.item.input_audio_transcription.completed", "item_id": "i1", "transcript": text}
        )
        record = self.runtime.registry.get(call_id)
        assert record is not None
        async with asyncio.timeout(5):
            while not any(t.text == text for t in record.transcripts):
                await asyncio.sleep(0.01)


def _hangup_closes_the_sideband(connector: FakeConnector) -> Callable[[httpx.Request], httpx.Response]:
    """As OpenAI does: a call hung up through REST has its sideband closed (so a test's service does not wait out
    ``hangup_close_wait_s`` for each call left live when it stops)."""

    def hangup(request: httpx.Request) -> httpx.Response:
        call_id = request.url.path.rstrip("/").split("/")[-2]
        sideband = connector.attached.get(call_id)
        if sideband is not None and sideband.close_code is None:
            sideband.close_from_server(1000)
        return httpx.Response(200)

    return hangup


@contextlib.asynccontextmanager
async def running_service(
    admin_token: str | None = None,
    *,
    settings: Settings | None = None,
    older_secrets: tuple[str, ...] = (),
    store_path: str | None = None,
    twilio: TwilioCredentials | None = None,
    router: respx.Router | None = None,
) -> AsyncIterator[Service]:
    """``older_secrets`` are accepted before ``SECRET`` (webhook secret rotation). Every service gets its own
    SQLite store in a temporary folder (``Service.store``), closed and deleted afterwards; or the file ``store_path``
(kept: a second service on it is the same host after a restart)."""
    connector = FakeConnector()
    if router is None:
        router = openai_router()
        router.routes["hangup"].side_effect = _hangup_closes_the_sideband(connector)
    secrets = Secrets(
        openai_api_key=SecretStr("sk-test"),
        webhook_secrets=tuple(SecretStr(s) for s in (*older_secrets, SECRET)),
        openai_base_url=BASE,
        admin_token=SecretStr(admin_token) if admin_token else None,
        twilio=twilio,
    )
    settings = settings or Settings(profiles={"default": PROFILE}, limits=Limits(hangup_close_wait_s=0.1))
    with tempfile.TemporaryDirectory(prefix="sipctl-test-") as folder:
        async with (
            await SQLiteStore.open(store_path or os.path.join(folder, "state.db")) as store,
            httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as openai_client,
        ):
            app = create_app(
                settings, secrets, http_client=openai_client, store=store, connect=connector, drain_timeout_s=0.5
            )
            async with serve(app) as server, httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                yield Service(client, app, router, connector, store)
