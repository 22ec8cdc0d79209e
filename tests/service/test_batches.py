"""Outbound batches through the real app (#16): POST /v1/outbound/batches (JSON and CSV), the dialler placing rows
through Twilio's Calls API (mocked by respx) within the batch's pacing, outcomes from signed status callbacks,
retries after busy, pause/resume/cancel, and a restart that resumes the batch without placing any row twice."""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from sip_controller.agent.profile import AgentProfile
from sip_controller.config import Limits, Settings, TwilioSettings
from sip_controller.service.dialler import Dialler
from sip_controller.state.batches import NewBatch, NewBatchRow
from sip_controller.state.sqlite import SQLiteStore
from sip_controller.state.twilio_calls import NewTwilioCall
from tests.service.test_twilio_routes import ACCOUNT, ADMIN, TWILIO, post_signed
from tests.servicekit import Service, openai_router, running_service

pytestmark = pytest.mark.anyio

SETTINGS = Settings(
    profiles={
        "default": AgentProfile(),
        "reminders": AgentProfile(instructions="Remind {{ var:first_name }}.", variables=("first_name",)),
    },
    limits=Limits(hangup_close_wait_s=0.1),
    twilio=TwilioSettings(from_number="+18005550199", do_not_call=("+1900*",)),
)  # fmt: skip


