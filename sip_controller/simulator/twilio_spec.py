"""What the Twilio stand-in is scripted with: who answers a number it calls (:class:`Callee`), and the Twilio
calls a scenario file declares (:class:`TwilioScenario`: outbound calls placed through the controller, inbound
calls to one of the account's numbers).

A callee's outcome decides the status callbacks (``StatusCallbackEvent`` ``initiated``/``ringing``/``answered``/
``completed``; the last one's ``CallStatus`` is the outcome):

===================== ====================================================================== =================
outcome               what happens                                                           final CallStatus
===================== ====================================================================== =================
answer                rings ``ring_seconds``, a person answers; once bridged to OpenAI the   completed
                      person follows ``steps`` (the OpenAI leg's script)
busy                  refused at once (SIP 486), no ringing                                  busy
no_answer             rings until the call's ``Timeout`` (or ``ring_seconds`` if shorter)    no-answer
failed                the carrier refuses the call (``error_code``, ``sip_response_code``)   failed
voicemail             answers after ``ring_seconds``; the greeting plays, then a beep (AMD   completed
                      ``machine_end_beep``); what is said after the beep is the message
fax                   answers with a fax tone (AMD ``fax``), hangs up after a few seconds    completed
hangup_while_ringing  rings ``ring_seconds``, then declines (SIP 603)                        busy
===================== ====================================================================== =================

Durations are nominal seconds, multiplied by the simulator's ``time_scale``.

A person's ``steps`` are one script for the whole Twilio call (#16): a call parked on Twilio during a long hold
(a live update onto a ``<Gather>``) goes on with the steps its OpenAI leg had not reached, heard by the Gather
(:mod:`.twilio_engine`), and a later OpenAI leg runs what is left, opening with the reply to what the Gather heard
(:mod:`.twilio_script`). The callee's ``expect`` is checked on the call's last OpenAI leg.
"""

from __future__ import annotations

from .scenario import (
    DEFAULT_GREETING,
    FINAL_STATUSES,
    SECONDS_PER_WORD,
    AnsweredBy,
    Callee,
    CalleeOutcome,
    CallStatus,
    InboundCall,
    OutboundCall,
    ReportExpectation,
    TwilioExpectation,
    TwilioScenario,
    speech_seconds,
)

__all__ = [
    "DEFAULT_GREETING",
    "FINAL_STATUSES",
    "SECONDS_PER_WORD",
    "AnsweredBy",
    "CallStatus",
    "Callee",
    "CalleeOutcome",
    "InboundCall",
    "OutboundCall",
    "ReportExpectation",
    "TwilioExpectation",
    "TwilioScenario",
    "speech_seconds",
]
