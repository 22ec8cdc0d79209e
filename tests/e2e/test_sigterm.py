"""SIGTERM on a real `sipctl serve` subprocess with live simulated calls: drain, wrap up, hang up, exit 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from sip_controller.service.loopback import bind_socket
from sip_controller.simulator import CallSpec, Simulator, Step, new_webhook_secret

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

SCALE = 0.05
LIVE_CALLS = 5


def _free_port() -> int:
    sock = bind_socket()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


async def _wait_until(predicate: object, timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.02)
    assert predicate(), what  # type: ignore[operator]


async def test_sigterm_drains_live_calls_then_exits_cleanly(tmp_path: Path) -> None:
    secret = new_webhook_secret()
    port = _free_port()
    async with Simulator(webhook_secret=secret, time_scale=SCALE) as sim, httpx.AsyncClient() as client:
        sim.webhook_url = f"http://127.0.0.1:{port}/webhooks/openai"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("SIPCTL_", "OPENAI_"))},
            "OPENAI_API_KEY": sim.api_key,
            "OPENAI_WEBHOOK_SECRET": secret,
            "OPENAI_BASE_URL": sim.base_url,
            "SIPCTL_LOG_FORMAT": "json",
            "SIPCTL_LIMITS__DRAIN_TIMEOUT_S": "1",
            "SIPCTL_LIMITS__DRAIN_WRAP_UP_S": "8",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sip_controller", "serve", "--host", "127.0.0.1", "--port", str(port),
            cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(20):
                while True:
                    try:
                        if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)
            long_call = CallSpec(
                name="long", greeting_wait=5, max_call_seconds=4000,
                steps=[Step(say="I have a long question.", reply="Go ahead."), Step(wait=3000)],
            )
            calls = [
                await sim.place_call(long_call.model_copy(update={"name": f"live-{i}"})) for i in range(LIVE_CALLS)
            ]
            await _wait_until(lambda: all(c.greeting_heard for c in calls), 15, "all calls live")

            proc.send_signal(signal.SIGUSR1)  # what every task waits on, logged (serve.tasks)
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(5):
                while (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code != 503:
                    await asyncio.sleep(0.02)
            late = await sim.place_call(CallSpec(name="late", ring_timeout=2, steps=[]))
            assert late.delivery_statuses[0] == 503
            assert late.accept_count == 0

            for call in calls:
                await sim.wait_ended(call.call_id, 20)
            async with asyncio.timeout(20):
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
        stdout = (await proc.stdout.read()).decode() if proc.stdout else ""
    assert code == 0, stderr[-2000:]
    for call in calls:
        assert call.ended_by == "agent", (call.name, call.ended_by)
        assert call.hangup_count == 1
        wrap_up = [r for r in call.responses if r.source == "client" and "maintenance" in r.transcript.lower()]
        assert wrap_up, [r.transcript for r in call.responses]
        assert not call.audio_playing_at_hangup
    lines = [json.loads(line) for line in (stdout + stderr).splitlines() if line.startswith("{")]
    ended = [rec for rec in lines if rec.get("event") == "call.ended"]
    assert sorted(rec["call_id"] for rec in ended) == sorted(c.call_id for c in calls)
    assert {rec["ended_reason"] for rec in ended} == {"shutdown"}
    # the signal interrupts whatever task runs: the drain's own records carry no call's id
    drain = [rec for rec in lines if rec.get("event") in ("serve.signal", "registry.draining", "registry.drained")]
    assert [rec["event"] for rec in drain] == ["serve.signal", "registry.draining", "registry.drained"]
    assert not [rec for rec in drain if "call_id" in rec], drain
    [dump] = [rec for rec in lines if rec.get("event") == "serve.tasks"]
    names = {task["name"] for task in dump["tasks"]}
    assert {f"{call.call_id}:call" for call in calls} <= names, names
    assert all(task["at"] for task in dump["tasks"])
