"""Hold mode (``wait_on_hold``): long waits without paying the model to listen to music.

The session stops answering on its own (``turn_detection.create_response: false``, transcription kept on);
each caller transcript is then checked — by a cheap out-of-band text classification (``response.create`` with
``conversation: "none"``) or by a phrase list — and when a person is back the session is restored and the model
answers. Hold time and the usage spent on hold are recorded separately; a maximum hold time ends the call.

Live control's mute (``features/control.py``) turns the agent's own answers off too, and may come or go during a
hold: the turn detection both send is :func:`turns.turn_detection` of the two, so a hold that ends while the
agent is muted leaves it muted (no answers of its own, and no answer asked for: the operator has the call).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sip_controller.agent.profile import Hold as HoldConfig
from sip_controller.agent.profile import TurnDetection
from sip_controller.agent.tools import WaitOnHoldArgs
from sip_controller.calls.actions import Action, CancelTimer, Park, Send, StartTimer
from sip_controller.calls.features import turns
from sip_controller.calls.features.port import CallPort
from sip_controller.calls.report import ToolCallRecord
from sip_controller.calls.tags import PURPOSE_KEY
from sip_controller.realtime import events as ev

HOLD_MAX_TIMER = "hold_max"

#: the tag purpose of a hold check (``calls/tags.py``); its metadata also carries the checked item's id
PURPOSE = "hold_check"
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


@dataclass(slots=True)
class OnHold:
    """One spell on hold."""

    #: since when the hold time is not yet in the record
    started_at: float
    classifier_ids: set[str] = field(default_factory=set)
    pending_checks: int = 0
    #: caller items committed while on hold (music, announcements)
    items: list[str] = field(default_factory=list)


def _is_check(resp: ev.Response) -> bool:
    return isinstance(resp.metadata, dict) and resp.metadata.get(PURPOSE_KEY) == PURPOSE


@dataclass(slots=True)
class Hold:
    """A call's hold mode. ``waiting`` is None while the call is not on hold."""

    config: HoldConfig
    #: the profile's turn detection, patched while on hold (None: the session has none to patch)
    turn_detection: TurnDetection | None
    waiting: OnHold | None = None
    #: a ``Park`` went out and no ``ParkFailed`` came back: the OpenAI leg closing now means Twilio took the line
    parking: bool = False

    @property
    def active(self) -> bool:
        return self.waiting is not None

    def on_tool(
        self, port: CallPort, record: ToolCallRecord, rel: float, args: WaitOnHoldArgs | None = None
    ) -> list[Action]:
        if self.waiting is not None:
            record.result = "already on hold"
            return [port.tool_output(record.call_id, {"status": "already on hold; stay silent"})]
        self.waiting = OnHold(started_at=rel)
        park = self._park(port, args or WaitOnHoldArgs())
        port.record.on_hold_since_s = rel  # kept in the store: a takeover goes on waiting (``restore``)
        record.result = "on hold"
        port.record.mark(rel, f"hold mode on (detect: {self.config.detect})")
        actions: list[Action] = [
            port.tool_output(record.call_id, {"status": "on hold: stay silent until a person is back on the line"}),
            StartTimer(HOLD_MAX_TIMER, self.config.max_hold_s),
            *port.pause_silence(True),
        ]
        td = turns.turn_detection(self.turn_detection, on_hold=True, muted=port.muted)
        if td is not None:
            actions.extend(port.update_session(turns.session_patch(td), rel, what="hold mode", then=[]))
        if park is not None:
            # hold mode first: the session stays quiet while Twilio is asked to take the line (and if it won't)
            port.record.mark(rel, f"parking the line on Twilio (expected wait {park.expected_min:g} min)")
            self.parking = True
            actions.append(park)
        return actions

    def _park(self, port: CallPort, args: WaitOnHoldArgs) -> Park | None:
        """The ``Park`` to ask for (#16): the profile parks, the call is one Twilio bridged, and the model said the
        wait may be at least the profile's threshold; else None (hold mode only)."""
        config = self.config.park
        expected = args.expected_minutes
        if config is None or port.record.twilio is None or expected is None or expected < config.after_min:
            return None
        return Park(expected_min=expected, reason=args.reason)

    def on_park_failed(self, port: CallPort, detail: str, rel: float) -> list[Action]:
        """Twilio did not take the line: the call stays on hold mode in this session (its maximum hold applies)."""
        self.parking = False
        port.record.errors.append(f"parking failed: {detail}"[:300])
        port.record.mark(rel, "parking failed: staying on hold mode")
        return []

    def on_caller_transcript(self, port: CallPort, text: str, item_id: str | None, rel: float) -> list[Action]:
        h = self.waiting
        if h is None or not port.live:
            return []
        if item_id and len(h.items) < MAX_HELD_ITEMS:
            h.items.append(item_id)
        if self.config.detect == "phrases":
            lowered = text.lower()
            if any(phrase in lowered for phrase in self.config.resume_phrases):
                return self._resume(port, rel, "a resume phrase was heard", keep=item_id)
            return []
        h.pending_checks += 1
        # out of band, with its own one-message input: the check never re-reads the conversation (all that music)
        check = {
            "conversation": "none",
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text[:1000]}]}],
            "output_modalities": ["text"],
            "instructions": CLASSIFIER_INSTRUCTIONS,
            "tool_choice": "none",
            "metadata": {"item_id": item_id or ""},
        }
        return [port.ask(check, purpose=PURPOSE)]

    def on_response_created(self, resp: ev.Response) -> None:
        if self.waiting is not None and _is_check(resp) and resp.id:
            self.waiting.classifier_ids.add(resp.id)

    def is_classifier_response(self, response_id: str | None) -> bool:
        h = self.waiting
        return h is not None and response_id is not None and response_id in h.classifier_ids

    def on_response_done(self, port: CallPort, resp: ev.Response, rel: float) -> list[Action] | None:
        """The answer of a hold check (None when ``resp`` is not one)."""
        h = self.waiting
        if not _is_check(resp) and not (h is not None and resp.id in h.classifier_ids):
            return None
        if h is None or not port.live:
            return []
        h.pending_checks = max(0, h.pending_checks - 1)
        answer = " ".join(item.text() for item in resp.output).strip().lower()
        if answer.startswith("yes"):
            keep = resp.metadata.get("item_id") if resp.metadata else None
            return self._resume(port, rel, "a person is back (classifier)", keep=str(keep) if keep else None)
        return []

    def on_timer(self, port: CallPort, name: str, rel: float) -> list[Action]:
        if name == HOLD_MAX_TIMER and self.waiting is not None and port.live:
            port.record.mark(rel, "hold too long")
            return port.begin_ending("max_duration", rel, HOLD_GIVE_UP)
        return []

    def restore(self, since: float | None) -> None:
        """A call taken over from a lost owner (#13) that was waiting on hold since ``since`` (None: it was not):
        it goes on waiting, its hold time counted from then. What was heard on hold before the takeover is not
        known here (those items stay in the conversation), nor are the checks then in flight (an answer that comes
        is still taken: its tag says it is a check)."""
        self.waiting = None if since is None else OnHold(started_at=since)

    def taken_over(self, port: CallPort, rel: float) -> list[Action]:
        """Once the taken-over call is re-attached: the maximum hold time counts from the hold's original start
        (ended at once if it is already over). The turn detection is the call's to say (with live control's mute)."""
        h = self.waiting
        if h is None:
            return []
        port.record.mark(rel, f"taken over: on hold since {h.started_at:g}s")
        return [StartTimer(HOLD_MAX_TIMER, max(0.0, h.started_at + self.config.max_hold_s - rel))]

    def settle(self, port: CallPort, rel: float) -> None:
        """Add the hold time so far to the record (when hold ends, or the call does)."""
        h = self.waiting
        if h is not None:
            record = port.record
            record.hold_s = round(record.hold_s + max(0.0, rel - h.started_at), 3)
            h.started_at = rel

    def _resume(self, port: CallPort, rel: float, why: str, *, keep: str | None = None) -> list[Action]:
        """End the hold: forget what was heard on hold (but the person's first words), restore the session, and
        let the model answer — unless the agent is muted: then it stays muted and nothing is asked of it."""
        assert self.waiting is not None
        held = [item for item in self.waiting.items if item != keep]
        self.settle(port, rel)
        self.waiting = None
        port.record.on_hold_since_s = None
        muted = port.muted
        port.record.mark(rel, f"hold mode off: {why}" + ("; muted: the agent waits for the operator" if muted else ""))
        actions: list[Action] = [CancelTimer(HOLD_MAX_TIMER), *port.pause_silence(False)]
        actions.extend(
            Send({"type": "conversation.item.delete", "event_id": port.next_event_id("item"), "item_id": item})
            for item in held
        )
        answer: list[Action] = [] if muted else [port.respond()]
        td = turns.turn_detection(self.turn_detection, on_hold=False, muted=muted)
        if td is None:
            return [*actions, *answer]
        return [*actions, *port.update_session(turns.session_patch(td), rel, what="end of hold", then=answer)]
