"""Tests for sip_controller.service.notifier: signed event deliveries to a real loopback receiver, retries and their
bounds, the JSONL call log, queue overflow and the flush on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sip_controller.calls.report import CallRecord, TranscriptEntry, report_document
from sip_controller.config import ConfigError, ReportEndpoint, Reports, Settings
from sip_controller.service.loopback import RunningServer, serve
from sip_controller.service.notifier import DeliveryPolicy, ReportNotifier
from sip_controller.simulator import new_webhook_secret

pytestmark = pytest.mark.anyio

FAST = DeliveryPolicy(wait_initial=0.01, wait_max=0.05, wait_jitter=0.01, total_s=5.0)
SECRET_ENV = "TEST_REPORT_SECRET"
CALLER = "+14155550123"
RECEIVED = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@dataclass
class Receiver:
    """The operator's endpoint: verifies each delivery with standardwebhooks, can fail or hang on purpose."""

    secret: str | None
    fail_first: int = 0
    fail_status: int = 500
    fail_headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False
    hits: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    bad_signatures: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def endpoint(self, request: Request) -> Response:
        self.hits += 1
        body = await request.body()
        if self.hang:
            async with asyncio.timeout(10):  # released by the test before the server stops
                await self.release.wait()
            return Response(status_code=204)
        if self.hits <= self.fail_first:
            return Response(status_code=self.fail_status, headers=self.fail_headers)
        headers = dict(request.headers)
        if self.secret is not None:
            try:
                Webhook(self.secret).verify(body, headers)
            except WebhookVerificationError:
                self.bad_signatures += 1
                return JSONResponse({"error": "bad signature"}, status_code=401)
        self.headers.append(headers)
        self.events.append(json.loads(body))
        return Response(status_code=204)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hooks/calls", self.endpoint, methods=["POST"])])


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, RunningServer]]:
    rx = Receiver(secret=new_webhook_secret())
    async with serve(rx.app()) as server:
        try:
            yield rx, server
        finally:
            rx.release.set()


def reports(server: RunningServer | None, **kwargs: Any) -> Reports:
    endpoints = (ReportEndpoint(url=f"{server.url}/hooks/calls?token=abc", secret_env=SECRET_ENV),) if server else ()
    return Reports(endpoints=endpoints, **kwargs)


def notifier_for(rx: Receiver, settings: Reports, **kwargs: Any) -> ReportNotifier:
    environ = {SECRET_ENV: rx.secret} if rx.secret else {}
    return ReportNotifier(settings, environ=environ, policy=FAST, **kwargs)


@contextlib.asynccontextmanager
async def running(notifier: ReportNotifier) -> AsyncIterator[ReportNotifier]:
    """Started for the block, then closed (flushing within 5 s) whatever the block did."""
    notifier.start()
    try:
        yield notifier
    finally:
        await notifier.aclose(5)


def ended_record(call_id: str = "rtc_1") -> CallRecord:
    record = CallRecord(call_id=call_id, profile="default", received_at=RECEIVED, caller=CALLER, dialed="+18005550100")
    record.accepted_s = 0.1
    record.attached_s = 0.3
    record.transcripts.append(TranscriptEntry("assistant", "Hello, Example Dental", 0.5))
    record.transcripts.append(TranscriptEntry("caller", "my private question", 1.5))
    record.state = "ended"
    record.ended_reason = "caller_hangup"
    record.duration_s = 4.0
    return record


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_events_arrive_signed_with_the_documents(receiver: tuple[Receiver, RunningServer]) -> None:
    rx, server = receiver
    notifier = notifier_for(rx, reports(server))
    async with running(notifier):
        record = CallRecord(call_id="rtc_1", profile="default", received_at=RECEIVED, caller=CALLER)
        notifier.call_started(record)
        record = ended_record()
        notifier.call_ended(record)
        await until(lambda: len(rx.events) == 2)
    assert rx.bad_signatures == 0
    by_type = {e["type"]: e for e in rx.events}
    assert set(by_type) == {"call.started", "call.ended"}
    for event, headers in zip(rx.events, rx.headers, strict=True):
        assert event["id"].startswith("evt_")
        assert headers["webhook-id"] == event["id"]
        assert headers["content-type"] == "application/json"
        assert headers["webhook-signature"].startswith("v1,")
        assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
        assert event["created_at"].endswith("Z")
        assert event["data"]["caller"] == "+1415***0123"
    started = by_type["call.started"]["data"]
    assert started["call_id"] == "rtc_1"
    assert "transcript" not in started
    assert by_type["call.ended"]["data"] == report_document(record)
    assert notifier.stats.delivered == 2
    assert notifier.stats.failed == notifier.stats.dropped == notifier.stats.retried == 0