def bearer(key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


@dataclass
class Twilio:
    """The mocked Calls API: each create answered with a fresh CallSid, remembered with its To and time."""

    placed: list[tuple[float, str, str]] = field(default_factory=list)  # (monotonic time, To, CallSid)

    def create(self, request: httpx.Request) -> httpx.Response:
        form = dict(parse_qsl(request.content.decode()))
        call_sid = "CA" + secrets.token_hex(16)
        self.placed.append((time.monotonic(), form["To"], call_sid))
        return httpx.Response(201, json={"sid": call_sid, "status": "queued"})

    def numbers(self) -> list[str]:
        return [to for _, to, _ in self.placed]


@dataclass
class Batches:
    service: Service
    twilio: Twilio

    async def create(self, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        return await self.service.client.post("/v1/outbound/batches", json=body, headers=bearer(key))

    async def show(self, batch_id: str) -> dict[str, Any]:
        answer = await self.service.client.get(f"/v1/outbound/batches/{batch_id}", headers=bearer())
        assert answer.status_code == 200, answer.text
        shown: dict[str, Any] = answer.json()
        return shown

    async def until(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.02)

    async def until_batch(self, batch_id: str, check: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not check(await self.show(batch_id)):
                await asyncio.sleep(0.05)

    async def status(self, call_sid: str, status: str) -> None:
        answer = await post_signed(self.service, "/twilio/status", {"CallSid": call_sid, "CallStatus": status})
        assert answer.status_code == 200, answer.text


@pytest.fixture
def store_path() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="sipctl-batches-") as folder:
        yield os.path.join(folder, "state.db")


def mocked(twilio: Twilio) -> Any:
    router = openai_router(None)
    router.post(path__regex=rf"/2010-04-01/Accounts/{ACCOUNT}/Calls\.json", name="twilio_create").mock(
        side_effect=twilio.create
    )
    return router


@pytest.fixture
async def batches() -> AsyncIterator[Batches]:
    twilio = Twilio()
    async with running_service(ADMIN, settings=SETTINGS, twilio=TWILIO, router=mocked(twilio)) as svc:
        yield Batches(svc, twilio)


def rows(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"to": f"+1415555{n:04d}", "variables": {"first_name": f"P{n}"}} for n in range(start, start + count)]


async def test_a_batch_of_fifty_is_placed_within_its_pacing_and_bad_rows_are_reported(batches: Batches) -> None:
    good = rows(46)
    bad = [
        {"to": "4155550123", "variables": {"first_name": "A"}},  # not E.164
        {"to": "+19005550100", "variables": {"first_name": "B"}},  # do-not-call
        {"to": "+14155559999"},  # a declared variable missing
        dict(good[3]),  # the same number twice
    ]
    body = {"profile": "reminders", "rows": [*good[:10], *bad, *good[10:]],
            "pacing": {"calls_per_second": 20, "max_in_flight": 50}}  # fmt: skip
    answer = await batches.create(body, key="b-50")
    assert answer.status_code == 201, answer.text
    made = answer.json()
    assert made["accepted"] == 46
    assert made["rows"] == 46
    errors = {r["row"]: r["error"] for r in made["rejected"]}
    assert sorted(errors) == [11, 12, 13, 14]
    assert "not an E.164 number" in errors[11]
    assert "do-not-call" in errors[12]
    assert "missing: first_name" in errors[13]
    assert "already in row 4" in errors[14]
    replay = await batches.create(body, key="b-50")
    assert (replay.status_code, replay.json()["id"], replay.json()["replayed"]) == (200, made["id"], True)
    await batches.until(lambda: len(batches.twilio.placed) == 46)
    placed = batches.twilio.placed
    assert sorted(batches.twilio.numbers()) == sorted(r["to"] for r in good)  # each good row once, no bad one
    # pacing: 20/s with a burst of at most one second's worth + 1 (21), so the last of 46 starts >= 1.25 s later
    span = placed[-1][0] - placed[0][0]
    assert span >= (46 - 21) / 20 - 0.05
    for start, _, _ in placed:  # no stretch of one second holds more than 20 * (1 + 1) + 1 starts
        assert sum(1 for t, _, _ in placed if start <= t < start + 1.0) <= 41
    # the mocked Calls API records a call before the dialler has heard its answer and marked the row in flight
    await batches.until_batch(made["id"], lambda b: b["states"]["in_flight"] == 46)
    for _, _, call_sid in placed:
        await batches.status(call_sid, "completed")
    await batches.until_batch(made["id"], lambda b: b["status"] == "done")
    shown = await batches.show(made["id"])
    assert (shown["outcomes"], shown["progress"], shown["finished"]) == ({"completed": 46}, 1.0, 46)


async def test_max_in_flight_holds_calls_until_earlier_ones_end(batches: Batches) -> None:
    body = {"profile": "reminders", "rows": rows(8), "pacing": {"calls_per_second": 50, "max_in_flight": 3}}
    made = (await batches.create(body)).json()
    await batches.until(lambda: len(batches.twilio.placed) == 3)
    await asyncio.sleep(0.3)
    assert len(batches.twilio.placed) == 3
    await batches.status(batches.twilio.placed[0][2], "no-answer")
    await batches.until(lambda: len(batches.twilio.placed) == 4)
    await asyncio.sleep(0.2)
    assert len(batches.twilio.placed) == 4
    shown = await batches.show(made["id"])
    assert shown["outcomes"] == {"no_answer": 1}
    assert shown["states"]["in_flight"] == 3


async def test_busy_is_retried_after_the_delay_then_the_row_is_done(batches: Batches) -> None:
    body = {"profile": "reminders", "rows": rows(2), "pacing": {"calls_per_second": 50},
            "retries": {"busy": 1, "delay_s": 0.3}}  # fmt: skip
    made = (await batches.create(body)).json()
    await batches.until(lambda: len(batches.twilio.placed) == 2)
    first = {to: call_sid for _, to, call_sid in batches.twilio.placed}
    await batches.status(first["+14155550000"], "busy")
    await batches.status(first["+14155550001"], "completed")
    busy_at = time.monotonic()
    await batches.until(lambda: len(batches.twilio.placed) == 3)
    retried_at, to, again = batches.twilio.placed[2]
    assert to == "+14155550000"
    assert retried_at - busy_at >= 0.25  # after the delay
    # the mocked Calls API records a call before the dialler has heard its answer and marked the row in flight
    await batches.until_batch(made["id"], lambda b: b["states"].get("in_flight") == 1)
    rows_now = await batches.service.store.list_batch_rows(made["id"])
    assert [(r.state, r.attempt) for r in rows_now] == [("in_flight", 1), ("done", 0)]
    await batches.status(again, "busy")  # one retry only: busy again is the row's outcome
    await batches.until_batch(made["id"], lambda b: b["status"] == "done")
    assert (await batches.show(made["id"]))["outcomes"] == {"busy": 1, "completed": 1}
    await asyncio.sleep(0.4)
    assert len(batches.twilio.placed) == 3


async def test_pause_resume_and_cancel(batches: Batches) -> None:
    body = {"profile": "reminders", "rows": rows(12), "pacing": {"calls_per_second": 5, "max_in_flight": 20}}
    made = (await batches.create(body)).json()
    await batches.until(lambda: len(batches.twilio.placed) >= 1)
    client = batches.service.client
    paused = await client.post(f"/v1/outbound/batches/{made['id']}/pause", headers=bearer())
    assert paused.json()["status"] == "paused"
    count = len(batches.twilio.placed)
    await asyncio.sleep(0.6)  # at 5/s three more would have started
    assert len(batches.twilio.placed) == count
    resumed = await client.post(f"/v1/outbound/batches/{made['id']}/resume", headers=bearer())
    assert resumed.json()["status"] == "running"
    await batches.until(lambda: len(batches.twilio.placed) > count)
    canceled = await client.post(f"/v1/outbound/batches/{made['id']}/cancel", headers=bearer())
    shown = canceled.json()
    assert shown["status"] == "canceled"
    left = shown["states"]["canceled"]
    assert left > 0
    assert shown["outcomes"] == {"canceled": left}
    count = len(batches.twilio.placed)
    await asyncio.sleep(0.5)
    assert len(batches.twilio.placed) <= count + shown["states"]["placing"]  # nothing new after the cancel
    assert len(set(batches.twilio.numbers())) == len(batches.twilio.placed)
    refused = await client.post(f"/v1/outbound/batches/{made['id']}/resume", headers=bearer())
    assert refused.status_code == 409
    assert "canceled" in refused.json()["error"]
    assert (await client.post(f"/v1/outbound/batches/{made['id']}/cancel", headers=bearer())).status_code == 200
    assert (await client.post("/v1/outbound/batches/batch_nope/pause", headers=bearer())).status_code == 404
    assert (await client.post(f"/v1/outbound/batches/{made['id']}/restart", headers=bearer())).status_code == 404


async def test_a_csv_upload_with_settings_as_query_parameters(batches: Batches) -> None:
    csv_text = (
        "to,first_name,timezone\n"
        "+14155550100,Ada,America/New_York\n"
        "+14155550101,,Europe/Paris\n"
        "+14155550102,Grace,Mars/Olympus\n"
        "+14155550103,Linus\n"
        "\n"
        "+14155550104,Alan,Europe/London\n"
    )
    answer = await batches.service.client.post(
        "/v1/outbound/batches?profile=reminders&calls_per_second=50&hours_start=00:00&hours_end=23:59:59",
        content=csv_text.encode(), headers={**bearer(), "Content-Type": "text/csv"},
    )  # fmt: skip
    assert answer.status_code == 201, answer.text
    made = answer.json()
    errors = {r["row"]: r["error"] for r in made["rejected"]}
    assert "missing: first_name" in errors[2]
    assert "not an IANA time zone" in errors[3]
    assert "2 cells where the header has 3" in errors[4]
    assert made["accepted"] == 2
    assert made["calling_hours"] == {"start": "00:00", "end": "23:59", "timezone": None}
    stored = await batches.service.store.list_batch_rows(made["id"])
    assert [(r.row, r.to_number, r.variables, r.timezone) for r in stored] == [
        (1, "+14155550100", {"first_name": "Ada"}, "America/New_York"),
        (5, "+14155550104", {"first_name": "Alan"}, "Europe/London"),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"profile": "nope", "rows": rows(1)}, "is not a profile"),
        ({"profile": "reminders", "rows": []}, "no rows"),
        ({"profile": "reminders", "rows": rows(1), "pacing": {"calls_per_second": 0}}, "out of range"),
        (
            {"profile": "reminders", "rows": rows(1), "calling_hours": {"start": "18:00", "end": "09:00"}},
            "start must be before end",
        ),
        ({"profile": "reminders", "rows": rows(1), "calling_hours": {"start": "9", "end": "18:00"}}, "HH:MM"),
        ({"profile": "reminders", "rows": rows(1), "retries": {"busy": 11}}, "out of range"),
        ({"profile": "reminders", "rows": rows(1), "speed": 3}, "unknown field(s) speed"),
        ({"profile": "reminders", "rows": [{"to": "+1"}]}, "no row can be called"),
    ],
)
async def test_bad_batches_are_refused_whole_with_the_fix(batches: Batches, body: Any, message: str) -> None:
    answer = await batches.create(body)
    assert answer.status_code == 422
    assert message in answer.json()["error"]


