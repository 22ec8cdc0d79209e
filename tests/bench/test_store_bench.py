"""Tests for sip_controller.bench.store: the ring-path measurement runs and reports sane numbers."""

from __future__ import annotations

import json

import pytest

from sip_controller.bench import store as bench_store


def test_summarize_reports_percentiles_in_milliseconds() -> None:
    result = bench_store.summarize("sqlite", [0.001 * i for i in range(1, 101)])
    assert result.rings == 100
    assert result.median_ms == pytest.approx(50.5)
    assert result.p99_ms == pytest.approx(99.01)
    assert result.max_ms == pytest.approx(100.0)


def test_the_sqlite_ring_path_runs_end_to_end(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SIPCTL_DATABASE_URL", raising=False)
    assert bench_store.main(["--rings", "30", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["backend"] == "sqlite"
    assert result["rings"] == 30
    assert 0 < result["median_ms"] <= result["p99_ms"] <= result["max_ms"]
