"""The call history in the operator console (#17): the Calls view, a call's page and the Overview.

They are drawn in the browser by ``static/console_history.js`` (served inside ``/console.js``, after the live
view's script) from the admin API the page's session cookie opens: ``GET /v1/calls`` (filters, pages, export
links), ``GET /v1/calls/{id}``, ``POST /v1/calls/{id}/reveal`` (with the session's CSRF token) and
``GET /v1/overview``. The page routes on the URL's fragment, so each view has a link of its own: ``#/live``,
``#/calls?q=…``, ``#/calls/<call_id>``, ``#/overview?range=7d``. The charts are inline SVG drawn by the script;
every value from a call is set with ``textContent``. The server renders only the navigation and an empty pane
carrying what the filters offer (the profiles and the ended reasons).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from importlib import resources

from sip_controller.service.admin import CSRF_HEADER
from sip_controller.service.history import ENDED_REASONS


def _static(name: str) -> str:
    return resources.files("sip_controller.service").joinpath("static", name).read_text(encoding="utf-8")


STYLE = _static("console_history.css").strip()
SCRIPT = _static("console_history.js")


def _e(value: str) -> str:
    return html.escape(value, quote=True)


def nav(live_count: int) -> str:
    """The header's links between the views (the script marks the current one; Batches is drawn by
    ``console_batches``)."""
    return (
        '<nav aria-label="views">'
        f'<a href="#/live" data-view="live" id="nav-live">Live (<span id="live-count">{live_count}</span>)</a>'
        '<a href="#/calls" data-view="calls" id="nav-calls">Calls</a>'
        '<a href="#/overview" data-view="overview" id="nav-overview">Overview</a>'
        '<a href="#/batches" data-view="batches" id="nav-batches">Batches</a></nav>'  # console_batches.py (#16)
    )


def pane(profiles: Iterable[str]) -> str:
    """The (empty, hidden) element the script draws the history views in."""
    return (
        f'<main id="history" hidden data-profiles="{_e(json.dumps(sorted(profiles)))}"'
        f' data-reasons="{_e(json.dumps(list(ENDED_REASONS)))}" data-csrf-header="{_e(CSRF_HEADER)}"></main>'
    )
