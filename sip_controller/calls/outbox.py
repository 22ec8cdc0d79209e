"""A call's reports as outbox rows (design principle 6): built here, written in the transaction that starts or
finishes the call, delivered later by the service's notifier from the store.

Destinations: ``jsonl`` (the call-log line) and ``endpoint:<digest>`` per ``reports.endpoints`` entry, the digest
naming the endpoint's URL without storing it (a URL may carry a token). Keys are ``<event>:<call_id>:<destination>``:
unique in the outbox, so a retried finish never enqueues a report twice, and the source of the event's stable
``webhook-id`` (every retry of one delivery carries the same id, so the receiver can drop duplicates).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sip_controller.calls.report import CallRecord, report_document, started_document
from sip_controller.config import Reports
from sip_controller.state.records import OutboxItem

CALL_STARTED = "call.started"
CALL_ENDED = "call.ended"
#: a call's Twilio recording that arrived after its report was written (#16)
CALL_RECORDING = "call.recording"
#: the destination of call-log lines
JSONL = "jsonl"


def endpoint_destination(url: str) -> str:
    """The outbox destination of a report endpoint: stable across restarts while its URL stays the same."""
    return "endpoint:" + hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def event_id(key: str) -> str:
    """The event id (and ``webhook-id``) of the outbox row ``key``: the same on every attempt and every replica."""
    return "evt_" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def _event(event_type: str, key: str, document: dict[str, Any], at: float) -> dict[str, Any]:
    created = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"type": event_type, "id": event_id(key), "created_at": created, "data": document}


def _endpoint_items(
    reports: Reports, event_type: str, call_id: str, document: dict[str, Any], at: float
) -> list[OutboxItem]:
    if event_type not in reports.events:
        return []
    items: list[OutboxItem] = []
    for ep in reports.endpoints:
        destination = endpoint_destination(ep.url)
        key = f"{event_type}:{call_id}:{destination}"
        items.append(OutboxItem(key, destination, event_type, _event(event_type, key, document, at), call_id))
    return items


def started_items(record: CallRecord, reports: Reports, *, at: float) -> list[OutboxItem]:
    """The ``call.started`` deliveries of a call just taken (one per endpoint), or none."""
    if CALL_STARTED not in reports.events or not reports.endpoints:
        return []
    document = started_document(record, mask_caller=reports.mask_caller)
    return _endpoint_items(reports, CALL_STARTED, record.call_id, document, at)


def ended_items(record: CallRecord, reports: Reports, *, at: float) -> tuple[dict[str, Any], list[OutboxItem]]:
    """The finished call's report document and its rows: the call-log line (when ``jsonl_path`` is set) and one
    ``call.ended`` delivery per endpoint."""
    document = report_document(record, mask_caller=reports.mask_caller)
    return document, report_items(document, reports, at=at)


def report_items(document: Mapping[str, Any], reports: Reports, *, at: float) -> list[OutboxItem]:
    """The rows delivering a finished report ``document`` (its ``call_id`` names the call): the call-log line
    (when ``jsonl_path`` is set) and one ``call.ended`` per endpoint. Also the hangup janitor's ``outbox_for``."""
    call_id = str(document["call_id"])
    data = dict(document)
    items: list[OutboxItem] = []
    if reports.jsonl_path:
        key = f"{CALL_ENDED}:{call_id}:{JSONL}"
        items.append(OutboxItem(key, JSONL, CALL_ENDED, {"line": data}, call_id))
    items += _endpoint_items(reports, CALL_ENDED, call_id, data, at)
    return items


def recording_document(report: Mapping[str, Any], recording: Mapping[str, Any]) -> dict[str, Any]:
    """The ``call.recording`` event's data: which call (as its report names it) and its recording."""
    return {
        "call_id": report.get("call_id"),
        "profile": report.get("profile"),
        "twilio_call_sid": report.get("twilio_call_sid"),
        "ended_reason": report.get("ended_reason"),
        "recording": dict(recording),
    }


def recording_items(document: Mapping[str, Any], reports: Reports, *, at: float) -> list[OutboxItem]:
    """The deliveries of a recording that came after its call's report (#16): a call-log line (when
    ``jsonl_path`` is set) and one signed ``call.recording`` per endpoint (when ``reports.events`` has it). Keyed
    like every event (``call.recording:<call_id>:<destination>``): enqueued twice, delivered once."""
    call_id = str(document["call_id"])
    items: list[OutboxItem] = []
    if reports.jsonl_path:
        line = {"event": CALL_RECORDING, **document}
        key = f"{CALL_RECORDING}:{call_id}:{JSONL}"
        items.append(OutboxItem(key, JSONL, CALL_RECORDING, {"line": line}, call_id))
    items += _endpoint_items(reports, CALL_RECORDING, call_id, dict(document), at)
    return items


def jsonl_line(payload: dict[str, Any]) -> str:
    """The call-log line of a ``jsonl`` row."""
    return json.dumps(payload.get("line", payload), ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"