async def test_the_batch_api_needs_the_token(batches: Batches) -> None:
    client = batches.service.client
    assert (await client.post("/v1/outbound/batches", json={"rows": rows(1)})).status_code == 401
    assert (await client.get("/v1/outbound/batches/x")).status_code == 401
    assert (await client.get("/v1/outbound/batches/x", headers=bearer())).status_code == 404


async def test_a_number_put_on_the_do_not_call_list_after_the_batch_was_made_is_never_called(
    batches: Batches,
) -> None:
    store = batches.service.store
    now = time.time()
    # the row went in before +1415555* joined the list (written to the store directly, as an older batch would be)
    await store.create_batch(NewBatch(
        id="batch_old", profile="reminders", calls_per_second=50, max_in_flight=5,
        rows=[NewBatchRow(1, "+19005550123", {"first_name": "Eve"}, now),
              NewBatchRow(2, "+14155550100", {"first_name": "Ada"}, now)],
    ))  # fmt: skip
    batches.service.app.state.dialler.kick()
    await batches.until(lambda: len(batches.twilio.placed) == 1)
    await batches.until_batch("batch_old", lambda b: b["outcomes"].get("do_not_call") == 1)
    assert batches.twilio.numbers() == ["+14155550100"]


async def test_calling_hours_closed_rows_wait(batches: Batches) -> None:
    # a window that is closed now in UTC: from one hour after now to two hours after (or the next day)
    now = time.gmtime()
    start = f"{(now.tm_hour + 1) % 24:02d}:00"
    end = f"{(now.tm_hour + 2) % 24:02d}:00" if now.tm_hour + 2 < 24 else "23:59"
    if start >= end:
        pytest.skip("the hour before midnight UTC: no closed window of an hour ahead today")
    body = {"profile": "reminders", "rows": rows(3), "pacing": {"calls_per_second": 50},
            "calling_hours": {"start": start, "end": end, "timezone": "UTC"}}  # fmt: skip
    made = (await batches.create(body)).json()
    await asyncio.sleep(0.4)
    assert batches.twilio.placed == []
    stored = await batches.service.store.list_batch_rows(made["id"])
    assert all(r.state == "queued" and r.due_at > time.time() + 60 for r in stored)


