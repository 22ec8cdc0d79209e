"""Which of the controller's own requests a response answers.

Every ``response.create`` the controller sends carries ``response.metadata`` ``{"sipctl": <purpose>, "n": <a
number unique within the call>}`` (metadata values are strings; a request may add its own keys beside them, like
the hold check's ``item_id``), plain answers to the conversation too. OpenAI echoes the metadata on that response's
``response.created`` and ``response.done``, so a goodbye, a handoff line or a nudge is recognised by its tag,
never by the order in which responses happen to be created: a response the server made on its own (server
VAD) or one the model made in between carries no tag, or another one.
"""

from __future__ import annotations

from collections.abc import Mapping

from sip_controller.calls.actions import Send
from sip_controller.realtime import events as ev

#: the metadata keys of a tag: what the response is for, and which request asked for it
PURPOSE_KEY = "sipctl"
SEQ_KEY = "n"

#: the purposes of plain answers (the model answers the conversation as it stands): after a tool's output, and
#: otherwise (after the keypad's digits, at the end of hold, ...)
TOOL_RESULT = "tool_result"
ANSWER = "answer"

Tag = Mapping[str, str]


def make_tag(purpose: str, seq: int) -> dict[str, str]:
    return {PURPOSE_KEY: purpose, SEQ_KEY: str(seq)}


def request_tag(request: Send) -> Tag | None:
    """The tag a ``response.create`` carries (None for any other event, or an untagged one)."""
    response = request.event.get("response")
    metadata = response.get("metadata") if isinstance(response, dict) else None
    if not isinstance(metadata, dict) or PURPOSE_KEY not in metadata:
        return None
    return {key: str(metadata[key]) for key in (PURPOSE_KEY, SEQ_KEY) if key in metadata}


def answers(resp: ev.Response, tag: Tag | None) -> bool:
    """``resp`` is the response to the request tagged ``tag``."""
    metadata = resp.metadata
    if tag is None or not isinstance(metadata, dict):
        return False
    return all(metadata.get(key) == value for key, value in tag.items())
