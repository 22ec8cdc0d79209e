"""Which profile answers a call, and whether the caller may call at all. Header values are untrusted: they
only select among configured profiles, never reach anything else."""

from __future__ import annotations

from fnmatch import fnmatchcase

from sip_controller.calls.admission import Refusal
from sip_controller.calls.incoming import IncomingCall
from sip_controller.config import Settings


def _matches(number: str | None, patterns: tuple[str, ...]) -> bool:
    return number is not None and any(fnmatchcase(number, p) for p in patterns)


def choose_profile(settings: Settings, incoming: IncomingCall) -> str:
    for route in settings.routes:
        if route.dialed and _matches(incoming.dialed, route.dialed):
            return route.profile
        if route.header is not None:
            value = incoming.header(route.header)
            if value is not None and any(fnmatchcase(value.strip(), v) for v in route.values):
                return route.profile
    return settings.default_profile


def profile_for_number(settings: Settings, dialed: str | None) -> str:
    """The profile a call to ``dialed`` is routed to by the ``dialed`` routes alone: what a Twilio number's voice
    webhook knows before OpenAI's webhook (header routes are matched on that webhook's SIP headers)."""
    for route in settings.routes:
        if route.dialed and _matches(dialed, route.dialed):
            return route.profile
    return settings.default_profile


def screen_caller(settings: Settings, incoming: IncomingCall) -> Refusal | None:
    callers = settings.callers
    number = incoming.caller
    if number is None and callers.anonymous == "reject":
        return Refusal(callers.reject_status, "caller ID withheld and anonymous calls are refused")
    if _matches(number, callers.deny):
        return Refusal(callers.reject_status, "caller is on the deny list")
    if callers.allow and not _matches(number, callers.allow):
        return Refusal(callers.reject_status, "caller is not on the allow list")
    return None
