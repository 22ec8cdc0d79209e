"""``sipctl simulator`` runs on its own (issue 15): a real subprocess on loopback serves OpenAI's side and the
control API (``/_sim/calls``); calls placed through it reach a running controller, or a plain webhook receiver,
and their outcome is read back. Bad control-API input is answered 400 naming the problem. SIGINT and SIGTERM
stop it cleanly (exit 0)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sip_controller.agent.profile import AgentProfile
from sip_controller.config import Secrets, Settings
from sip_controller.service.app import Runtime, create_app
from sip_controller.service.loopback import serve
from sip_controller.simulator import new_webhook_secret
from sip_controller.state.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
GOODBYE_SCENARIO = ROOT / "config" / "scenarios" / "goodbye.yaml"
INLINE_CALL: dict[str, Any] = {
    "name": "inline-goodbye",
    "greeting_wait": 5,
    "steps": [
        {"say": "Are you open on Sunday?", "reply": "No, we are closed on Sunday."},
        {"say": "Okay, bye!", "tool": {"name": "end_call", "arguments": {"reason": "done"}}, "then": "Goodbye!"},
    ],
    "expect": {"ended_by": "agent", "accept_count": 1, "greeting_heard": True, "hangup_after_audio": True},
}


@dataclass
class Running:
    process: asyncio.subprocess.Process
    banner: dict[str, str]
    http: httpx.AsyncClient

    @property
    def base_url(self) -> str:
        return self.banner["OPENAI_BASE_URL"]

    async def stop(self, sig: signal.Signals) -> tuple[int, str]:
        self.process.send_signal(sig)
        assert self.process.stdout is not None
        rest = await asyncio.wait_for(self.process.stdout.read(), 15)
        return await asyncio.wait_for(self.process.wait(), 15), rest.decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def simulator_process(*args: str) -> AsyncIterator[Running]:
    """``sipctl simulator ARGS`` as a subprocess; yields once its banner (``NAME=value`` lines) is printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sip_controller", "simulator", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        banner: dict[str, str] = {}
        async with asyncio.timeout(20):
            while "CONTROL_API" not in banner:
                line = (await process.stdout.readline()).decode()
                if not line:
                    assert process.stderr is not None
                    raise AssertionError(f"sipctl simulator exited: {(await process.stderr.read()).decode()}")
                name, sep, value = line.strip().partition("=")
                if sep:
                    banner[name] = value.split()[0]
        origin = banner["CONTROL_API"].removesuffix("/_sim/calls")
        async with httpx.AsyncClient(base_url=origin, timeout=10) as http:
            yield Running(process, banner, http)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def wait_ended(running: Running, call_id: str, timeout: float = 20) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            answer = await running.http.get(f"/_sim/calls/{call_id}")
            assert answer.status_code == 200
            view: dict[str, Any] = answer.json()
            if view["ended"]:
                return view
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def controller(sim_base_url: str, secret: str, api_key: str) -> AsyncIterator[tuple[str, Runtime]]:
    """The real controller on loopback, talking to the simulator subprocess at ``sim_base_url``."""
    secrets = Secrets(
        openai_api_key=SecretStr(api_key),
        webhook_secrets=(SecretStr(secret),),
        openai_base_url=sim_base_url,
    )
    settings = Settings(profiles={"default": AgentProfile()})
    with tempfile.TemporaryDirectory(prefix="sipctl-") as folder:
        async with await SQLiteStore.open(Path(folder) / "st.db") as store:
            app = create_app(settings, secrets, store=store, drain_timeout_s=5.0)
            async with serve(app) as server:
                yield f"{server.url}/webhooks/openai", app.state.runtime


async def test_a_call_placed_through_the_control_api_is_handled_by_a_running_controller() -> None:
    secret, key = new_webhook_secret(), "sk-standalone-test"
    port = free_port()
    sim_url = f"http://127.0.0.1:{port}/v1"
    async with controller(sim_url, secret, key) as (webhook_url, runtime):
        args = ["--port", str(port), "--webhook-url", webhook_url, "--secret", secret, "--api-key", key,
                "--time-scale", "0.05"]  # fmt: skip
        async with simulator_process(*args) as running:
            assert running.base_url == sim_url
            assert running.banner["OPENAI_WEBHOOK_SECRET"] == secret
            assert running.banner["OPENAI_API_KEY"] == key

            placed = await running.http.post("/_sim/calls", json={"call": INLINE_CALL})
            assert placed.status_code == 201, placed.text
            call_id = placed.json()["call_id"]
            assert placed.json()["name"] == "inline-goodbye"
            assert placed.json()["delivery_statuses"] == [200]
            assert placed.headers["location"] == f"/_sim/calls/{call_id}"

            view = await wait_ended(running, call_id)
            listed = (await running.http.get("/_sim/calls")).json()["calls"]
            code, rest = await running.stop(signal.SIGINT)
        record = runtime.registry.get(call_id)
    assert code == 0
    assert "stopping (1 calls placed)" in rest
    assert view["problems"] == []
    assert view["ended_by"] == "agent"
    assert view["accept_count"] == 1
    assert view["accept_bodies"][0]["type"] == "realtime"  # what the controller accepted with
    assert view["audio_state"] == "clean"
    assert view["hangup_count"] == 1
    assert view["refers"] == []
    said = [t["text"] for t in view["transcripts"] if t["role"] == "assistant"]
    assert said[-2:] == ["No, we are closed on Sunday.", "Goodbye!"]
    assert "response.create" in [e["type"] for e in view["client_events"]]
    assert listed == [{"call_id": call_id, "name": "inline-goodbye", "ended": True, "ended_by": "agent"}]
    assert record is not None
    assert record.ended_reason == "agent_end_call"


