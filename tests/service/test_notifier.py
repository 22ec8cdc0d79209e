"""Tests for sip_controller.service.notifier: reports driven from the store's outbox (a real SQLite file) to a real
loopback receiver: signed deliveries with a stable webhook-id, backoff while a sink is down and nothing lost, order
per call, given-up rows counted, restarts picking up what is pending, and the JSONL call log retried and counted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import count
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

from sip_controller.calls.outbox import ended_items, event_id, started_items
from sip_controller.calls.report import CallRecord, TranscriptEntry, report_document
from sip_controller.config import ConfigError, ReportEndpoint, Reports, Settings
from sip_controller.service.loopback import RunningServer, serve
from sip_controller.service.notifier import DeliveryPolicy, ReportNotifier
from sip_controller.simulator import new_webhook_secret
from sip_controller.state.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

FAST = DeliveryPolicy(wait_initial=0.01, wait_max=0.05, wait_jitter=0.01, poll_s=0.05)
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
    #: the webhook-id of every attempt, failed ones included
    attempt_ids: list[str] = field(default_factory=list)

    async def endpoint(self, request: Request) -> Response:
        self.hits += 1
        self.attempt_ids.append(request.headers.get("webhook-id", ""))
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


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with await SQLiteStore.open(tmp_path / "state.db") as opened:
        yield opened


def reports(server: RunningServer | None, **kwargs: Any) -> Reports:
    endpoints = (ReportEndpoint(url=f"{server.url}/hooks/calls?token=abc", secret_env=SECRET_ENV),) if server else ()
    return Reports(endpoints=endpoints, **kwargs)


_workers = count(1)


def notifier_for(rx: Receiver, settings: Reports, store: SQLiteStore, **kwargs: Any) -> ReportNotifier:
    environ = {SECRET_ENV: rx.secret} if rx.secret else {}
    return ReportNotifier(settings, store, worker=f"worker-{next(_workers)}", environ=environ, policy=FAST, **kwargs)


@contextlib.asynccontextmanager
async def running(notifier: ReportNotifier) -> AsyncIterator[ReportNotifier]:
    """Started for the block, then closed (delivering what is due within 5 s) whatever the block did."""
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


async def report(store: SQLiteStore, settings: Reports, call_id: str = "rtc_1", *, started: bool = True) -> None:
    """What the registry writes for a call: its call.started rows, then its report's rows."""
    record = ended_record(call_id)
    if started:
        await store.enqueue(started_items(record, settings, at=time.time()))
    await store.enqueue(ended_items(record, settings, at=time.time())[1])


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_events_arrive_signed_with_the_documents(
    receiver: tuple[Receiver, RunningServer], store: SQLiteStore
) -> None:
    rx, server = receiver
    settings = reports(server)
    notifier = notifier_for(rx, settings, store)
    async with running(notifier):
        await report(store, settings)
        notifier.kick()
        await until(lambda: len(rx.events) == 2)
    assert rx.bad_signatures == 0
    assert [e["type"] for e in rx.events] == ["call.started", "call.ended"]
    by_type = {e["type"]: e for e in rx.events}
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
    assert by_type["call.ended"]["data"] == report_document(ended_record())
    assert notifier.stats.delivered == 2
    assert notifier.stats.failed == notifier.stats.gave_up == notifier.stats.retried == 0
    stats = await store.outbox_stats()
    assert (stats.pending, stats.gave_up) == (0, 0)


async def test_a_failing_endpoint_is_retried_with_the_same_webhook_id(
    receiver: tuple[Receiver, RunningServer], store: SQLiteStore
) -> None:
    rx, server = receiver
    rx.fail_first = 2
    settings = reports(server, events=("call.ended",))
    notifier = notifier_for(rx, settings, store)
    async with running(notifier):
        await report(store, settings)
        await until(lambda: notifier.stats.delivered == 1)
    assert rx.hits == 3
    assert len(rx.events) == 1
    assert rx.bad_signatures == 0  # each attempt is signed afresh
    assert set(rx.attempt_ids) == {rx.events[0]["id"]} == {event_id("call.ended:rtc_1:" + _destination(settings))}
    assert notifier.stats.failed == 2
    assert notifier.stats.retried == 1


def _destination(settings: Reports) -> str:
    from sip_controller.calls.outbox import endpoint_destination

    return endpoint_destination(settings.endpoints[0].url)


async def test_429_is_retried_honouring_a_short_retry_after(
    receiver: tuple[Receiver, RunningServer], store: SQLiteStore
) -> None:
    rx, server = receiver
    rx.fail_first, rx.fail_status, rx.fail_headers = 1, 429, {"retry-after": "0"}
    settings = reports(server, events=("call.ended",))
    notifier = notifier_for(rx, settings, store)
    async with running(notifier):
        await report(store, settings)
        await until(lambda: notifier.stats.delivered == 1)
    assert rx.hits == 2


