"""Call-wide names: the states of a call, the reasons it ends, and the constants of the machine's own core
(its timers, retry bounds, the goodbye it asks for). A feature's own timers and lines live in its module."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

EndedReason = Literal[
    "caller_hangup",
    "agent_end_call",
    "transferred",
    "transfer_failed",
    "max_duration",
    "silence_timeout",
    "budget_exceeded",
    "session_error",
    "model_error",
    "session_limit",
    "accept_failed",
    "rejected",
    "shutdown",
    "operator_hangup",
    # calls we place through Twilio (#16) that never reached OpenAI: Twilio's outcome
    "no_answer",
    "busy",
    "failed",
    "canceled",
    # an answering machine (or a fax) took a call we placed: hung up on, or left a message (outbound.voicemail)
    "voicemail",
    # an OpenAI leg whose call was parked on Twilio for a long hold (#16): the call goes on in a fresh leg, and its
    # report (the whole call's) comes from the last leg, or from the parked line when the call ends while parked
    "parked",
]


class CallState(StrEnum):
    RECEIVED = "received"
    ACCEPTING = "accepting"
    ACCEPTED = "accepted"
    ATTACHED = "attached"
    ENDING = "ending"
    #: the hangup failed and is retried, with backoff, until OpenAI confirms it (2xx) or says the call is gone (404)
    HANGING_UP = "hanging_up"
    ENDED = "ended"
    REJECTED = "rejected"
    FAILED = "failed"


#: Sideband error codes that say something about one request, not about the session being broken.
BENIGN_ERROR_CODES = frozenset(
    {"response_cancel_not_active", "conversation_already_has_active_response", "rate_limit_exceeded"}
)

GOODBYE_INSTRUCTIONS = (
    "Say a short, warm goodbye to the caller in one sentence, in the language of the conversation. "
    "Do not ask anything and do not call any tool."
)
SHUTDOWN_INSTRUCTIONS = (
    "The line has to close now for maintenance. Apologise briefly, invite the caller to call back, and say "
    "goodbye in one or two sentences. Do not call any tool."
)

#: endings the agent chose: when the caller talks over their goodbye, the call is not over after all and the
#: conversation goes on (``calls/lines.py`` bounds how often). Every other ending lets the model answer the
#: caller, then asks for the goodbye again.
RESUMABLE_REASONS: frozenset[EndedReason] = frozenset({"agent_end_call", "silence_timeout"})
RESUME_NOTE = (
    "The caller spoke while you were saying goodbye, so the call is not over. Answer what they said. When they "
    "have nothing else, say goodbye and end the call as before."
)
GOODBYE_BARGE_IN_NOTE = (
    "The caller spoke while you were saying goodbye. Answer what they said in one or two short sentences. Do not "
    "say goodbye yet and do not call any tool: you will be asked to say goodbye right after, and then the call ends."
)

#: sideband reconnects allowed per call before giving up and hanging up through REST
MAX_RECONNECTS = 3
#: a hangup that failed is tried again after 0.25 s, doubling up to this, until OpenAI confirms it (no give-up)
HANGUP_RETRY_MAX_S = 30.0

GOODBYE_TIMER = "goodbye"
#: the caller talked over a goodbye that must still be said: it is asked for again once the model has answered
#: them, or when this timer (``lines.ANSWER_WAIT_MAX_S``) fires first
GOODBYE_AGAIN_TIMER = "goodbye_again"
#: The goodbye fallback, one rule: the hangup comes when the goodbye's own audio stops, else
#: ``goodbye_timeout_s`` after the goodbye could start playing (its request, or, when the caller is still
#: hearing earlier audio then, that audio's ``output_audio_buffer.stopped``/``cleared``), and again
#: ``goodbye_timeout_s`` after its own audio started. While earlier audio plays, this bounds the wait in case
#: its end is never reported.
GOODBYE_QUEUE_MAX_S = 60.0
#: OpenAI's 60-minute session limit (``agent/profile.py``: ``OPENAI_SESSION_LIMIT_S``): the call is hung up this
#: long before it, whatever is still going on (``watchdogs.max_duration_s`` ends calls well before that)
SESSION_LIMIT_TIMER = "session_limit"
SESSION_LIMIT_MARGIN_S = 15.0
#: a sideband that closes this close to the limit (or later), with no hangup of ours under way, ended on it
SESSION_LIMIT_SLACK_S = 10.0
CLOSE_WAIT_TIMER = "close_wait"
SESSION_ACK_TIMER = "session_ack"
HANGUP_RETRY_TIMER = "hangup_retry"
FILLER_TIMER_PREFIX = "filler:"
