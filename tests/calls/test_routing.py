"""Tests for sip_controller.calls.routing: which profile answers a call, and caller allow/deny screening."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sip_controller.agent.profile import AgentProfile
from sip_controller.calls.admission import Refusal
from sip_controller.calls.incoming import IncomingCall, SipHeader
from sip_controller.calls.routing import choose_profile, screen_caller
from sip_controller.config import Callers, Route, Settings

PROFILES = {name: AgentProfile() for name in ("default", "sales", "support", "vip", "fr")}


def incoming(**headers: str) -> IncomingCall:
    """Header names are given with ``_`` for ``-`` (``X_Tier`` -> ``X-Tier``)."""
    return IncomingCall(
        call_id="rtc_1",
        webhook_id="wh_1",
        headers=tuple(SipHeader(name=k.replace("_", "-"), value=v) for k, v in headers.items()),
        received_at=datetime(2026, 11, 22, tzinfo=UTC),
    )


def settings(routes: list[Route] | None = None, callers: Callers | None = None) -> Settings:
    return Settings(profiles=PROFILES, routes=tuple(routes or ()), callers=callers or Callers())


def test_no_routes_means_the_default_profile() -> None:
    assert choose_profile(settings(), incoming(To="<sip:+18005550100@sip.example.com>")) == "default"


def test_dialled_number_pattern_from_to() -> None:
    s = settings([Route(profile="sales", dialed=("+1800555*",))])
    assert choose_profile(s, incoming(To="<sip:+18005550100@sip.example.com>")) == "sales"
    assert choose_profile(s, incoming(To="<sip:+18885550100@sip.example.com>")) == "default"


def test_dialled_number_question_mark_wildcard() -> None:
    s = settings([Route(profile="sales", dialed=("+1800555010?",))])
    assert choose_profile(s, incoming(To="<tel:+18005550107>")) == "sales"
    assert choose_profile(s, incoming(To="<tel:+180055501077>")) == "default"


def test_diversion_wins_over_p_called_party_id_and_to() -> None:
    s = settings([Route(profile="support", dialed=("+1800777*",)), Route(profile="sales", dialed=("+1800555*",))])
    call = incoming(
        To="<sip:+18005550100@sip.example.com>",
        P_Called_Party_ID="<sip:+18005550100@pbx>",
        Diversion="<sip:+18007770001@carrier>;reason=unconditional",
    )
    assert choose_profile(s, call) == "support"
    call = incoming(To="<sip:+18007770001@sip.example.com>", P_Called_Party_ID="<sip:+18005550100@pbx>")
    assert choose_profile(s, call) == "sales"


def test_header_route_with_case_insensitive_name() -> None:
    s = settings([Route(profile="vip", header="X-Tier", values=("gold", "plat*"))])
    assert choose_profile(s, incoming(x_tier="gold")) == "vip"
    assert choose_profile(s, incoming(X_TIER=" platinum ")) == "vip"
    assert choose_profile(s, incoming(X_Tier="silver")) == "default"
    assert choose_profile(s, incoming(X_Other="gold")) == "default"
    assert choose_profile(s, incoming()) == "default"


def test_only_custom_x_headers_can_route() -> None:
    with pytest.raises(ValueError, match="X- headers"):
        Route(profile="vip", header="From", values=("*",))


def test_first_matching_route_wins() -> None:
    s = settings(
        [
            Route(profile="fr", header="X-Lang", values=("fr",)),
            Route(profile="sales", dialed=("+1800*",)),
            Route(profile="vip", header="X-Lang", values=("*",)),
        ]
    )
    call = incoming(To="<tel:+18005550100>", X_Lang="fr")
    assert choose_profile(s, call) == "fr"
    assert choose_profile(s, incoming(To="<tel:+18005550100>", X_Lang="de")) == "sales"
    assert choose_profile(s, incoming(To="<tel:+14155550100>", X_Lang="de")) == "vip"


def test_unparseable_dialled_number_falls_back_to_default() -> None:
    s = settings([Route(profile="sales", dialed=("*",))])
    assert choose_profile(s, incoming(To="<sip:reception@pbx.example.com>")) == "default"


# ---- caller screening ---------------------------------------------------------------------------------------


def test_everyone_admitted_without_lists() -> None:
    s = settings()
    assert screen_caller(s, incoming(From="<sip:+14155550123@carrier>")) is None
    assert screen_caller(s, incoming(From="<sip:anonymous@anonymous.invalid>")) is None


def test_deny_wins_over_allow() -> None:
    s = settings(callers=Callers(allow=("+1415*",), deny=("+1415555*",), reject_status=486))
    refusal = screen_caller(s, incoming(From="<sip:+14155550123@carrier>;tag=1"))
    assert refusal == Refusal(486, "caller is on the deny list")
    assert screen_caller(s, incoming(From="<sip:+14156660123@carrier>")) is None


def test_allow_list_admits_only_matching_callers() -> None:
    s = settings(callers=Callers(allow=("+4930*", "+4940*")))
    assert screen_caller(s, incoming(From="<sip:+49301234567@carrier>")) is None
    assert screen_caller(s, incoming(From="<sip:+49401234567@carrier>")) is None
    refusal = screen_caller(s, incoming(From="<sip:+49891234567@carrier>"))
    assert refusal is not None
    assert refusal.status_code == 603
    assert "allow list" in refusal.reason


def test_caller_number_from_p_asserted_identity_when_from_is_anonymous() -> None:
    s = settings(callers=Callers(deny=("+1900*",)))
    call = incoming(From="<sip:anonymous@anonymous.invalid>", P_Asserted_Identity="<sip:+19005550000@carrier>")
    assert screen_caller(s, call) == Refusal(603, "caller is on the deny list")


def test_anonymous_callers_vs_allow_and_deny_lists() -> None:
    anonymous = incoming(From='"Anonymous" <sip:anonymous@anonymous.invalid>')
    assert screen_caller(settings(callers=Callers(deny=("+1*",))), anonymous) is None
    refusal = screen_caller(settings(callers=Callers(allow=("*",), reject_status=403)), anonymous)
    assert refusal == Refusal(403, "caller is not on the allow list")


@pytest.mark.parametrize("status", [403, 486, 603])
def test_configured_reject_status(status: int) -> None:
    s = settings(callers=Callers(deny=("+1555*",), reject_status=status))
    refusal = screen_caller(s, incoming(From="<tel:+15550001111>"))
    assert refusal is not None
    assert refusal.status_code == status


def test_reject_status_must_be_a_sip_failure_code() -> None:
    with pytest.raises(ValueError, match="reject_status"):
        Callers(reject_status=200)


def test_anonymous_callers_can_be_refused_outright() -> None:
    refuse = settings(callers=Callers(anonymous="reject", reject_status=433))
    withheld = incoming(From='"Anonymous" <sip:anonymous@anonymous.invalid>;tag=1')
    refusal = screen_caller(refuse, withheld)
    assert refusal == Refusal(433, "caller ID withheld and anonymous calls are refused")
    assert screen_caller(refuse, incoming(From="<sip:+14155550123@x>")) is None
    assert screen_caller(settings(), withheld) is None  # allowed by default (and rate-limited together)

