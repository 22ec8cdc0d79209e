"""``sipctl bench --history`` at a tiny size (200 calls): it seeds both stores, measures every query and writes
``history.json`` of the documented shape. A smoke test of the harness: it never asserts a speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sip_controller import cli
from sip_controller.bench import history

QUERIES = ["overview_24h", "overview_30d", "list_filtered", "search", "export_1000"]


def test_the_history_bench_at_200_calls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--history", "200", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "history.json").read_text())
    assert (result["bench"], result["calls"], result["runs"], result["target_ms"]) == ("history", 200, 5, 300.0)
    assert isinstance(result["met"], bool)
    assert set(result["stores"]) == {"sqlite", "postgresql"}
    measured = {name: s for name, s in result["stores"].items() if "timings" in s}
    assert "sqlite" in measured  # PostgreSQL may be skipped (with its reason) where no server answers
    for store in measured.values():
        assert list(store["timings"]) == QUERIES
        for timing in store["timings"].values():
            assert len(timing["runs_ms"]) == 5
            assert timing["median_ms"] >= 0
            assert isinstance(timing["met"], bool)
        assert store["found"]["calls_in_30d"] == 200  # every seeded call ended in the last 30 days
        assert store["found"]["export_rows"] == 200
        assert store["found"]["list_page"] > 0
        assert store["found"]["search_hits_first_1000"] > 0
    out = capsys.readouterr().out
    assert "call history, 200 calls" in out
    assert all(name in out for name in QUERIES)


def test_a_call_of_the_bench_is_realistic() -> None:
    (calls,) = list(history._chunks(1, 1_735_689_600.0, seed=3))
    call = calls[0]
    lines = json.loads(call["report"])["transcript"]
    assert call["ended_reason"] == "rejected" or 10 <= len(lines) <= 30
    assert call["model_usd"] + call["transcription_usd"] == pytest.approx(call["cost_usd"])
