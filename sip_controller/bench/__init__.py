"""``sipctl bench``: what the controller adds to a phone call, measured against a floor.

The load peer (:mod:`.peer`) stands in for OpenAI in this process; the controller and the floor responder
(:mod:`.floor`) run as child processes (:mod:`.proc`), the controller on the SQLite file and on PostgreSQL
(:mod:`.database`); :mod:`.runner` runs the scenarios and writes ``bench/results/<date>-<host>.json`` (and
``latest.json``); :mod:`.stats` holds the percentile arithmetic.
Nothing here is imported by the service itself.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("bench/results")
QUICK_OUT = Path("bench/results/quick")


def main(*, mode: str, out_dir: Path | None, database_url: str | None = None) -> int:
    """Run the bench in ``mode`` (full, quick or smoke), print the table, return an exit code. ``database_url``:
    the PostgreSQL of the per-store scenarios (default ``SIPCTL_DATABASE_URL``, else the local server)."""
    from sip_controller.bench import runner

    plan = runner.PLANS[mode]
    target = out_dir if out_dir is not None else (DEFAULT_OUT if mode == "full" else QUICK_OUT)
    path, results = runner.run(plan, target, database_url=database_url)
    print(runner.render_table(results))
    print(f"\nresults: {path} (and {path.parent / 'latest.json'})")
    sys.stdout.flush()
    return 0


def write_result(result: dict[str, Any], path: Path, render: Callable[[dict[str, Any]], str]) -> None:
    """A one-off measurement's results (``sipctl bench --history``, the census): written to ``path`` as JSON (its
    folder made), then ``render(result)`` and the path printed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    print(f"\nresults: {path}")
