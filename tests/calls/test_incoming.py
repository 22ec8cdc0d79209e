"""Tests for sip_controller.calls.incoming: header lookup and the caller and dialled numbers read from SIP
headers (untrusted values)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip_controller.calls.incoming import (
    CUT_MARK,
    MAX_HEADER_NAME_CHARS,
    MAX_HEADER_VALUE_CHARS,
    MAX_HEADERS,
    IncomingCall,
    SipHeader,
    cap_headers,
    number_from_header,
)

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


def make_call(*headers: tuple[str, str]) -> IncomingCall:
    return IncomingCall(
        call_id="rtc_1",
        webhook_id="wh",
        headers=tuple(SipHeader(name=n, value=v) for n, v in headers),
        received_at=NOW,
    )


def test_header_lookup_is_case_insensitive_and_first_wins() -> None:
    call = make_call(("x-call-ref", "abc"), ("X-CALL-REF", "def"), ("from", "<sip:+14155550123@h>"))
    assert call.header("X-Call-Ref") == "abc"
    assert call.header("FROM") == "<sip:+14155550123@h>"
    assert call.header("To") is None
    assert call.caller == "+14155550123"


def test_caller_falls_back_to_p_asserted_identity() -> None:
    call = make_call(
        ("From", '"Anonymous" <sip:anonymous@anonymous.invalid>;tag=1'),
        ("P-Asserted-Identity", "<sip:+442071838750@sip.twilio.com>"),
    )
    assert call.caller == "+442071838750"


def test_caller_none_without_a_number() -> None:
    assert make_call(("From", "<sip:anonymous@anonymous.invalid>")).caller is None


def test_dialed_prefers_diversion_then_p_called_party_id_then_to() -> None:
    to = ("To", "<sip:+18005550300@sip.twilio.com>")
    pcp = ("p-called-party-id", "<tel:+18005550200>")
    div = ("Diversion", "<sip:+18005550100@sip.twilio.com>;reason=unconditional")
    assert make_call(to, pcp, div).dialed == "+18005550100"
    assert make_call(to, pcp).dialed == "+18005550200"
    assert make_call(to).dialed == "+18005550300"


def test_dialed_skips_the_project_uri_in_to() -> None:
    call = make_call(("To", "<sip:proj_abc123@sip.api.openai.com;transport=tls>"))
    assert call.dialed is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<sip:+14155550123@sip.twilio.com>;tag=53892637_c3356d0b", "+14155550123"),
        ('"Alice Smith" <sip:+14155550123@sip.twilio.com>', "+14155550123"),
        ("sip:+14155550123@sip.twilio.com", "+14155550123"),
        ("<sips:+14155550123@sip.twilio.com>", "+14155550123"),
        ("<SIP:+14155550123@host>", "+14155550123"),
        ("<tel:+14155550123>", "+14155550123"),
        ("tel:+1-415-555-0123;phone-context=+1", "+14155550123"),
        ("<sip:+1.415.555.0123@host>", "+14155550123"),
        ("<sip:+1(415)555-0123@host>", "+14155550123"),
        ("<sip:+14155550123;user=phone@host>", "+14155550123"),
        ("<sip:anonymous@anonymous.invalid>", None),
        ("<sip:proj_abc123@sip.api.openai.com;transport=tls>", None),
        ("<sip:+0123456@host>", None),
        ("<sip:+1234567890123456@host>", None),  # 16 digits: longer than E.164 allows
        ("<sip:+@host>", None),
        ("<sip:+1@host>", None),
        ("", None),
        ("+14155550123", None),  # no URI scheme
        ("<http://+14155550123@host>", None),
        ("<sip:+1-800-FLOWERS@host>", None),  # letters: not a number, not a truncated '+1800'
    ],
)
def test_number_from_header(value: str, expected: str | None) -> None:
    assert number_from_header(value) == expected


@pytest.mark.parametrize(
    "value",
    ["<sip:+1\u0664\u0661\u0665\u0665\u0665\u0665\u0660\u0661\u0662\u0663@h>", "<tel:+1\u0967\u0968\u0969>"],
)
def test_number_from_header_never_returns_non_ascii_digits(value: str) -> None:
    """Caller-controlled headers may carry non-ASCII digits (Arabic-Indic, Devanagari): not an E.164 number."""
    number = number_from_header(value)
    assert number is None or (number.isascii() and number[1:].isdigit()), number


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(max_size=60))
def test_number_from_header_is_e164_or_none(value: str) -> None:
    number = number_from_header(value)
    if number is not None:
        assert number.startswith("+")
        assert number[1:].isdigit()
        assert number[1:].isascii()
        assert 2 <= len(number[1:]) <= 15
        assert number[1] != "0"


# ---- bounds on what a call keeps (hostile headers) ------------------------------------------------------------


def test_a_huge_header_value_is_cut_with_a_marker() -> None:
    capped = cap_headers([SipHeader(name="X-Twilio-CallSid", value="C" * 200_000)])
    (kept,) = capped.headers
    assert len(kept.value) == MAX_HEADER_VALUE_CHARS
    assert kept.value.endswith(CUT_MARK)
    assert kept.value.startswith("C" * 100)
    assert (capped.dropped, capped.cut) == (0, 1)


def test_a_huge_header_name_is_cut_too() -> None:
    capped = cap_headers([SipHeader(name="X-" + "n" * 5000, value="v")])
    assert len(capped.headers[0].name) == MAX_HEADER_NAME_CHARS
    assert capped.cut == 1


def test_ordinary_headers_are_kept_as_they_are() -> None:
    headers = [SipHeader(name="From", value="<sip:+14155550123@sip.twilio.com>;tag=1"), SipHeader(name="To", value="x")]
    capped = cap_headers(headers)
    assert capped.headers == tuple(headers)
    assert capped.headers[0] is headers[0]
    assert (capped.dropped, capped.cut) == (0, 0)


def test_a_value_of_exactly_the_limit_is_not_cut() -> None:
    capped = cap_headers([SipHeader(name="X-A", value="a" * MAX_HEADER_VALUE_CHARS)])
    assert capped.headers[0].value == "a" * MAX_HEADER_VALUE_CHARS
    assert capped.cut == 0


def test_only_the_first_headers_are_kept_in_order() -> None:
    headers = [SipHeader(name=f"X-H{i}", value=str(i)) for i in range(MAX_HEADERS + 436)]
    capped = cap_headers(headers)
    assert [h.name for h in capped.headers] == [f"X-H{i}" for i in range(MAX_HEADERS)]
    assert capped.dropped == 436


@settings(max_examples=100, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.text(max_size=300), st.text(max_size=3000)), max_size=MAX_HEADERS + 20),
)
def test_whatever_arrives_what_is_kept_is_bounded(pairs: list[tuple[str, str]]) -> None:
    capped = cap_headers([SipHeader(name=n, value=v) for n, v in pairs])
    assert len(capped.headers) == min(len(pairs), MAX_HEADERS)
    assert capped.dropped == max(0, len(pairs) - MAX_HEADERS)
    for (name, value), kept in zip(pairs, capped.headers, strict=False):
        assert len(kept.name) <= MAX_HEADER_NAME_CHARS
        assert len(kept.value) <= MAX_HEADER_VALUE_CHARS
        assert kept.value == value or kept.value.endswith(CUT_MARK)
        assert kept.name == name or kept.name.endswith(CUT_MARK)
