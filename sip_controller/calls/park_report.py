"""The report of a call that ended while parked on Twilio (#16), and the prices a park is weighed with: used by the
Twilio routes (a final status callback while parked) and by the registry (a parked leg whose Twilio call was over
before the leg's own row was written). Whichever comes second writes the report; ``Store.close_parked`` makes it
once."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import structlog

from sip_controller.agent.profile import AgentProfile
from sip_controller.agent.profile import Park as ParkConfig
from sip_controller.calls import parking
from sip_controller.calls.analysis import requests_for as analysis_requests
from sip_controller.calls.legs import iso, merge_legs, spell_costs
from sip_controller.calls.outbox import report_items
from sip_controller.config import Settings
from sip_controller.state.store import Store
from sip_controller.state.twilio_calls import TwilioCallRow
from sip_controller.telephony.callbacks import recording_of

log = structlog.get_logger("sip_controller.calls.park_report")


def park_profile(settings: Settings, park: Mapping[str, Any]) -> AgentProfile:
    """The profile a park was made by (the default one if it is no longer configured)."""
    name = park.get("profile")
    return settings.profile(name if isinstance(name, str) and name in settings.profiles else settings.default_profile)


def park_config(profile: AgentProfile) -> ParkConfig:
    """The profile's ``hold.park`` (its defaults for a profile that stopped parking since)."""
    return profile.hold.park or ParkConfig()


def park_costs(settings: Settings, profile: AgentProfile, park: Mapping[str, Any], parked_s: float) -> dict[str, float]:
    """The costs of the park under way (``legs.spell_costs``) at the configured prices."""
    pricing = settings.pricing
    usage = park.get("check_usage")
    return spell_costs(
        parked_s,
        listens=int(park.get("listens") or 0),
        check_usage=usage if isinstance(usage, dict) else None,
        prices=pricing.for_park(profile.transcription.model if profile.transcription else None),
        check_model_prices=pricing.for_text_model(park_config(profile).check_model),
    )


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
    if len(documents) < len(legs):
        # a parked leg's row is not written yet (the far side hung up right after the redirect): its finish closes
        # the call when it is (``CallRegistry``), reading this row again
        log.info("park.leg_not_written", twilio_id=row.id, legs=legs, written=len(documents))
        return False
    spells = [dict(s) for s in park.get("spells") or () if isinstance(s, dict)]
    if status in (parking.PARKED, parking.ENDED):
        profile = park_profile(settings, park)
        since = float(park.get("since") or now)
        spells.append(parking.closed_spell(park, now, park_costs(settings, profile, park, max(0.0, now - since))))
    reason = str(park.get("end_reason") or "caller_hangup")
    final = merge_legs(documents, None, spells, ended_reason=reason, ended_at=iso(now))
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
    if closed:
        await store.set_twilio_park(row.id, {**park, "status": parking.CLOSED})
        log.info("park.closed", twilio_id=row.id, call_id=legs[0], ended_reason=reason)
    else:
        log.warning("park.close_refused", twilio_id=row.id, call_id=legs[0], why="the first leg is not parked")
    return closed
