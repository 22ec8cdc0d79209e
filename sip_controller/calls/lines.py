"""The lines the controller asks the model to say (the greeting, a goodbye, a transfer's handoff line, the
max-duration wrap-up): how the response that says one ended, and the bounds on asking again.

OpenAI ends every response with a status: ``completed``; ``cancelled`` (``status_details.reason``
``turn_detected`` when the caller started speaking over it: a barge-in); ``incomplete`` (``max_output_tokens``,
``content_filter``: cut short); or ``failed`` (``status_details.error``: ``server_error``, ``insufficient_quota``,
…). A line the caller heard at least in part counts as said; one that failed before any audio is asked for
again, at most ``LINE_RETRIES`` times, and then the call ends as ``model_error`` instead of leaving the caller in
silence.
"""

from __future__ import annotations

from typing import Literal

from sip_controller.realtime import events as ev

#: a line whose response failed is asked for this many more times; one more failure ends the call (model_error)
LINE_RETRIES = 1
#: the caller may talk over the controller's goodbyes (or a transfer's handoff lines) this many times in a call;
#: the next time the line is not asked for again (the hangup or the refer follows at once)
MAX_BARGE_INS = 2
#: the model's responses failing this many times in a row (nothing completed in between) end the call as
#: model_error: the caller would only hear silence
MAX_FAILED_IN_A_ROW = 3
#: after a barge-in, how long to wait for the caller's turn and the model's answer to it to be over before asking
#: for the interrupted line again anyway
ANSWER_WAIT_MAX_S = 30.0

#: ``heard``: the caller heard it (completed, or cut short after its audio began); ``interrupted``: the caller
#: spoke over it (cancelled, ``turn_detected``); ``failed``: failed, or cut short before any audio; ``silent``:
#: ended without audio for another reason (cancelled by a client, a text-only answer)
Outcome = Literal["heard", "interrupted", "failed", "silent"]


def reason(resp: ev.Response) -> str | None:
    return resp.status_details.reason if resp.status_details is not None else None


def outcome(resp: ev.Response, *, heard: bool) -> Outcome:
    """How the response that says a line ended. ``heard``: its audio started (or it has a transcript)."""
    status = resp.status
    if status == "cancelled" and reason(resp) == "turn_detected":
        return "interrupted"
    if status == "failed" or (status == "incomplete" and not heard):
        return "failed"
    if status in ("completed", "incomplete") and heard:
        return "heard"
    return "silent"
