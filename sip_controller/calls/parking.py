"""Parked holds (#16): the plain data and text of a call parked on Twilio between two OpenAI legs.

A call Twilio bridged into OpenAI is parked when the model's ``wait_on_hold`` expects a long wait and the profile
parks (``hold.park``): the Twilio call leaves its ``<Dial>`` (the OpenAI leg ends, reported as ``parked``, its
report kept but not sent) and listens for speech. The park lives in the Twilio call's row (``park``, JSON), so any
replica answers Twilio's next callback and a restart loses nothing:

``status``      ``parked`` (listening), ``bridging`` (a person is back: the next leg is being dialled), ``ended``
                (gave up: the call is being hung up), ``closed`` (its report written)
``legs``        the OpenAI call ids parked so far, in order; the first is the call's identity (``call_id`` of its
                report, as ``call.started`` said)
``spell``       the number of the park under way (1, 2, …); Twilio's callbacks carry it, so a late one is known
``since``       when the park under way began (epoch seconds)
``listens``     Twilio's listening rounds so far; ``checks`` the text checks asked of OpenAI, ``check_usage`` their
                tokens
``spells``      the parks that are over, with their costs (``calls/legs.py``)
``profile``, ``reason`` (the open task, in the model's words), ``expected_min``, ``heard`` (the person's first
words), ``end_reason`` (why a call that ended while parked ended)

This module is pure: the registry writes a park, ``service/parking.py`` answers Twilio's callbacks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

from sip_controller.calls.actions import Park
from sip_controller.calls.report import CallRecord, report_document

PARKED_PATH = "/twilio/parked"
PARKED, BRIDGING, ENDED, CLOSED = "parked", "bridging", "ended", "closed"
#: how much of the conversation so far the next leg's instructions carry (its latest part)
MAX_CONTEXT_CHARS = 4000
MAX_HEARD_CHARS = 500
#: the text check of what Twilio heard on a parked line (a Responses API request with a strict ``{"person": bool}``)
CHECK_INSTRUCTIONS = (
    "You are checking a phone line that is on hold. The user message is what speech recognition heard on it. "
    "Set person to true if a live person is now speaking to us directly (a greeting, a question, a name), or to "
    "false if it is hold music, silence, noise, or a recorded announcement."
)
NOT_CONNECTED_LINE = "Sorry, we could not connect you just now. We will call back. Goodbye."
GIVE_UP_LINE = "Sorry, we could not wait any longer on hold. We will call back later. Goodbye."
_WORDS = re.compile(r"[a-z']+")


def parked_url(public_url: str, twilio_id: str, spell: int, *, after: str | None = None) -> str:
    """Where Twilio posts what it heard on a parked call (signed like every Twilio callback); ``after="bridge"``:
    where the bridge to the next leg says it is over (the ``<Dial action>``)."""
    query: dict[str, str | int] = {"twilio_id": twilio_id, "spell": spell}
    if after is not None:
        query["after"] = after
    return f"{public_url}{PARKED_PATH}?{urlencode(query)}"


def new_park(
    *, call_id: str, earlier: Sequence[str], spells: Sequence[Mapping[str, Any]], profile: str, park: Park, now: float
) -> dict[str, Any]:
    """The park a leg writes as it parks: ``earlier`` are the call's legs parked before this one."""
    return {
        "status": PARKED,
        "legs": [*earlier, call_id],
        "spell": len(spells) + 1,
        "since": now,
        "listens": 0,
        "checks": 0,
        "check_usage": {},
        "spells": [dict(s) for s in spells],
        "profile": profile,
        "reason": park.reason,
        "expected_min": park.expected_min,
        "heard": None,
        "end_reason": None,
    }


def closed_spell(park: Mapping[str, Any], now: float, costs: Mapping[str, float]) -> dict[str, Any]:
    """The park under way as a spell that is over at ``now`` (``costs``: ``legs.spell_costs``)."""
    return {
        "from": float(park.get("since") or now),
        "to": now,
        "listens": int(park.get("listens") or 0),
        "checks": int(park.get("checks") or 0),
        **{key: float(value) for key, value in costs.items()},
    }


