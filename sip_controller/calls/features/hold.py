"""Hold mode (``wait_on_hold``): long waits without paying the model to listen to music.

The session stops answering on its own (``turn_detection.create_response: false``, transcription kept on);
each caller transcript is then checked — by a cheap out-of-band text classification (``response.create`` with
``conversation: "none"``) or by a phrase list — and when a person is back the session is restored and the model
answers. Hold time and the usage spent on hold are recorded separately; a maximum hold time ends the call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sip_controller.calls.features import watchdog
from sip_controller.calls.io import HOLD_MAX_TIMER, Action, CancelTimer, Send, StartTimer
from sip_controller.calls.report import ToolCallRecord
from sip_controller.realtime import events as ev

if TYPE_CHECKING:
    from sip_controller.calls.machine import CallMachine

PURPOSE = "sipctl_hold_check"
CLASSIFIER_INSTRUCTIONS = (
    "You are checking a phone line that is on hold. The user message is the latest transcript of what was "
    "heard. Answer with exactly one word: yes if a live person is now speaking to us directly (a greeting, a "
    "question, a name), or no if it is hold music, silence, noise, or a recorded announcement."
)
HOLD_GIVE_UP = (
    "You have been on hold too long. Say in one sentence that you cannot wait any longer and will call back, "
    "then goodbye. Do not call any tool."
)


#: conversation items heard on hold that are removed when the hold ends (so later responses don't re-read them)
MAX_HELD_ITEMS = 1000


@dataclass
class HoldState:
    started_at: float
    classifier_ids: set[str] = field(default_factory=set)
    pending_checks: int = 0
    #: caller items committed while on hold (music, announcements)
    items: list[str] = field(default_factory=list)


def _turn_detection(m: CallMachine, *, create_response: bool) -> dict[str, Any] | None:
    td = m.profile.turn_detection
    if td is None:
        return None
    body = td.model_dump(exclude_none=True)
    body.pop("eagerness" if td.type == "server_vad" else "idle_timeout_ms", None)
    body["create_response"] = create_response
    return body


def on_tool(m: CallMachine, record: ToolCallRecord, rel: float) -> list[Action]:
    if m.hold is not None:
        record.result = "already on hold"
        return [m.tool_output(record.call_id, {"status": "already on hold; stay silent"})]
    m.hold = HoldState(started_at=rel)
    record.result = "on hold"
    m.record.mark(rel, f"hold mode on (detect: {m.profile.hold.detect})")
    actions: list[Action] = [
        m.tool_output(record.call_id, {"status": "on hold: stay silent until a person is back on the line"}),
        StartTimer(HOLD_MAX_TIMER, m.profile.hold.max_hold_s),
        *watchdog.pause_silence(m, True),
    ]
    td = _turn_detection(m, create_response=False)
    if td is not None:
        actions.extend(m.update_session({"audio": {"input": {"turn_detection": td}}}, rel, what="hold mode", then=[]))
    return actions


def on_caller_transcript(m: CallMachine, text: str, item_id: str | None, rel: float) -> list[Action]:
    h = m.hold
    if h is None or not m.live:
        return []
    if item_id and len(h.items) < MAX_HELD_ITEMS:
        h.items.append(item_id)
    if m.profile.hold.detect == "phrases":
        lowered = text.lower()
        if any(phrase in lowered for phrase in m.profile.hold.resume_phrases):
            return _resume(m, rel, "a resume phrase was heard", keep=item_id)
        return []
    h.pending_checks += 1
    # out of band, with its own one-message input: the check never re-reads the conversation (all that music)
    event = {
        "type": "response.create",
        "event_id": m.next_event_id("hold_check"),
        "response": {
            "conversation": "none",
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text[:1000]}]}],
            "output_modalities": ["text"],
            "instructions": CLASSIFIER_INSTRUCTIONS,
            "tool_choice": "none",
            "metadata": {"purpose": PURPOSE, "item_id": item_id or ""},
        },
    }
    return [Send(event)]


def _is_check(resp: ev.Response) -> bool:
    return bool(resp.metadata) and resp.metadata.get("purpose") == PURPOSE  # type: ignore[union-attr]


def on_response_created(m: CallMachine, resp: ev.Response) -> list[Action]:
    if m.hold is not None and _is_check(resp) and resp.id:
        m.hold.classifier_ids.add(resp.id)
    return []


def is_classifier_response(m: CallMachine, response_id: str | None) -> bool:
    return m.hold is not None and response_id is not None and response_id in m.hold.classifier_ids


def on_response_done(m: CallMachine, resp: ev.Response, rel: float) -> list[Action] | None:
    """The answer of a hold check (None when ``resp`` is not one)."""
    h = m.hold
    if not _is_check(resp) and not (h is not None and resp.id in h.classifier_ids):
        return None
    if h is None or not m.live:
        return []
    h.pending_checks = max(0, h.pending_checks - 1)
    answer = " ".join(item.text() for item in resp.output).strip().lower()
    if answer.startswith("yes"):
        keep = resp.metadata.get("item_id") if resp.metadata else None
        return _resume(m, rel, "a person is back (classifier)", keep=str(keep) if keep else None)
    return []


def _resume(m: CallMachine, rel: float, why: str, *, keep: str | None = None) -> list[Action]:
    """End the hold: forget what was heard on hold (but the person's first words), restore the session, and
    let the model answer."""
    assert m.hold is not None
    held = [item for item in m.hold.items if item != keep]
    settle(m, rel)
    m.hold = None
    m.record.mark(rel, f"hold mode off: {why}")
    actions: list[Action] = [CancelTimer(HOLD_MAX_TIMER), *watchdog.pause_silence(m, False)]
    actions.extend(
        Send({"type": "conversation.item.delete", "event_id": m.next_event_id("item"), "item_id": item})
        for item in held
    )
    td = _turn_detection(m, create_response=m.profile.turn_detection.create_response if m.profile.turn_detection
                         else True)
    if td is None:
        return [*actions, m.respond()]
    patch = {"audio": {"input": {"turn_detection": td}}}
    return [*actions, *m.update_session(patch, rel, what="end of hold", then=[m.respond()])]


def settle(m: CallMachine, rel: float) -> None:
    """Add the hold time so far to the record (when hold ends, or the call does)."""
    if m.hold is not None:
        m.record.hold_s = round(m.record.hold_s + max(0.0, rel - m.hold.started_at), 3)
        m.hold.started_at = rel


def on_timer(m: CallMachine, name: str, rel: float) -> list[Action]:
    if name == HOLD_MAX_TIMER and m.hold is not None and m.live:
        m.record.mark(rel, "hold too long")
        return m.begin_ending("max_duration", rel, HOLD_GIVE_UP)
    return []
