"""The operator console across replicas (#13, #14.11): two real ``sipctl serve`` processes on one PostgreSQL, as
the shipped Deployment runs them behind a Service with no session affinity. Signed in on replica A, the cookie
works on replica B (the live-calls page lists the call A supervises, and a hangup through B's admin API with the
session's CSRF token ends it); signed out on B, the cookie is refused on A. Wrong tokens spread over both replicas
are counted together: the guesser is blocked on both, even with the right token."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from sip_controller.simulator import CallSpec, Simulator, Step, new_webhook_secret
from sip_controller.simulator.replicas import Replicas

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

SCALE = 0.05
FREE_FAILURES = 3


async def _until(what: str, ok: Callable[[], bool], timeout: float = 15.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not ok():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def _session_cookie(response: httpx.Response) -> dict[str, str]:
    """The cookie header a browser would send back (by hand: the cookie is Secure, and this is plain loopback)."""
    for header in response.headers.get_list("set-cookie"):
        if header.startswith("sipctl_session="):
            return {"cookie": header.split(";", 1)[0]}
    raise AssertionError(f"no session cookie in {response.headers.get_list('set-cookie')}")


async def test_a_console_session_and_the_throttle_hold_across_two_replicas(tmp_path: Path, pg_schema: str) -> None:
    token = secrets.token_urlsafe(32)
    secret = new_webhook_secret()
    spec = CallSpec(name="operator", max_call_seconds=2000, steps=[Step(wait=600)])  # 30 s unless hung up
    async with (
        Simulator(webhook_secret=secret, time_scale=SCALE) as sim,
        Replicas(
            2, workdir=tmp_path / "cluster", api_base=sim.base_url, api_key=sim.api_key, webhook_secret=secret,
            database_url=pg_schema,
            env={"SIPCTL_ADMIN_TOKEN": token, "SIPCTL_CONSOLE__LOGIN_FREE_FAILURES": str(FREE_FAILURES)},
        ) as cluster,
        httpx.AsyncClient(base_url=cluster.replicas[0].url, timeout=10) as a,
        httpx.AsyncClient(base_url=cluster.replicas[1].url, timeout=10) as b,
    ):  # fmt: skip
        sim.webhook_url = cluster.replicas[0].webhook_url
        call = await sim.place_call(spec)
        await _until("the greeting", lambda: call.greeting_heard)

        # signed in on A ...
        login = await a.post("/login", data={"token": token})
        assert login.status_code == 303, login.text
        cookie = _session_cookie(login)
        # ... the live-calls page on B, with the call A supervises
        page = await b.get("/", headers=cookie)
        assert page.status_code == 200
        assert 'id="live-calls"' in page.text, page.text
        assert f'data-call-id="{call.call_id}"' in page.text
        found = re.search(r'<input type="hidden" name="csrf" value="([^"]+)">', page.text)
        assert found is not None
        csrf = found.group(1)
        # ... and an operator action through B's admin API with the session (and its CSRF token)
        assert (await b.post(f"/v1/calls/{call.call_id}/hangup?now=true", headers=cookie)).status_code == 403
        hangup = await b.post(f"/v1/calls/{call.call_id}/hangup?now=true", headers={**cookie, "x-sipctl-csrf": csrf})
        assert hangup.status_code == 202, hangup.text
        await sim.wait_ended(call.call_id, 20)
        async with asyncio.timeout(10):
            while (await a.get(f"/v1/calls/{call.call_id}", headers=cookie)).json().get("ended_reason") is None:
                await asyncio.sleep(0.1)
        assert (await a.get(f"/v1/calls/{call.call_id}", headers=cookie)).json()["ended_reason"] == "operator_hangup"

        # signed out on B: refused on A (and on B)
        out = await b.post("/logout", data={"csrf": csrf}, headers=cookie)
        assert out.status_code == 303
        for client in (a, b):
            assert 'action="/login"' in (await client.get("/", headers=cookie)).text
            assert (await client.get("/v1/calls", headers=cookie)).status_code == 401

        # wrong tokens alternating between the replicas are counted together
        statuses = []
        for n in range(FREE_FAILURES + 1):
            statuses.append((await (a, b)[n % 2].post("/login", data={"token": f"wrong-{n}"})).status_code)
        assert statuses == [401] * FREE_FAILURES + [429]
        for client in (a, b):
            blocked = await client.post("/login", data={"token": token})
            assert blocked.status_code == 429
            assert int(blocked.headers["retry-after"]) >= 1
            bearer = await client.get("/v1/calls", headers={"Authorization": f"Bearer {token}"})
            assert bearer.status_code == 429
