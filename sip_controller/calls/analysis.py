"""Post-call analysis (#17), what is asked and what comes back: the transcript of a finished call as text, the
request to the Responses API, the answer checked against the schema, its cost, and the ``call.analyzed``
documents and deliveries. Pure: no I/O (the worker is :mod:`sip_controller.service.analysis`).

The model is asked for one JSON object: ``summary`` (what ``summary_prompt`` asks for), ``success`` and
``success_reason`` (only with ``success_criteria``) and ``fields`` (the profile's ``schema``, when there is one),
as a strict structured output, so a valid answer always has every key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from jsonschema import Draft202012Validator

from sip_controller.agent.analysis import CallAnalysis
from sip_controller.calls.outbox import JSONL, endpoint_destination, event_id
from sip_controller.calls.pricing import Pricing, text_cost
from sip_controller.config import Reports, Settings
from sip_controller.realtime.responses import TextAnswer, structured_request
from sip_controller.state.records import OutboxItem

CALL_ANALYZED = "call.analyzed"
#: the outbox destination of the row a finished call's transaction writes to ask for its analysis: the analysis
#: worker takes it from there (so a call whose process dies right after finishing is still analysed)
ANALYSIS_DESTINATION = "analysis"
ANALYSIS_REQUESTED = "analysis.requested"

INSTRUCTIONS = (
    "You analyse the transcript of a finished phone call between a caller and a voice assistant. The transcript "
    "lists each turn with its time in seconds from the start of the call; tool calls show what the assistant did "
    "and what came back; keypad lines are digits the caller pressed. Answer only from the transcript: when it does "
    "not say something, use null where the schema allows it, else the most cautious value."
)


class AnalysisFailed(Exception):
    """The answer cannot be used: not JSON, or not valid against the schema. ``code`` names the kind."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


def wanted(settings: Settings, profile: str) -> CallAnalysis | None:
    """The analysis block of ``profile``, or None (no such profile, or no analysis for it)."""
    found = settings.profiles.get(profile)
    return found.analysis if found is not None else None


def model_for(settings: Settings, analysis: CallAnalysis) -> str:
    return analysis.model or settings.analysis.model


def request_item(call_id: str, profile: str) -> OutboxItem:
    """The row, written with the finished call, that asks for its analysis."""
    return OutboxItem(
        f"{ANALYSIS_REQUESTED}:{call_id}:{ANALYSIS_DESTINATION}",
        ANALYSIS_DESTINATION,
        ANALYSIS_REQUESTED,
        {"call_id": call_id, "profile": profile},
        call_id,
    )


def requests_for(settings: Settings, report: Mapping[str, Any]) -> list[OutboxItem]:
    """What a finished call's transaction writes to have it analysed: the request row when its profile has an
    analysis block and something was said (a call rejected or never answered has nothing to analyse)."""
    profile = str(report.get("profile") or "")
    if wanted(settings, profile) is None or not report.get("transcript"):
        return []
    return [request_item(str(report["call_id"]), profile)]


# ---- the question -------------------------------------------------------------------------------------------


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def transcript_text(report: Mapping[str, Any], *, max_chars: int) -> str:
    """The call as the model reads it: every caller and assistant turn, keypad digit and tool call (its arguments,
    result and outcome), in time order. Longer than ``max_chars``: the start is cut (the end says how it ended)."""
    lines: list[tuple[float, int, str]] = []
    names = {"caller": "Caller", "assistant": "Assistant", "keypad": "Keypad"}
    for i, turn in enumerate(report.get("transcript") or ()):
        if isinstance(turn, Mapping):
            who = names.get(str(turn.get("role")), str(turn.get("role")))
            lines.append((float(turn.get("at_s") or 0.0), i, f"{who}: {turn.get('text', '')}"))
    for j, tool in enumerate(report.get("tool_calls") or ()):
        if isinstance(tool, Mapping):
            result = tool.get("result")
            text = f"Tool call {tool.get('name')}({_compact(tool.get('arguments'))}) -> {tool.get('outcome')}"
            if result:
                text += f": {_compact(result)}"
            lines.append((float(tool.get("at_s") or 0.0), 100_000 + j, text))
    lines.sort()
    body = "\n".join(f"[{at:.1f}s] {text}" for at, _, text in lines) or "(nothing was said)"
    head = (
        f"Call {report.get('call_id')}, profile {report.get('profile')}, ended: {report.get('ended_reason')}, "
        f"duration {(report.get('timings') or {}).get('duration_s')} s.\n"
    )
    if len(head) + len(body) > max_chars:
        keep = max(0, max_chars - len(head) - 40)
        body = "[… the start of the call is cut …]\n" + body[len(body) - keep :]
    return head + body


def output_schema(analysis: CallAnalysis) -> dict[str, Any]:
    """The structured output asked for: ``summary``, with success criteria ``success`` and ``success_reason``,
    with a schema ``fields``."""
    properties: dict[str, Any] = {"summary": {"type": "string", "description": "the summary asked for"}}
    if analysis.success_criteria is not None:
        properties["success"] = {"type": "boolean", "description": "whether the call met the success criteria"}
        properties["success_reason"] = {"type": "string", "description": "why, in one sentence"}
    if analysis.fields_schema is not None:
        properties["fields"] = analysis.fields_schema
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def instructions(analysis: CallAnalysis) -> str:
    parts = [INSTRUCTIONS, f"summary: {analysis.summary_prompt}"]
    if analysis.success_criteria is not None:
        parts.append(f"success: true when the call met these criteria, else false: {analysis.success_criteria}")
    if analysis.fields_schema is not None:
        parts.append("fields: extract them as the schema describes.")
    return "\n\n".join(parts)


