"""Parked holds on Twilio (#16): what the service answers while a call is parked, and how a call that ends while
parked is reported. The park itself is plain data in the Twilio call's row (``calls/parking.py``), so whichever
replica Twilio reaches answers, and a restart loses nothing.

- ``POST /twilio/parked?twilio_id=…&spell=…`` (signed, like every Twilio callback): Twilio's ``<Gather>`` heard
  something, or nothing for a while. Heard nothing, or hold music: listen again. Heard a person (the hold's
  ``detect``: its resume phrases, or a text check through the Responses API, ``classifier``): the park's
  spell is closed with its costs, the row gets a fresh correlation id, and the answer bridges a fresh OpenAI session
  (``<Dial><Sip>``), which the registry primes with the conversation so far. Parked past ``max_parked_s``: a line
  in Twilio's voice, then a hang-up.
- ``…&after=bridge``: the bridge's ``<Dial>`` is over. The next leg reached OpenAI (it reports the call): hang up.
  It never did (refused, or never matched): the person hears an apology in Twilio's voice, then a hang-up.
- A final status callback while parked (the other side hung up, or a hang-up above): the call's report, from its
  parked legs and parks, is written on its first leg's row and sent (``calls/park_report.py``).

Every answer is TwiML: Twilio plays "an application error has occurred" and hangs up on anything else, so a
callback that is late or repeated gets the answer that keeps the line as it should be, and changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import structlog

from sip_controller.agent.profile import AgentProfile
from sip_controller.calls import parking
from sip_controller.calls.park_report import park_config, park_costs, park_profile
from sip_controller.config import Settings, TwilioCredentials
from sip_controller.realtime.responses import ResponsesAPI, structured_request
from sip_controller.realtime.rest import OpenAIError
from sip_controller.state.store import Store
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


def _words(text: str) -> int:
    return len([w for w in text.split() if any(c.isalpha() for c in w)])


async def _is_person(
    profile: AgentProfile, park: dict[str, Any], heard: str, confidence: float, responses: ResponsesAPI | None
) -> bool:
    """What Twilio heard is a person, by the hold's ``detect`` (as hold mode decides): the resume phrases, or the
    text check's verdict (recorded announcements say "thank you for holding" too: the check tells them apart)."""
    if profile.hold.detect == "phrases":
        return parking.heard_person(heard, profile.hold.resume_phrases)
    if responses is None:
        return confidence >= FALLBACK_CONFIDENCE and _words(heard) >= 2
    body = structured_request(
        model=park_config(profile).check_model, instructions=parking.CHECK_INSTRUCTIONS,
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
    after_bridge: bool = False,
) -> str:
    """The TwiML answering one of Twilio's callbacks on a parked call: a listening round, or (``after_bridge``) the
    end of the bridge to the next leg."""
    row = await store.get_twilio_call(id=twilio_id)
    if row is None or row.call_sid != form.get("CallSid") or not isinstance(row.park, dict):
        raise UnknownPark(twilio_id)
    park = dict(row.park)
    profile = park_profile(settings, park)
    config = park_config(profile)
    language = profile.transcription.language if profile.transcription else None
    status, current = park.get("status"), int(park.get("spell") or spell)

    def listen() -> str:
        url = parking.parked_url(twilio.public_url, twilio_id, current)
        return listen_parked(url, timeout_s=config.listen_timeout_s, language=language)

    async def moved_on(correlation: str | None = None) -> bool:
        """Write this round's park unless it moved on meanwhile (a final status closed the call while the text
        check ran): whether it did move on."""
        written = await store.set_twilio_park(twilio_id, park, correlation=correlation, expect_status=parking.PARKED)
        if written is None:
            log.info("park.moved_on", twilio_id=twilio_id, spell=current)
        return written is None

    if after_bridge:
        if status == parking.PARKED and spell != current:
            return listen()  # the next leg parked the call again: the line listens (Twilio's redirect won)
        if row.call_id is not None or status != parking.BRIDGING or spell != current:
            return hang_up()  # the next leg reached OpenAI and is over (it reports the call), or this is stale
        park.update(status=parking.ENDED, end_reason="session_error")
        await store.set_twilio_park(twilio_id, park)
        log.warning("park.bridge_failed", twilio_id=twilio_id, dial_status=form.get("DialCallStatus", "")[:20])
        return give_up_parked(parking.NOT_CONNECTED_LINE)
    if status == parking.ENDED:
        return give_up_parked(parking.GIVE_UP_LINE)
    if status == parking.CLOSED:
        return hang_up()
    if status != parking.PARKED or spell != current:
        # a round of an earlier park, or one after the person was heard: it counts for nothing; the line stays as
        # it is (a stale round of a call now bridging was superseded by the bridge's TwiML)
        log.warning("park.stale_callback", twilio_id=twilio_id, spell=spell, current=current, status=status)
        return listen() if status == parking.PARKED else hang_up()
    park["listens"] = int(park.get("listens") or 0) + 1
    since = float(park.get("since") or now)
    heard = (form.get("SpeechResult") or "").strip()[: parking.MAX_HEARD_CHARS]
    try:
        confidence = float(form.get("Confidence") or 0.0)
    except ValueError:
        confidence = 0.0
    # a person first: one who answers on the round that reaches max_parked_s is not told goodbye
    if heard and await _is_person(profile, park, heard, confidence, responses):
        parked_s = max(0.0, now - since)
        closed = {**parking.closed_spell(park, now, park_costs(settings, profile, park, parked_s)), "heard": heard}
        park.update(status=parking.BRIDGING, heard=heard, spells=[*(park.get("spells") or ()), closed])
        correlation = new_correlation_id()
        if await moved_on(correlation):
            return hang_up()
        log.info("park.person_back", twilio_id=twilio_id, parked_s=round(parked_s, 1), listens=park["listens"],
                 checks=park.get("checks", 0))  # fmt: skip
        recording = f"{twilio.public_url}/twilio/recording?leg={twilio_id}" if profile.recording.enabled else None
        after = parking.parked_url(twilio.public_url, twilio_id, current, after="bridge")
        return bridge_to_openai(twilio.openai_project_id, correlation, recording_callback=recording, action=after)
    if now - since >= config.max_parked_s:
        park.update(status=parking.ENDED, end_reason="max_duration")
        if await moved_on():
            return hang_up()
        log.info("park.gave_up", twilio_id=twilio_id, parked_s=round(now - since, 1))
        return give_up_parked(parking.GIVE_UP_LINE)
    return hang_up() if await moved_on() else listen()
