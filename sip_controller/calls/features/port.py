"""The one surface a feature sees of the call it is part of. ``CallMachine`` implements it; a test can
implement it with a few lines.

A feature takes the port as an argument of each method instead of keeping it: no feature holds a reference
back to the machine, so a call's objects form no reference cycle and are freed the moment the call is
dropped, and a feature is one pointer smaller.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Any, Protocol

from sip_controller.calls.actions import Action, Send
from sip_controller.calls.report import CallRecord
from sip_controller.calls.states import EndedReason
from sip_controller.calls.tags import ANSWER


class CallPort(Protocol):
    """What a feature may ask of its call."""

    @property
    def record(self) -> CallRecord:
        """The call's record: the timeline (``mark``), errors, and the report fields a feature owns."""
        ...

    @property
    def live(self) -> bool:
        """Attached and not ending: the conversation is going on."""
        ...

    @property
    def muted(self) -> bool:
        """Live control muted the agent: it answers only when asked (a say line) until it is unmuted."""
        ...

    @property
    def audio_started(self) -> Container[str]:
        """Responses whose audio began playing to the caller."""
        ...

    @property
    def audio_stopped(self) -> Container[str]:
        """Responses whose audio finished playing (or was cleared)."""
        ...

    @property
    def spoken(self) -> Container[str]:
        """Responses with an output transcript: the model said something."""
        ...

    def next_event_id(self, kind: str) -> str:
        """A fresh client event id, unique within the call."""
        ...

    def ask(self, response: Mapping[str, Any], *, purpose: str) -> Send:
        """A response.create with ``response`` as its body, tagged with ``purpose`` in its metadata
        (``calls/tags.py``); metadata the body carries already is kept beside the tag."""
        ...

    def say(self, instructions: str, *, purpose: str = "say") -> Send:
        """A response.create that makes the model say something specific, without tools, tagged with
        ``purpose`` in its metadata (``calls/tags.py``: its response is recognised by that tag)."""
        ...

    def respond(self, purpose: str = ANSWER) -> Send:
        """A plain response.create: the model answers the conversation as it stands (tagged with ``purpose``,
        like every request)."""
        ...

    def tool_output(self, call_id: str, output: dict[str, Any] | str) -> Send:
        """The output of a function call, for the model."""
        ...

    def user_text(self, text: str) -> Send:
        """A user message added to the conversation."""
        ...

    def note(self, text: str) -> Send:
        """A system message added to the conversation: what the model should know before it answers next."""
        ...

    def after_caller_turn(self, name: str, rel: float) -> list[Action]:
        """The caller talked over a line: once they have finished and the model's answer to them has been
        heard, ``name`` comes back to the feature's ``on_timer`` (a timer of that name bounds the wait)."""
        ...

    def model_failed(self, rel: float, why: str) -> list[Action]:
        """The model cannot say what the call needs: hang up at once, ``model_error``."""
        ...

    def update_session(self, patch: dict[str, Any], rel: float, *, what: str, then: list[Action]) -> list[Action]:
        """A checked session.update; ``then`` runs once OpenAI confirms it (at once if it is refused)."""
        ...

    def begin_ending(self, reason: EndedReason, rel: float, instructions: str | None) -> list[Action]:
        """End the call politely: say goodbye with ``instructions`` (none: already said), then hang up."""
        ...

    def start_transfer(self, target: str, rel: float) -> list[Action]:
        """Begin a transfer to an allow-listed target (nothing if one is under way or the call is not live)."""
        ...

    def pause_silence(self, paused: bool) -> list[Action]:
        """Stop (or resume) counting caller silence. Silence stays uncounted while any feature still pauses it
        (on hold, or muted): a resume asked for while the other is in force changes nothing."""
        ...