@dataclass
class Inbox:
    bodies: list[tuple[bytes, dict[str, str]]]

    async def handle(self, request: Request) -> Response:
        self.bodies.append((await request.body(), dict(request.headers)))
        return Response(status_code=200)


async def test_a_plain_receiver_gets_signed_webhooks_and_bad_input_is_refused_by_name() -> None:
    inbox = Inbox([])
    receiver = Starlette(routes=[Route("/hooks", inbox.handle, methods=["POST"])])
    async with serve(receiver) as hooks:
        args = ["--port", "0", "--webhook-url", f"{hooks.url}/hooks", "--time-scale", "0.05"]
        async with simulator_process(*args) as running:
            secret = running.banner["OPENAI_WEBHOOK_SECRET"]  # generated: printed for the client
            assert secret.startswith("whsec_")

            placed = await running.http.post("/_sim/calls", json={"scenario": str(GOODBYE_SCENARIO), "call": "goodbye"})
            assert placed.status_code == 201, placed.text
            call_id = placed.json()["call_id"]
            body, headers = inbox.bodies[0]
            payload = Webhook(secret).verify(body, headers)
            assert payload["type"] == "realtime.call.incoming"
            assert payload["data"]["call_id"] == call_id
            # nobody accepts: the caller gives up after its ring timeout (20 s nominal, 1 s here)
            view = await wait_ended(running, call_id)
            assert view["ended_by"] == "missed"
            assert view["name"] == "goodbye"
            assert view["problems"]  # the scenario expected an answered call: the mismatch is named
            assert any("ended_by" in problem for problem in view["problems"])

            async def refused(body: object, *, raw: bytes | None = None) -> str:
                if raw is not None:
                    answer = await running.http.post("/_sim/calls", content=raw)
                else:
                    answer = await running.http.post("/_sim/calls", json=body)
                assert answer.status_code == 400, answer.text
                message: str = answer.json()["error"]["message"]
                return message

            assert await refused(None, raw=b"{not json") == "the body is not JSON"
            assert "JSON object" in await refused([1, 2])
            assert "unknown field 'calls'" in await refused({"calls": []})
            assert "call: expected one call as an object" in await refused({})
            bad_step = await refused({"call": {"name": "x", "steps": [{"sya": "hi"}]}})
            assert "invalid call" in bad_step
            assert "steps[0].sya" in bad_step
            bad_value = await refused({"call": {"refer": "sometimes"}})
            assert "refer" in bad_value
            assert "cannot read scenario" in await refused({"scenario": "no/such/file.yaml"})
            missing = await refused({"scenario": str(GOODBYE_SCENARIO), "call": "nope"})
            assert "no call named 'nope'" in missing
            assert "goodbye" in missing
            assert "name of one of its calls" in await refused({"scenario": str(GOODBYE_SCENARIO), "call": 3})

            unknown = await running.http.get("/_sim/calls/rtc_nope")
            assert unknown.status_code == 404
            assert "rtc_nope" in unknown.json()["error"]["message"]
            code, rest = await running.stop(signal.SIGTERM)
    assert code == 0
    assert "stopping" in rest
    assert len(inbox.bodies) == 1  # refused input placed no call


async def test_a_bad_secret_or_a_taken_port_is_refused_at_start() -> None:
    bad = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sip_controller", "simulator", "--port", "0", "--webhook-url", "http://127.0.0.1:9/x",
        "--secret", "not-a-secret", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(bad.communicate(), 20)
    assert bad.returncode == 2
    assert "--secret: not a webhook secret: it must start with whsec_" in err.decode()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sip_controller", "simulator", "--port", str(port),
            "--webhook-url", "http://127.0.0.1:9/x", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(busy.communicate(), 20)
    assert busy.returncode == 1
    assert f"cannot serve on 127.0.0.1:{port}" in err.decode()
