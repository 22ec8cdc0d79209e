"""Two replicas on one store (two apps, each its own store connection, on one SQLite file): the admin API of
either shows the cluster's live calls, and an operator hangup or transfer sent to the replica that does NOT own
the call is carried out by the owner."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from sip_controller.config import Limits, Secrets, Settings
from sip_controller.realtime.sideband import FakeConnector
from sip_controller.service.app import create_app
from sip_controller.service.loopback import serve
from sip_controller.state.sqlite import SQLiteStore
from tests.servicekit import BASE, PROFILE, SECRET, Service, openai_router

pytestmark = pytest.mark.anyio

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.asynccontextmanager
async def replica(path: Path) -> AsyncIterator[Service]:
    router = openai_router()
    connector = FakeConnector()
    secrets = Secrets(
        openai_api_key=SecretStr("sk-test"),
        webhook_secrets=(SecretStr(SECRET),),
        openai_base_url=BASE,
        admin_token=SecretStr(TOKEN),
    )
    settings = Settings(profiles={"default": PROFILE}, limits=Limits(hangup_close_wait_s=0.1))
    async with (
        await SQLiteStore.open(path) as store,
        httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as openai_client,
    ):
        app = create_app(settings, secrets, http_client=openai_client, store=store, connect=connector,
                         drain_timeout_s=0.5)  # fmt: skip
        async with serve(app) as server, httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            yield Service(client, app, router, connector, store)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Service, Service]]:
    async with replica(tmp_path / "state.db") as a, replica(tmp_path / "state.db") as b:
        yield a, b


async def test_either_replica_lists_the_cluster_s_live_calls(pair: tuple[Service, Service]) -> None:
    a, b = pair
    await a.place("rtc_on_a")
    await b.place("rtc_on_b")
    for service in (a, b):
        calls = {c["call_id"]: c for c in (await service.client.get("/v1/calls", headers=AUTH)).json()["calls"]}
        assert calls["rtc_on_a"]["owner"] == a.runtime.process_id
        assert calls["rtc_on_b"]["owner"] == b.runtime.process_id
        assert all(c["live"] for c in calls.values())
    login = await b.client.post("/login", data={"token": TOKEN})
    b.client.cookies.clear()
    (cookie,) = [h.split(";")[0] for h in login.headers.get_list("set-cookie") if h.startswith("sipctl_session=")]
    page = await b.client.get("/", headers={"cookie": cookie})  # the live-calls page, signed in
    assert page.status_code == 200
    assert f"(on replica {a.runtime.process_id})" in page.text
    assert 'data-call-id="rtc_on_a"' in page.text
    assert "shows only on the replica that owns it" in page.text


async def test_a_hangup_sent_to_the_other_replica_ends_the_call(pair: tuple[Service, Service]) -> None:
    a, b = pair
    await a.place("rtc_x")
    response = await b.client.post("/v1/calls/rtc_x/hangup?now=true", headers=AUTH)
    assert response.status_code == 202
    assert response.json()["owner"] == a.runtime.process_id
    record = await a.runtime.registry.wait_ended("rtc_x", 10)
    assert record.ended_reason == "operator_hangup"
    assert a.router.routes["hangup"].call_count == 1
    assert b.router.routes["hangup"].call_count == 0  # the owner hung up; the other replica only passed it on
    async with asyncio.timeout(5):  # the report, read from the store by the replica that did not own the call
        while (report := await b.client.get("/v1/calls/rtc_x", headers=AUTH)).json().get("ended_reason") is None:
            await asyncio.sleep(0.05)
    assert report.json()["ended_reason"] == "operator_hangup"
    assert (await b.client.post("/v1/calls/rtc_x/hangup", headers=AUTH)).status_code == 409


async def test_a_transfer_sent_to_the_other_replica_is_carried_out_by_the_owner(pair: tuple[Service, Service]) -> None:
    a, b = pair
    await a.place("rtc_t")
    response = await b.client.post("/v1/calls/rtc_t/transfer", headers=AUTH, json={"target": "sales"})
    assert response.status_code == 202
    sideband = a.connector.attached["rtc_t"]
    async with asyncio.timeout(10):
        while not any("transferring them to sales" in json.dumps(e) for e in sideband.sent):
            await asyncio.sleep(0.02)


def _session_cookie(response: httpx.Response) -> str:
    (cookie,) = [h.split(";")[0] for h in response.headers.get_list("set-cookie") if h.startswith("sipctl_session=")]
    return cookie


async def test_a_console_session_holds_on_either_replica_and_sign_out_ends_it_on_both(
    pair: tuple[Service, Service],
) -> None:
    a, b = pair
    await a.place("rtc_s")
    login = await a.client.post("/login", data={"token": TOKEN})
    a.client.cookies.clear()
    assert login.status_code == 303
    cookie = {"cookie": _session_cookie(login)}
    page = await b.client.get("/", headers=cookie)  # signed in on A, served by B
    assert 'id="live-calls"' in page.text
    csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    hangup = await b.client.post("/v1/calls/rtc_s/hangup?now=true", headers={**cookie, "x-sipctl-csrf": csrf})
    assert hangup.status_code == 202
    assert (await a.runtime.registry.wait_ended("rtc_s", 10)).ended_reason == "operator_hangup"
    out = await b.client.post("/logout", data={"csrf": csrf}, headers=cookie)
    assert out.status_code == 303
    for service in (a, b):
        assert 'action="/login"' in (await service.client.get("/", headers=cookie)).text
        assert (await service.client.get("/v1/calls", headers=cookie)).status_code == 401


async def test_wrong_tokens_are_counted_across_the_replicas(pair: tuple[Service, Service]) -> None:
    a, b = pair
    free = a.runtime.settings.console.login_free_failures
    statuses = []
    for n in range(free + 1):  # the guesser alternates between the replicas
        service = (a, b)[n % 2]
        statuses.append((await service.client.get("/v1/calls", headers={"Authorization": "Bearer wrong"})).status_code)
    assert statuses == [401] * free + [429]
    for service in (a, b):  # now blocked on both, even with the right token
        blocked = await service.client.get("/v1/calls", headers=AUTH)
        assert blocked.status_code == 429
        assert int(blocked.headers["retry-after"]) >= 1