async def test_a_refused_report_is_given_up_after_max_attempts_and_counted(
    receiver: tuple[Receiver, RunningServer], store: SQLiteStore
) -> None:
    rx, server = receiver
    rx.fail_first, rx.fail_status = 100, 400
    settings = reports(server, events=("call.ended",), max_attempts=2)
    notifier = notifier_for(rx, settings, store)
    async with running(notifier):
        await report(store, settings)
        await until(lambda: notifier.stats.gave_up == 1)
    assert rx.hits == 2
    assert notifier.stats.delivered == 0
    stats = await store.outbox_stats()
    assert (stats.pending, stats.gave_up) == (0, 1)


async def test_a_sink_that_stays_down_is_given_up_only_after_retry_for_s(
    receiver: tuple[Receiver, RunningServer], store: SQLiteStore
) -> None:
    rx, server = receiver
    rx.fail_first = 1000
    settings = reports(server, events=("call.ended",), max_attempts=1, retry_for_s=0.3)
    notifier = notifier_for(rx, settings, store)
    async with running(notifier):
        await report(store, settings)
        await until(lambda: rx.hits >= 3)  # max_attempts does not bound a sink that is down
        assert notifier.stats.gave_up == 0
        await until(lambda: notifier.stats.gave_up == 1)
    assert (await store.outbox_stats()).gave_up == 1


async def test_sink_down_then_back_delivers_every_report_once_in_order_per_call(
    receiver: tuple[Receiver, RunningServer], store: SQLiteStore
) -> None:
    rx, server = receiver
    rx.fail_first, rx.fail_status = 15, 503
    settings = reports(server)
    notifier = notifier_for(rx, settings, store)
    calls = [f"rtc_{i}" for i in range(12)]
    async with running(notifier):
        for call_id in calls:  # calls start and end while the sink is down
            record = ended_record(call_id)
            await store.enqueue(started_items(record, settings, at=time.time()))
            notifier.kick()
            await asyncio.sleep(0.005)
            await store.enqueue(ended_items(record, settings, at=time.time())[1])
        await until(lambda: len(rx.events) == 2 * len(calls), timeout=15)
    ids = [e["id"] for e in rx.events]
    assert len(ids) == len(set(ids))  # exactly once
    for call_id in calls:
        types = [e["type"] for e in rx.events if e["data"]["call_id"] == call_id]
        assert types == ["call.started", "call.ended"]
    assert notifier.stats.failed == 15
    assert notifier.stats.gave_up == 0
    stats = await store.outbox_stats()
    assert (stats.pending, stats.gave_up, stats.oldest_age_s) == (0, 0, None)


async def test_pending_reports_survive_a_restart(receiver: tuple[Receiver, RunningServer], tmp_path: Path) -> None:
    rx, server = receiver
    rx.fail_first = 10_000
    settings = reports(server)
    path = tmp_path / "state.db"
    async with await SQLiteStore.open(path) as first_store:
        first = notifier_for(rx, settings, first_store)
        async with running(first):
            for i in range(3):
                await report(first_store, settings, f"rtc_{i}")
            await until(lambda: first.stats.failed >= 2)
        assert first.stats.delivered == 0
        assert (await first_store.outbox_stats()).pending == 6
    rx.fail_first = 0
    async with await SQLiteStore.open(path) as second_store:  # a new process on the same file
        second = notifier_for(rx, settings, second_store)
        async with running(second):
            await until(lambda: len(rx.events) == 6)
        assert (await second_store.outbox_stats()).pending == 0
    assert len({e["id"] for e in rx.events}) == 6


async def test_jsonl_call_log_has_one_parseable_line_per_call(tmp_path: Path, store: SQLiteStore) -> None:
    path = tmp_path / "logs" / "calls.jsonl"
    settings = Reports(jsonl_path=str(path))
    notifier = ReportNotifier(settings, store, worker="w", policy=FAST)
    async with running(notifier):
        for i in range(3):
            await report(store, settings, f"rtc_{i}")
        await until(lambda: notifier.stats.written == 3)
    lines = path.read_text().splitlines()
    assert [json.loads(line)["call_id"] for line in lines] == ["rtc_0", "rtc_1", "rtc_2"]
    assert json.loads(lines[0])["caller"] == "+1415***0123"
    assert json.loads(lines[0]) == report_document(ended_record("rtc_0"))


async def test_jsonl_write_failures_are_retried_and_counted_and_lose_nothing(
    tmp_path: Path, store: SQLiteStore
) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the folder should be")  # every write fails (like a full disk)
    path = blocker / "calls.jsonl"
    settings = Reports(jsonl_path=str(path), mask_caller=False)
    notifier = ReportNotifier(settings, store, worker="w", policy=FAST)
    with structlog.testing.capture_logs() as logs:
        async with running(notifier):
            for i in range(4):
                await report(store, settings, f"rtc_{i}")
            await until(lambda: notifier.stats.write_failed >= 8)
            assert (await store.outbox_stats()).pending == 4
            blocker.unlink()  # space again
            await until(lambda: notifier.stats.written == 4)
    assert "notifier.jsonl_write_failed" in [e["event"] for e in logs]
    lines = path.read_text().splitlines()
    assert sorted(json.loads(line)["call_id"] for line in lines) == [f"rtc_{i}" for i in range(4)]
    assert json.loads(lines[0])["caller"] == CALLER  # mask_caller: false
    assert (await store.outbox_stats()).pending == 0