async def test_a_restart_resumes_the_batch_without_placing_any_row_twice(store_path: str) -> None:
    twilio = Twilio()
    body = {"profile": "reminders", "rows": rows(20), "pacing": {"calls_per_second": 10, "max_in_flight": 20}}
    async with running_service(ADMIN, settings=SETTINGS, twilio=TWILIO, router=mocked(twilio),
                               store_path=store_path) as first:  # fmt: skip
        made = (await first.client.post("/v1/outbound/batches", json=body, headers=bearer())).json()
        async with asyncio.timeout(10):
            while len(twilio.placed) < 5:
                await asyncio.sleep(0.02)
        for _, _, call_sid in twilio.placed[:3]:
            answer = await post_signed(first, "/twilio/status", {"CallSid": call_sid, "CallStatus": "completed"})
            assert answer.status_code == 200
    stopped_at = len(twilio.placed)
    assert stopped_at < 20
    # and a process that died mid-placement: it claimed a row and Twilio placed the call, but the row never heard
    async with await SQLiteStore.open(store_path) as store:
        async with asyncio.timeout(5):  # the batch's next pacing slot may be a moment ahead
            while not (claimed := await store.claim_batch_rows("p-dead", limit=1, lease_s=0.3)):
                await asyncio.sleep(0.05)
        [held] = claimed
        await store.create_twilio_call(NewTwilioCall(
            id="out_dead", correlation="corr-dead", direction="outbound", status="queued", call_sid="CA" + "d" * 32,
            idempotency_key=held.idempotency_key, profile="reminders", to_number=held.to_number,
        ))  # fmt: skip
        twilio.placed.append((time.monotonic(), held.to_number, "CA" + "d" * 32))
    stopped_at += 1
    async with running_service(ADMIN, settings=SETTINGS, twilio=TWILIO, router=mocked(twilio),
                               store_path=store_path) as second:  # fmt: skip
        dialler: Dialler = second.app.state.dialler
        async with asyncio.timeout(10):
            while len(twilio.placed) < 20:
                await asyncio.sleep(0.02)
        for _, _, call_sid in twilio.placed[3:]:
            answer = await post_signed(second, "/twilio/status", {"CallSid": call_sid, "CallStatus": "completed"})
            assert answer.status_code == 200
        async with asyncio.timeout(10):
            while (await second.client.get(f"/v1/outbound/batches/{made['id']}", headers=bearer())).json()[
                "status"
            ] != "done":
                await asyncio.sleep(0.05)
        assert dialler.placed == 20 - stopped_at
    assert sorted(twilio.numbers()) == sorted(r["to"] for r in rows(20))  # every row once, none twice