def request_body(settings: Settings, analysis: CallAnalysis, report: Mapping[str, Any]) -> dict[str, Any]:
    """The Responses API request analysing the call of ``report``."""
    return structured_request(
        model=model_for(settings, analysis),
        instructions=instructions(analysis),
        text=transcript_text(report, max_chars=settings.analysis.max_transcript_chars),
        name=analysis.name,
        schema=output_schema(analysis),
    )


# ---- the answer ---------------------------------------------------------------------------------------------


def parse_answer(answer: TextAnswer, analysis: CallAnalysis) -> dict[str, Any]:
    """The answer's object, valid against :func:`output_schema`; :class:`AnalysisFailed` otherwise."""
    try:
        value = json.loads(answer.text)
    except ValueError:
        raise AnalysisFailed("the model's answer is not JSON", code="invalid_json") from None
    validator = Draft202012Validator(output_schema(analysis))
    error = next(iter(sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path) or "(the answer)"
        raise AnalysisFailed(f"the answer is not valid against the schema at {where}: {error.message}", code="schema")
    assert isinstance(value, dict)
    return value


def answer_cost(pricing: Pricing, model: str, answer: TextAnswer) -> float | None:
    """USD for the answer's usage, or None when the model has no price (``pricing.text``)."""
    prices = pricing.for_text_model(answer.model or model) or pricing.for_text_model(model)
    if prices is None:
        return None
    u = answer.usage
    return round(text_cost(u.input_tokens, u.cached_tokens, u.output_tokens, prices), 6)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def completed_document(
    value: Mapping[str, Any], answer: TextAnswer, *, model: str, cost_usd: float | None, attempts: int, at: float
) -> dict[str, Any]:
    """The stored analysis of a call (``GET /v1/calls/{id}``'s ``analysis``, ``call.analyzed``'s ``analysis``)."""
    return {
        "status": "completed",
        "model": answer.model or model,
        "summary": value.get("summary"),
        "success": value.get("success"),
        "success_reason": value.get("success_reason"),
        "fields": value.get("fields"),
        "usage": answer.usage.to_dict(),
        "cost_usd": cost_usd,
        "attempts": attempts,
        "completed_at": _iso(at),
        "error": None,
    }


def failed_document(error: str, *, model: str, attempts: int, at: float) -> dict[str, Any]:
    """The stored analysis of a call whose analysis failed for good: why."""
    return {
        "status": "failed",
        "model": model,
        "summary": None,
        "success": None,
        "success_reason": None,
        "fields": None,
        "usage": None,
        "cost_usd": None,
        "attempts": attempts,
        "completed_at": _iso(at),
        "error": error,
    }


def cost_breakdown(call_cost_usd: float | None, analysis_cost_usd: float | None) -> dict[str, float | None]:
    """The call's cost (model and transcription, as its report has it), the analysis's, and the total."""
    call = round(call_cost_usd or 0.0, 6)
    analysis = None if analysis_cost_usd is None else round(analysis_cost_usd, 6)
    return {"call_usd": call, "analysis_usd": analysis, "total_usd": round(call + (analysis or 0.0), 6)}


def analyzed_document(report: Mapping[str, Any], analysis: Mapping[str, Any]) -> dict[str, Any]:
    """The ``call.analyzed`` event's data (and the call log line's): which call, its analysis, the costs."""
    raw_cost = report.get("cost_usd")
    call_cost = float(raw_cost) if isinstance(raw_cost, int | float) else None
    return {
        "call_id": report.get("call_id"),
        "profile": report.get("profile"),
        "ended_reason": report.get("ended_reason"),
        "analysis": dict(analysis),
        "cost_breakdown": cost_breakdown(call_cost, analysis.get("cost_usd")),
    }


def analyzed_items(document: Mapping[str, Any], reports: Reports, *, at: float) -> list[OutboxItem]:
    """The deliveries of a call's analysis: a call-log line (when ``jsonl_path`` is set) and one signed
    ``call.analyzed`` per endpoint (when ``reports.events`` has it). Written after the call's ``call.ended`` rows,
    so each destination delivers them after it."""
    call_id = str(document["call_id"])
    items: list[OutboxItem] = []
    if reports.jsonl_path:
        line = {"event": CALL_ANALYZED, **document}
        items.append(OutboxItem(f"{CALL_ANALYZED}:{call_id}:{JSONL}", JSONL, CALL_ANALYZED, {"line": line}, call_id))
    if CALL_ANALYZED in reports.events:
        for ep in reports.endpoints:
            destination = endpoint_destination(ep.url)
            key = f"{CALL_ANALYZED}:{call_id}:{destination}"
            payload = {"type": CALL_ANALYZED, "id": event_id(key), "created_at": _iso(at), "data": dict(document)}
            items.append(OutboxItem(key, destination, CALL_ANALYZED, payload, call_id))
    return items