async def test_a_failing_endpoint_is_retried_then_delivered(receiver: tuple[Receiver, RunningServer]) -> None:
    rx, server = receiver
    rx.fail_first = 2
    notifier = notifier_for(rx, reports(server, events=("call.ended",)))
    async with running(notifier):
        notifier.call_ended(ended_record())
        await until(lambda: notifier.stats.delivered == 1)
    assert rx.hits == 3
    assert len(rx.events) == 1
    assert rx.bad_signatures == 0  # each attempt is signed afresh, with the same webhook-id
    assert notifier.stats.retried == 2
    assert notifier.stats.failed == 0


async def test_429_is_retried_honouring_a_short_retry_after(receiver: tuple[Receiver, RunningServer]) -> None:
    rx, server = receiver
    rx.fail_first, rx.fail_status, rx.fail_headers = 1, 429, {"retry-after": "0"}
    notifier = notifier_for(rx, reports(server, events=("call.ended",)))
    async with running(notifier):
        notifier.call_ended(ended_record())
        await until(lambda: notifier.stats.delivered == 1)
    assert rx.hits == 2


async def test_a_4xx_answer_is_final(receiver: tuple[Receiver, RunningServer]) -> None:
    rx, server = receiver
    rx.fail_first, rx.fail_status = 10, 400
    notifier = notifier_for(rx, reports(server, events=("call.ended",), max_attempts=5))
    async with running(notifier):
        notifier.call_ended(ended_record())
        await until(lambda: notifier.stats.failed == 1)
    assert rx.hits == 1
    assert notifier.stats.delivered == 0


async def test_persistent_5xx_gives_up_after_max_attempts(receiver: tuple[Receiver, RunningServer]) -> None:
    rx, server = receiver
    rx.fail_first = 100
    notifier = notifier_for(rx, reports(server, events=("call.ended",), max_attempts=3))
    async with running(notifier):
        notifier.call_ended(ended_record())
        await until(lambda: notifier.stats.failed == 1)
    assert rx.hits == 3
    assert notifier.stats.retried == 2


async def test_an_endpoint_that_never_answers_times_out_with_bounded_attempts(
    receiver: tuple[Receiver, RunningServer],
) -> None:
    rx, server = receiver
    rx.hang = True
    notifier = notifier_for(rx, reports(server, events=("call.ended",), timeout_s=0.2, max_attempts=2))
    notifier.start()
    started = time.monotonic()
    try:
        notifier.call_ended(ended_record())
        await until(lambda: notifier.stats.failed == 1)
    finally:
        await notifier.aclose(5)
        rx.release.set()
    assert time.monotonic() - started < 3
    assert rx.hits == 2
    assert notifier.stats.delivered == 0


async def test_an_unreachable_endpoint_is_retried_then_fails() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Reports(endpoints=(ReportEndpoint(url=f"http://127.0.0.1:{port}/x"),), max_attempts=3)
    notifier = ReportNotifier(settings, policy=FAST)
    async with running(notifier):
        notifier.call_ended(ended_record())
        await until(lambda: notifier.stats.failed == 1)
    assert notifier.stats.retried == 2


