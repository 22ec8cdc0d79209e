"""Parked holds on Twilio (#16): what the service answers while a call is parked, and how a call that ends while
parked is reported. The park itself is plain data in the Twilio call's row (``calls/parking.py``), so whichever
replica Twilio reaches answers, and a restart loses nothing.

- ``POST /twilio/parked?twilio_id=…&spell=…`` (signed, like every Twilio callback): Twilio's ``<Gather>`` heard
  something, or nothing for a while. Heard nothing, or hold music: listen again. Heard a person (the hold's resume
  phrases, else a text check through the Responses API when the hold's ``detect`` is ``classifier``): the park's
  spell is closed with its costs, the row gets a fresh correlation id, and the answer bridges a fresh OpenAI session
  (``<Dial><Sip>``), which the registry primes with the conversation so far. Parked past ``max_parked_s``: a line
  in Twilio's voice, then a hang-up.
- A final status callback while parked (the other side hung up, or the give-up's hang-up): the call's report, from
  its parked legs and parks, is written on its first leg's row and sent (``Store.close_parked``, one transaction).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import structlog

from sip_controller.agent.profile import AgentProfile
from sip_controller.agent.profile import Park as ParkConfig
from sip_controller.calls import parking
from sip_controller.calls.analysis import requests_for as analysis_requests
from sip_controller.calls.legs import merge_legs, spell_costs
from sip_controller.calls.outbox import report_items
from sip_controller.config import Settings, TwilioCredentials
from sip_controller.realtime.responses import ResponsesAPI, structured_request
from sip_controller.realtime.rest import OpenAIError
from sip_controller.state.store import Store
from sip_controller.state.twilio_calls import TwilioCallRow
from sip_controller.telephony.callbacks import recording_of
from sip_controller.telephony.twiml import bridge_to_openai, give_up_parked, hang_up, listen_parked, new_correlation_id

log = structlog.get_logger("sip_controller.service.parking")

#: how long Twilio's callback may wait for the text check (Twilio gives a webhook 15 s)
CHECK_TIMEOUT_S = 4.0
#: without the text check (OpenAI away), a confident transcript of a few words counts as a person: a false alarm
#: costs a short session that parks again; a missed person hangs up on us
FALLBACK_CONFIDENCE = 0.8
PARK_CHECK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"person": {"type": "boolean"}},
    "required": ["person"],
    "additionalProperties": False,
}


class UnknownPark(LookupError):
    """A parked-call callback for no Twilio call of ours (or for another CallSid): answered 404."""


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _profile(settings: Settings, park: Mapping[str, Any]) -> AgentProfile:
    name = park.get("profile")
    return settings.profile(name if isinstance(name, str) and name in settings.profiles else settings.default_profile)


def _config(profile: AgentProfile) -> ParkConfig:
    return profile.hold.park or ParkConfig()


def _costs(settings: Settings, profile: AgentProfile, park: Mapping[str, Any], parked_s: float) -> dict[str, float]:
    pricing = settings.pricing
    usage = park.get("check_usage")
    return spell_costs(
        parked_s,
        listens=int(park.get("listens") or 0),
        check_usage=usage if isinstance(usage, dict) else None,
        prices=pricing.for_park(profile.transcription.model if profile.transcription else None),
        check_model_prices=pricing.for_text_model(_config(profile).check_model),
    )


def _words(text: str) -> int:
    return len([w for w in text.split() if any(c.isalpha() for c in w)])


async def _is_person(
    profile: AgentProfile, park: dict[str, Any], heard: str, confidence: float, responses: ResponsesAPI | None
) -> bool:
    """What Twilio heard is a person: a resume phrase, else (``detect: classifier``) the text check's verdict."""
    if parking.heard_person(heard, profile.hold.resume_phrases):
        return True
    if profile.hold.detect != "classifier":
        return False
    if responses is None:
        return confidence >= FALLBACK_CONFIDENCE and _words(heard) >= 2
    body = structured_request(
        model=_config(profile).check_model, instructions=parking.CHECK_INSTRUCTIONS,
        text=heard[: parking.MAX_HEARD_CHARS], name="park_check", schema=PARK_CHECK_SCHEMA,
    )  # fmt: skip
    body["metadata"] = {"sipctl_purpose": "park_check"}
    try:
        answer = await responses.create(body, timeout=CHECK_TIMEOUT_S)
    except OpenAIError as exc:
        log.warning("park.check_failed", status=exc.status, error=exc.message[:200])
        return confidence >= FALLBACK_CONFIDENCE and _words(heard) >= 2
    park["checks"] = int(park.get("checks") or 0) + 1
    used = answer.usage
    tokens = {"input_tokens": used.input_tokens, "cached_tokens": used.cached_tokens}
    tokens["output_tokens"] = used.output_tokens
    park["check_usage"] = parking.add_usage(park.get("check_usage") or {}, tokens)
    try:
        verdict = json.loads(answer.text)
    except ValueError:
        return False
    return isinstance(verdict, dict) and verdict.get("person") is True


