"""One call from its OpenAI legs (#16: long holds without the 60-minute wall).

A Twilio call can be parked during a long hold: its OpenAI leg ends (``ended_reason: "parked"``, that leg's report
document is kept), Twilio holds the line and listens for a person (``<Gather input="speech">`` rounds, optionally a
text check through the Responses API), and a fresh OpenAI leg (a new OpenAI call id) continues the call when a
person is back. :func:`merge_legs` makes the call's one report of its legs' documents and its parks ("spells");
:func:`spell_costs` prices one spell against staying on the OpenAI session in hold mode.

Pure: no I/O, no clock. Leg documents may be older or partial (read back from a store): a missing number counts 0,
a missing list is empty, a missing time leaves what depends on it ``null``; nothing in them raises.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sip_controller.calls.pricing import ParkPrices, TextPrices, text_cost, transcription_per_minute

#: Twilio bills ``<Gather>`` speech recognition in increments of this many seconds, each round at least one
SPEECH_INCREMENT_S = 15
#: the report's lists whose entries carry ``at_s`` (seconds since the call's webhook)
TIMED_LISTS = ("transcript", "tool_calls", "timeline", "failed_responses", "barge_ins")

PARKED_EVENT = "parked on Twilio: listening for a person"
BACK_EVENT = "a person is back: a fresh OpenAI session"
ENDED_PARKED_EVENT = "ended while parked: {reason}"


def spell_costs(
    parked_s: float,
    *,
    listens: int,
    check_usage: Mapping[str, int] | None,
    prices: ParkPrices,
    check_model_prices: TextPrices | None,
) -> dict[str, float]:
    """USD of one park of ``parked_s`` seconds: ``listen_cost_usd`` (Twilio's speech recognition over the
    ``listens`` ``<Gather>`` rounds: the parked time in 15-second increments, never less than one increment a round),
    ``check_cost_usd`` (the Responses API checks' summed ``usage``: ``input_tokens``, ``output_tokens``,
    ``cached_tokens``; 0 without usage or without the check model's prices) and ``hold_mode_cost_usd`` (what the
    same time on the OpenAI session in hold mode would have cost: input transcription and Twilio's SIP leg to
    OpenAI, per minute)."""
    seconds = max(0.0, round(parked_s, 3))  # to the millisecond: 30.0000001 s is two increments, not three
    increments = max(math.ceil(seconds / SPEECH_INCREMENT_S), max(0, listens))
    check = 0.0
    if check_usage is not None and check_model_prices is not None:
        check = text_cost(
            int(check_usage.get("input_tokens", 0)),
            int(check_usage.get("cached_tokens", 0)),
            int(check_usage.get("output_tokens", 0)),
            check_model_prices,
        )
    per_minute = transcription_per_minute(prices.transcription) + prices.sip_per_minute
    return {
        "listen_cost_usd": round(increments * prices.speech_recognition_per_15s, 6),
        "check_cost_usd": round(check, 6),
        "hold_mode_cost_usd": round(seconds / 60 * per_minute, 6),
    }


# ---- reading leg documents without trusting them ------------------------------------------------------------


def _number(value: Any) -> float | int:
    """A count or an amount; anything else (None, a string, a bool) counts 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0
    return value


def _maybe_number(value: Any) -> float | None:
    """A time or a length, or None when there is none (or it is not a finite number)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _epoch(iso: Any) -> float | None:
    """Epoch seconds of an ISO-8601 time (``...Z`` or with an offset; naive is UTC), or None."""
    if not isinstance(iso, str):
        return None
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso(epoch: float) -> str:
    """Epoch seconds as a report's ISO-8601 UTC time (milliseconds, ``Z``)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _stamp(document: Mapping[str, Any], key: str) -> Any:
    return _mapping(document.get("timestamps")).get(key)


def _add(a: Any, b: Any) -> float | int:
    total = _number(a) + _number(b)
    return round(total, 3) if isinstance(total, float) else total  # counts stay exact, seconds to the ms


