"""Hangup until confirmed across processes (#13): a call whose hangup OpenAI answers 500 until the app stops is left
``hanging_up`` in the store (not reported ``shutdown``); the next app on the same SQLite file, with OpenAI
answering again, confirms the hangup (its hangup janitor) and delivers the report once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from sip_controller.calls.inputs import OperatorHangup
from sip_controller.config import Limits, Reports, Secrets, Settings
from sip_controller.realtime.retries import RetryPolicy
from sip_controller.realtime.sideband import FakeConnector
from sip_controller.service.app import create_app
from sip_controller.service.loopback import serve
from sip_controller.service.metrics import Metrics
from sip_controller.state.records import CallRow
from sip_controller.state.sqlite import SQLiteStore
from tests.servicekit import BASE, PROFILE, SECRET, Service, openai_router

pytestmark = pytest.mark.anyio

QUICK = RetryPolicy(wait_initial=0.01, wait_max=0.02, wait_jitter=0.0, attempts=2, timeout_s=2.0)


@contextlib.asynccontextmanager
async def app_on(
    path: Path, log: Path, *, hangup_status: int, metrics: Metrics | None = None
) -> AsyncIterator[Service]:
    router = openai_router()
    router.routes["hangup"].respond(hangup_status)
    connector = FakeConnector()
    secrets = Secrets(openai_api_key=SecretStr("sk-test"), webhook_secrets=(SecretStr(SECRET),), openai_base_url=BASE)
    settings = Settings(
        profiles={"default": PROFILE},
        limits=Limits(hangup_close_wait_s=0.1),
        reports=Reports(jsonl_path=str(log)),
    )
    async with (
        await SQLiteStore.open(path) as store,
        httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as openai_client,
    ):
        app = create_app(settings, secrets, http_client=openai_client, store=store, connect=connector,
                         drain_timeout_s=0.3, retry=QUICK, metrics=metrics)  # fmt: skip
        async with serve(app) as server, httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            yield Service(client, app, router, connector, store)


def reports(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


async def test_a_hangup_left_unconfirmed_is_finished_by_the_next_app(tmp_path: Path) -> None:
    db, log = tmp_path / "state.db", tmp_path / "calls.jsonl"
    metrics = Metrics()
    async with app_on(db, log, hangup_status=500, metrics=metrics) as a:
        await a.place("rtc_stuck")
        supervisor = a.runtime.registry.supervisor("rtc_stuck")
        assert supervisor is not None
        supervisor.post(OperatorHangup(now=True))
        async with asyncio.timeout(5):
            while (row := await a.store.get_call("rtc_stuck")) is None or row.state != "hanging_up":
                await asyncio.sleep(0.02)
        assert row.wake_at is not None  # the retry the supervisor scheduled, recorded through the call's fence
        assert re.search(rb"^sipctl_hangup_retries_total [1-9]", metrics.render(), re.M)  # counted
    # A stopped while the hangup was still refused: the call is still up at OpenAI, so it is not reported
    left = await _row(db, "rtc_stuck")
    assert left.live
    assert left.state == "hanging_up"
    assert reports(log) == []
    async with app_on(db, log, hangup_status=200) as b:
        async with asyncio.timeout(10):
            while not reports(log):
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # another janitor pass and notifier poll: nothing more is written
        assert b.router.routes["hangup"].call_count == 1
        done = await b.store.get_call("rtc_stuck")
        assert done is not None
        assert not done.live
        assert done.owner == b.runtime.process_id
    (report,) = reports(log)
    assert report["call_id"] == "rtc_stuck"
    assert report["ended_reason"] == "operator_hangup"
    assert report["hangup_confirmed"] is True
    assert isinstance(report["hangup_attempts"], int)
    assert report["hangup_attempts"] >= 2


async def _row(path: Path, call_id: str) -> CallRow:
    async with await SQLiteStore.open(path) as store:
        row = await store.get_call(call_id)
    assert row is not None
    return row