async def listen_answer(
    store: Store,
    settings: Settings,
    twilio: TwilioCredentials,
    responses: ResponsesAPI | None,
    *,
    twilio_id: str,
    spell: int,
    form: Mapping[str, str],
    now: float,
) -> str:
    """The TwiML answering one of Twilio's listening rounds on a parked call."""
    row = await store.get_twilio_call(id=twilio_id)
    if row is None or row.call_sid != form.get("CallSid") or not isinstance(row.park, dict):
        raise UnknownPark(twilio_id)
    park = dict(row.park)
    profile = _profile(settings, park)
    config = _config(profile)
    language = profile.transcription.language if profile.transcription else None
    status, current = park.get("status"), park.get("spell")
    if status == parking.ENDED:
        return give_up_parked(parking.GIVE_UP_LINE)
    if status != parking.PARKED:
        # a callback after the person was heard (the bridge is already under way) or after the report: nothing
        # more to listen for on this spell
        log.warning("park.stale_callback", twilio_id=twilio_id, spell=spell, status=status)
        return hang_up() if status == parking.CLOSED else listen_parked(
            parking.parked_url(twilio.public_url, twilio_id, int(current or spell)), timeout_s=config.listen_timeout_s,
            language=language,
        )  # fmt: skip
    park["listens"] = int(park.get("listens") or 0) + 1
    since = float(park.get("since") or now)
    if now - since >= config.max_parked_s:
        park.update(status=parking.ENDED, end_reason="max_duration")
        await store.set_twilio_park(twilio_id, park)
        log.info("park.gave_up", twilio_id=twilio_id, parked_s=round(now - since, 1))
        return give_up_parked(parking.GIVE_UP_LINE)
    heard = (form.get("SpeechResult") or "").strip()[: parking.MAX_HEARD_CHARS]
    try:
        confidence = float(form.get("Confidence") or 0.0)
    except ValueError:
        confidence = 0.0
    if heard and await _is_person(profile, park, heard, confidence, responses):
        parked_s = max(0.0, now - since)
        closed = {**parking.closed_spell(park, now, _costs(settings, profile, park, parked_s)), "heard": heard}
        spells = [*(park.get("spells") or ()), closed]
        park.update(status=parking.BRIDGING, heard=heard, spells=spells)
        correlation = new_correlation_id()
        await store.set_twilio_park(twilio_id, park, correlation=correlation)
        log.info("park.person_back", twilio_id=twilio_id, parked_s=round(parked_s, 1), listens=park["listens"],
                 checks=park.get("checks", 0))  # fmt: skip
        recording = (
            f"{twilio.public_url}/twilio/recording?leg={twilio_id}" if profile.recording.enabled else None
        )
        return bridge_to_openai(twilio.openai_project_id, correlation, recording_callback=recording)
    await store.set_twilio_park(twilio_id, park)
    return listen_parked(
        parking.parked_url(twilio.public_url, twilio_id, int(current or spell)), timeout_s=config.listen_timeout_s,
        language=language,
    )  # fmt: skip


async def close_if_parked(store: Store, settings: Settings, row: TwilioCallRow, *, now: float) -> bool:
    """A Twilio call that ended while parked (or before its next leg reached OpenAI): its report, from its parked
    legs and parks, on its first leg's row with its deliveries. False when there is nothing to close here (not
    parked, closed before, or the next leg is live and reports the call itself)."""
    park = row.park
    if not isinstance(park, dict):
        return False
    status = park.get("status")
    if status == parking.CLOSED or (status == parking.BRIDGING and row.call_id is not None):
        return False
    legs = [str(leg) for leg in park.get("legs") or ()]
    documents: list[dict[str, Any]] = []
    for leg in legs:
        document = await store.get_report(leg)
        if isinstance(document, dict):
            documents.append(document)
    if not documents:
        log.warning("park.no_leg_reports", twilio_id=row.id, legs=legs)
        return False
    spells = [dict(s) for s in park.get("spells") or () if isinstance(s, dict)]
    if status in (parking.PARKED, parking.ENDED):
        profile = _profile(settings, park)
        since = float(park.get("since") or now)
        spells.append(parking.closed_spell(park, now, _costs(settings, profile, park, max(0.0, now - since))))
    reason = str(park.get("end_reason") or "caller_hangup")
    final = merge_legs(documents, None, spells, ended_reason=reason, ended_at=_iso(now))
    twilio = final.get("twilio")
    if isinstance(twilio, dict):
        final["twilio"] = {**twilio, "status": row.status, "error_code": row.error_code}
    recording = recording_of(row.events)
    if recording is not None:
        final["recording"] = recording
    outbox = [*report_items(final, settings.reports, at=now), *analysis_requests(settings, final)]
    cost = final.get("cost_usd")
    closed = await store.close_parked(
        legs[0], ended_reason=reason, report=final, outbox=outbox,
        cost_usd=float(cost) if isinstance(cost, int | float) and math.isfinite(cost) else None, ended_at=now,
    )  # fmt: skip
    await store.set_twilio_park(row.id, {**park, "status": parking.CLOSED})
    log.info("park.closed", twilio_id=row.id, call_id=legs[0], ended_reason=reason, closed=closed)
    return closed
