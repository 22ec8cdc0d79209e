"""The TwiML that bridges a Twilio call into OpenAI, with the correlation id in an X- header."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from sip_controller.telephony.twiml import (
    CORRELATION_HEADER,
    bridge_to_openai,
    give_up_parked,
    hang_up,
    listen_parked,
    new_correlation_id,
    openai_sip_uri,
    transfer_to,
    well_formed_correlation,
)


def test_the_bridge_dials_openai_with_the_correlation_header_and_answer_on_bridge() -> None:
    xml = bridge_to_openai("proj_abc123", "0123456789abcdef01234567")
    root = ET.fromstring(xml)
    assert root.tag == "Response"
    [dial] = list(root)
    assert dial.tag == "Dial"
    assert dial.attrib == {"answerOnBridge": "true"}
    [sip] = list(dial)
    assert sip.tag == "Sip"
    assert sip.text == (
        "sip:proj_abc123@sip.api.openai.com;transport=tls?X-Sipctl-Correlation=0123456789abcdef01234567"
    )


def test_the_header_is_ours_not_twilios() -> None:
    assert CORRELATION_HEADER.startswith("X-")
    assert not CORRELATION_HEADER.lower().startswith("x-twilio-")


def test_correlation_ids_are_random_short_and_well_formed() -> None:
    ids = {new_correlation_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(well_formed_correlation(i) and len(i) == 24 for i in ids)


@pytest.mark.parametrize("value", [None, "", "short", "+14155550123", "a" * 65, "x;y=z" * 3, "<tag>abcdefgh"])
def test_values_that_cannot_be_ours(value: str | None) -> None:
    assert not well_formed_correlation(value)


def test_a_malformed_id_never_reaches_the_uri() -> None:
    with pytest.raises(ValueError, match="correlation id"):
        openai_sip_uri("proj_abc", "+14155550123")


def test_hang_up() -> None:
    assert [c.tag for c in ET.fromstring(hang_up())] == ["Hangup"]


def test_a_recorded_bridge_records_both_sides_from_the_answer_and_says_where_to_report() -> None:
    xml = bridge_to_openai("proj_abc123", "0123456789abcdef01234567",
                           recording_callback="https://calls.example.com/twilio/recording?leg=in_1")  # fmt: skip
    [dial] = list(ET.fromstring(xml))
    assert dial.attrib == {
        "answerOnBridge": "true",
        "record": "record-from-answer-dual",
        "recordingStatusCallback": "https://calls.example.com/twilio/recording?leg=in_1",
        "recordingStatusCallbackMethod": "POST",
        "recordingStatusCallbackEvent": "completed absent",
    }
    assert [c.tag for c in dial] == ["Sip"]


@pytest.mark.parametrize(
    ("target", "noun", "text"),
    [("tel:+14155550188", "Number", "+14155550188"), ("sip:desk@pbx.example.com", "Sip", "sip:desk@pbx.example.com"),
     ("sips:desk@pbx.example.com;transport=tls", "Sip", "sips:desk@pbx.example.com;transport=tls")],
)  # fmt: skip
def test_a_transfer_dials_the_target_in_place_of_openai(target: str, noun: str, text: str) -> None:
    [dial] = list(ET.fromstring(transfer_to(target)))
    assert dial.tag == "Dial"
    assert "answerOnBridge" not in dial.attrib
    [child] = list(dial)
    assert (child.tag, child.text) == (noun, text)


@pytest.mark.parametrize("target", ["+14155550188", "tel:4155550188", "http://x", "sip:nobody"])
def test_a_transfer_target_that_is_not_a_tel_or_sip_uri_is_refused(target: str) -> None:
    with pytest.raises(ValueError, match="transfer target"):
        transfer_to(target)


def test_a_parked_call_listens_for_speech_and_posts_every_round() -> None:
    url = "https://calls.example.com/twilio/parked?twilio_id=out_1&spell=2"
    [gather] = list(ET.fromstring(listen_parked(url, timeout_s=15, language="en-GB")))
    assert gather.tag == "Gather"
    assert gather.attrib == {
        "action": url, "method": "POST", "input": "speech", "timeout": "15", "speechTimeout": "auto",
        "speechModel": "phone_call", "actionOnEmptyResult": "true", "language": "en-GB",
    }  # fmt: skip
    assert list(gather) == []  # nothing is played to the other side: it is on hold
    # a bare language code is left to Twilio's default rather than refused
    [bare] = list(ET.fromstring(listen_parked(url, timeout_s=15, language="en")))
    assert "language" not in bare.attrib
    assert [c.tag for c in ET.fromstring(give_up_parked("Sorry, goodbye."))] == ["Say", "Hangup"]