async def test_shutdown_is_bounded_when_the_endpoint_hangs_and_the_report_stays_pending(
    receiver: tuple[Receiver, RunningServer], store: SQLiteStore
) -> None:
    rx, server = receiver
    rx.hang = True
    settings = reports(server, events=("call.ended",), timeout_s=30)
    notifier = notifier_for(rx, settings, store)
    notifier.start()
    await report(store, settings)
    await until(lambda: rx.hits == 1)
    started = time.monotonic()
    await notifier.aclose(0.3)
    assert time.monotonic() - started < 2
    assert notifier.stats.delivered == 0
    assert (await store.outbox_stats()).pending == 1
    # given back at shutdown: another process claims it at once, not after the lease
    assert len(await store.claim_outbox("next-process", limit=5)) == 1


async def test_a_client_passed_in_stays_open(receiver: tuple[Receiver, RunningServer], store: SQLiteStore) -> None:
    rx, server = receiver
    settings = reports(server)
    async with httpx.AsyncClient() as client:
        notifier = notifier_for(rx, settings, store, client=client)
        notifier.start()
        await report(store, settings, started=False)
        await until(lambda: len(rx.events) == 1)
        await notifier.aclose(5)
        assert not client.is_closed


async def test_unsigned_endpoint_gets_no_signature_header(
    receiver: tuple[Receiver, RunningServer], store: SQLiteStore
) -> None:
    rx, server = receiver
    rx.secret = None
    settings = Reports(endpoints=(ReportEndpoint(url=f"{server.url}/hooks/calls"),), events=("call.ended",))
    notifier = ReportNotifier(settings, store, worker="w", policy=FAST)
    with structlog.testing.capture_logs() as logs:
        notifier.start()
    assert "notifier.endpoint_unsigned" in [e["event"] for e in logs]
    await report(store, settings)
    await until(lambda: len(rx.events) == 1)
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
async def test_a_missing_or_bad_secret_fails_start_naming_the_field(
    environ: dict[str, str], problem: str, store: SQLiteStore
) -> None:
    settings = Reports(endpoints=(ReportEndpoint(url="https://ops.example.com/x", secret_env=SECRET_ENV),))
    notifier = ReportNotifier(settings, store, worker="w", environ=environ)
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
    with pytest.raises(ValueError, match="greater than 0"):
        Reports(retry_for_s=0)
    assert Settings().reports == Reports()
    assert Settings().reports.jsonl_path is None


async def test_logs_carry_no_secret_caller_or_transcript(
    receiver: tuple[Receiver, RunningServer], tmp_path: Path, store: SQLiteStore
) -> None:
    rx, server = receiver
    rx.fail_first = 1
    settings = reports(server, jsonl_path=str(tmp_path / "c.jsonl"))
    notifier = notifier_for(rx, settings, store)
    with structlog.testing.capture_logs() as logs:
        notifier.start()
        await report(store, settings)
        await until(lambda: notifier.stats.delivered == 2)
        await notifier.aclose(5)
    text = json.dumps(logs, default=str)
    assert rx.secret is not None
    for forbidden in (rx.secret, rx.secret.removeprefix("whsec_"), CALLER, "my private question", "token=abc"):
        assert forbidden not in text
    assert "notifier.delivered" in [e["event"] for e in logs]


async def test_kicks_while_a_destination_is_paused_do_not_starve_the_event_loop(
    receiver: tuple[Receiver, RunningServer], store: SQLiteStore
) -> None:
    """The sink down while calls keep starting and ending (each a kick): the paused loop once spun on its set wake
    event without ever yielding, freezing the whole process (heartbeats lapsed, drains never ended)."""
    rx, server = receiver
    rx.fail_first = 1000
    settings = reports(server, events=("call.ended",))
    notifier = ReportNotifier(
        settings, store, worker="worker-paused", environ={SECRET_ENV: str(rx.secret)},
        policy=DeliveryPolicy(wait_initial=1.0, wait_max=1.0, wait_jitter=0.0, poll_s=0.05),
    )  # fmt: skip
    async with running(notifier):
        await report(store, settings)
        await until(lambda: rx.hits >= 1)  # failed once: paused for 1 s
        gaps: list[float] = []
        last = time.monotonic()
        for _ in range(40):  # 0.4 s of kicks, as calls start and end, each followed by a 10 ms tick
            notifier.kick()
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
    assert max(gaps) < 0.25, f"the event loop was starved for {max(gaps):.2f} s"
    assert rx.hits <= 3  # and the pause held: no delivery attempt per kick
