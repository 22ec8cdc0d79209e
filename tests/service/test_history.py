"""The cluster's calls through the admin API, on a real store (SQLite, and PostgreSQL where it is reachable):
``GET /v1/calls`` filters, paging and errors, ``GET /v1/calls/{id}`` for a finished call or another replica's
live one, and operator actions for a call another replica owns (queued for its owner)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from sip_controller.config import History, Limits, Secrets, Settings
from sip_controller.realtime.sideband import FakeConnector
from sip_controller.service.app import create_app
from sip_controller.service.history import MAX_LIMIT
from sip_controller.service.loopback import serve
from sip_controller.state.records import NewCall
from sip_controller.state.store import Store
from tests.service.history_stores import store_fixture  # noqa: F401 (the fixture `store`: both backends)
from tests.servicekit import BASE, PROFILE, SECRET, openai_router

pytestmark = pytest.mark.anyio

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: 2025-01-01T00:00:00Z
T0 = 1_735_689_600.0
OTHER = "replica-b"


@dataclass
class Api:
    client: httpx.AsyncClient
    store: Store

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.client.get(path, params=params, headers=AUTH)


@contextlib.asynccontextmanager
async def admin_api(store: Store, **history: Any) -> AsyncIterator[Api]:
    """The real app on ``store`` behind a loopback server; ``history``: the config's ``history`` section."""
    settings = Settings(
        profiles={"default": PROFILE, "sales": PROFILE}, limits=Limits(hangup_close_wait_s=0.1),
        history=History(**history),
    )  # fmt: skip
    app_secrets = Secrets(
        openai_api_key=SecretStr("sk-test"),
        webhook_secrets=(SecretStr(SECRET),),
        openai_base_url=BASE,
        admin_token=SecretStr(TOKEN),
    )
    router = openai_router()
    async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as openai_client:
        app = create_app(settings, app_secrets, http_client=openai_client, connect=FakeConnector(), store=store)
        async with serve(app) as server, httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            yield Api(client, store)


async def finished(
    store: Store, call_id: str, ended_at: float, *, reason: str = "caller_hangup", profile: str = "default",
    caller: str | None = "+14155550123",
) -> None:  # fmt: skip
    row = await store.create_call(
        NewCall(call_id=call_id, owner=OTHER, profile=profile, inputs={}, received_at=ended_at - 60, caller=caller)
    )
    assert row is not None
    report: dict[str, object] = {"call_id": call_id, "caller": caller, "caller_masked": False, "ended_reason": reason,
                                 "transcript": []}  # fmt: skip
    await store.finish_call(row.fence, state="ended", ended_reason=reason, report=report, ended_at=ended_at)


async def live(store: Store, call_id: str, owner: str = OTHER) -> None:
    await store.heartbeat(owner, 3600.0)  # a replica alive for the whole test: its calls are not taken over
    row = await store.create_call(
        NewCall(call_id=call_id, owner=owner, profile="default", inputs={}, received_at=T0, caller="+14155550100")
    )
    assert row is not None


async def seven(store: Store) -> None:
    """rtc_0 … rtc_6 ended an hour apart from T0 (rtc_6 newest); odd ones were agent_end_call on profile sales
    from +14155550199."""
    for i in range(7):
        if i % 2:
            await finished(store, f"rtc_{i}", T0 + 3600 * i, reason="agent_end_call", profile="sales",
                           caller="+14155550199")  # fmt: skip
        else:
            await finished(store, f"rtc_{i}", T0 + 3600 * i)


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [c["call_id"] for c in response.json()["calls"]]


async def test_live_calls_of_other_replicas_come_first_then_history_newest_first(store: Store) -> None:
    await seven(store)
    await live(store, "rtc_live")
    async with admin_api(store) as api:
        response = await api.get("/v1/calls")
        assert ids(response) == ["rtc_live", "rtc_6", "rtc_5", "rtc_4", "rtc_3", "rtc_2", "rtc_1", "rtc_0"]
        body = response.json()
        assert body["next_cursor"] is None
        head, newest = body["calls"][0], body["calls"][1]
        assert (head["live"], head["owner"], head["caller"], head["ended"]) == (True, OTHER, "+1415***0100", None)
        assert (newest["live"], newest["owner"], newest["ended_reason"]) == (False, None, "caller_hangup")
        assert newest["ended"] == "2025-01-01T06:00:00Z"
        assert newest["duration_s"] == 60.0
        assert "+14155550123" not in response.text


