"""Calls we place that an answering machine takes (#16): what the model is asked to say after the beep.

The policy is the profile's ``outbound.voicemail`` (``agent/profile.py``); the machine acts on Twilio's
answering-machine verdict (``inputs.MachineDetection``) in ``CallMachine``. The message's ``response.create`` is
tagged ``{"sipctl": "voicemail", "n": …}`` (``calls/tags.py``), so its audio is told from any other response's.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sip_controller.agent import templates
from sip_controller.agent.profile import AgentProfile

#: the tag purpose of the message's response
PURPOSE = "voicemail"
#: a call placed with asynchronous answering-machine detection (a profile with ``outbound.voicemail``) is greeted
#: once Twilio's verdict says a person (or cannot tell), or after this long without one: a machine or a fax is
#: never greeted (a person answering says hello first, and the model answers that on its own meanwhile)
GREETING_WAIT_S = 4.0
GREETING_WAIT_TIMER = "amd_greeting"

FROM_MODEL_INSTRUCTIONS = (
    "An answering machine took the call and its beep has just sounded: you are recording a voicemail message now. "
    "Leave a short message of two or three sentences in the language of your instructions: who you are, why you "
    "called, and what the person should do next. Do not ask anything, do not wait for an answer and do not call "
    "any tool. End with a goodbye."
)


def fixed_message_instructions(message: str) -> str:
    """The instructions that make the model say the profile's fixed message, word for word."""
    return (
        "An answering machine took the call and its beep has just sounded: you are recording a voicemail message "
        f'now. Say exactly this message and nothing else, then stop: "{message}"'
    )


def instructions(
    name: str, profile: AgentProfile, *, variables: Mapping[str, str] | None, caller: str | None,
    dialed: str | None, now: datetime,
) -> str | None:  # fmt: skip
    """What the model is asked to say after the beep (the fixed message with its ``{{ var:… }}`` filled in), or
    None when the profile leaves no message."""
    voicemail = profile.outbound.voicemail
    if voicemail is None or voicemail.action != "leave_message":
        return None
    if voicemail.message is None:
        return FROM_MODEL_INSTRUCTIONS
    text = templates.render(
        voicemail.message, profile=name, timezone=profile.timezone, caller=caller, dialed=dialed,
        header=lambda _name: None, max_chars=profile.template_value_max_chars, now=now, variables=variables,
    )  # fmt: skip
    return fixed_message_instructions(text)