async def test_the_newest_batches_are_listed_with_their_progress(batches: Batches) -> None:
    """The console's batch panel (#16): GET /v1/outbound/batches, newest first, as GET .../{id} shows each."""
    first = await batches.create({"profile": "reminders", "rows": rows(2), "pacing": {"calls_per_second": 0.01}})
    second = await batches.create({"profile": "reminders", "rows": rows(3, 10), "pacing": {"calls_per_second": 0.01}})
    made = [first.json()["id"], second.json()["id"]]
    await batches.service.client.post(f"/v1/outbound/batches/{made[0]}/pause", headers=bearer())
    answer = await batches.service.client.get("/v1/outbound/batches", headers=bearer())
    assert answer.status_code == 200, answer.text
    listed = answer.json()["batches"]
    assert {b["id"] for b in listed} == set(made)
    assert listed == sorted(listed, key=lambda b: (b["created_at"], b["id"]), reverse=True)  # newest first
    by_id = {b["id"]: b for b in listed}
    # as GET .../{id} shows it, but for what the dialler may move in between (a row from placing to in flight)
    moving = ("states", "updated_at")
    shown = await batches.show(made[0])
    assert {k: v for k, v in by_id[made[0]].items() if k not in moving} == {
        k: v for k, v in shown.items() if k not in moving
    }
    assert sum(by_id[made[0]]["states"].values()) == sum(shown["states"].values()) == 2
    assert (by_id[made[0]]["status"], by_id[made[1]]["rows"]) == ("paused", 3)
    one = await batches.service.client.get("/v1/outbound/batches?limit=1", headers=bearer())
    assert len(one.json()["batches"]) == 1
    for bad in ("0", "201", "x", "-1"):
        refused = await batches.service.client.get(f"/v1/outbound/batches?limit={bad}", headers=bearer())
        assert refused.status_code == 422, bad
    refused = await batches.service.client.get("/v1/outbound/batches?status=done", headers=bearer())
    assert (refused.status_code, refused.json()["error"]) == (422, "unknown query parameter(s) status; use limit")
    assert (await batches.service.client.get("/v1/outbound/batches")).status_code == 401