async def test_pages_follow_the_cursor_without_gaps_or_repeats(store: Store) -> None:
    await seven(store)
    await live(store, "rtc_live")
    async with admin_api(store) as api:
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            response = await api.get("/v1/calls", **params)
            seen += ids(response)
            pages += 1
            cursor = response.json()["next_cursor"]
            if cursor is None:
                break
        assert pages == 3
        assert seen == ["rtc_live", "rtc_6", "rtc_5", "rtc_4", "rtc_3", "rtc_2", "rtc_1", "rtc_0"]  # live: page 1


async def test_filters(store: Store) -> None:
    await seven(store)
    await live(store, "rtc_live")
    async with admin_api(store) as api:
        assert ids(await api.get("/v1/calls", ended_reason="agent_end_call")) == ["rtc_5", "rtc_3", "rtc_1"]
        assert ids(await api.get("/v1/calls", profile="sales")) == ["rtc_5", "rtc_3", "rtc_1"]
        assert ids(await api.get("/v1/calls", caller="+14155550123")) == ["rtc_6", "rtc_4", "rtc_2", "rtc_0"]
        assert ids(await api.get("/v1/calls", caller="+14155550100")) == ["rtc_live"]
        window = {"since": "2025-01-01T02:00:00Z", "until": str(int(T0 + 3600 * 5))}  # [02:00, 05:00)
        assert ids(await api.get("/v1/calls", **window)) == ["rtc_4", "rtc_3", "rtc_2"]
        assert ids(await api.get("/v1/calls", since="2025-01-01T04:00:00+02:00")) == [
            "rtc_6", "rtc_5", "rtc_4", "rtc_3", "rtc_2"]  # fmt: skip
        assert ids(await api.get("/v1/calls", profile="nobody")) == []


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"since": "yesterday"}, "since"),
        ({"since": "2025-01-01T00:00:00"}, "since"),  # no offset
        ({"until": "2025-13-01T00:00:00Z"}, "until"),
        ({"since": str(int(T0)), "until": str(int(T0))}, "until"),
        ({"ended_reason": "bored"}, "ended_reason"),
        ({"caller": "4155550123"}, "caller"),
        ({"limit": "0"}, "limit"),
        ({"limit": str(MAX_LIMIT + 1)}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"profile": ""}, "profile"),
        ({"state": "live"}, "state"),
    ],
)
async def test_bad_filters_are_400_naming_the_parameter(store: Store, params: dict[str, str], named: str) -> None:
    async with admin_api(store) as api:
        response = await api.get("/v1/calls", **params)
        assert response.status_code == 400
        assert response.json()["error"].startswith(f"`{named}`: ")


async def test_one_call_finished_or_live_elsewhere(store: Store) -> None:
    await finished(store, "rtc_done", T0 + 10)
    await live(store, "rtc_live")
    async with admin_api(store) as api:
        report = (await api.get("/v1/calls/rtc_done")).json()
        assert report["ended_reason"] == "caller_hangup"
        assert report["transcript"] == []
        assert (report["caller"], report["caller_masked"]) == ("+1415***0123", True)  # stored unmasked: masked
        summary = (await api.get("/v1/calls/rtc_live")).json()
        assert (summary["call_id"], summary["live"], summary["owner"]) == ("rtc_live", True, OTHER)
        assert (await api.get("/v1/calls/rtc_nope")).status_code == 404


async def test_operator_actions_for_another_replica_s_call_are_queued_for_its_owner(store: Store) -> None:
    await live(store, "rtc_live")
    await finished(store, "rtc_done", T0 + 10)
    async with admin_api(store) as api:
        hangup = await api.client.post("/v1/calls/rtc_live/hangup?now=true", headers=AUTH)
        assert hangup.status_code == 202
        assert (hangup.json()["status"], hangup.json()["owner"]) == ("hanging_up", OTHER)
        bad = await api.client.post("/v1/calls/rtc_live/transfer", headers=AUTH, json={"target": "+15550000000"})
        assert bad.status_code == 422
        assert "sales" in bad.json()["error"]
        transfer = await api.client.post("/v1/calls/rtc_live/transfer", headers=AUTH, json={"target": "sales"})
        assert transfer.status_code == 202
        assert (await api.client.post("/v1/calls/rtc_done/hangup", headers=AUTH)).status_code == 409
        assert (await api.client.post("/v1/calls/rtc_nope/hangup", headers=AUTH)).status_code == 404
    taken = await store.take_commands(OTHER)
    assert [(c.kind, c.args) for c in taken] == [("hangup", {"now": True}), ("transfer", {"target": "sales"})]
    assert [c.id for c in taken] == [hangup.json()["command_id"], transfer.json()["command_id"]]