async def test_jsonl_call_log_has_one_parseable_line_per_call(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "nested" / "calls.jsonl"
    notifier = ReportNotifier(Reports(jsonl_path=str(path)), policy=FAST)
    async with running(notifier):
        for i in range(3):
            notifier.call_started(ended_record(f"rtc_{i}"))  # no endpoints: nothing to send
            notifier.call_ended(ended_record(f"rtc_{i}"))
        await until(lambda: notifier.stats.written == 3)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    docs = [json.loads(line) for line in lines]
    assert [d["call_id"] for d in docs] == ["rtc_0", "rtc_1", "rtc_2"]
    assert all(d["caller"] == "+1415***0123" for d in docs)
    assert CALLER not in path.read_text(encoding="utf-8")
    assert docs[0] == report_document(ended_record("rtc_0"))
    assert docs[0]["transcript"][1]["text"] == "my private question"


async def test_jsonl_unmasked_when_configured(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    path.write_text('{"existing": true}\n', encoding="utf-8")
    notifier = ReportNotifier(Reports(jsonl_path=str(path), mask_caller=False), policy=FAST)
    notifier.start()
    notifier.call_ended(ended_record())
    await notifier.aclose(5)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2  # appended, never truncated
    assert json.loads(lines[1])["caller"] == CALLER
    assert notifier.stats.written == 1


async def test_an_unwritable_call_log_is_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    notifier = ReportNotifier(Reports(jsonl_path=str(blocker / "calls.jsonl")), policy=FAST)
    notifier.start()
    notifier.call_ended(ended_record())
    await notifier.aclose(5)
    assert notifier.stats.write_failed == 1
    assert notifier.stats.written == 0


async def test_a_full_queue_drops_the_oldest(receiver: tuple[Receiver, RunningServer], tmp_path: Path) -> None:
    rx, server = receiver
    path = tmp_path / "calls.jsonl"
    notifier = notifier_for(rx, reports(server, events=("call.ended",), queue_size=2, jsonl_path=str(path)))
    with structlog.testing.capture_logs() as logs:
        for i in range(3):  # queued before the workers run: the first is pushed out
            notifier.call_ended(ended_record(f"rtc_{i}"))
    assert notifier.stats.dropped == 1
    assert notifier.stats.write_dropped == 1
    assert [e["event"] for e in logs].count("notifier.queue_full_dropped") == 1
    notifier.start()
    await notifier.aclose(5)
    assert sorted(e["data"]["call_id"] for e in rx.events) == ["rtc_1", "rtc_2"]
    assert [json.loads(line)["call_id"] for line in path.read_text(encoding="utf-8").splitlines()] == [
        "rtc_1",
        "rtc_2",
    ]
    assert notifier.stats.delivered == 2


async def test_shutdown_flushes_what_is_queued(receiver: tuple[Receiver, RunningServer], tmp_path: Path) -> None:
    rx, server = receiver
    path = tmp_path / "calls.jsonl"
    notifier = notifier_for(rx, reports(server, jsonl_path=str(path)), concurrency=2)
    notifier.start()
    for i in range(10):
        notifier.call_started(ended_record(f"rtc_{i}"))
        notifier.call_ended(ended_record(f"rtc_{i}"))
    await notifier.aclose(5)  # at once: everything queued goes out first
    assert len(rx.events) == 20
    assert notifier.stats.delivered == 20
    assert len(path.read_text(encoding="utf-8").splitlines()) == 10
    notifier.call_ended(ended_record("late"))  # after close: refused, counted
    assert notifier.stats.dropped == 1
    assert notifier.stats.write_dropped == 1
    assert len(path.read_text(encoding="utf-8").splitlines()) == 10


async def test_shutdown_is_bounded_when_the_endpoint_hangs(receiver: tuple[Receiver, RunningServer]) -> None:
    rx, server = receiver
    rx.hang = True
    notifier = notifier_for(rx, reports(server, timeout_s=30), concurrency=1)
    notifier.start()
    notifier.call_started(ended_record("rtc_a"))
    notifier.call_ended(ended_record("rtc_a"))
    await until(lambda: rx.hits == 1)
    started = time.monotonic()
    await notifier.aclose(0.3)
    rx.release.set()
    assert time.monotonic() - started < 2
    assert notifier.stats.dropped == 2  # the one in flight and the one still queued
    assert notifier.stats.delivered == 0


async def test_a_client_passed_in_stays_open(receiver: tuple[Receiver, RunningServer]) -> None:
    rx, server = receiver
    async with httpx.AsyncClient() as client:
        notifier = notifier_for(rx, reports(server), client=client)
        notifier.start()
        notifier.call_ended(ended_record())
        await notifier.aclose(5)
        assert not client.is_closed
        assert len(rx.events) == 1


async def test_unsigned_endpoint_gets_no_signature_header(receiver: tuple[Receiver, RunningServer]) -> None:
    rx, server = receiver
    rx.secret = None
    settings = Reports(endpoints=(ReportEndpoint(url=f"{server.url}/hooks/calls"),), events=("call.ended",))
    notifier = ReportNotifier(settings, policy=FAST)
    with structlog.testing.capture_logs() as logs:
        notifier.start()
    assert "notifier.endpoint_unsigned" in [e["event"] for e in logs]
    notifier.call_ended(ended_record())
    await notifier.aclose(5)
    assert len(rx.headers) == 1
    assert "webhook-signature" not in rx.headers[0]
    assert rx.headers[0]["webhook-id"] == rx.events[0]["id"]


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({}, "TEST_REPORT_SECRET is not set"),
        ({SECRET_ENV: "  "}, "TEST_REPORT_SECRET is not set"),
        ({SECRET_ENV: "sk-not-a-webhook-secret"}, "does not hold a whsec_"),
        ({SECRET_ENV: "whsec_"}, "not 'whsec_' + base64"),
    ],
)
async def test_a_missing_or_bad_secret_fails_start_naming_the_field(environ: dict[str, str], problem: str) -> None:
    settings = Reports(endpoints=(ReportEndpoint(url="https://ops.example.com/x", secret_env=SECRET_ENV),))
    notifier = ReportNotifier(settings, environ=environ)
    with pytest.raises(ConfigError) as info:
        notifier.start()
    assert info.value.problems[0].startswith("reports.endpoints.0.secret_env: ")
    assert problem in info.value.problems[0]
    assert "sk-not-a-webhook-secret" not in str(info.value)
    await notifier.aclose(1)


