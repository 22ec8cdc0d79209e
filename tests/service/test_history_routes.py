"""The call history's routes (#17) through the real app on a real store (SQLite, and PostgreSQL where it is
reachable): ``GET /v1/calls`` with ``q`` and ``outcome``, ``GET /v1/calls/export`` (CSV and JSONL, streamed, at
most ``history.export_max_rows``), ``GET /v1/overview``, ``POST /v1/calls/{id}/reveal`` (logged without the
number) and the analysis on ``GET /v1/calls/{id}``; bad parameters are 400 naming the parameter."""

from __future__ import annotations

import csv
import io
import json

import pytest
import structlog

from sip_controller.state.records import NewCall
from sip_controller.state.store import Store
from tests.service.history_stores import store_fixture  # noqa: F401 (the fixture `store`: both backends)
from tests.service.test_history import AUTH, OTHER, admin_api, ids, live

pytestmark = pytest.mark.anyio

#: 2025-01-01T00:00:00Z
T0 = 1_735_689_600.0
CALLER = "+14155550123"


async def finished(
    store: Store, call_id: str, ended_at: float, lines: list[str], *, reason: str = "caller_hangup",
    profile: str = "default", success: bool | None = None,
) -> None:  # fmt: skip
    row = await store.create_call(
        NewCall(call_id=call_id, owner=OTHER, profile=profile, inputs={}, received_at=ended_at - 60,
                accepted_at=ended_at - 59.5, caller=CALLER, dialed="+18005550199")
    )  # fmt: skip
    assert row is not None
    report: dict[str, object] = {
        "call_id": call_id, "caller": CALLER, "caller_masked": False, "ended_reason": reason,
        "transcript": [{"role": "caller", "text": t, "at_s": 1.0} for t in lines], "cost_usd": 0.25,
        "transcription_cost_usd": 0.05,
    }  # fmt: skip
    await store.finish_call(row.fence, state="ended", ended_reason=reason, report=report, ended_at=ended_at)
    if success is not None:
        await store.create_analysis(call_id, profile)
        assert [a.call_id for a in await store.claim_analyses("w", limit=1)] == [call_id]
        result = {"status": "completed", "summary": f"=SUM(A1) {call_id}", "success": success}
        assert await store.finish_analysis("w", call_id, result=result, cost_usd=0.01)


async def three(store: Store) -> None:
    await finished(store, "rtc_a", T0 + 100, ["I want a refund please"], success=True)
    await finished(store, "rtc_b", T0 + 200, ["Where is my parcel?"], reason="transferred", profile="sales",
                   success=False)  # fmt: skip
    await finished(store, "rtc_c", T0 + 300, ["A refund for the parcel"], reason="agent_end_call")


async def test_search_and_outcome_filter_the_list(store: Store) -> None:
    await three(store)
    await live(store, "rtc_live")
    async with admin_api(store) as api:
        assert ids(await api.get("/v1/calls", q="refund")) == ["rtc_c", "rtc_a"]  # no live call with a search
        assert ids(await api.get("/v1/calls", q="refund parcel")) == ["rtc_c"]
        assert ids(await api.get("/v1/calls", q="refund", outcome="succeeded")) == ["rtc_a"]
        assert ids(await api.get("/v1/calls", outcome="unknown")) == ["rtc_c"]
        body = (await api.get("/v1/calls", outcome="failed")).json()
        (summary,) = body["calls"]
        assert (summary["outcome"], summary["analysis_summary"]) == ("failed", "=SUM(A1) rtc_b")
        everything = (await api.get("/v1/calls")).json()["calls"]
        assert [c["outcome"] for c in everything] == [None, "unknown", "failed", "succeeded"]  # live first


@pytest.mark.parametrize(
    ("path", "params", "named"),
    [
        ("/v1/calls", {"q": "?! -"}, "q"),
        ("/v1/calls", {"q": "-refund"}, "q"),
        ("/v1/calls", {"outcome": "maybe"}, "outcome"),
        ("/v1/calls/export", {"format": "xml"}, "format"),
        ("/v1/calls/export", {"limit": "5"}, "limit"),
        ("/v1/calls/export", {"q": ""}, "q"),
        ("/v1/overview", {"bucket": "week"}, "bucket"),
        ("/v1/overview", {"since": "2025-01-02T00:00:00Z", "until": "2025-01-01T00:00:00Z"}, "until"),
        ("/v1/overview", {"since": "2024-01-01T00:00:00Z", "until": "2025-03-01T00:00:00Z"}, "since"),
        ("/v1/overview", {"profile": "sales"}, "profile"),
        ("/v1/overview", {"until": "764000000000"}, "until"),  # year 26179: no day or bucket can be named there
        ("/v1/calls", {"since": "9999-12-31T00:00:00Z"}, "since"),
    ],
)
async def test_bad_parameters_are_400_naming_the_parameter(
    store: Store, path: str, params: dict[str, str], named: str
) -> None:
    async with admin_api(store) as api:
        response = await api.get(path, **params)
        assert response.status_code == 400, response.text
        assert response.json()["error"].startswith(f"`{named}`: ")


