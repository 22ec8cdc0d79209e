"""Whether the agent answers on its own: the session's turn detection as hold mode and live control's mute leave it.

Two features turn the agent's own answers off: hold mode while the call waits on hold (``features/hold.py``), and
live control's mute until the operator unmutes (``features/control.py``). Either may start or end while the other
is in force, so neither patches the turn detection from its own state alone: each sends :func:`turn_detection`
of both (on hold? muted?), and answers come back only when the last of them is over. On hold the agent does not
answer (``create_response`` off) but the caller may still cut a line off; muted it neither answers nor is cut off
(``interrupt_response`` off too), as the operator asked. While it does not answer on its own, OpenAI's idle
timeout (server VAD's ``idle_timeout_ms``: a response OpenAI makes by itself after a silence) is off as well, and
the profile's comes back with the answers.
"""

from __future__ import annotations

from typing import Any

from sip_controller.agent.profile import TurnDetection


def turn_detection(td: TurnDetection | None, *, on_hold: bool, muted: bool) -> dict[str, Any] | None:
    """The profile's turn detection ``td`` as a session patch for a call on hold and/or muted (None: the profile
    has none; the session answers only when asked)."""
    if td is None:
        return None
    body = td.model_dump(exclude_none=True)
    body.pop("eagerness" if td.type == "server_vad" else "idle_timeout_ms", None)
    answering = not (on_hold or muted)
    body["create_response"] = td.create_response and answering
    body["interrupt_response"] = td.interrupt_response and not muted
    if not answering and "idle_timeout_ms" in body:
        body["idle_timeout_ms"] = None
    return body


def session_patch(td: dict[str, Any]) -> dict[str, Any]:
    """The ``session.update`` patch that sets the turn detection ``td``."""
    return {"audio": {"input": {"turn_detection": td}}}
