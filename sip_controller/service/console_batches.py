"""Outbound batches in the operator console (#16): the Batches view (``#/batches``).

Drawn in the browser by ``static/console_batches.js`` (served inside ``/console.js``, after the history's script)
from the batch API the page's session cookie opens: ``GET /v1/outbound/batches`` (the newest batches, each with its
progress and its rows by outcome), refreshed every two seconds while the view is shown, and ``POST
/v1/outbound/batches/{id}/pause``, ``/resume``, ``/cancel`` with the session's CSRF token. Every value from a batch is
set with ``textContent``; the server renders only the empty, hidden pane.
"""

from __future__ import annotations

import html
from importlib import resources

from sip_controller.service.admin import CSRF_HEADER


def _static(name: str) -> str:
    return resources.files("sip_controller.service").joinpath("static", name).read_text(encoding="utf-8")


STYLE = _static("console_batches.css").strip()
SCRIPT = _static("console_batches.js")


def pane() -> str:
    """The (empty, hidden) element the script draws the Batches view in."""
    return f'<main id="batches" hidden data-csrf-header="{html.escape(CSRF_HEADER, quote=True)}"></main>'