async def test_export_csv_streams_the_filtered_list_masked(store: Store) -> None:
    await three(store)
    async with admin_api(store) as api:
        response = await api.get("/v1/calls/export", q="refund")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/csv")
        assert response.headers["content-disposition"].startswith('attachment; filename="calls-')
        assert response.headers["content-disposition"].endswith('Z.csv"')
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert [r["call_id"] for r in rows] == ["rtc_c", "rtc_a"]
        assert list(rows[0]) == [
            "call_id", "received_at", "ended_at", "ended_reason", "profile", "outcome", "caller", "duration_s",
            "cost_usd", "transferred", "analysis_summary",
        ]  # fmt: skip
        a = rows[1]
        assert (a["received_at"], a["ended_at"]) == ("2025-01-01T00:00:40Z", "2025-01-01T00:01:40Z")
        assert (a["outcome"], a["caller"], a["duration_s"], a["transferred"]) == (
            "succeeded", "+1415***0123", "60.000", "false")  # fmt: skip
        assert a["analysis_summary"] == "'=SUM(A1) rtc_a"  # a formula in free text is defused
        assert CALLER not in response.text
        sales = list(csv.DictReader(io.StringIO((await api.get("/v1/calls/export", profile="sales")).text)))
        assert [(r["call_id"], r["transferred"]) for r in sales] == [("rtc_b", "true")]


async def test_export_jsonl_pages_through_the_store_up_to_the_limit(store: Store) -> None:
    for i in range(7):
        await finished(store, f"rtc_{i}", T0 + i, [f"line {i}"])
    async with admin_api(store, export_max_rows=5) as api:
        response = await api.get("/v1/calls/export", format="jsonl")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/x-ndjson")
        assert response.headers["content-disposition"].endswith('Z.jsonl"')
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert [c["call_id"] for c in lines] == ["rtc_6", "rtc_5", "rtc_4", "rtc_3", "rtc_2"]  # newest first, 5
        assert lines[0]["caller"] == "+1415***0123"
        assert lines[0]["outcome"] == "unknown"
        csv_rows = (await api.get("/v1/calls/export", since=str(int(T0 + 5)))).text.splitlines()
        assert len(csv_rows) == 3  # the header and two calls


async def test_export_pages_past_one_store_page(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sip_controller.service.history_export.PAGE", 2)
    for i in range(5):
        await finished(store, f"rtc_{i}", T0 + i, ["hello"])
    async with admin_api(store) as api:
        response = await api.get("/v1/calls/export", format="jsonl", q="hello")
        assert [json.loads(line)["call_id"] for line in response.text.splitlines()] == [
            "rtc_4", "rtc_3", "rtc_2", "rtc_1", "rtc_0"]  # fmt: skip


async def test_overview(store: Store) -> None:
    await three(store)
    async with admin_api(store) as api:
        response = await api.get("/v1/overview", since="2025-01-01T00:00:00Z", until="2025-01-02T00:00:00Z")
        assert response.status_code == 200, response.text
        view = response.json()
        assert (view["since"], view["until"], view["bucket"], view["calls"]) == (
            "2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z", "hour", 3)  # fmt: skip
        assert len(view["per_bucket"]) == 24
        assert view["per_bucket"][0] == {"start": "2025-01-01T00:00:00Z", "calls": 3}
        assert view["ended_reasons"] == {"agent_end_call": 1, "caller_hangup": 1, "transferred": 1}
        assert view["cost_per_day"] == [
            {"day": "2025-01-01", "model_usd": 0.6, "transcription_usd": 0.15, "analysis_usd": 0.02}
        ]
        assert view["ring_to_answer_ms"] == {"p50": 500.0, "p95": 500.0}
        assert (view["avg_handle_s"], view["transfer_rate"], view["success_rate"]) == (59.5, 0.3333, 0.5)
        days = (await api.get("/v1/overview", bucket="day")).json()  # the last 24 h: nothing
        assert (days["bucket"], days["calls"], days["success_rate"]) == ("day", 0, None)


async def test_reveal_is_logged_without_the_number(store: Store) -> None:
    await three(store)
    async with admin_api(store) as api:
        with structlog.testing.capture_logs() as logs:
            response = await api.client.post("/v1/calls/rtc_a/reveal", headers=AUTH)
        assert response.status_code == 200, response.text
        assert response.json() == {"call_id": "rtc_a", "caller": CALLER, "dialed": "+18005550199"}
        (line,) = [entry for entry in logs if entry["event"] == "history.caller_revealed"]
        assert (line["call_id"], line["who"], line["log_level"]) == ("rtc_a", "token", "info")
        assert CALLER not in json.dumps(logs, default=str)
        assert (await api.client.post("/v1/calls/rtc_nope/reveal", headers=AUTH)).status_code == 404
        assert (await api.client.post("/v1/calls/rtc_a/reveal")).status_code == 401


async def test_one_call_carries_its_analysis_or_null(store: Store) -> None:
    await three(store)
    async with admin_api(store) as api:
        analysed = (await api.get("/v1/calls/rtc_a")).json()
        assert analysed["analysis"]["success"] is True
        assert analysed["caller"] == "+1415***0123"
        plain = (await api.get("/v1/calls/rtc_c")).json()
        assert plain["analysis"] is None