def test_report_settings_validate() -> None:
    with pytest.raises(ValueError, match="http"):
        ReportEndpoint(url="ftp://example.com/x")
    with pytest.raises(ValueError, match="environment variable"):
        ReportEndpoint(url="https://example.com/x", secret_env="whsec_abc+/=")
    with pytest.raises(ValueError, match=r"call\.started"):
        Reports.model_validate({"events": ["call.answered"]})
    assert Settings().reports == Reports()
    assert Settings().reports.jsonl_path is None


async def test_logs_carry_no_secret_caller_or_transcript(
    receiver: tuple[Receiver, RunningServer], tmp_path: Path
) -> None:
    rx, server = receiver
    rx.fail_first = 1
    notifier = notifier_for(rx, reports(server, jsonl_path=str(tmp_path / "c.jsonl")))
    with structlog.testing.capture_logs() as logs:
        notifier.start()
        notifier.call_started(ended_record())
        notifier.call_ended(ended_record())
        await until(lambda: notifier.stats.delivered == 2)
        await notifier.aclose(5)
    text = json.dumps(logs, default=str)
    assert rx.secret is not None
    for forbidden in (rx.secret, rx.secret.removeprefix("whsec_"), CALLER, "my private question", "token=abc"):
        assert forbidden not in text
    assert "notifier.delivered" in [e["event"] for e in logs]
