"""The store on the call's path, through the running app: a call's report waits in the outbox while the sink is
down (``/metrics`` shows the backlog) and a second app on the same SQLite file (a restart) delivers it; the JSONL
path is checked at start."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sip_controller.agent import preflight
from sip_controller.config import Limits, ReportEndpoint, Reports, Settings
from sip_controller.service.loopback import serve
from tests.servicekit import PROFILE, running_service

pytestmark = pytest.mark.anyio


class Sink:
    """The operator's report endpoint, down (503) until ``up`` is set."""

    def __init__(self) -> None:
        self.up = False
        self.failed = 0
        self.events: list[dict[str, Any]] = []

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        if not self.up:
            self.failed += 1
            return Response(status_code=503)
        self.events.append(json.loads(body))
        return Response(status_code=204)


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_a_report_waits_for_a_sink_that_is_down_and_a_restart_delivers_it(tmp_path: Path) -> None:
    sink = Sink()
    state = str(tmp_path / "state.db")
    async with serve(Starlette(routes=[Route("/hooks", sink.endpoint, methods=["POST"])])) as receiver:
        reports = Reports(
            endpoints=(ReportEndpoint(url=f"{receiver.url}/hooks"),),
            jsonl_path=str(tmp_path / "calls.jsonl"),
            flush_timeout_s=0.5,
        )
        settings = Settings(profiles={"default": PROFILE}, limits=Limits(hangup_close_wait_s=0.1), reports=reports)
        async with running_service(settings=settings, store_path=state) as service:
            await service.place("rtc_d1")
            service.connector.attached["rtc_d1"].close_from_server()
            await service.runtime.registry.wait_ended("rtc_d1", 5)
            async with asyncio.timeout(5):
                while sink.failed < 2:
                    await asyncio.sleep(0.02)
            text = (await service.client.get("/metrics")).text
            assert _metric(text, "sipctl_report_outbox_pending") == 2  # started and ended; the line is written
            assert _metric(text, "sipctl_report_outbox_oldest_age_seconds") > 0
            assert _metric(text, "sipctl_report_delivery_failures_total") >= 2
            assert _metric(text, "sipctl_report_jsonl_write_failures_total") == 0
            assert _metric(text, "sipctl_report_outbox_given_up") == 0
        assert sink.events == []
        sink.up = True
        async with running_service(settings=settings, store_path=state) as again:  # the same host, restarted
            async with asyncio.timeout(10):
                while len(sink.events) < 2:
                    await asyncio.sleep(0.02)
            text = (await again.client.get("/metrics")).text
            assert _metric(text, "sipctl_report_outbox_pending") == 0
            assert _metric(text, "sipctl_report_outbox_oldest_age_seconds") == 0
    assert [(e["type"], e["data"]["call_id"]) for e in sink.events] == [
        ("call.started", "rtc_d1"), ("call.ended", "rtc_d1"),
    ]  # fmt: skip
    lines = (tmp_path / "calls.jsonl").read_text().splitlines()
    assert [json.loads(line)["call_id"] for line in lines] == ["rtc_d1"]


async def test_a_second_webhook_for_a_call_already_in_the_store_is_a_duplicate(tmp_path: Path) -> None:
    state = str(tmp_path / "state.db")
    async with running_service(store_path=state) as service:
        await service.place("rtc_dup")
        service.connector.attached["rtc_dup"].close_from_server()
        await service.runtime.registry.wait_ended("rtc_dup", 5)
    async with running_service(store_path=state) as again:  # claims shared through the store
        from tests.servicekit import incoming

        body, headers = incoming("rtc_dup")
        answer = await again.client.post("/webhooks/openai", content=body, headers=headers)
        assert answer.json() == {"status": "duplicate"}
        assert again.accepts() == 0


@pytest.mark.parametrize("kind", ["file_as_folder", "folder"])
def test_an_unwritable_call_log_is_refused_at_start_naming_the_setting(tmp_path: Path, kind: str) -> None:
    blocker = tmp_path / "blocker"
    if kind == "file_as_folder":
        blocker.write_text("x")
        path = blocker / "logs" / "calls.jsonl"
    else:
        blocker.mkdir()
        path = blocker
    problem = preflight.jsonl_path_problem(str(path))
    assert problem is not None
    assert problem.startswith("reports.jsonl_path: ")
    assert preflight.jsonl_path_problem(str(tmp_path / "new" / "calls.jsonl")) is None