def _sum_usage(parts: Iterable[Any]) -> dict[str, Any]:
    """Usage dicts summed field by field, nested ones (``hold``, ``transcription``) alike."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in _mapping(part).items():
            if isinstance(value, Mapping) or isinstance(out.get(key), dict):
                out[key] = _sum_usage([out.get(key), value])
            else:
                out[key] = _add(out.get(key), value)
    return out


def _shifted(entry: Any, shift: float) -> tuple[float, Any]:
    """An entry moved ``shift`` seconds, and when it sorts (an entry without a time: at its leg's start)."""
    if not isinstance(entry, Mapping):
        return shift, entry
    out = dict(entry)
    at_s = _maybe_number(out.get("at_s"))
    if at_s is None:
        return shift, out
    out["at_s"] = round(at_s + shift, 3)
    return out["at_s"], out


def _total(values: Iterable[Any]) -> float:
    return math.fsum(float(_number(v)) for v in values)


def _spell_marks(row: Mapping[str, Any], *, ended: Any) -> list[tuple[float, Any]]:
    """A park's two timeline entries (``ended``: the reason, when the call ended in it)."""
    back = BACK_EVENT if ended is None else ENDED_PARKED_EVENT.format(reason=ended)
    return [
        (row[at], {"at_s": row[at], "event": event})
        for at, event in (("from_s", PARKED_EVENT), ("to_s", back))
        if row[at] is not None
    ]


def _heard(spell: Mapping[str, Any], row: Mapping[str, Any]) -> list[tuple[float, Any]]:
    """What Twilio heard the person say when they came back (a park's ``heard``): the caller's line at the park's
    end, since no OpenAI session heard it."""
    heard, at = spell.get("heard"), row.get("to_s")
    if not isinstance(heard, str) or not heard.strip() or at is None:
        return []
    return [(at, {"role": "caller", "text": heard.strip(), "at_s": at})]


def merge_legs(
    earlier: Sequence[Mapping[str, Any]],
    last: Mapping[str, Any] | None,
    spells: Sequence[Mapping[str, Any]],
    *,
    ended_reason: str | None = None,
    ended_at: str | None = None,
) -> dict[str, Any]:
    """The report of a call parked ``len(spells)`` times, from its OpenAI legs' report documents in order.

    ``earlier``: the parked legs' documents (at least one); ``last``: the final leg's, or None when the call ended
    while parked, and then ``ended_reason`` and ``ended_at`` (ISO-8601) say how and when (required; given with a
    ``last`` they override its own). ``spells``: one per park, ``{"from", "to"}`` (epoch seconds), ``listens``,
    ``checks``, ``listen_cost_usd``, ``check_cost_usd``, ``hold_mode_cost_usd``, and ``heard``: what Twilio heard
    the person say as they came back (a caller line of the transcript at the park's end).

    The call keeps the first leg's identity (``call_id``, profile, caller, dialed, outbound: ``call.started`` went
    out under it) and its received, accepted and attached times; the last leg's Twilio side, recording, outcome
    and end. Every ``at_s`` is moved to seconds since the first leg's webhook; usage, costs and counts are summed
    (the park checks' cost is OpenAI spend, so it is in ``cost_usd``; Twilio's listening is under ``parked``
    only). ``legs`` lists the legs; ``parked`` the spells and what they saved against staying in hold mode
    (``cost_saved_usd``: negative when parking cost more, and shown so)."""
    if not earlier:
        raise ValueError("merge_legs needs at least one earlier (parked) leg")
    if last is None and (ended_reason is None or ended_at is None):
        raise ValueError("a call that ended while parked needs its ended_reason and ended_at")
    legs: list[Mapping[str, Any]] = [*earlier, *([last] if last is not None else [])]
    first = legs[0]
    out: dict[str, Any] = copy.deepcopy(dict(legs[-1]))

    for key in ("call_id", "profile", "caller", "caller_masked", "dialed", "outbound"):
        out[key] = copy.deepcopy(first.get(key))
    if ended_reason is not None:
        out["ended_reason"] = ended_reason

    origin = _epoch(_stamp(first, "received_at"))
    end_iso = ended_at if ended_at is not None else _stamp(legs[-1], "ended_at")
    end = _epoch(end_iso)
    out["timestamps"] = {
        "received_at": _stamp(first, "received_at"),
        "accepted_at": _stamp(first, "accepted_at"),
        "attached_at": _stamp(first, "attached_at"),
        "ended_at": iso(end) if end is not None else end_iso,
    }

    def relative(epoch: float | None) -> float | None:
        return None if epoch is None or origin is None else round(epoch - origin, 3)

    # the spells, relative to the first leg's webhook
    spell_rows: list[dict[str, Any]] = []
    for index, spell in enumerate(spells):
        start = _maybe_number(spell.get("from"))
        stop = _maybe_number(spell.get("to"))
        if stop is None and last is None and index == len(spells) - 1:
            stop = end  # a park the call ended in lasted until the end
        length = max(0.0, stop - start) if start is not None and stop is not None else 0.0
        spell_rows.append(
            {
                "from_s": relative(start),
                "to_s": relative(stop),
                "s": round(length, 3),
                "listens": int(_number(spell.get("listens"))),
                "checks": int(_number(spell.get("checks"))),
            }
        )

    # the timed lists: each leg's entries moved onto the first leg's clock, a park's marks after the leg it ended
    shifts: list[float] = []
    for leg in legs:
        received = _epoch(_stamp(leg, "received_at"))
        shifts.append(0.0 if received is None or origin is None else received - origin)
    ended_in = len(spell_rows) - 1 if last is None else -1  # the park the call ended in
    for name in TIMED_LISTS:
        merged: list[tuple[float, Any]] = []
        for index, (leg, shift) in enumerate(zip(legs, shifts, strict=True)):
            merged += [_shifted(entry, shift) for entry in _list(leg.get(name))]
            if name == "timeline" and index < len(spell_rows):
                merged += _spell_marks(spell_rows[index], ended=out.get("ended_reason") if index == ended_in else None)
            if name == "transcript" and index < len(spell_rows):
                merged += _heard(spells[index], spell_rows[index])
        if name == "timeline":  # spells beyond the legs (a caller's mistake) are still shown
            for row in spell_rows[len(legs) :]:
                merged += _spell_marks(row, ended=None)
        merged.sort(key=lambda pair: pair[0])  # stable: equal times keep leg order
        out[name] = [entry for _, entry in merged]

    out["usage"] = _sum_usage(leg.get("usage") for leg in legs)
    check_cost = _total(s.get("check_cost_usd") for s in spells)
    out["cost_usd"] = round(_total(leg.get("cost_usd") for leg in legs) + check_cost, 6)
    for key in ("hold_cost_usd", "transcription_cost_usd"):
        out[key] = round(_total(leg.get(key) for leg in legs), 6)
    for key in ("ignored_events", "failed_responses_total", "hangup_attempts"):
        out[key] = int(_total(leg.get(key) for leg in legs))
    for key in ("errors", "takeovers"):
        out[key] = [copy.deepcopy(item) for leg in legs for item in _list(leg.get(key))]

    first_timings = _mapping(first.get("timings"))
    talks = [_maybe_number(_mapping(leg.get("timings")).get("talk_s")) for leg in legs]
    parked_s = round(math.fsum(row["s"] for row in spell_rows), 3)
    out["timings"] = {
        "webhook_to_accept_ms": first_timings.get("webhook_to_accept_ms"),
        "accept_to_attach_ms": first_timings.get("accept_to_attach_ms"),
        "duration_s": relative(end),
        "talk_s": None if all(t is None for t in talks) else round(math.fsum(t for t in talks if t is not None), 3),
        "hold_s": round(_total(_mapping(leg.get("timings")).get("hold_s") for leg in legs), 3),
        "parked_s": parked_s,
    }
    out["legs"] = [
        {
            "call_id": leg.get("call_id"),
            "received_at": _stamp(leg, "received_at"),
            "ended_at": _stamp(leg, "ended_at"),
            "duration_s": _mapping(leg.get("timings")).get("duration_s"),
            "ended_reason": leg.get("ended_reason"),
            "cost_usd": round(float(_number(leg.get("cost_usd"))), 6),
        }
        for leg in legs
    ]
    listen = _total(s.get("listen_cost_usd") for s in spells)
    hold_mode = _total(s.get("hold_mode_cost_usd") for s in spells)
    out["parked"] = {
        "parked_s": parked_s,
        "spells": spell_rows,
        "listen_cost_usd": round(listen, 6),
        "check_cost_usd": round(check_cost, 6),
        "hold_mode_cost_usd": round(hold_mode, 6),
        # never clamped: a park that cost more than holding on OpenAI would have shows as a negative saving
        "cost_saved_usd": round(hold_mode - (listen + check_cost), 6),
    }
    return out