def add_usage(total: Mapping[str, Any], usage: Mapping[str, int]) -> dict[str, int]:
    out = {str(k): int(v) for k, v in total.items() if isinstance(v, int)}
    for key, value in usage.items():
        out[key] = out.get(key, 0) + int(value)
    return out


def heard_person(text: str, phrases: Iterable[str]) -> bool:
    """Whether what Twilio heard has one of the hold's resume phrases (case and punctuation aside)."""
    said = " ".join(_WORDS.findall(text.lower()))
    return any(" ".join(_WORDS.findall(p.lower())) in said for p in phrases if p.strip())


def conversation_so_far(documents: Sequence[Mapping[str, Any]], *, max_chars: int = MAX_CONTEXT_CHARS) -> str:
    """The earlier legs' transcript as ``Caller:``/``You:`` lines, the latest ``max_chars`` of it."""
    lines: list[str] = []
    for doc in documents:
        for turn in doc.get("transcript") or ():
            if not isinstance(turn, Mapping):
                continue
            role = {"caller": "Them", "assistant": "You", "keypad": "Keypad"}.get(str(turn.get("role")), "Them")
            text = str(turn.get("text") or "").strip()
            if text:
                lines.append(f"{role}: {text}")
    joined = "\n".join(lines)
    if len(joined) > max_chars:
        joined = "…" + joined[-max_chars:]
    return joined


def resumed_instructions(instructions: str, *, reason: str | None) -> str:
    """The next leg's instructions: the profile's own, then how this session stands. What was said on the call (the
    other side's words above all) is not here: it comes as conversation messages (:func:`resumed_context`)."""
    parts = [
        instructions.rstrip(),
        "",
        "# This call is continuing after a long hold",
        "You were on hold and the line was parked; this is a fresh session on the same phone call. The first user "
        "messages are what was said before the hold and what the person who came back said. Do not greet as if the "
        "call just started, and do not call wait_on_hold again unless you are put on hold again.",
    ]
    if reason:
        parts.append(f"What you were waiting for (the open task, in your own words then): {reason[:500]}")
    return "\n".join(parts)


def resumed_context(documents: Sequence[Mapping[str, Any]], heard: str | None) -> tuple[str, ...]:
    """The user messages the next leg starts with: the conversation before the hold, and the person's first words."""
    out: list[str] = []
    context = conversation_so_far(documents)
    if context:
        out.append("What was said on this call before the hold (a transcript):\n" + context)
    if heard:
        out.append(f"The person who just came back on the line said: {heard[:MAX_HEARD_CHARS]}")
    return tuple(out)


#: what the next leg's model is asked to say first: answer the person who came back
OPENING = (
    "A person has just come back on the line after the hold (their words are the last user message). Answer them "
    "now in one or two short sentences: say who you are and why you are calling, and go on with the open task."
)


def leg_document(record: CallRecord, *, mask_caller: bool) -> dict[str, Any]:
    """One leg's own report (not merged with the legs before it): what a leg's row keeps."""
    return report_document(replace(record, earlier_legs=[], park_spells=[]), mask_caller=mask_caller)


def leg_inputs(record: CallRecord) -> dict[str, Any]:
    """What a later leg keeps in its row's inputs, for a replica that takes it over: the legs and parks before it."""
    if not record.earlier_legs:
        return {}
    return {"legs": {"earlier": list(record.earlier_legs), "spells": list(record.park_spells)}}


def report_call_id(park: Mapping[str, Any] | None) -> str | None:
    """The row a parked call's report is on (its first leg's); None for a call never parked."""
    legs = park.get("legs") if isinstance(park, Mapping) else None
    return str(legs[0]) if isinstance(legs, list) and legs else None


def park_view(park: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A parked call as ``GET /v1/outbound/{id}`` shows it: where the park is, since when, how many rounds and legs
    (never what was heard: that is the caller's speech)."""
    if not isinstance(park, Mapping):
        return None
    return {
        "status": park.get("status"),
        "spell": park.get("spell"),
        "since": park.get("since"),
        "listens": park.get("listens"),
        "checks": park.get("checks"),
        "legs": list(park.get("legs") or ()),
        "spells_over": len(park.get("spells") or ()),
    }
