"""The Twilio stand-in's TwiML reader: the verbs the controller emits, and hostile documents refused."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sip_controller.simulator.twilio_twiml import (
    Dial,
    Gather,
    Hangup,
    Pause,
    Play,
    Say,
    TwimlError,
    parse_sip_uri,
    parse_twiml,
)
from sip_controller.telephony.twiml import bridge_to_openai

PARKED = (
    '<?xml version="1.0" encoding="UTF-8"?><Response><Gather input="speech" '
    'action="https://ctl.example/twilio/parked?twilio_id=tw_1&amp;spell=1" method="POST" timeout="15" '
    'speechTimeout="auto" speechModel="phone_call" actionOnEmptyResult="true"/></Response>'
)


def test_the_controllers_bridge_parses_to_a_dial_with_its_header() -> None:
    document = parse_twiml(bridge_to_openai("proj_sim", "0123456789abcdef01234567"))
    (dial,) = document.verbs
    assert isinstance(dial, Dial)
    assert dial.answer_on_bridge is True
    assert dial.sip is not None
    assert (dial.sip.scheme, dial.sip.user, dial.sip.host) == ("sip", "proj_sim", "sip.api.openai.com")
    assert dial.sip.params == {"transport": "tls"}
    assert dial.sip.headers == (("X-Sipctl-Correlation", "0123456789abcdef01234567"),)
    assert document.warnings == ()


def test_say_pause_hangup_in_order_with_attributes() -> None:
    document = parse_twiml(
        '<?xml version="1.0" encoding="UTF-8"?><Response><Say voice="alice" loop="2">Hello &amp; bye</Say>'
        '<Pause length="3"/><Hangup/></Response>'
    )
    assert document.verbs == (Say("Hello & bye", voice="alice", loop=2), Pause(3.0), Hangup())
    assert document.names() == ["Say", "Pause", "Hangup"]


def test_sip_headers_twilio_would_drop_are_dropped_with_a_warning() -> None:
    warnings: list[str] = []
    uri = parse_sip_uri(
        "sip:proj@sip.api.openai.com;transport=tls?X-Ref=a%20b&X-Twilio-Thing=1&Bad Name=2&User-to-User=abc&Foo=3",
        warnings,
    )
    assert uri.headers == (("X-Ref", "a b"), ("User-to-User", "abc"))
    assert [w.split(":")[0] for w in warnings] == ["32113", "13252", "13252"]


def test_a_header_part_of_1024_characters_is_dropped_whole() -> None:
    warnings: list[str] = []
    uri = parse_sip_uri("sip:proj@sip.api.openai.com?X-Big=" + "a" * 1020, warnings)
    assert uri.headers == ()
    assert warnings[0].startswith("21227")


@pytest.mark.parametrize(
    ("text", "code"),
    [
        pytest.param("<Response><Say>unclosed</Response>", 12100, id="not-well-formed"),
        pytest.param("<Gather/>", 12200, id="wrong-root"),
        pytest.param("<Response><Play>http://x/y.mp3</Play></Response>", 12200, id="unknown-verb"),
        pytest.param("<Response><Dial><Conference>x</Conference></Dial></Response>", 12200, id="unknown-noun"),
        pytest.param("<Response><Dial><Sip>http://x</Sip></Dial></Response>", 12200, id="not-a-sip-uri"),
        pytest.param("<Response><Dial>0123</Dial></Response>", 12200, id="number-not-e164"),
        pytest.param('<Response><Pause length="ten"/></Response>', 12200, id="bad-number"),
        pytest.param(
            '<Response><Dial method="PUT" action="http://x"><Number>+14155550100</Number></Dial></Response>',
            12200,
            id="bad-method",
        ),
    ],
)
def test_documents_twilio_would_not_run_are_refused_with_its_code(text: str, code: int) -> None:
    with pytest.raises(TwimlError) as caught:
        parse_twiml(text)
    assert caught.value.code == code


def test_entity_expansion_is_refused_before_any_expansion() -> None:
    laughs = (
        '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">'
        + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8))
        + "]><Response><Say>&i;</Say></Response>"
    )
    with pytest.raises(TwimlError, match="DTD or entity") as caught:
        parse_twiml(laughs)
    assert caught.value.code == 12100


def test_external_entities_and_bare_doctypes_are_refused() -> None:
    external = '<?xml version="1.0"?><!DOCTYPE r SYSTEM "file:///etc/passwd"><Response/>'
    with pytest.raises(TwimlError, match="DTD"):
        parse_twiml(external)


def test_a_huge_document_is_refused_unread() -> None:
    huge = "<Response>" + "<Pause/>" * 9000 + "</Response>"
    with pytest.raises(TwimlError) as caught:
        parse_twiml(huge)
    assert caught.value.code == 11750


def test_deep_nesting_and_too_many_elements_are_refused() -> None:
    deep = "<Response>" + "<Say>" * 50 + "</Say>" * 50 + "</Response>"
    with pytest.raises(TwimlError, match="nested deeper"):
        parse_twiml(deep)
    many = "<Response>" + "<Hangup/>" * 600 + "</Response>"
    with pytest.raises(TwimlError, match="more than 500"):
        parse_twiml(many)


def test_a_dial_records_as_its_record_attribute_says() -> None:
    (dial,) = parse_twiml(
        '<Response><Dial record="record-from-answer-dual" recordingStatusCallback="https://x.test/r">'
        "<Number>+14155550188</Number></Dial></Response>"
    ).verbs
    assert isinstance(dial, Dial)
    assert (dial.records, dial.record, dial.recording_callback, dial.recording_method) == (
        True, "record-from-answer-dual", "https://x.test/r", "POST"
    )  # fmt: skip
    (plain,) = parse_twiml("<Response><Dial>+14155550188</Dial></Response>").verbs
    assert isinstance(plain, Dial)
    assert not plain.records
    with pytest.raises(TwimlError, match="record="):
        parse_twiml('<Response><Dial record="always">+14155550188</Dial></Response>')


# ---- <Gather> (#16: a parked hold listens for a person) ------------------------------------------------------


def test_the_parked_lines_gather_parses_with_every_attribute() -> None:
    document = parse_twiml(PARKED)
    (gather,) = document.verbs
    assert isinstance(gather, Gather)
    assert gather.input == frozenset({"speech"})
    assert (gather.speech, gather.dtmf) == (True, False)
    assert gather.action == "https://ctl.example/twilio/parked?twilio_id=tw_1&spell=1"
    assert (gather.method, gather.timeout, gather.speech_timeout) == ("POST", 15, "auto")
    assert (gather.speech_model, gather.action_on_empty_result) == ("phone_call", True)
    assert (gather.language, gather.finish_on_key, gather.num_digits, gather.prompts) == ("en-US", "#", None, ())
    assert document.warnings == ()
    assert document.names() == ["Gather"]


def test_a_bare_gather_has_twilios_defaults() -> None:
    (gather,) = parse_twiml("<Response><Gather/></Response>").verbs
    assert gather == Gather()
    assert (gather.input, gather.timeout, gather.action, gather.action_on_empty_result) == (
        frozenset({"dtmf"}), 5, None, False
    )  # fmt: skip


def test_nested_prompts_are_kept_in_order_and_other_verbs_ignored_with_13320() -> None:
    document = parse_twiml(
        '<Response><Gather input="dtmf speech" numDigits="4" finishOnKey="*" hints="claim, billing department" '
        'language="en-GB"><Say>Your claim number?</Say><Pause length="2"/><Play loop="2">https://x.test/a.mp3</Play>'
        "<Hangup/></Gather><Say>Nothing heard.</Say></Response>"
    )
    gather, after = document.verbs
    assert isinstance(gather, Gather)
    assert gather.input == frozenset({"dtmf", "speech"})
    assert (gather.num_digits, gather.finish_on_key, gather.language) == (4, "*", "en-GB")
    assert gather.hints == ("claim", "billing department")
    assert gather.prompts == (Say("Your claim number?"), Pause(2.0), Play("https://x.test/a.mp3", loop=2))
    assert after == Say("Nothing heard.")
    assert [w.split(":")[0] for w in document.warnings] == ["13320"]


@pytest.mark.parametrize(
    ("attributes", "code", "check"),
    [
        pytest.param('timeout="0"', "13313", lambda g: g.timeout == 5, id="timeout-zero"),
        pytest.param('timeout="2.5"', "13313", lambda g: g.timeout == 5, id="timeout-fraction"),
        pytest.param('timeout="soon"', "13313", lambda g: g.timeout == 5, id="timeout-word"),
        pytest.param('speechTimeout="-1"', "13327", lambda g: g.speech_timeout is None, id="speech-timeout"),
        pytest.param(
            'speechTimeout="auto" speechModel="default"', "13335", lambda g: g.speech_timeout is None, id="auto-default"
        ),
        pytest.param('speechModel="whisper"', "13334", lambda g: g.speech_model is None, id="unknown-model"),
        pytest.param('actionOnEmptyResult="yes"', "13338", lambda g: not g.action_on_empty_result, id="on-empty"),
        pytest.param('finishOnKey="##"', "13310", lambda g: g.finish_on_key == "#", id="finish-on-key"),
        pytest.param('numDigits="0"', "13314", lambda g: g.num_digits is None, id="num-digits"),
        pytest.param('hints="' + "x" * 101 + '"', "13330", lambda g: g.hints == (), id="hint-too-long"),
    ],
)
def test_values_twilio_would_not_take_are_warnings_with_its_code_and_the_default(
    attributes: str, code: str, check: Callable[[Gather], bool]
) -> None:
    document = parse_twiml(f'<Response><Gather input="speech" {attributes}/></Response>')
    (gather,) = document.verbs
    assert isinstance(gather, Gather)
    assert [w.split(":")[0] for w in document.warnings] == [code]
    assert check(gather)


def test_speech_models_twilio_offers_are_taken_as_they_are() -> None:
    for model in ("phone_call", "numbers_and_commands", "experimental_conversations", "googlev2_telephony",
                  "deepgram_nova-3"):  # fmt: skip
        document = parse_twiml(f'<Response><Gather input="speech" speechModel="{model}" speechTimeout="3"/></Response>')
        (gather,) = document.verbs
        assert isinstance(gather, Gather)
        assert (gather.speech_model, gather.speech_timeout, document.warnings) == (model, 3, ())


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('<Response><Gather input="voice"/></Response>', id="unknown-input"),
        pytest.param('<Response><Gather input=""/></Response>', id="empty-input"),
        pytest.param('<Response><Gather method="PUT"/></Response>', id="bad-method"),
    ],
)
def test_a_gather_twilio_cannot_run_is_a_schema_error(text: str) -> None:
    with pytest.raises(TwimlError) as caught:
        parse_twiml(text)
    assert caught.value.code == 12200
