"""Prometheus metrics: OpenAI's rate limits as the live calls last saw them (issue 15), labelled by the limit's
name only, never by a call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from sip_controller.calls.report import CallRecord, RateLimitState
from sip_controller.service.metrics import Metrics
from tests.servicekit import Service, running_service

REMAINING = "sipctl_openai_rate_limit_remaining"


def record(call_id: str, **remaining: int | None) -> CallRecord:
    r = CallRecord(call_id=call_id, profile="default", received_at=datetime(2026, 11, 22, tzinfo=UTC))
    for name, value in remaining.items():
        r.rate_limits[name] = RateLimitState(limit=1000, remaining=value, reset_seconds=1.0, at_s=1.0)
    return r


def gauges(text: str) -> dict[str, float]:
    """``{name: value}`` of the remaining-rate-limit gauge in a scrape."""
    out = {}
    for line in text.splitlines():
        if line.startswith(REMAINING + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('name="', 1)[1].split('"', 1)[0]] = float(value)
    return out


def test_the_lowest_remaining_value_across_live_calls_per_limit() -> None:
    metrics = Metrics()
    live = [
        record("rtc_a", requests=900, tokens=38000),
        record("rtc_b", requests=950, tokens=12000),
        record("rtc_c"),  # no rate_limits.updated yet
        record("rtc_d", tokens=None),  # a limit reported without a value
    ]
    metrics.watch_rate_limits(lambda: live)
    text = metrics.render().decode()
    assert gauges(text) == {"requests": 900.0, "tokens": 12000.0}
    assert "rtc_" not in text  # never a call id as a label
    live.pop(1)  # that call ended: the gauges follow the calls still live
    assert gauges(metrics.render().decode()) == {"requests": 900.0, "tokens": 38000.0}


def test_no_live_call_with_rate_limits_means_no_samples() -> None:
    metrics = Metrics()
    metrics.watch_rate_limits(lambda: [record("rtc_a")])
    text = metrics.render().decode()
    assert gauges(text) == {}
    assert f"# TYPE {REMAINING} gauge" in text


def test_only_openais_limit_names_become_labels() -> None:
    metrics = Metrics()
    metrics.watch_rate_limits(lambda: [record("rtc_a", requests=5, **{"x" * 40: 1, "Tokens-Per-Call-7": 2})])
    assert gauges(metrics.render().decode()) == {"requests": 5.0}


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    async with running_service(None) as s:
        yield s


@pytest.mark.anyio
async def test_the_running_service_exposes_what_its_live_calls_saw(service: Service) -> None:
    await service.place("rtc_rl_1")
    service.connector.attached["rtc_rl_1"].push(
        {
            "type": "rate_limits.updated",
            "event_id": "event_1",
            "rate_limits": [
                {"name": "requests", "limit": 1000, "remaining": 998, "reset_seconds": 0.1},
                {"name": "tokens", "limit": 40000, "remaining": 31000, "reset_seconds": 2.5},
            ],
        }
    )
    for _ in range(100):
        text = (await service.client.get("/metrics")).text
        if gauges(text):
            break
        await asyncio.sleep(0.01)
    assert gauges(text) == {"requests": 998.0, "tokens": 31000.0}
    assert "rtc_rl_1" not in text
    service.connector.attached["rtc_rl_1"].close_from_server(1000)
    record = await service.runtime.registry.wait_ended("rtc_rl_1", 5)
    assert record.rate_limits["tokens"].remaining == 31000
    assert gauges((await service.client.get("/metrics")).text) == {}
