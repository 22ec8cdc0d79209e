"""X-Twilio-Signature against the public URL, checked with the official package computing the signatures."""

from __future__ import annotations

import pytest
from twilio.request_validator import RequestValidator

from sip_controller.telephony.signatures import TwilioSignatures

TOKEN = "12345678901234567890123456789012"
PUBLIC = "https://calls.example.com"
FORM = {"CallSid": "CA" + "1" * 32, "From": "+14155550123", "To": "+18005550100", "CallStatus": "ringing"}


def twilio_signs(url: str, params: dict[str, str], token: str = TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, params))


def test_a_signature_made_by_the_twilio_package_is_valid() -> None:
    signatures = TwilioSignatures(TOKEN, PUBLIC + "/")
    signature = twilio_signs(PUBLIC + "/twilio/voice", FORM)
    assert signatures.valid("/twilio/voice", FORM, signature)


def test_the_query_string_is_part_of_the_signed_url() -> None:
    signatures = TwilioSignatures(TOKEN, PUBLIC)
    signature = twilio_signs(PUBLIC + "/twilio/status?leg=abc", FORM)
    assert signatures.valid("/twilio/status?leg=abc", FORM, signature)
    assert not signatures.valid("/twilio/status?leg=abd", FORM, signature)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda: (PUBLIC + "/twilio/voice", {**FORM, "From": "+14155550124"}, TOKEN),  # a parameter changed
        lambda: ("http://10.0.0.5:8000/twilio/voice", FORM, TOKEN),  # the URL the app sees, not the public one
        lambda: (PUBLIC + "/twilio/voice", FORM, "another-accounts-token-0000000000"),  # another account
    ],
)
def test_what_twilio_did_not_sign_is_refused(tamper: object) -> None:
    url, params, token = tamper()  # type: ignore[operator]
    assert not TwilioSignatures(TOKEN, PUBLIC).valid("/twilio/voice", FORM, twilio_signs(url, params, token))


def test_a_missing_signature_is_refused() -> None:
    assert not TwilioSignatures(TOKEN, PUBLIC).valid("/twilio/voice", FORM, None)
    assert not TwilioSignatures(TOKEN, PUBLIC).valid("/twilio/voice", FORM, "")


def test_repeated_parameters_are_signed_each() -> None:
    pairs = [("StatusCallbackEvent", "initiated"), ("StatusCallbackEvent", "answered"), ("To", "+1")]
    signatures = TwilioSignatures(TOKEN, PUBLIC)
    signature = signatures.sign(PUBLIC + "/x", pairs)
    assert signature != signatures.sign(PUBLIC + "/x", pairs[1:])
    assert signatures.valid("/x", pairs, signature)


def test_our_signing_matches_the_package_for_the_simulator() -> None:
    assert TwilioSignatures(TOKEN, PUBLIC).sign(PUBLIC + "/a", FORM) == twilio_signs(PUBLIC + "/a", FORM)
