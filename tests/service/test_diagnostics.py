"""SIPCTL_DIAGNOSTICS: the event loop's lag and the collector's pauses, measured inside the process, on /metrics and
the admin API; off (404, nothing on /metrics) unless opted in."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest
from prometheus_client import CollectorRegistry

from sip_controller.service import diagnostics
from sip_controller.service.diagnostics import Diagnostics
from tests.servicekit import running_service

TOKEN = "Diag-7fQx2mZ9kLp4Rt8w"


def _hold_the_loop(seconds: float) -> None:
    """Blocking work on the loop's thread (what a long collector pass does to every call)."""
    time.sleep(seconds)


@pytest.mark.parametrize(("value", "on"), [("1", True), ("true", True), (" ON ", True), ("0", False), ("", False)])
def test_opt_in_by_environment(value: str, on: bool) -> None:
    assert diagnostics.enabled({diagnostics.ENV: value}) is on
    assert diagnostics.enabled({}) is False


@pytest.mark.anyio
async def test_a_blocked_loop_and_a_collection_are_measured() -> None:
    registry = CollectorRegistry()
    diag = Diagnostics(registry, period_s=0.005)
    diag.start()
    try:
        await asyncio.sleep(0.03)
        _hold_the_loop(0.06)  # the next timer runs about 60 ms late
        gc.collect()
        await asyncio.sleep(0.03)
        window = diag.window()
    finally:
        diag.stop()
    assert diag._on_gc not in gc.callbacks
    assert window["loop_lag"]["count"] >= 3
    assert 40 <= window["loop_lag"]["max_ms"] < 1000, window
    assert window["gc"]["2"]["count"] >= 1
    assert window["gc"]["2"]["max_ms"] > 0
    assert window["gc"]["2"]["cpu_max_ms"] >= 0
    assert window["gc_max_pause_ms"] >= window["gc"]["2"]["max_ms"]
    # the same passes reached the histograms (fed from the loop timer, not from inside the collection)
    assert (registry.get_sample_value("sipctl_gc_pause_seconds_count", {"generation": "2"}) or 0) >= 1
    assert (registry.get_sample_value("sipctl_event_loop_lag_seconds_bucket", {"le": "+Inf"}) or 0) >= 3
    assert (registry.get_sample_value("sipctl_event_loop_lag_seconds_sum") or 0) >= 0.04
    diag.reset()
    assert diag.window()["loop_lag"]["count"] == 0


def test_census_counts_tracked_objects_by_type() -> None:
    class Marker:
        pass

    keep = [Marker() for _ in range(50)]
    taken = diagnostics.census()
    name = f"{Marker.__module__}.{Marker.__qualname__}"
    assert taken["by_type"][name] == 50
    assert taken["tracked"] >= 50
    assert len(taken["gc_threshold"]) == 3
    del keep


@pytest.mark.anyio
async def test_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(diagnostics.ENV, raising=False)
    async with running_service(TOKEN) as svc:
        auth = {"authorization": f"Bearer {TOKEN}"}
        assert (await svc.client.get("/v1/diagnostics", headers=auth)).status_code == 404
        assert (await svc.client.get("/v1/diagnostics/census", headers=auth)).status_code == 404
        assert b"sipctl_event_loop_lag_seconds" not in (await svc.client.get("/metrics")).content
        assert diagnostics.Diagnostics.__name__  # the module is imported, nothing of it runs


@pytest.mark.anyio
async def test_opted_in_behind_the_admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(diagnostics.ENV, "1")
    callbacks = len(gc.callbacks)
    async with running_service(TOKEN) as svc:
        assert len(gc.callbacks) == callbacks + 1
        assert (await svc.client.get("/v1/diagnostics")).status_code == 401
        auth = {"authorization": f"Bearer {TOKEN}"}
        assert (await svc.client.post("/v1/diagnostics/reset", headers=auth)).json() == {"status": "reset"}
        await asyncio.sleep(0.05)
        gc.collect(0)
        await asyncio.sleep(0.03)
        window = (await svc.client.get("/v1/diagnostics", headers=auth)).json()
        assert window["loop_lag"]["count"] >= 2
        assert window["gc"]["0"]["count"] >= 1
        census = (await svc.client.get("/v1/diagnostics/census", headers=auth)).json()
        assert census["tracked"] > 0
        metrics = (await svc.client.get("/metrics")).text
        assert "sipctl_event_loop_lag_seconds_bucket" in metrics
        assert 'sipctl_gc_pause_seconds_count{generation="0"}' in metrics
    assert len(gc.callbacks) == callbacks  # stopped with the app
