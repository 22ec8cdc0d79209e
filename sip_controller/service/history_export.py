"""``GET /v1/calls/export`` (#17): the finished calls of a filtered list as CSV or JSONL, streamed.

It takes the list's filters (``since``, ``until``, ``ended_reason``, ``profile``, ``caller``, ``outcome``, ``q``;
validated as the list validates them) and ``format`` (``csv``, the default, or ``jsonl``). Rows come newest first,
a page of the store at a time (keyset paging through ``list_finished``), at most ``history.export_max_rows``; the
caller's number is masked as in the list. CSV is written by the standard ``csv`` module; a cell of free text that
a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@`` first) is prefixed with ``'``. JSONL is one
summary (as ``GET /v1/calls`` shows it) per line.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import structlog

from sip_controller.service.history import FILTERS, BadParameter, ListQuery, parse_list_query, row_summary
from sip_controller.state.records import CallRow, Page, StoreError
from sip_controller.state.store import Store

log = structlog.get_logger("sip_controller.service.history_export")

FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}
PARAMETERS = (*FILTERS, "format")
COLUMNS = (
    "call_id", "received_at", "ended_at", "ended_reason", "profile", "outcome", "caller", "duration_s", "cost_usd",
    "transferred", "analysis_summary",
)  # fmt: skip
#: rows read from the store per page
PAGE = 500
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def parse_export(params: Any) -> tuple[str, ListQuery]:
    """``(format, query)``; :class:`BadParameter` naming the parameter."""
    fmt = params.get("format", "csv")
    if fmt not in FORMATS:
        raise BadParameter("format", f"one of: {', '.join(FORMATS)}")
    query = parse_list_query(params, known=PARAMETERS)
    return fmt, ListQuery(replace(query.history, limit=PAGE))


def filename(fmt: str, now: float) -> str:
    return f"calls-{datetime.fromtimestamp(now, UTC).strftime('%Y%m%dT%H%M%SZ')}.{fmt}"


def _safe(text: str | None) -> str:
    if not text:
        return ""
    return "'" + text if text.startswith(_FORMULA) else text


def csv_row(row: CallRow) -> list[str]:
    summary = row_summary(row, 0.0)
    return [
        row.call_id,
        summary["started"] or "",
        summary["ended"] or "",
        row.ended_reason or "",
        _safe(row.profile),
        summary["outcome"] or "",
        summary["caller"] or "",
        f"{summary['duration_s']:.3f}",
        f"{summary['cost_usd']:.6f}",
        "true" if row.ended_reason == "transferred" else "false",
        _safe(row.analysis_summary),
    ]


async def first_page(store: Store, query: ListQuery) -> Page:
    """The first page, read before the answer starts (a store error is then still a 503)."""
    return await store.list_finished(query.history)


async def stream(
    store: Store, query: ListQuery, fmt: str, first: Page, *, max_rows: int, on_done: Callable[[int], None]
) -> AsyncIterator[bytes]:
    """The export's body, a page at a time, at most ``max_rows`` rows; ``on_done(rows)`` at the end (also when the
    store fails midway: the body then ends early, and the failure is logged)."""
    sent = 0
    page: Page | None = first
    if fmt == "csv":
        yield _csv_lines([list(COLUMNS)])
    try:
        while page is not None:
            rows = page.calls[: max_rows - sent]
            if fmt == "csv":
                yield _csv_lines([csv_row(r) for r in rows])
            else:
                yield b"".join(json.dumps(row_summary(r, 0.0), separators=(",", ":")).encode() + b"\n" for r in rows)
            sent += len(rows)
            if sent >= max_rows or page.next_cursor is None:
                break
            page = await store.list_finished(replace(query.history, cursor=page.next_cursor))
    except StoreError as exc:
        log.warning("history.export_failed", rows=sent, error=str(exc)[:300])
    on_done(sent)


def _csv_lines(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode()
