"""The GA events the controller knows and does not act on (item, content-part and delta events; the answers to
client events) are parsed by type only and never counted as unknown."""

from __future__ import annotations

import json

import pytest

from sip_controller.realtime import events as ev
from tests.callkit import Call, sb


@pytest.mark.parametrize("kind", sorted(ev.PASSIVE_TYPES))
def test_a_passive_event_is_known_on_both_parsing_paths(kind: str) -> None:
    fast = ev.parse_server_event(json.dumps({"type": kind, "event_id": "e1", "item": {"id": "i1"}}))
    general = ev.parse_server_event(json.dumps({"event_id": "e1", "type": kind}).encode())
    assert isinstance(fast, ev.PassiveEvent)
    assert isinstance(general, ev.PassiveEvent)
    assert fast.type == general.type == kind


def test_no_passive_type_shadows_an_event_the_controller_acts_on() -> None:
    handled = {name for model in ev._MODELS.values() for name in model.model_fields["type"].annotation.__args__}  # type: ignore[union-attr]
    assert not (ev.PASSIVE_TYPES & handled)


def test_the_beta_item_created_event_is_still_unknown() -> None:
    assert isinstance(ev.parse_server_event('{"type":"conversation.item.created"}'), ev.UnknownEvent)


def test_a_streamed_answer_does_not_count_as_ignored_events() -> None:
    c = Call()
    c.greeted()
    before = c.record.ignored_events
    for kind in ("response.output_item.added", "conversation.item.added", "response.content_part.added",
                 "response.output_audio_transcript.delta", "response.content_part.done",
                 "response.output_item.done", "conversation.item.done"):
        assert c.feed(sb({"type": kind, "event_id": "e", "response_id": "r9"})) == []
    assert c.record.ignored_events == before
    c.feed(sb({"type": "something.new"}))
    assert c.record.ignored_events == before + 1
