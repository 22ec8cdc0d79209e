"""The ``history`` settings (#17): retention and exports, refused with the field, the value and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sip_controller import config
from sip_controller.config import History, Settings


def test_the_defaults_keep_everything() -> None:
    history = Settings().history
    assert (history.retain_days, history.transcript_retain_days) == (None, None)
    assert (history.purge_every_s, history.purge_batch, history.export_max_rows) == (3600.0, 1000, 100_000)


@pytest.mark.parametrize(
    ("history", "named"),
    [
        ({"retain_days": 30, "transcript_retain_days": 60}, "transcript_retain_days (60) must be at most retain_days"),
        ({"retain_days": 0}, "retain_days"),
        ({"purge_batch": 0}, "purge_batch"),
        ({"purge_every_s": 1}, "purge_every_s"),
        ({"export_max_rows": -1}, "export_max_rows"),
    ],
)
def test_a_bad_history_block_is_named(tmp_path: Path, history: dict[str, int], named: str) -> None:
    path = tmp_path / "sipctl.yaml"
    path.write_text(yaml.safe_dump({"history": history}))
    loaded = config.load(path)
    assert loaded.settings is None
    assert any("history" in p and named in p for p in loaded.problems), loaded.problems


def test_the_commented_example_is_valid_once_uncommented() -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "sipctl.example.yaml"
    lines = example.read_text().splitlines()
    start = lines.index("# history:")
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("#   "):
            break
        block.append(line)
    data = yaml.safe_load("\n".join(line.removeprefix("# ") for line in block))
    assert History(**data["history"]) == History(retain_days=90, transcript_retain_days=30)
